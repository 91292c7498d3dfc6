//! `coffer snp show|verify|emulate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use coffer_snp::{Endorsements, Product, Report, Roots, Verifier, VerifyError, VerifyOptions};
use coffer_snp_emu::{EmulatedSp, ReportRequest};
use serde_json::json;

use crate::home::coffer_home;

#[derive(Subcommand, Debug)]
pub(crate) enum SnpCommand {
    /// Print a report's fields as JSON (input: 1184 raw bytes, hex or base64; "-" for stdin).
    Show(ShowArgs),
    /// Verify a report down to AMD's root (or, with --allow-emulated, the development root).
    ///
    /// Exits 0 and prints {"valid":true,...} when every check passes; exits 1 and prints the
    /// failed check (signature, chain, tcb-mismatch, chip-id-mismatch, expired, unknown-root,
    /// malformed) otherwise.
    Verify(VerifyArgs),
    /// Produce a report from the emulated secure processor (keys under $COFFER_HOME/snp-emu).
    Emulate(EmulateArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ShowArgs {
    /// Report file ("-" reads standard input).
    report: PathBuf,
    /// Decode TCBs with this product's layout when the report has no CPUID (v2).
    #[arg(long)]
    product: Option<Product>,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("certs_source").multiple(false))]
pub(crate) struct VerifyArgs {
    /// Report file ("-" reads standard input): raw, hex or base64.
    report: PathBuf,
    /// The VCEK or VLEK certificate (DER or PEM); ASK/ASVK and ARK come from the embedded roots.
    #[arg(long, group = "certs_source")]
    vcek: Option<PathBuf>,
    /// A PEM chain: VCEK/VLEK, and optionally ASK/ASVK and ARK, in any order.
    #[arg(long, group = "certs_source")]
    certs: Option<PathBuf>,
    /// An Azure THIM response (JSON with vcekCert, certificateChain, tcbm).
    #[arg(long, group = "certs_source")]
    thim: Option<PathBuf>,
    /// Product, when neither the report's CPUID nor the VCEK tells.
    #[arg(long)]
    product: Option<Product>,
    /// Verification time (RFC 3339, e.g. 2025-01-31T12:00:00Z); default now.
    #[arg(long, value_parser = parse_time)]
    at: Option<u64>,
    /// Accept evidence from coffer's emulated secure processor (development root).
    #[arg(long)]
    allow_emulated: bool,
}

#[derive(Args, Debug)]
pub(crate) struct EmulateArgs {
    /// REPORT_DATA as hex, up to 64 bytes (zero-padded on the right).
    #[arg(long, value_name = "HEX")]
    report_data: String,
    /// HOST_DATA as hex, 32 bytes (e.g. the SHA-256 of the security policy).
    #[arg(long, value_name = "HEX")]
    host_data: String,
    /// MEASUREMENT as hex, 48 bytes; default all zero.
    #[arg(long, value_name = "HEX")]
    measurement: Option<String>,
    /// VMPL of the requesting code (0-3).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=3))]
    vmpl: u32,
    /// Guest POLICY (decimal or 0x-prefixed hex).
    #[arg(long, default_value = "0x30000", value_parser = parse_u64)]
    policy: u64,
    /// GUEST_SVN.
    #[arg(long, default_value_t = 0)]
    guest_svn: u32,
    /// Product to emulate (Turin gives a version 5 report with Turin's TCB layout).
    #[arg(long, default_value = "milan")]
    product: Product,
    /// Sign with the chip's VCEK or with a VLEK (then CHIP_ID is zero).
    #[arg(long, default_value = "vcek", value_parser = ["vcek", "vlek"])]
    signing_key: String,
    /// Where to write the 1184-byte report.
    #[arg(long)]
    out: PathBuf,
    /// Where to write the PEM chain (VCEK, ASK, ARK).
    #[arg(long, value_name = "PEM")]
    certs_out: Option<PathBuf>,
}

pub(crate) fn parse_time(s: &str) -> Result<u64, coffer_snp::TimeError> {
    coffer_snp::time::parse_rfc3339(s)
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("'{s}' is not a number: {e}"))
}

pub(crate) fn run(cmd: SnpCommand) -> Result<ExitCode> {
    match cmd {
        SnpCommand::Show(a) => show(a),
        SnpCommand::Verify(a) => verify(a),
        SnpCommand::Emulate(a) => emulate(a),
    }
}

fn show(a: ShowArgs) -> Result<ExitCode> {
    let bytes = crate::cmd::read_input(&a.report)?;
    let raw = report_bytes(&bytes).with_context(|| a.report.display().to_string())?;
    let mut report = Report::from_bytes(&raw).with_context(|| a.report.display().to_string())?;
    if let (None, Some(p)) = (report.fields().cpuid, a.product) {
        report.set_tcb_layout(p.tcb_layout());
    }
    println!("{}", serde_json::to_string_pretty(report.fields())?);
    Ok(ExitCode::SUCCESS)
}

/// This home's emulated secure processor; its development root is made on first use, which
/// takes seconds (two RSA-4096 keys): say so rather than sit silent.
pub(crate) fn emulated_sp(home: &Path) -> Result<EmulatedSp> {
    ensure_development_root(home)?;
    Ok(EmulatedSp::open_or_create(home)?)
}

/// Make this home's development root if it has none, saying so (see [`emulated_sp`]).
pub(crate) fn ensure_development_root(home: &Path) -> Result<()> {
    if EmulatedSp::existing_root(home)?.is_some() {
        return Ok(());
    }
    eprintln!(
        "coffer: creating the emulated secure processor's development root in {} \
         (two RSA-4096 keys, once per COFFER_HOME; this takes a few seconds)",
        EmulatedSp::state_dir(home).display()
    );
    let t0 = std::time::Instant::now();
    EmulatedSp::open_or_create(home)?;
    eprintln!(
        "coffer: development root made in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Roots for this machine: AMD's, plus the local development root if one exists (created when
/// emulation is allowed, so that a fresh home can verify its own emulated evidence).
pub(crate) fn roots(home: &Path, allow_emulated: bool) -> Result<Roots> {
    let mut roots = Roots::amd().context("embedded AMD roots")?;
    if allow_emulated {
        emulated_sp(home)?;
    }
    if let Some((ark, ask, asvk)) = EmulatedSp::existing_root(home)? {
        roots = roots.with_emulated(ark, ask, asvk)?;
    }
    Ok(roots)
}

/// The verifier for this machine.
pub(crate) fn verifier(home: &Path, allow_emulated: bool) -> Result<Verifier> {
    Ok(Verifier::new(roots(home, false)?, allow_emulated))
}

fn failure(err: &VerifyError) -> ExitCode {
    failed(err.check(), err)
}

fn failed(check: &str, err: &dyn std::fmt::Display) -> ExitCode {
    println!(
        "{}",
        json!({"valid": false, "check": check, "error": err.to_string()})
    );
    eprintln!("coffer: verification failed ({check}): {err}");
    ExitCode::from(1)
}

fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let home = coffer_home()?;
    let bytes = crate::cmd::read_input(&a.report)?;
    let raw = match report_bytes(&bytes) {
        Ok(r) => r,
        Err(e) => return Ok(failed("malformed", &e)),
    };
    let report = match Report::from_bytes(&raw) {
        Ok(r) => r,
        Err(e) => return Ok(failure(&VerifyError::Report(e))),
    };
    let endorsements = match endorsements(&a, &report, &home)? {
        Ok(e) => e,
        Err(e) => return Ok(failure(&VerifyError::Cert(e))),
    };
    let opts = VerifyOptions {
        at: a.at.unwrap_or_else(coffer_snp::time::now),
        product: a.product,
    };
    match verifier(&home, a.allow_emulated)?.verify(&report, &endorsements, &opts) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(failure(&e)),
    }
}

/// Certificates from the flag given; with none, the emulator's VCEK for this chip and TCB.
///
/// The outer error is an operational failure (unreadable file); the inner one is bad evidence.
fn endorsements(
    a: &VerifyArgs,
    report: &Report,
    home: &Path,
) -> Result<Result<Endorsements, coffer_snp::CertError>> {
    let ctx = |p: &PathBuf| p.display().to_string();
    if let Some(p) = &a.vcek {
        return Ok(Endorsements::from_vek(&crate::cmd::read_input(p)?, &ctx(p)));
    }
    if let Some(p) = &a.certs {
        return Ok(Endorsements::from_pem_chain(
            &crate::cmd::read_input(p)?,
            &ctx(p),
        ));
    }
    if let Some(p) = &a.thim {
        return Ok(Endorsements::from_thim_json(
            &crate::cmd::read_input(p)?,
            &ctx(p),
        ));
    }
    let none = "no certificates: pass --vcek, --certs or --thim (only reports of this machine's \
                emulated secure processor can be verified without them)";
    if EmulatedSp::existing_root(home)?.is_none() {
        bail!(none);
    }
    let sp = EmulatedSp::open_or_create(home)?;
    let f = report.fields();
    let product = f
        .product_from_cpuid()
        .or(a.product)
        .unwrap_or(Product::Milan);
    let tcb = f.reported_tcb.with_layout(product.tcb_layout());
    let found = if f.signer_info.signing_key() == coffer_snp::SigningKey::Vlek {
        sp.find_vlek(product, &tcb)?
    } else {
        sp.find_vcek(product, &f.chip_id, &tcb)?
    };
    match found {
        Some(vcek) => Ok(Ok(Endorsements {
            vek: vcek,
            intermediate: None,
            ark: None,
            tcbm: None,
        })),
        None => bail!(none),
    }
}

/// Turn what a user hands in (1184 raw bytes, or the same as hex or base64 text, whitespace
/// allowed) into the report's bytes. The library takes bytes only; guessing spellings is done
/// here, at the edge.
fn report_bytes(input: &[u8]) -> Result<Vec<u8>> {
    const LEN: usize = coffer_snp::REPORT_LEN;
    let not_a_report = |what: String| {
        anyhow::anyhow!(
            "not an attestation report: expected {LEN} bytes as binary, hex or base64, got {what}"
        )
    };
    if input.len() == LEN {
        return Ok(input.to_vec());
    }
    let text = match std::str::from_utf8(input) {
        Ok(t)
            if !t
                .chars()
                .any(|c| c.is_control() && !c.is_ascii_whitespace()) =>
        {
            t
        }
        _ => {
            return Err(not_a_report(format!(
                "{} bytes of binary data",
                input.len()
            )))
        }
    };
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(not_a_report("empty input".into()));
    }
    // Base64 of 1184 bytes is 1578 to 1580 characters; anything else made of hex digits is hex.
    let base64_len = (LEN * 4).div_ceil(3)..=LEN.div_ceil(3) * 4;
    if compact.bytes().all(|c| c.is_ascii_hexdigit()) && !base64_len.contains(&compact.len()) {
        let bytes = hex::decode(&compact).map_err(|e| not_a_report(format!("invalid hex: {e}")))?;
        if bytes.len() == LEN {
            return Ok(bytes);
        }
        return Err(not_a_report(format!("hex text of {} bytes", bytes.len())));
    }
    use base64::Engine as _;
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    for engine in engines {
        if let Ok(bytes) = engine.decode(&compact) {
            if bytes.len() == LEN {
                return Ok(bytes);
            }
            return Err(not_a_report(format!(
                "base64 text of {} bytes",
                bytes.len()
            )));
        }
    }
    Err(not_a_report(format!(
        "{} characters of text that is neither hex nor base64",
        compact.len()
    )))
}

fn hex_field<const N: usize>(name: &str, hex_text: &str, pad: bool) -> Result<[u8; N]> {
    let bytes = hex::decode(hex_text.trim()).with_context(|| format!("--{name} is not hex"))?;
    if bytes.len() > N || (!pad && bytes.len() != N) {
        bail!(
            "--{name} must be {}{N} bytes ({} hex digits), got {} bytes",
            if pad { "at most " } else { "" },
            2 * N,
            bytes.len()
        );
    }
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(&bytes);
    Ok(out)
}

fn emulate(a: EmulateArgs) -> Result<ExitCode> {
    let req = ReportRequest {
        report_data: hex_field("report-data", &a.report_data, true)?,
        host_data: hex_field("host-data", &a.host_data, false)?,
        measurement: match &a.measurement {
            Some(m) => hex_field("measurement", m, false)?,
            None => [0; 48],
        },
        vmpl: a.vmpl,
        policy: a.policy,
        guest_svn: a.guest_svn,
        product: a.product,
        signing_key: if a.signing_key == "vlek" {
            coffer_snp::SigningKey::Vlek
        } else {
            coffer_snp::SigningKey::Vcek
        },
        ..Default::default()
    };
    let home = coffer_home()?;
    let sp = emulated_sp(&home)?;
    let made = sp.report(&req)?;
    std::fs::write(&a.out, made.report.bytes())
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    if let Some(p) = &a.certs_out {
        std::fs::write(p, &made.chain_pem)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    eprintln!(
        "coffer: wrote emulated {} report to {} (verify with --allow-emulated)",
        a.product,
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
