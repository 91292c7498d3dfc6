//! `coffer demo`: the story so far, on embedded defaults.
//!
//! Makes a throw-away $COFFER_HOME, binds a policy digest into an emulated SEV-SNP report, verifies
//! it, and shows the refusals that make it meaningful.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use coffer_snp::{Endorsements, Product, Report, VerifyOptions};
use coffer_snp_emu::{EmulatedSp, ReportRequest};

use crate::cmd::snp::verifier;

/// The example policy whose digest becomes HOST_DATA.
const EXAMPLE_POLICY: &str =
    "package policy\n\napi_version := \"0.10.0\"\n\ndefault create_container := false\n";

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Keep the temporary $COFFER_HOME and print where it is.
    #[arg(long)]
    keep: bool,
}

fn step(n: u32, what: &str) {
    eprintln!("[{n}] {what}");
}

pub(crate) fn run(a: DemoArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix("coffer-demo-").tempdir()?;
    let home = tmp.path().to_path_buf();

    step(
        1,
        "creating the emulated SEV-SNP secure processor (development ARK/ASK, RSA-4096)",
    );
    let t = Instant::now();
    let sp = EmulatedSp::open_or_create(&home).context("step 1: emulated secure processor")?;
    let t_root = t.elapsed();

    step(
        2,
        "launching with HOST_DATA = SHA-256(policy) and REPORT_DATA = SHA-256(runtime data)",
    );
    let host_data = openssl::sha::sha256(EXAMPLE_POLICY.as_bytes());
    let runtime_data = br#"{"keys":[],"nonce":"coffer-demo"}"#;
    let mut report_data = [0u8; 64];
    report_data[..32].copy_from_slice(&openssl::sha::sha256(runtime_data));
    let measurement = openssl::sha::sha384(b"coffer-agent + launch configuration");
    let req = ReportRequest {
        report_data,
        host_data,
        measurement,
        product: Product::Milan,
        ..Default::default()
    };
    let made = sp.report(&req).context("step 2: emulated report")?;
    std::fs::write(home.join("report.bin"), made.report.bytes())?;
    std::fs::write(home.join("certs.pem"), &made.chain_pem)?;

    step(
        3,
        "verifying the report down to the development root (emulation allowed)",
    );
    let t = Instant::now();
    let endorsements = Endorsements::from_pem_chain(made.chain_pem.as_bytes(), "chain")?;
    let opts = VerifyOptions {
        at: coffer_snp::time::now(),
        product: None,
    };
    let ok = verifier(&home, true)?
        .verify(&made.report, &endorsements, &opts)
        .context("step 3: verification")?;
    let t_verify = t.elapsed();
    if ok.report.host_data != host_data || ok.report.report_data != report_data {
        bail!("step 3: verified report does not carry the launch data");
    }
    println!(
        "verified: tee={} product={} signer={}",
        ok.tee.name(),
        ok.product,
        ok.signer.name()
    );
    println!("  host_data   {}", hex::encode(ok.report.host_data));
    println!("  measurement {}", hex::encode(ok.report.measurement));
    println!(
        "  report_data {}",
        hex::encode(&ok.report.report_data[..32])
    );

    step(
        4,
        "the same evidence without --allow-emulated must be refused",
    );
    match verifier(&home, false)?.verify(&made.report, &endorsements, &opts) {
        Ok(_) => bail!("step 4: emulated evidence was accepted without --allow-emulated"),
        Err(e) => println!("refused ({}): {e}", e.check()),
    }

    step(5, "a report with one changed HOST_DATA bit must be refused");
    let mut tampered = made.report.bytes().to_vec();
    tampered[0xC0] ^= 1;
    let tampered = Report::from_bytes(&tampered)?;
    match verifier(&home, true)?.verify(&tampered, &endorsements, &opts) {
        Ok(_) => bail!("step 5: a tampered report verified"),
        Err(e) => println!("refused ({}): {e}", e.check()),
    }

    println!(
        "summary: root created in {:.0?}, cold verification {:.1?}, total {:.1?}",
        t_root,
        t_verify,
        started.elapsed()
    );
    if a.keep {
        let kept = tmp.keep();
        println!("kept COFFER_HOME at {}", kept.display());
    }
    Ok(ExitCode::SUCCESS)
}
