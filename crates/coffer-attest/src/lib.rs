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
    /// The guest is debuggable (POLICY.DEBUG): the host can read its memory.
    #[error("the guest is debuggable (POLICY.DEBUG): its memory is readable by the host; refused unless debug guests are allowed")]
    DebugGuest,
    /// The report was requested from a VMPL above the highest accepted one.
    #[error("the report was requested at VMPL {vmpl}; the highest VMPL accepted is {max}")]
    Vmpl {
        /// The report's VMPL.
        vmpl: u32,
        /// The highest accepted.
        max: u32,
    },
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
            AttestError::DebugGuest => "debug-guest",
            AttestError::Vmpl { .. } => "vmpl",
            AttestError::Signing(_) => "internal",
        }
    }
}

/// Reference values a report must meet (`--reference-values FILE`). The default (no file) still
/// refuses debuggable guests and reports from a VMPL other than 0.
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
    /// Highest VMPL a report may be requested from (0 = most privileged only). Default 0: code at
    /// a less privileged VMPL (e.g. a guest under a paravisor) could ask for a report the
    /// VMPL-0 code never vouched for.
    #[serde(default)]
    pub max_vmpl: u32,
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
        if rv.max_vmpl > 3 {
            return Err(format!(
                "reference values: max_vmpl {} is not a VMPL (0-3)",
                rv.max_vmpl
            ));
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
        if r.policy.debug() && !self.allow_debug {
            return Err(AttestError::DebugGuest);
        }
        if r.vmpl > self.max_vmpl {
            return Err(AttestError::Vmpl {
                vmpl: r.vmpl,
                max: self.max_vmpl,
            });
        }
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
    reference: ReferenceValues,
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
    /// `None` appraises with [`ReferenceValues::default`]: any measurement and TCB, but no debug
    /// guest and VMPL 0 only.
    pub fn new(
        verifier: Verifier,
        reference: Option<ReferenceValues>,
        signer: TokenSigner,
    ) -> Self {
        AttestationService {
            verifier,
            reference: reference.unwrap_or_default(),
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
        self.reference.appraise(&verified)?;
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
