//! The MAA request bodies: `attest/SevSnpVM` (a report and its certificate chain inside a JSON
//! document), and `attest/SgxEnclave` / `attest/TdxVm` (a DCAP quote).

pub use coffer_release::decode_b64;
use coffer_snp::{Endorsements, Report};
use serde::Deserialize;
use serde_json::Value;

use crate::AttestError;

/// `{"report": b64url(JSON{SnpReport, VcekCertChain, Endorsements?}), "runtimeData"?, "nonce"?}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestRequest {
    /// base64url of the evidence JSON.
    pub report: String,
    /// Data the report binds in REPORT_DATA.
    #[serde(default)]
    pub runtime_data: Option<RuntimeData>,
    /// Accepted and ignored, as MAA's SEV-SNP path does.
    #[serde(default)]
    pub init_time_data: Option<Value>,
    /// Echoed in the token.
    #[serde(default)]
    pub nonce: Option<Value>,
}

/// `{"data": b64url, "dataType": "JSON"|"Binary"}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeData {
    /// base64url of the bytes.
    pub data: String,
    /// `JSON` or `Binary`.
    #[serde(default)]
    pub data_type: String,
}

fn field<'a>(v: &'a Value, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| v.get(*n).and_then(Value::as_str))
}

impl AttestRequest {
    /// The evidence's raw parts: (report bytes, certificate chain bytes: PEM, or a THIM response).
    pub fn evidence_bytes(&self) -> Result<(Vec<u8>, Vec<u8>), AttestError> {
        let bad = |m: String| AttestError::BadRequest(m);
        let json = decode_b64(&self.report).ok_or_else(|| bad("report is not base64url".into()))?;
        let v: Value = serde_json::from_slice(&json)
            .map_err(|e| bad(format!("report is not base64url of JSON: {e}")))?;
        let snp = field(&v, &["SnpReport", "snpReport"])
            .ok_or_else(|| bad("report JSON has no SnpReport".into()))?;
        let snp = decode_b64(snp).ok_or_else(|| bad("SnpReport is not base64url".into()))?;
        let chain = field(&v, &["VcekCertChain", "vcekCertChain"])
            .ok_or_else(|| bad("report JSON has no VcekCertChain".into()))?;
        let chain =
            decode_b64(chain).ok_or_else(|| bad("VcekCertChain is not base64url".into()))?;
        Ok((snp, chain))
    }

    /// The runtime data bytes and their type, when sent.
    pub fn runtime_bytes(&self) -> Result<Option<(Vec<u8>, String)>, AttestError> {
        runtime_bytes(self.runtime_data.as_ref())
    }
}

/// The body of `attest/SgxEnclave` and `attest/TdxVm`, with the field names of Azure Attestation's
/// REST API (`AttestSgxEnclaveRequest`, api-version 2022-08-01; `attest/TdxVm`, api-version
/// 2025-06-01): `{"quote": b64url, "runtimeData"?: {"data", "dataType"}, "initTimeData"?,
/// "draftPolicyForAttestation"?, "nonce"?}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuoteRequest {
    /// base64url of the quote (any base64 spelling is accepted, as for SNP).
    pub quote: String,
    /// Data the quote binds in REPORT_DATA.
    #[serde(default)]
    pub runtime_data: Option<RuntimeData>,
    /// Accepted and ignored, as for SNP (no init-time binding is checked).
    #[serde(default)]
    pub init_time_data: Option<Value>,
    /// MAA's draft attestation policy: refused (Coffer has no attestation policies; appraisal is
    /// the reference values, release decisions are the key's policy).
    #[serde(default)]
    pub draft_policy_for_attestation: Option<String>,
    /// Echoed in the token.
    #[serde(default)]
    pub nonce: Option<Value>,
}

impl QuoteRequest {
    /// The quote bytes (the base64url is undone; the quote itself may still be hex or base64).
    pub fn quote_bytes(&self) -> Result<Vec<u8>, AttestError> {
        if self.draft_policy_for_attestation.is_some() {
            return Err(AttestError::BadRequest(
                "draftPolicyForAttestation is not supported: appraisal uses the server's reference values".into(),
            ));
        }
        decode_b64(&self.quote)
            .ok_or_else(|| AttestError::BadRequest("quote is not base64url".into()))
    }

    /// The runtime data bytes and their type, when sent.
    pub fn runtime_bytes(&self) -> Result<Option<(Vec<u8>, String)>, AttestError> {
        runtime_bytes(self.runtime_data.as_ref())
    }
}

/// `runtimeData`, decoded: the bytes and their type, when sent.
fn runtime_bytes(rd: Option<&RuntimeData>) -> Result<Option<(Vec<u8>, String)>, AttestError> {
    match rd {
        None => Ok(None),
        Some(rd) if rd.data.is_empty() => Ok(None),
        Some(rd) => {
            let bytes = decode_b64(&rd.data).ok_or_else(|| {
                AttestError::BadRequest("runtimeData.data is not base64url".into())
            })?;
            if !matches!(
                rd.data_type.to_ascii_lowercase().as_str(),
                "json" | "binary" | ""
            ) {
                return Err(AttestError::BadRequest(format!(
                    "runtimeData.dataType '{}' is not JSON or Binary",
                    rd.data_type
                )));
            }
            Ok(Some((bytes, rd.data_type.clone())))
        }
    }
}

/// The report, from its bytes.
pub(crate) fn decode_report(bytes: &[u8]) -> Result<Report, AttestError> {
    Report::from_bytes(bytes).map_err(|e| AttestError::Evidence(e.into()))
}

/// `VcekCertChain`: PEM certificates, or Azure THIM's JSON.
pub(crate) fn parse_chain(chain: &[u8]) -> Result<Endorsements, AttestError> {
    if chain.trim_ascii_start().starts_with(b"{") {
        Endorsements::from_thim_json(chain, "VcekCertChain")
    } else {
        Endorsements::from_pem_chain(chain, "VcekCertChain")
    }
    .map_err(|e| AttestError::Evidence(e.into()))
}
