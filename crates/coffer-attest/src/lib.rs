//! The attestation service's logic, without I/O: requests shaped like Microsoft Azure
//! Attestation's `attest/SevSnpVM`, `attest/SgxEnclave` and `attest/TdxVm`, SEV-SNP verification
//! (via `coffer-snp`) and Intel DCAP verification (via `coffer-dcap`, with collateral the operator
//! supplies), the binding of runtime data to REPORT_DATA, appraisal against reference values, and
//! signed tokens whose claims use MAA's names and value formats.
//!
//! Tokens are RS256 JWTs (RSA-2048): the algorithm every JWT library and Azure's own relying
//! parties accept, so existing release policies and clients work unchanged.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod claims;
mod dcap;
mod request;
mod token;

pub use claims::{sgx_claims, snp_claims, tdx_claims};
pub use dcap::{CollateralSet, CollateralSource};
pub use request::{decode_b64, AttestRequest, QuoteRequest, RuntimeData};
pub use token::{SigningError, TokenSigner};

use std::sync::Arc;

use coffer_snp::{
    Endorsements, TcbComponent, TcbLayout, TcbVersion, Verifier, VerifyError, VerifyOptions,
};
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
    /// The DCAP quote or its collateral does not verify.
    #[error("evidence rejected ({check}): {0}", check = .0.check())]
    Dcap(#[from] coffer_dcap::VerifyError),
    /// The server has no DCAP collateral: it cannot attest SGX or TDX.
    #[error("this server attests no Intel SGX or TDX evidence: it was started without DCAP collateral (coffer serve --dcap-collateral DIR)")]
    NotConfigured,
    /// REPORT_DATA does not bind the runtime data.
    #[error("REPORT_DATA does not bind the runtime data: {0}")]
    Binding(String),
    /// The evidence verifies but does not meet the reference values.
    #[error("appraisal failed: {0}")]
    Appraisal(String),
    /// The guest is debuggable: the host can read its memory.
    #[error("the guest is debuggable ({flag}): its memory is readable by the host; refused unless debug guests are allowed")]
    DebugGuest {
        /// The flag that says so: POLICY.DEBUG (SNP), TDATTRIBUTES.DEBUG (TDX), ATTRIBUTES.DEBUG (SGX).
        flag: &'static str,
    },
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
    Signing(#[from] SigningError),
}

/// Why a reference-values file is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceValuesError {
    /// Not JSON of the expected shape (unknown fields included).
    #[error("reference values: {0}")]
    Json(#[from] serde_json::Error),
    /// A pinned value is not the right number of bytes of hex.
    #[error("reference values: {what} '{value}' is not {bytes} bytes of hex")]
    NotHex {
        /// Which list ("measurement", "tdx MRTD", "sgx MRSIGNER", ...).
        what: String,
        /// The value as written.
        value: String,
        /// The length it must have.
        bytes: usize,
    },
    /// `max_vmpl` above 3.
    #[error("reference values: max_vmpl {0} is not a VMPL (0-3)")]
    Vmpl(u32),
    /// A `min_tcb` key that names no TCB component.
    #[error(
        "reference values: unknown TCB component '{0}' (bootloader, tee, snp, microcode, fmc)"
    )]
    UnknownTcbComponent(String),
}

impl AttestError {
    /// Stable short code.
    pub fn code(&self) -> &'static str {
        match self {
            AttestError::BadRequest(_) => "bad-request",
            AttestError::Evidence(e) => e.check(),
            AttestError::Dcap(e) => e.check(),
            AttestError::NotConfigured => "not-configured",
            AttestError::Binding(_) => "runtime-data-binding",
            AttestError::Appraisal(_) => "appraisal",
            AttestError::DebugGuest { .. } => "debug-guest",
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
    /// Intel TDX reference values.
    #[serde(default)]
    pub tdx: TdxReference,
    /// Intel SGX reference values.
    #[serde(default)]
    pub sgx: SgxReference,
}

/// Reference values for TD quotes: each list holds the accepted values (hex, 48 bytes); an empty
/// or absent list accepts any.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxReference {
    /// Accepted MRTDs (the TD's initial contents).
    #[serde(default)]
    pub mrtd: Vec<String>,
    /// Accepted RTMR0 values.
    #[serde(default)]
    pub rtmr0: Vec<String>,
    /// Accepted RTMR1 values.
    #[serde(default)]
    pub rtmr1: Vec<String>,
    /// Accepted RTMR2 values.
    #[serde(default)]
    pub rtmr2: Vec<String>,
    /// Accepted RTMR3 values.
    #[serde(default)]
    pub rtmr3: Vec<String>,
    /// Accepted MRCONFIGIDs.
    #[serde(default)]
    pub mrconfigid: Vec<String>,
}

/// Reference values for SGX enclave quotes. Lists hold accepted values; empty or absent = any.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgxReference {
    /// Accepted MRENCLAVEs (hex, 32 bytes).
    #[serde(default)]
    pub mrenclave: Vec<String>,
    /// Accepted MRSIGNERs (hex, 32 bytes).
    #[serde(default)]
    pub mrsigner: Vec<String>,
    /// Accepted ISVPRODIDs.
    #[serde(default)]
    pub product_id: Vec<u16>,
    /// Minimum ISVSVN.
    #[serde(default)]
    pub min_svn: u16,
}

impl TdxReference {
    fn lists(&self) -> [(&'static str, &Vec<String>); 6] {
        [
            ("MRTD", &self.mrtd),
            ("RTMR0", &self.rtmr0),
            ("RTMR1", &self.rtmr1),
            ("RTMR2", &self.rtmr2),
            ("RTMR3", &self.rtmr3),
            ("MRCONFIGID", &self.mrconfigid),
        ]
    }

    /// Whether any TD is accepted (no MRTD pinned).
    pub fn accepts_any_td(&self) -> bool {
        self.mrtd.is_empty()
    }
}

impl SgxReference {
    /// Whether any enclave is accepted (neither MRENCLAVE nor MRSIGNER pinned).
    pub fn accepts_any_enclave(&self) -> bool {
        self.mrenclave.is_empty() && self.mrsigner.is_empty()
    }
}

/// Check that every value of `list` is `bytes` bytes of hex.
fn check_hex_list(what: &str, list: &[String], bytes: usize) -> Result<(), ReferenceValuesError> {
    for v in list {
        if v.len() != bytes * 2 || hex::decode(v).is_err() {
            return Err(ReferenceValuesError::NotHex {
                what: what.to_string(),
                value: v.clone(),
                bytes,
            });
        }
    }
    Ok(())
}

/// `got` must be one of `accepted` (hex, any case), unless `accepted` is empty.
fn one_of(what: &str, accepted: &[String], got: &[u8]) -> Result<(), AttestError> {
    let got = hex::encode(got);
    if accepted.is_empty() || accepted.iter().any(|a| a.eq_ignore_ascii_case(&got)) {
        return Ok(());
    }
    Err(AttestError::Appraisal(format!(
        "{what} {got} is not a reference value"
    )))
}

impl ReferenceValues {
    /// Parse and check the file's content.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ReferenceValuesError> {
        let rv: ReferenceValues = serde_json::from_slice(bytes)?;
        check_hex_list("measurement", &rv.measurements, 48)?;
        for (what, list) in rv.tdx.lists() {
            check_hex_list(&format!("tdx {what}"), list, 48)?;
        }
        check_hex_list("sgx MRENCLAVE", &rv.sgx.mrenclave, 32)?;
        check_hex_list("sgx MRSIGNER", &rv.sgx.mrsigner, 32)?;
        if rv.max_vmpl > 3 {
            return Err(ReferenceValuesError::Vmpl(rv.max_vmpl));
        }
        for k in rv.min_tcb.keys() {
            if component(k).is_none() {
                return Err(ReferenceValuesError::UnknownTcbComponent(k.clone()));
            }
        }
        Ok(rv)
    }

    fn appraise(&self, v: &coffer_snp::Verified) -> Result<(), AttestError> {
        let r = &v.report;
        if r.policy.debug() && !self.allow_debug {
            return Err(AttestError::DebugGuest {
                flag: "POLICY.DEBUG",
            });
        }
        if r.vmpl > self.max_vmpl {
            return Err(AttestError::Vmpl {
                vmpl: r.vmpl,
                max: self.max_vmpl,
            });
        }
        one_of("measurement", &self.measurements, &r.measurement)?;
        self.appraise_tcb(&r.reported_tcb)
    }

    /// REPORTED_TCB against `min_tcb`, component by component ([`TcbVersion::meets_minimum`]).
    fn appraise_tcb(&self, got: &TcbVersion) -> Result<(), AttestError> {
        let min_of = |c: TcbComponent| {
            self.min_tcb
                .iter()
                .find(|(name, _)| component(name) == Some(c))
                .map_or(0, |(_, min)| *min)
        };
        // A minimum for a component this product's TCB does not have (FMC before Turin) is not
        // met: the report cannot show it.
        let fmc = min_of(TcbComponent::Fmc);
        if fmc > 0 && got.get(TcbComponent::Fmc).is_none() {
            return Err(AttestError::Appraisal(format!(
                "REPORTED_TCB has no fmc, minimum {fmc}"
            )));
        }
        let min = match got.layout() {
            TcbLayout::MilanGenoa => TcbVersion::milan_genoa(
                min_of(TcbComponent::Bootloader),
                min_of(TcbComponent::Tee),
                min_of(TcbComponent::Snp),
                min_of(TcbComponent::Microcode),
            ),
            TcbLayout::Turin => TcbVersion::turin(
                min_of(TcbComponent::Fmc),
                min_of(TcbComponent::Bootloader),
                min_of(TcbComponent::Tee),
                min_of(TcbComponent::Snp),
                min_of(TcbComponent::Microcode),
            ),
        };
        got.meets_minimum(&min).map_err(|(c, got, min)| {
            AttestError::Appraisal(format!("REPORTED_TCB {} is {got}, minimum {min}", c.name()))
        })
    }
}

impl ReferenceValues {
    fn appraise_td(&self, td: &coffer_dcap::TdReport) -> Result<(), AttestError> {
        if td.debug && !self.allow_debug {
            return Err(AttestError::DebugGuest {
                flag: "TDATTRIBUTES.DEBUG",
            });
        }
        let got: [&[u8]; 6] = [
            &td.mr_td,
            &td.rtmr0,
            &td.rtmr1,
            &td.rtmr2,
            &td.rtmr3,
            &td.mr_config_id,
        ];
        for ((what, accepted), got) in self.tdx.lists().into_iter().zip(got) {
            one_of(what, accepted, got)?;
        }
        Ok(())
    }

    fn appraise_enclave(&self, r: &coffer_dcap::EnclaveReport) -> Result<(), AttestError> {
        if r.debug && !self.allow_debug {
            return Err(AttestError::DebugGuest {
                flag: "ATTRIBUTES.DEBUG",
            });
        }
        one_of("MRENCLAVE", &self.sgx.mrenclave, &r.mr_enclave)?;
        one_of("MRSIGNER", &self.sgx.mrsigner, &r.mr_signer)?;
        let sgx = &self.sgx;
        if !sgx.product_id.is_empty() && !sgx.product_id.contains(&r.isv_prod_id) {
            return Err(AttestError::Appraisal(format!(
                "ISVPRODID {} is not a reference value",
                r.isv_prod_id
            )));
        }
        if r.isv_svn < sgx.min_svn {
            return Err(AttestError::Appraisal(format!(
                "ISVSVN is {}, minimum {}",
                r.isv_svn, sgx.min_svn
            )));
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
    dcap: Option<Dcap>,
}

/// DCAP verification: the verifier (its roots and caches) and where collateral comes from.
struct Dcap {
    verifier: coffer_dcap::Verifier,
    collateral: Arc<dyn CollateralSource>,
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
            dcap: None,
        }
    }

    /// Attest Intel SGX and TDX quotes too, verified by `verifier` with collateral from
    /// `collateral`. Without this, `attest/SgxEnclave` and `attest/TdxVm` answer
    /// [`AttestError::NotConfigured`].
    pub fn with_dcap(
        mut self,
        verifier: coffer_dcap::Verifier,
        collateral: Arc<dyn CollateralSource>,
    ) -> Self {
        self.dcap = Some(Dcap {
            verifier,
            collateral,
        });
        self
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
        let mut claims = snp_claims(&verified);
        bind_runtime(
            &verified.report.report_data,
            req.runtime_bytes()?.as_ref(),
            &mut claims,
        )?;
        self.reference.appraise(&verified)?;
        put_nonce(&mut claims, req.nonce.as_ref());
        Ok(self.signer.sign(claims, now)?)
    }

    /// Handle `attest/SgxEnclave` (`tee` = SGX) or `attest/TdxVm` (`tee` = TDX) at time `now`
    /// (Unix seconds): returns the JWT.
    pub fn attest_dcap(
        &self,
        tee: coffer_dcap::Tee,
        req: &QuoteRequest,
        now: u64,
    ) -> Result<String, AttestError> {
        let claims = self.dcap_claims(tee, req, now)?;
        Ok(self.signer.sign(claims, now)?)
    }

    /// Everything of [`AttestationService::attest_dcap`] but signing the token: verification,
    /// binding, appraisal; returns the claims.
    pub fn dcap_claims(
        &self,
        tee: coffer_dcap::Tee,
        req: &QuoteRequest,
        now: u64,
    ) -> Result<Claims, AttestError> {
        let dcap = self.dcap.as_ref().ok_or(AttestError::NotConfigured)?;
        let quote = coffer_dcap::Quote::from_bytes(req.quote_bytes()?)
            .map_err(coffer_dcap::VerifyError::from)?;
        let runtime = req.runtime_bytes()?;
        let is_tdx = quote.is_tdx();
        if is_tdx != (tee == coffer_dcap::Tee::Tdx) {
            return Err(AttestError::BadRequest(format!(
                "the quote is {}; send it to attest/{}",
                if is_tdx {
                    "a TDX quote"
                } else {
                    "an SGX quote"
                },
                if is_tdx { "TdxVm" } else { "SgxEnclave" }
            )));
        }
        let verified = dcap.verifier.verify_with(
            &quote,
            |tee, fmspc| dcap.collateral.find(tee, fmspc, now),
            &coffer_dcap::VerifyOptions {
                at: now,
                check_crl: true,
            },
        )?;
        let mut claims = match &quote.body {
            coffer_dcap::Body::Sgx(r) => {
                let mut claims = sgx_claims(&verified, r);
                bind_runtime(&r.report_data, runtime.as_ref(), &mut claims)?;
                if let Some((bytes, _)) = &runtime {
                    use base64::Engine as _;
                    // Azure: the enclave held data, base64url.
                    claims.insert(
                        "x-ms-sgx-ehd".into(),
                        Value::String(
                            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
                        ),
                    );
                }
                self.reference.appraise_enclave(r)?;
                claims
            }
            coffer_dcap::Body::Td10(td) | coffer_dcap::Body::Td15(td) => {
                let mut claims = tdx_claims(&verified, td);
                bind_runtime(&td.report_data, runtime.as_ref(), &mut claims)?;
                self.reference.appraise_td(td)?;
                claims
            }
        };
        put_nonce(&mut claims, req.nonce.as_ref());
        Ok(claims)
    }
}

/// Check that REPORT_DATA binds the runtime data (SHA-256 of its bytes, then 32 zero bytes), and
/// put JSON runtime data into `x-ms-runtime`. No runtime data: nothing is bound, nothing added.
fn bind_runtime(
    report_data: &[u8; 64],
    runtime: Option<&(Vec<u8>, String)>,
    claims: &mut Claims,
) -> Result<(), AttestError> {
    let Some((bytes, data_type)) = runtime else {
        return Ok(());
    };
    let digest = openssl::sha::sha256(bytes);
    if report_data[..32] != digest || report_data[32..].iter().any(|&b| b != 0) {
        return Err(AttestError::Binding(format!(
            "REPORT_DATA is {}, expected SHA-256(runtime data) {} followed by 32 zero bytes",
            hex::encode(report_data),
            hex::encode(digest)
        )));
    }
    if data_type.eq_ignore_ascii_case("json") {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            AttestError::BadRequest(format!("runtimeData is dataType JSON but not JSON: {e}"))
        })?;
        claims.insert("x-ms-runtime".into(), v);
    }
    Ok(())
}

/// The request's nonce, as a string, in the `nonce` claim.
fn put_nonce(claims: &mut Claims, nonce: Option<&Value>) {
    if let Some(n) = nonce {
        claims.insert(
            "nonce".into(),
            Value::String(match n {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
        );
    }
}

/// A claims map (helper for callers).
pub type Claims = Map<String, Value>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use coffer_dcap::{Quote, Tee};

    /// A verified-looking v2 report with `raw` as REPORTED_TCB read in `layout`.
    fn verified_with_tcb(raw: [u8; 8], layout: TcbLayout) -> coffer_snp::Verified {
        let mut b = vec![0u8; coffer_snp::REPORT_LEN];
        b[0] = 2;
        b[0x180..0x188].copy_from_slice(&raw);
        let mut report = coffer_snp::AttestationReport::from_bytes(&b).unwrap();
        report.set_tcb_layout(layout);
        coffer_snp::Verified {
            valid: true,
            tee: coffer_snp::Tee::SevSnp,
            product: coffer_snp::Product::Milan,
            signer: coffer_snp::SigningKey::Vcek,
            report,
            warnings: Vec::new(),
        }
    }

    fn appraise_tcb(min: serde_json::Value, v: &coffer_snp::Verified) -> Result<(), String> {
        let rv = rv(serde_json::json!({ "min_tcb": min })).unwrap();
        match rv.appraise(v) {
            Ok(()) => Ok(()),
            Err(AttestError::Appraisal(m)) => Err(m),
            Err(other) => panic!("not an appraisal failure: {other}"),
        }
    }

    #[test]
    fn min_tcb_is_met_component_by_component_not_lexicographically() {
        // Milan/Genoa: byte0 bootloader, byte1 tee, byte6 snp, byte7 microcode.
        let v = verified_with_tcb([9, 0, 0, 0, 0, 0, 1, 0x73], TcbLayout::MilanGenoa);
        assert_eq!(
            appraise_tcb(serde_json::json!({"bootloader": 3, "microcode": 0x73}), &v),
            Ok(())
        );
        // Bootloader far above its minimum does not make up for SNP below its own.
        assert_eq!(
            appraise_tcb(serde_json::json!({"bootloader": 3, "snp": 2}), &v),
            Err("REPORTED_TCB snp is 1, minimum 2".into())
        );
        assert_eq!(
            appraise_tcb(serde_json::json!({"microcode": 0x74}), &v),
            Err("REPORTED_TCB microcode is 115, minimum 116".into())
        );
        // Milan has no FMC: a minimum for it cannot be shown to be met.
        assert_eq!(
            appraise_tcb(serde_json::json!({"fmc": 1}), &v),
            Err("REPORTED_TCB has no fmc, minimum 1".into())
        );
        assert_eq!(appraise_tcb(serde_json::json!({"fmc": 0}), &v), Ok(()));
    }

    #[test]
    fn min_tcb_reads_turin_reports_with_turin_layout() {
        // Turin: byte0 fmc, byte1 bootloader, byte2 tee, byte3 snp, byte7 microcode.
        let v = verified_with_tcb([2, 5, 0, 4, 0, 0, 0, 1], TcbLayout::Turin);
        assert_eq!(
            appraise_tcb(serde_json::json!({"fmc": 2, "snp": 4}), &v),
            Ok(())
        );
        assert_eq!(
            appraise_tcb(serde_json::json!({"fmc": 3}), &v),
            Err("REPORTED_TCB fmc is 2, minimum 3".into())
        );
    }

    /// A debuggable TD (TDATTRIBUTES 0x10000001).
    const TDX_V4: &str = "intel-dcap/signature-only/trustee_tdx_v4_quote.bin";
    /// A TD 1.5 quote of a TD that is not debuggable (TDATTRIBUTES 0x10000000: SEPT_VE_DISABLE).
    const TDX_V5: &str = "intel-dcap/signature-only/trustee_tdx_v5_quote.bin";
    /// MRTD of TDX_V4 (its README).
    const MRTD: &str = "705ee9381b8633a9fbe532b52345e8433343d2868959f57889d84ca377c395b689cac1599ccea1b7d420483a9ce5f031";

    fn rv(json: serde_json::Value) -> Result<ReferenceValues, ReferenceValuesError> {
        ReferenceValues::from_json(json.to_string().as_bytes())
    }

    #[test]
    #[cfg_attr(
        coffer_no_vectors,
        ignore = "needs the test vectors (set COFFER_VECTORS)"
    )]
    fn tdx_reference_values_pin_mrtd_rtmrs_and_mrconfigid() {
        let dir = coffer_testkit::vectors();
        let q = Quote::from_bytes(coffer_testkit::read(&dir, TDX_V5)).unwrap();
        let td = q.body.td().unwrap().clone();
        assert!(!td.debug);
        let hex48 = |b: &[u8; 48]| hex::encode(b);
        let mrtd = hex48(&td.mr_td);
        let other = "ab".repeat(48);
        let ok = [
            serde_json::json!({}),
            serde_json::json!({"tdx": {"mrtd": [mrtd]}}),
            serde_json::json!({"tdx": {"mrtd": [other, mrtd.to_uppercase()], "rtmr0": [hex48(&td.rtmr0)],
                "rtmr1": [hex48(&td.rtmr1)], "rtmr2": [hex48(&td.rtmr2)], "rtmr3": [hex48(&td.rtmr3)],
                "mrconfigid": [hex48(&td.mr_config_id)]}}),
        ];
        for j in ok {
            assert!(rv(j.clone()).unwrap().appraise_td(&td).is_ok(), "{j}");
        }
        for field in ["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid"] {
            let j = serde_json::json!({"tdx": {field: [other]}});
            match rv(j).unwrap().appraise_td(&td) {
                Err(AttestError::Appraisal(m)) => {
                    assert!(m.to_lowercase().starts_with(field), "{field}: {m}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        let mut debug = td.clone();
        debug.debug = true;
        assert!(matches!(
            ReferenceValues::default().appraise_td(&debug),
            Err(AttestError::DebugGuest {
                flag: "TDATTRIBUTES.DEBUG"
            })
        ));
        let allowed = rv(serde_json::json!({"allow_debug": true})).unwrap();
        assert!(allowed.appraise_td(&debug).is_ok());
    }

    #[test]
    fn reference_values_refuse_bad_dcap_entries() {
        for (j, what) in [
            (serde_json::json!({"tdx": {"mrtd": ["00"]}}), "tdx MRTD"),
            (
                serde_json::json!({"tdx": {"rtmr2": ["zz".repeat(48)]}}),
                "tdx RTMR2",
            ),
            (
                serde_json::json!({"sgx": {"mrenclave": ["00".repeat(48)]}}),
                "sgx MRENCLAVE",
            ),
            (
                serde_json::json!({"sgx": {"mrsigner": ["x"]}}),
                "sgx MRSIGNER",
            ),
        ] {
            match rv(j.clone()) {
                Err(ReferenceValuesError::NotHex { what: w, .. }) => assert_eq!(w, what, "{j}"),
                other => panic!("{j}: {other:?}"),
            }
        }
        let e = rv(serde_json::json!({"tdx": {"mrowner": []}})).unwrap_err();
        assert!(matches!(e, ReferenceValuesError::Json(_)), "{e}");
        assert!(e.to_string().contains("mrowner"), "{e}");
        let e = rv(serde_json::json!({"sgx": {"product_id": [70000]}})).unwrap_err();
        assert!(matches!(e, ReferenceValuesError::Json(_)), "{e}");
        assert!(
            matches!(
                rv(serde_json::json!({"max_vmpl": 4})),
                Err(ReferenceValuesError::Vmpl(4))
            ),
            "max_vmpl 4"
        );
        assert!(
            matches!(
                rv(serde_json::json!({"min_tcb": {"pcr": 1}})),
                Err(ReferenceValuesError::UnknownTcbComponent(ref k)) if k == "pcr"
            ),
            "min_tcb pcr"
        );
    }

    #[test]
    #[cfg_attr(
        coffer_no_vectors,
        ignore = "needs the test vectors (set COFFER_VECTORS)"
    )]
    fn tdx_claims_carry_azure_names() {
        let dir = coffer_testkit::vectors();
        let q = Quote::from_bytes(coffer_testkit::read(&dir, TDX_V4)).unwrap();
        let td = q.body.td().unwrap();
        // The claims need a verdict; the TD part is what is checked here.
        let sgx = coffer_testkit::read(&dir, "intel-dcap/dcap-qvl-sgx-v3/quote.bin");
        let col = coffer_testkit::read(&dir, "intel-dcap/dcap-qvl-sgx-v3/collateral.json");
        let verified = coffer_dcap::Verifier::intel()
            .unwrap()
            .verify(
                &Quote::from_bytes(sgx).unwrap(),
                &coffer_dcap::Collateral::from_qvl_json(&col).unwrap(),
                &coffer_dcap::VerifyOptions {
                    at: 1752919277,
                    check_crl: true,
                },
            )
            .unwrap();
        let c = tdx_claims(&verified, td);
        assert_eq!(c["x-ms-attestation-type"], "tdxvm");
        assert_eq!(c["tdx_mrtd"], MRTD);
        assert_eq!(c["tdx_rtmr3"], hex::encode(td.rtmr3));
        assert_eq!(c["tdx_report_data"], hex::encode(td.report_data));
        // This TD is debuggable (TDATTRIBUTES bit 0).
        assert_eq!(c["tdx_td_attributes_debug"], true);
        assert_eq!(c["dbgstat"], "enabled");
        assert_eq!(c["tdx_seamsvn"], td.tee_tcb_svn[0]);
        assert_eq!(
            c["attester_tcb_status"],
            "ConfigurationAndSWHardeningNeeded"
        );
        for k in [
            "tdx_mrseam",
            "tdx_mrsignerseam",
            "tdx_mrconfigid",
            "tdx_mrowner",
            "tdx_mrownerconfig",
        ] {
            assert_eq!(c[k].as_str().map(str::len), Some(96), "{k}");
        }
        assert_eq!(c["tdx_td_attributes_septve_disable"], true);
        assert_eq!(c["tdx_td_attributes_perfmon"], false);
    }

    #[test]
    #[cfg_attr(
        coffer_no_vectors,
        ignore = "needs the test vectors (set COFFER_VECTORS)"
    )]
    fn collateral_set_picks_by_tee_fmspc_and_window() {
        let dir = coffer_testkit::vectors();
        let col = coffer_testkit::read(&dir, "intel-dcap/dcap-qvl-sgx-v3/collateral.json");
        let mut set = CollateralSet::new();
        assert!(set.is_empty());
        set.insert(
            "a.json",
            coffer_dcap::Collateral::from_qvl_json(&col).unwrap(),
        )
        .unwrap();
        set.note_problem("broken.json", &"not JSON");
        let fmspc = [0x00, 0xa0, 0x67, 0x11, 0x00, 0x00];
        assert!(set.find(Tee::Sgx, &fmspc, 1752919277).is_ok());
        for (tee, f) in [(Tee::Tdx, fmspc), (Tee::Sgx, [0u8; 6])] {
            match set.find(tee, &f, 1752919277) {
                Err(coffer_dcap::VerifyError::NoCollateral(m)) => {
                    assert!(
                        m.contains(&hex::encode(f)) && m.contains("broken.json"),
                        "{m}"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
        let d = set.describe();
        assert!(d[0].starts_with("a.json: SGX FMSPC 00a067110000"), "{d:?}");
        assert!(d[1].contains("broken.json"), "{d:?}");
    }
}
