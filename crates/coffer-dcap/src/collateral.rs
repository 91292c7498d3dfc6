//! Intel's collateral for a quote: TCB info and QE identity (each the exact JSON text Intel
//! signed, with its signature and issuer chain), and the CRLs.
//!
//! Two input forms: dcap-qvl's `QuoteCollateralV3` JSON, and the responses of Intel PCS as files.
//! Nothing here trusts anything: [`crate::Verifier`] checks the signatures over `tcb_info_text`
//! and `qe_identity_text` as received before [`TcbInfo::parse`] / [`QeIdentity::parse`] read them.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::certs::{Certificate, Crl};
use crate::error::CollateralError;
use crate::tcb::TcbStatus;
use crate::time::parse_rfc3339;

/// A collateral set.
#[derive(Clone, Debug)]
pub struct Collateral {
    /// The `tcbInfo` object's text, exactly as signed.
    pub tcb_info_text: String,
    /// ECDSA signature over `tcb_info_text`, r‖s.
    pub tcb_info_signature: [u8; 64],
    /// TCB Signing certificate, then (optionally) the root.
    pub tcb_info_chain: Vec<Certificate>,
    /// The `enclaveIdentity` object's text, exactly as signed.
    pub qe_identity_text: String,
    /// ECDSA signature over `qe_identity_text`, r‖s.
    pub qe_identity_signature: [u8; 64],
    /// Its signer's chain.
    pub qe_identity_chain: Vec<Certificate>,
    /// CRL of the Intel SGX Root CA (revokes intermediates).
    pub root_ca_crl: Option<Crl>,
    /// CRL of the PCK Processor or Platform CA (revokes PCK certificates).
    pub pck_crl: Option<Crl>,
    /// The PCK CRL's issuer chain (may be empty: the quote's chain holds the PCK CA).
    pub pck_crl_chain: Vec<Certificate>,
    digest: [u8; 32],
}

/// Intel PCS responses, as bytes of the files (see [`Collateral::from_pcs`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct PcsFiles<'a> {
    /// `tcbInfo.json`: `{"tcbInfo":{...},"signature":"<hex>"}`.
    pub tcb_info: &'a [u8],
    /// `enclaveIdentity.json`: `{"enclaveIdentity":{...},"signature":"<hex>"}`.
    pub enclave_identity: &'a [u8],
    /// `tcb_info_issuer_chain.pem`.
    pub tcb_info_issuer_chain: &'a [u8],
    /// `qe_identity_issuer_chain.pem`.
    pub qe_identity_issuer_chain: &'a [u8],
    /// `pck_crl.der` (DER, PEM or hex).
    pub pck_crl: Option<&'a [u8]>,
    /// `pck_crl_issuer_chain.pem`.
    pub pck_crl_issuer_chain: Option<&'a [u8]>,
    /// `root_ca_crl.der` (DER, PEM or hex).
    pub root_ca_crl: Option<&'a [u8]>,
}

fn field_err(field: &str, reason: impl std::fmt::Display) -> CollateralError {
    CollateralError::Field {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

fn sig64(hex_text: &str, field: &str) -> Result<[u8; 64], CollateralError> {
    let b = hex::decode(hex_text.trim()).map_err(|e| field_err(field, format!("not hex: {e}")))?;
    b.try_into()
        .map_err(|b: Vec<u8>| field_err(field, format!("{} bytes, expected 64 (r‖s)", b.len())))
}

fn chain(pem: &[u8], field: &str) -> Result<Vec<Certificate>, CollateralError> {
    Ok(Certificate::pem_chain(pem, field)?)
}

fn optional_crl(bytes: Option<&[u8]>, field: &str) -> Result<Option<Crl>, CollateralError> {
    match bytes {
        Some(b) if !b.iter().all(|c| c.is_ascii_whitespace()) => Ok(Some(Crl::decode(b, field)?)),
        _ => Ok(None),
    }
}

impl Collateral {
    /// dcap-qvl's `QuoteCollateralV3` JSON (CRLs as hex of DER; `tcb_info`, `qe_identity` the
    /// signed text; signatures as hex).
    pub fn from_qvl_json(json: &[u8]) -> Result<Self, CollateralError> {
        #[derive(Deserialize)]
        struct Qvl {
            #[serde(default)]
            pck_crl_issuer_chain: Option<String>,
            #[serde(default)]
            root_ca_crl: Option<String>,
            #[serde(default)]
            pck_crl: Option<String>,
            tcb_info_issuer_chain: String,
            tcb_info: String,
            tcb_info_signature: String,
            qe_identity_issuer_chain: String,
            qe_identity: String,
            qe_identity_signature: String,
        }
        let q: Qvl = serde_json::from_slice(json).map_err(|e| {
            field_err(
                "collateral JSON",
                format!("not dcap-qvl's QuoteCollateralV3: {e}"),
            )
        })?;
        let hex_crl = |v: &Option<String>, field: &str| -> Result<Option<Crl>, CollateralError> {
            optional_crl(v.as_deref().map(str::as_bytes), field)
        };
        Ok(Self::assemble(
            q.tcb_info,
            sig64(&q.tcb_info_signature, "tcb_info_signature")?,
            chain(q.tcb_info_issuer_chain.as_bytes(), "tcb_info_issuer_chain")?,
            q.qe_identity,
            sig64(&q.qe_identity_signature, "qe_identity_signature")?,
            chain(
                q.qe_identity_issuer_chain.as_bytes(),
                "qe_identity_issuer_chain",
            )?,
            hex_crl(&q.root_ca_crl, "root_ca_crl")?,
            hex_crl(&q.pck_crl, "pck_crl")?,
            match &q.pck_crl_issuer_chain {
                Some(p) if !p.trim().is_empty() => chain(p.as_bytes(), "pck_crl_issuer_chain")?,
                _ => Vec::new(),
            },
        ))
    }

    /// Intel PCS responses. The signed text of `tcbInfo` / `enclaveIdentity` is taken verbatim
    /// from the file (never re-serialised).
    pub fn from_pcs(files: &PcsFiles<'_>) -> Result<Self, CollateralError> {
        let (tcb_text, tcb_sig) = pcs_signed(files.tcb_info, "tcbInfo", "tcbInfo.json")?;
        let (qe_text, qe_sig) = pcs_signed(
            files.enclave_identity,
            "enclaveIdentity",
            "enclaveIdentity.json",
        )?;
        Ok(Self::assemble(
            tcb_text,
            tcb_sig,
            chain(files.tcb_info_issuer_chain, "tcb_info_issuer_chain.pem")?,
            qe_text,
            qe_sig,
            chain(
                files.qe_identity_issuer_chain,
                "qe_identity_issuer_chain.pem",
            )?,
            optional_crl(files.root_ca_crl, "root_ca_crl.der")?,
            optional_crl(files.pck_crl, "pck_crl.der")?,
            match files.pck_crl_issuer_chain {
                Some(p) if !p.iter().all(|c| c.is_ascii_whitespace()) => {
                    chain(p, "pck_crl_issuer_chain.pem")?
                }
                _ => Vec::new(),
            },
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        tcb_info_text: String,
        tcb_info_signature: [u8; 64],
        tcb_info_chain: Vec<Certificate>,
        qe_identity_text: String,
        qe_identity_signature: [u8; 64],
        qe_identity_chain: Vec<Certificate>,
        root_ca_crl: Option<Crl>,
        pck_crl: Option<Crl>,
        pck_crl_chain: Vec<Certificate>,
    ) -> Self {
        let mut h = openssl::sha::Sha256::new();
        let mut part = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        part(tcb_info_text.as_bytes());
        part(&tcb_info_signature);
        tcb_info_chain.iter().for_each(|c| part(c.der()));
        part(b"|");
        part(qe_identity_text.as_bytes());
        part(&qe_identity_signature);
        qe_identity_chain.iter().for_each(|c| part(c.der()));
        part(b"|");
        part(&root_ca_crl.as_ref().map(|c| c.digest()).unwrap_or_default());
        part(&pck_crl.as_ref().map(|c| c.digest()).unwrap_or_default());
        pck_crl_chain.iter().for_each(|c| part(c.der()));
        Collateral {
            tcb_info_text,
            tcb_info_signature,
            tcb_info_chain,
            qe_identity_text,
            qe_identity_signature,
            qe_identity_chain,
            root_ca_crl,
            pck_crl,
            pck_crl_chain,
            digest: h.finish(),
        }
    }

    /// SHA-256 over every part (the verifier's cache key).
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
}

/// `{"<key>":{...},"signature":"<hex>"}` -> (exact text of the object, signature).
fn pcs_signed(json: &[u8], key: &str, file: &str) -> Result<(String, [u8; 64]), CollateralError> {
    let map: std::collections::BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(json).map_err(|e| field_err(file, e))?;
    let text = map
        .get(key)
        .ok_or_else(|| field_err(file, format!("no \"{key}\" object")))?
        .get()
        .to_string();
    if !text.starts_with('{') {
        return Err(field_err(file, format!("\"{key}\" is not an object")));
    }
    let sig: String = map
        .get("signature")
        .ok_or_else(|| field_err(file, "no \"signature\""))
        .and_then(|v| serde_json::from_str(v.get()).map_err(|e| field_err(file, e)))?;
    Ok((text, sig64(&sig, &format!("{file} signature"))?))
}

fn hex_n<const N: usize>(s: &str, field: &str) -> Result<[u8; N], CollateralError> {
    let b = hex::decode(s).map_err(|e| field_err(field, format!("not hex: {e}")))?;
    b.try_into()
        .map_err(|b: Vec<u8>| field_err(field, format!("{} bytes, expected {N}", b.len())))
}

fn date(s: &str, field: &str) -> Result<u64, CollateralError> {
    parse_rfc3339(s).map_err(|e| field_err(field, e))
}

/// One level of `tcbLevels`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcbLevel {
    /// SGX TCB component SVNs.
    pub sgx_components: [u8; 16],
    /// TDX TCB component SVNs (TDX TCB info only).
    pub tdx_components: Option<[u8; 16]>,
    /// PCESVN.
    pub pce_svn: u16,
    /// tcbDate.
    pub tcb_date: String,
    /// tcbStatus.
    pub status: TcbStatus,
    /// advisoryIDs.
    pub advisory_ids: Vec<String>,
}

/// A TDX module identity (`tdxModule` or an entry of `tdxModuleIdentities`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdxModuleIdentity {
    /// `TDX_01`, ... (empty for the base `tdxModule`).
    pub id: String,
    /// Expected MRSIGNERSEAM.
    pub mrsigner: [u8; 48],
    /// Expected SEAMATTRIBUTES.
    pub attributes: [u8; 8],
    /// Mask for SEAMATTRIBUTES.
    pub attributes_mask: [u8; 8],
    /// `(isvsvn, status, advisory ids, tcbDate)`, highest first.
    pub tcb_levels: Vec<(u8, TcbStatus, Vec<String>, String)>,
}

/// TCB info, read after its signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcbInfo {
    /// "SGX" or "TDX".
    pub id: String,
    /// 2 or 3.
    pub version: u32,
    /// issueDate, Unix seconds.
    pub issue_date: u64,
    /// nextUpdate, Unix seconds.
    pub next_update: u64,
    /// FMSPC.
    pub fmspc: [u8; 6],
    /// PCE-ID.
    pub pce_id: [u8; 2],
    /// tcbEvaluationDataNumber.
    pub tcb_evaluation_data_number: u32,
    /// Levels in Intel QVL's order (highest first).
    pub levels: Vec<TcbLevel>,
    /// `tdxModule`.
    pub tdx_module: Option<TdxModuleIdentity>,
    /// `tdxModuleIdentities`.
    pub tdx_module_identities: Vec<TdxModuleIdentity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTcbInfo {
    id: Option<String>,
    version: u32,
    issue_date: String,
    next_update: String,
    fmspc: String,
    pce_id: String,
    tcb_evaluation_data_number: Option<u32>,
    tcb_levels: Vec<RawTcbLevel>,
    tdx_module: Option<RawModule>,
    #[serde(default)]
    tdx_module_identities: Vec<RawModule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTcbLevel {
    tcb: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    tcb_date: String,
    tcb_status: String,
    #[serde(rename = "advisoryIDs", default)]
    advisory_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawModule {
    #[serde(default)]
    id: String,
    mrsigner: String,
    attributes: String,
    attributes_mask: String,
    #[serde(default)]
    tcb_levels: Vec<RawModuleLevel>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawModuleLevel {
    tcb: RawIsvSvn,
    #[serde(default)]
    tcb_date: String,
    tcb_status: String,
    #[serde(rename = "advisoryIDs", default)]
    advisory_ids: Vec<String>,
}

#[derive(Deserialize)]
struct RawIsvSvn {
    isvsvn: u16,
}

fn components(
    v: Option<&serde_json::Value>,
    field: &str,
) -> Result<Option<[u8; 16]>, CollateralError> {
    let Some(v) = v else { return Ok(None) };
    let arr = v
        .as_array()
        .ok_or_else(|| field_err(field, "not an array"))?;
    if arr.len() != 16 {
        return Err(field_err(
            field,
            format!("{} components, expected 16", arr.len()),
        ));
    }
    let mut out = [0u8; 16];
    for (o, c) in out.iter_mut().zip(arr) {
        *o = c
            .get("svn")
            .and_then(|s| s.as_u64())
            .and_then(|s| u8::try_from(s).ok())
            .ok_or_else(|| field_err(field, "component without an svn of 0..255"))?;
    }
    Ok(Some(out))
}

fn module(m: RawModule, field: &str) -> Result<TdxModuleIdentity, CollateralError> {
    let mut tcb_levels = Vec::new();
    for l in m.tcb_levels {
        let isvsvn =
            u8::try_from(l.tcb.isvsvn).map_err(|_| field_err(field, "isvsvn above 255"))?;
        tcb_levels.push((
            isvsvn,
            TcbStatus::parse(&l.tcb_status).map_err(|e| field_err(field, e))?,
            l.advisory_ids,
            l.tcb_date,
        ));
    }
    // Highest first, as Intel's QVL orders them.
    tcb_levels.sort_by_key(|l| std::cmp::Reverse(l.0));
    Ok(TdxModuleIdentity {
        id: m.id,
        mrsigner: hex_n(&m.mrsigner, &format!("{field}.mrsigner"))?,
        attributes: hex_n(&m.attributes, &format!("{field}.attributes"))?,
        attributes_mask: hex_n(&m.attributes_mask, &format!("{field}.attributesMask"))?,
        tcb_levels,
    })
}

impl TcbInfo {
    /// Read the `tcbInfo` object (versions 2 and 3).
    pub fn parse(text: &str) -> Result<Self, CollateralError> {
        let raw: RawTcbInfo = serde_json::from_str(text).map_err(|e| field_err("tcbInfo", e))?;
        let id = raw.id.unwrap_or_else(|| "SGX".to_string());
        let mut levels = Vec::new();
        for (i, l) in raw.tcb_levels.into_iter().enumerate() {
            let f = format!("tcbInfo.tcbLevels[{i}]");
            let sgx_components = match components(l.tcb.get("sgxtcbcomponents"), &f)? {
                Some(c) => c,
                None => {
                    // Version 2: sgxtcbcomp01svn .. sgxtcbcomp16svn.
                    let mut c = [0u8; 16];
                    for (k, o) in c.iter_mut().enumerate() {
                        let key = format!("sgxtcbcomp{:02}svn", k + 1);
                        *o = l
                            .tcb
                            .get(&key)
                            .and_then(|v| v.as_u64())
                            .and_then(|v| u8::try_from(v).ok())
                            .ok_or_else(|| field_err(&f, format!("no {key}")))?;
                    }
                    c
                }
            };
            let tdx_components = components(l.tcb.get("tdxtcbcomponents"), &f)?;
            let pce_svn = l
                .tcb
                .get("pcesvn")
                .and_then(|v| v.as_u64())
                .and_then(|v| u16::try_from(v).ok())
                .ok_or_else(|| field_err(&f, "no pcesvn"))?;
            levels.push(TcbLevel {
                sgx_components,
                tdx_components,
                pce_svn,
                tcb_date: l.tcb_date,
                status: TcbStatus::parse(&l.tcb_status).map_err(|e| field_err(&f, e))?,
                advisory_ids: l.advisory_ids,
            });
        }
        // Intel's QVL keeps levels in a set ordered by SGX components, then PCESVN, then TDX
        // components, highest first; matching takes the first level in that order.
        let tdx = id == "TDX";
        levels.sort_by(|a, b| {
            b.sgx_components
                .cmp(&a.sgx_components)
                .then(b.pce_svn.cmp(&a.pce_svn))
                .then_with(|| {
                    if tdx {
                        b.tdx_components.cmp(&a.tdx_components)
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
        });
        let tdx_module = raw
            .tdx_module
            .map(|m| module(m, "tcbInfo.tdxModule"))
            .transpose()?;
        let tdx_module_identities = raw
            .tdx_module_identities
            .into_iter()
            .map(|m| module(m, "tcbInfo.tdxModuleIdentities"))
            .collect::<Result<_, _>>()?;
        Ok(TcbInfo {
            id,
            version: raw.version,
            issue_date: date(&raw.issue_date, "tcbInfo.issueDate")?,
            next_update: date(&raw.next_update, "tcbInfo.nextUpdate")?,
            fmspc: hex_n(&raw.fmspc, "tcbInfo.fmspc")?,
            pce_id: hex_n(&raw.pce_id, "tcbInfo.pceId")?,
            tcb_evaluation_data_number: raw.tcb_evaluation_data_number.unwrap_or(0),
            levels,
            tdx_module,
            tdx_module_identities,
        })
    }
}

/// QE identity, read after its signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QeIdentity {
    /// "QE" (SGX) or "TD_QE" (TDX).
    pub id: String,
    /// 2.
    pub version: u32,
    /// issueDate, Unix seconds.
    pub issue_date: u64,
    /// nextUpdate, Unix seconds.
    pub next_update: u64,
    /// MISCSELECT.
    pub miscselect: u32,
    /// Mask for MISCSELECT.
    pub miscselect_mask: u32,
    /// ATTRIBUTES.
    pub attributes: [u8; 16],
    /// Mask for ATTRIBUTES.
    pub attributes_mask: [u8; 16],
    /// MRSIGNER.
    pub mrsigner: [u8; 32],
    /// ISVPRODID.
    pub isvprodid: u16,
    /// `(isvsvn, status, advisory ids, tcbDate)` in Intel's order (highest isvsvn first).
    pub tcb_levels: Vec<(u16, TcbStatus, Vec<String>, String)>,
}

impl QeIdentity {
    /// Read the `enclaveIdentity` object.
    pub fn parse(text: &str) -> Result<Self, CollateralError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            id: String,
            version: u32,
            issue_date: String,
            next_update: String,
            miscselect: String,
            miscselect_mask: String,
            attributes: String,
            attributes_mask: String,
            mrsigner: String,
            isvprodid: u16,
            tcb_levels: Vec<RawModuleLevel>,
        }
        let r: Raw = serde_json::from_str(text).map_err(|e| field_err("enclaveIdentity", e))?;
        let mut tcb_levels = Vec::new();
        for l in r.tcb_levels {
            tcb_levels.push((
                l.tcb.isvsvn,
                TcbStatus::parse(&l.tcb_status).map_err(|e| field_err("enclaveIdentity", e))?,
                l.advisory_ids,
                l.tcb_date,
            ));
        }
        tcb_levels.sort_by_key(|l| std::cmp::Reverse(l.0));
        Ok(QeIdentity {
            id: r.id,
            version: r.version,
            issue_date: date(&r.issue_date, "enclaveIdentity.issueDate")?,
            next_update: date(&r.next_update, "enclaveIdentity.nextUpdate")?,
            miscselect: u32::from_le_bytes(hex_n(&r.miscselect, "miscselect")?),
            miscselect_mask: u32::from_le_bytes(hex_n(&r.miscselect_mask, "miscselectMask")?),
            attributes: hex_n(&r.attributes, "attributes")?,
            attributes_mask: hex_n(&r.attributes_mask, "attributesMask")?,
            mrsigner: hex_n(&r.mrsigner, "mrsigner")?,
            isvprodid: r.isvprodid,
            tcb_levels,
        })
    }
}
