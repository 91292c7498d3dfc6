//! `coffer dcap show|verify`: Intel SGX and TDX quotes (DCAP).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use coffer_dcap::{Collateral, Quote, Verifier, VerifyError, VerifyOptions};
use coffer_server::dcap::CollateralLoadError;
use serde_json::json;

#[derive(Subcommand, Debug)]
pub(crate) enum DcapCommand {
    /// Print a quote's fields as JSON (input: raw, hex with optional 0x, or base64; "-" for stdin).
    Show(ShowArgs),
    /// Verify a quote with Intel's collateral down to the pinned Intel SGX Root CA.
    ///
    /// Exits 0 and prints {"valid":true,"tee":...,"tcb_status":...,"advisory_ids":[...],
    /// "quote":{...}} when the quote is genuine and its TCB level is known (OutOfDate is still
    /// valid: it is reported, and policies decide); exits 1 and prints {"valid":false,"check":...,
    /// "error":...} otherwise, with check one of signature, qe-binding, chain, crl,
    /// collateral-signature, tcb-not-supported, expired, unknown-root, malformed.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ShowArgs {
    /// Quote file ("-" reads standard input): raw, hex (0x optional) or base64.
    quote: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    /// Quote file ("-" reads standard input): raw, hex (0x optional) or base64.
    quote: PathBuf,
    /// Collateral: dcap-qvl's collateral JSON, or a directory of Intel PCS responses
    /// (tcbInfo.json, enclaveIdentity.json, tcb_info_issuer_chain.pem,
    /// qe_identity_issuer_chain.pem, and optionally pck_crl.der, pck_crl_issuer_chain.pem,
    /// root_ca_crl.der).
    #[arg(long, value_name = "FILE")]
    collateral: PathBuf,
    /// Verification time (RFC 3339, e.g. 2025-07-01T00:00:00Z); default now.
    #[arg(long, value_parser = parse_time)]
    at: Option<u64>,
    /// Skip CRL checks (for collateral sets without CRLs); the output says "crl":"skipped".
    #[arg(long)]
    no_crl: bool,
}

fn parse_time(s: &str) -> Result<u64, coffer_dcap::time::TimeError> {
    coffer_dcap::time::parse_rfc3339(s)
}

pub(crate) fn run(cmd: DcapCommand) -> Result<ExitCode> {
    match cmd {
        DcapCommand::Show(a) => show(a),
        DcapCommand::Verify(a) => verify(a),
    }
}

fn show(a: ShowArgs) -> Result<ExitCode> {
    let bytes = quote_bytes(&crate::cmd::read_input(&a.quote)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.quote.display()))?;
    let quote = Quote::from_bytes(bytes).with_context(|| a.quote.display().to_string())?;
    println!("{}", serde_json::to_string_pretty(&quote.fields())?);
    Ok(ExitCode::SUCCESS)
}

/// Turn what a user hands in (a raw quote, or the same as hex with an optional `0x` or as
/// base64, whitespace allowed) into the quote's bytes. The library takes bytes only; guessing
/// spellings is done here, at the edge.
fn quote_bytes(input: &[u8]) -> Result<Vec<u8>, String> {
    let unrecognised = |what: String| {
        format!("not a DCAP quote: expected raw bytes, hex or base64 of a quote, got {what}")
    };
    // A raw quote starts with its version, 3 (SGX) to 5 (TDX 1.5), little-endian.
    let version = input.get(..2).map(|v| u16::from_le_bytes([v[0], v[1]]));
    if matches!(version, Some(3..=5)) && input.len() > coffer_dcap::quote::HEADER_LEN {
        return Ok(input.to_vec());
    }
    let text: String = match std::str::from_utf8(input) {
        Ok(t) => t.chars().filter(|c| !c.is_ascii_whitespace()).collect(),
        Err(_) => {
            return Err(unrecognised(format!(
                "{} bytes of binary that is not a v3-v5 quote",
                input.len()
            )))
        }
    };
    let hex_text = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(&text);
    if !hex_text.is_empty() && hex_text.bytes().all(|c| c.is_ascii_hexdigit()) {
        if let Ok(bytes) = hex::decode(hex_text) {
            return Ok(bytes);
        }
    }
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD
        .decode(&text)
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('='))
        });
    match b64 {
        Ok(bytes) if bytes.len() > coffer_dcap::quote::HEADER_LEN => Ok(bytes),
        _ => Err(unrecognised(format!(
            "{} bytes of text that is neither hex nor base64",
            input.len()
        ))),
    }
}

fn failure(err: &VerifyError) -> ExitCode {
    println!(
        "{}",
        json!({"valid": false, "check": err.check(), "error": err.to_string()})
    );
    eprintln!("coffer: verification failed ({}): {err}", err.check());
    ExitCode::from(1)
}

/// The collateral from a dcap-qvl JSON file ("-": standard input) or a PCS directory. The outer
/// error is operational (a missing file); the inner one is bad collateral.
fn collateral(path: &Path) -> Result<Result<Collateral, VerifyError>> {
    if path == Path::new("-") {
        let bytes = crate::cmd::read_input(path)?;
        return Ok(Collateral::from_qvl_json(&bytes).map_err(VerifyError::from));
    }
    match coffer_server::dcap::read_collateral(path) {
        Ok(c) => Ok(Ok(c)),
        Err(CollateralLoadError::Invalid { source, .. }) => Ok(Err(source.into())),
        Err(e) => Err(e.into()),
    }
}

fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let bytes = match quote_bytes(&crate::cmd::read_input(&a.quote)?) {
        Ok(b) => b,
        Err(e) => {
            println!(
                "{}",
                json!({"valid": false, "check": "malformed", "error": e})
            );
            eprintln!("coffer: verification failed (malformed): {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let quote = match Quote::from_bytes(bytes) {
        Ok(q) => q,
        Err(e) => return Ok(failure(&VerifyError::Quote(e))),
    };
    let collateral = match collateral(&a.collateral)? {
        Ok(c) => c,
        Err(e) => return Ok(failure(&e)),
    };
    let opts = VerifyOptions {
        at: a.at.unwrap_or_else(coffer_dcap::time::now),
        check_crl: !a.no_crl,
    };
    let verifier = Verifier::intel().context("embedded Intel SGX Root CA")?;
    match verifier.verify(&quote, &collateral, &opts) {
        Ok(v) => {
            if a.no_crl {
                eprintln!("coffer: --no-crl: revocation was not checked");
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(failure(&e)),
    }
}
