//! The attestation service's logic, without I/O: requests shaped like Microsoft Azure
//! Attestation's `attest/SevSnpVM`, SEV-SNP verification (via `coffer-snp`), the binding of
//! runtime data to REPORT_DATA, appraisal against reference values, and signed tokens whose claims
//! use MAA's names and value formats.
//!
//! Tokens are RS256 JWTs (RSA-2048): the algorithm every JWT library and Azure's own relying
//! parties accept, so existing release policies and clients work unchanged.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod claims;
mod request;
mod token;

pub use claims::snp_claims;
pub use request::{decode_b64, AttestRequest, RuntimeData};
pub use token::TokenSigner;

use std::sync::Arc;

use coffer_snp::{Endorsements, TcbComponent, Verifier, VerifyError, VerifyOptions};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Why attestation failed. [`AttestError::code`] is the stable name sent to clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The request is not well-formed.
    #[error("malformed request: {0}")]
    BadRequest(String),
    /// The evidence does not verify.
    #[error("evidence rejected ({check}): {0}", check = .0.check())]
    Evidence(#[from] VerifyError),
    /// REPORT_DATA does not bind the runtime data.
    #[error("REPORT_DATA does not bind the runtime data: {0}")]
    Binding(String),
    /// The evidence verifies but does not meet the reference values.
    #[error("appraisal failed: {0}")]
    Appraisal(String),
    /// Token signing failed.
    #[error("token signing: {0}")]
    Signing(String),
}

impl AttestError {
    /// Stable short code.
    pub fn code(&self) -> &'static str {
        match self {
            AttestError::BadRequest(_) => "bad-request",
            AttestError::Evidence(e) => e.check(),
            AttestError::Binding(_) => "runtime-data-binding",
            AttestError::Appraisal(_) => "appraisal",
            AttestError::Signing(_) => "internal",
        }
    }
}

/// Reference values a report must meet (`--reference-values FILE`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceValues {
    /// Allowed MEASUREMENTs (hex); empty or absent = any.
    #[serde(default)]
    pub measurements: Vec<String>,
    /// Minimum REPORTED_TCB components (bootloader, tee, snp, microcode, fmc).
    #[serde(default)]
    pub min_tcb: std::collections::BTreeMap<String, u8>,
    /// Whether a debuggable guest (POLICY.DEBUG) is acceptable. Default false.
    #[serde(default)]
    pub allow_debug: bool,
}

impl ReferenceValues {
    /// Parse and check the file's content.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let rv: ReferenceValues =
            serde_json::from_slice(bytes).map_err(|e| format!("reference values: {e}"))?;
        for m in &rv.measurements {
            if m.len() != 96 || hex::decode(m).is_err() {
                return Err(format!(
                    "reference values: measurement '{m}' is not 48 bytes of hex"
                ));
            }
        }
        for k in rv.min_tcb.keys() {
            if component(k).is_none() {
                return Err(format!("reference values: unknown TCB component '{k}' (bootloader, tee, snp, microcode, fmc)"));
            }
        }
        Ok(rv)
    }

    fn appraise(&self, v: &coffer_snp::Verified) -> Result<(), AttestError> {
        let r = &v.report;
        if !self.measurements.is_empty()
            && !self
                .measurements
                .iter()
                .any(|m| m.eq_ignore_ascii_case(&hex::encode(r.measurement)))
        {
            return Err(AttestError::Appraisal(format!(
                "measurement {} is not a reference value",
                hex::encode(r.measurement)
            )));
        }
        for (name, min) in &self.min_tcb {
            if let Some(c) = component(name) {
                let got = r.reported_tcb.get(c).unwrap_or(0);
                if got < *min {
                    return Err(AttestError::Appraisal(format!(
                        "REPORTED_TCB {name} is {got}, minimum {min}"
                    )));
                }
            }
        }
        if r.policy.debug() && !self.allow_debug {
            return Err(AttestError::Appraisal(
                "the guest is debuggable (POLICY.DEBUG) and debug is not allowed".into(),
            ));
        }
        Ok(())
    }
}

fn component(name: &str) -> Option<TcbComponent> {
    Some(match name {
        "bootloader" => TcbComponent::Bootloader,
        "tee" => TcbComponent::Tee,
        "snp" => TcbComponent::Snp,
        "microcode" => TcbComponent::Microcode,
        "fmc" => TcbComponent::Fmc,
        _ => return None,
    })
}

/// Verifies evidence and issues tokens.
pub struct AttestationService {
    verifier: Verifier,
    reference: Option<ReferenceValues>,
    signer: TokenSigner,
    chains: ChainCache,
}

/// Parsed certificate chains by SHA-256 of their bytes: a chip sends the same chain with every
/// report, and parsing it (PEM, three X.509 certificates) costs a quarter of the report check.
/// Bounded: emptied when full.
#[derive(Default)]
struct ChainCache(std::sync::Mutex<std::collections::HashMap<[u8; 32], Arc<Endorsements>>>);

impl ChainCache {
    const CAPACITY: usize = 1024;

    fn get_or_parse(&self, chain: &[u8]) -> Result<Arc<Endorsements>, AttestError> {
        let digest = openssl::sha::sha256(chain);
        let lock = || self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = lock().get(&digest) {
            return Ok(e.clone());
        }
        let parsed = Arc::new(request::parse_chain(chain)?);
        let mut cache = lock();
        if cache.len() >= Self::CAPACITY {
            cache.clear();
        }
        cache.insert(digest, parsed.clone());
        Ok(parsed)
    }
}

impl AttestationService {
    /// A service over a verifier (its roots decide real vs emulated), reference values and a signer.
    pub fn new(
        verifier: Verifier,
        reference: Option<ReferenceValues>,
        signer: TokenSigner,
    ) -> Self {
        AttestationService {
            verifier,
            reference,
            signer,
            chains: ChainCache::default(),
        }
    }

    /// The token signer (for JWKS and OpenID metadata).
    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }

    /// Handle `attest/SevSnpVM` at time `now` (Unix seconds): returns the JWT.
    pub fn attest_snp(&self, req: &AttestRequest, now: u64) -> Result<String, AttestError> {
        let (report, chain) = req.evidence_bytes()?;
        let report = request::decode_report(&report)?;
        let endorsements = self.chains.get_or_parse(&chain)?;
        let verified = self.verifier.verify(
            &report,
            &endorsements,
            &VerifyOptions {
                at: now,
                product: None,
            },
        )?;
        let runtime = req.runtime_bytes()?;
        let rd = &verified.report.report_data;
        let mut claims = snp_claims(&verified);
        if let Some((bytes, data_type)) = &runtime {
            let digest = openssl::sha::sha256(bytes);
            if rd[..32] != digest || rd[32..].iter().any(|&b| b != 0) {
                return Err(AttestError::Binding(format!(
                    "REPORT_DATA is {}, expected SHA-256(runtime data) {} followed by 32 zero bytes",
                    hex::encode(rd),
                    hex::encode(digest)
                )));
            }
            if data_type.eq_ignore_ascii_case("json") {
                let v: Value = serde_json::from_slice(bytes).map_err(|e| {
                    AttestError::BadRequest(format!(
                        "runtimeData is dataType JSON but not JSON: {e}"
                    ))
                })?;
                claims.insert("x-ms-runtime".into(), v);
            }
        }
        if let Some(rv) = &self.reference {
            rv.appraise(&verified)?;
        }
        if let Some(n) = &req.nonce {
            claims.insert(
                "nonce".into(),
                Value::String(match n {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
            );
        }
        self.signer.sign(claims, now).map_err(AttestError::Signing)
    }
}

/// A claims map (helper for callers).
pub type Claims = Map<String, Value>;
