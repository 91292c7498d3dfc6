//! DCAP quotes: version 3 (SGX), version 4 (TDX, TD 1.0 body) and version 5 (SGX, TD 1.0 or
//! TD 1.5 body), parsed from the bytes as received. The bytes are kept: signatures are checked
//! over `signed_bytes()` and `qe_report_bytes()`, never over a re-encoding.
//!
//! Layout (little-endian; Intel's "ECDSA Quote Library API", Appendix A):
//!
//! ```text
//! header(48) | body | u32 sig_data_len | sig_data | (trailing bytes, ignored)
//! body v3: SGX REPORT_BODY(384)          v4: TD10(584)
//!      v5: u16 body_type, u32 body_size, body (1 = SGX 384, 2 = TD10 584, 3 = TD15 648)
//! sig_data: sig(64) attestation_key(64) then
//!   v3:    qe_report(384) qe_sig(64) u16 auth_len auth u16 type=5 u32 len pck_chain_pem
//!   v4/5:  u16 type=6 u32 len { qe_report(384) qe_sig(64) u16 auth_len auth u16 type=5 u32 len pem }
//! ```

use std::ops::Range;

use serde::Serialize;

use crate::error::QuoteError;

/// Header length.
pub const HEADER_LEN: usize = 48;
/// SGX REPORT_BODY length (ISV enclave and QE reports).
pub const ENCLAVE_REPORT_LEN: usize = 384;
/// TD 1.0 report body length.
pub const TD10_LEN: usize = 584;
/// TD 1.5 report body length.
pub const TD15_LEN: usize = 648;
/// Intel's QE vendor id.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];
/// `tee_type` of SGX.
pub const TEE_TYPE_SGX: u32 = 0x00;
/// `tee_type` of TDX.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// Attestation key type ECDSA-256 with P-256.
pub const ATT_KEY_ECDSA_P256: u16 = 2;
/// Certification data type: PCK certificate chain (PEM).
pub const CERT_TYPE_PCK_CHAIN: u16 = 5;
/// Certification data type: QE report certification data.
pub const CERT_TYPE_QE_REPORT: u16 = 6;

fn hex_ser<S: serde::Serializer, T: AsRef<[u8]>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v.as_ref()))
}

/// The quote header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Header {
    /// 3, 4 or 5.
    pub version: u16,
    /// 2 = ECDSA-256 with P-256.
    pub att_key_type: u16,
    /// 0x00 SGX, 0x81 TDX (0 in v3).
    pub tee_type: u32,
    /// QE SVN (v3) / reserved.
    pub qe_svn: u16,
    /// PCE SVN (v3) / reserved.
    pub pce_svn: u16,
    /// QE vendor id (Intel: 939a7233f79c4ca9940a0db3957f0607).
    #[serde(serialize_with = "hex_ser")]
    pub qe_vendor_id: [u8; 16],
    /// User data (the first 16 bytes are the platform's QE identifier).
    #[serde(serialize_with = "hex_ser")]
    pub user_data: [u8; 20],
}

/// An SGX REPORT_BODY (the ISV enclave's in SGX quotes, and the QE's in every quote).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnclaveReport {
    /// CPUSVN.
    #[serde(serialize_with = "hex_ser")]
    pub cpu_svn: [u8; 16],
    /// MISCSELECT.
    pub misc_select: u32,
    /// ATTRIBUTES (flags, then XFRM).
    #[serde(serialize_with = "hex_ser")]
    pub attributes: [u8; 16],
    /// MRENCLAVE.
    #[serde(serialize_with = "hex_ser")]
    pub mr_enclave: [u8; 32],
    /// MRSIGNER.
    #[serde(serialize_with = "hex_ser")]
    pub mr_signer: [u8; 32],
    /// ISVPRODID.
    pub isv_prod_id: u16,
    /// ISVSVN.
    pub isv_svn: u16,
    /// REPORT_DATA.
    #[serde(serialize_with = "hex_ser")]
    pub report_data: [u8; 64],
    /// ATTRIBUTES.DEBUG (bit 1).
    pub debug: bool,
}

/// A TD report body: TD 1.0, plus the two TD 1.5 fields when present.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TdReport {
    /// TEE_TCB_SVN: byte 0 the TDX module SVN, byte 1 its major version, then TDX TCB components.
    #[serde(serialize_with = "hex_ser")]
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM.
    #[serde(serialize_with = "hex_ser")]
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM.
    #[serde(serialize_with = "hex_ser")]
    pub mr_signer_seam: [u8; 48],
    /// SEAMATTRIBUTES.
    #[serde(serialize_with = "hex_ser")]
    pub seam_attributes: [u8; 8],
    /// TDATTRIBUTES.
    #[serde(serialize_with = "hex_ser")]
    pub td_attributes: [u8; 8],
    /// XFAM.
    #[serde(serialize_with = "hex_ser")]
    pub xfam: [u8; 8],
    /// MRTD.
    #[serde(serialize_with = "hex_ser")]
    pub mr_td: [u8; 48],
    /// MRCONFIGID.
    #[serde(serialize_with = "hex_ser")]
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    #[serde(serialize_with = "hex_ser")]
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    #[serde(serialize_with = "hex_ser")]
    pub mr_owner_config: [u8; 48],
    /// RTMR0.
    #[serde(serialize_with = "hex_ser")]
    pub rtmr0: [u8; 48],
    /// RTMR1.
    #[serde(serialize_with = "hex_ser")]
    pub rtmr1: [u8; 48],
    /// RTMR2.
    #[serde(serialize_with = "hex_ser")]
    pub rtmr2: [u8; 48],
    /// RTMR3.
    #[serde(serialize_with = "hex_ser")]
    pub rtmr3: [u8; 48],
    /// REPORTDATA.
    #[serde(serialize_with = "hex_ser")]
    pub report_data: [u8; 64],
    /// TEE_TCB_SVN_2 (TD 1.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tee_tcb_svn2: Option<String>,
    /// MRSERVICETD (TD 1.5), hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mr_servicetd: Option<String>,
    /// TDATTRIBUTES.DEBUG (bit 0).
    pub debug: bool,
}

/// The attested body of a quote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum Body {
    /// An SGX enclave report.
    #[serde(rename = "sgx")]
    Sgx(EnclaveReport),
    /// A TD 1.0 report.
    #[serde(rename = "td10")]
    Td10(TdReport),
    /// A TD 1.5 report.
    #[serde(rename = "td15")]
    Td15(TdReport),
}

impl Body {
    /// REPORT_DATA of the enclave or TD.
    pub fn report_data(&self) -> &[u8; 64] {
        match self {
            Body::Sgx(r) => &r.report_data,
            Body::Td10(t) | Body::Td15(t) => &t.report_data,
        }
    }

    /// The TD report, for TDX bodies.
    pub fn td(&self) -> Option<&TdReport> {
        match self {
            Body::Sgx(_) => None,
            Body::Td10(t) | Body::Td15(t) => Some(t),
        }
    }
}

/// Everything of a quote, with the received bytes and the offsets of what is signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    bytes: Vec<u8>,
    signed: Range<usize>,
    qe_report_range: Range<usize>,
    pck_chain_range: Range<usize>,
    qe_auth_range: Range<usize>,
    /// Header fields.
    pub header: Header,
    /// The attested body.
    pub body: Body,
    /// ECDSA signature over the signed region, r‖s big-endian.
    pub signature: [u8; 64],
    /// Attestation public key x‖y (P-256).
    pub attestation_key: [u8; 64],
    /// The QE's report.
    pub qe_report: EnclaveReport,
    /// ECDSA signature of the QE report by the PCK key, r‖s.
    pub qe_report_signature: [u8; 64],
    /// Bytes after the signature data (some TDX guests pad quotes with zeros); not covered by any
    /// signature and ignored.
    pub trailing_bytes: usize,
}

/// A bounds-checked reader over a slice, with absolute offsets for error messages.
struct Reader<'a> {
    data: &'a [u8],
    base: usize,
    pos: usize,
    container: &'static str,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], base: usize, container: &'static str) -> Self {
        Reader {
            data,
            base,
            pos: 0,
            container,
        }
    }

    fn take(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<(&'a [u8], Range<usize>), QuoteError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(QuoteError::Truncated {
                field,
                start: self.base + self.pos,
                end: self.base.saturating_add(self.pos).saturating_add(n),
                container: self.container,
                len: self.data.len(),
            });
        };
        let range = self.base + self.pos..self.base + end;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok((out, range))
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, QuoteError> {
        let (b, _) = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, QuoteError> {
        let (b, _) = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], QuoteError> {
        let (b, _) = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn len_prefixed_u32(
        &mut self,
        field: &'static str,
    ) -> Result<(&'a [u8], Range<usize>), QuoteError> {
        let n = self.u32(field)? as usize;
        self.take(n, field)
    }

    fn rest(&self) -> usize {
        self.data.len() - self.pos
    }
}

fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl EnclaveReport {
    /// Decode a 384-byte REPORT_BODY.
    pub fn from_bytes(b: &[u8]) -> Result<Self, QuoteError> {
        if b.len() != ENCLAVE_REPORT_LEN {
            return Err(QuoteError::Truncated {
                field: "REPORT_BODY",
                start: 0,
                end: ENCLAVE_REPORT_LEN,
                container: "report",
                len: b.len(),
            });
        }
        let attributes: [u8; 16] = arr(b, 48);
        Ok(EnclaveReport {
            cpu_svn: arr(b, 0),
            misc_select: u32::from_le_bytes(arr(b, 16)),
            attributes,
            mr_enclave: arr(b, 64),
            mr_signer: arr(b, 128),
            isv_prod_id: le16(b, 256),
            isv_svn: le16(b, 258),
            report_data: arr(b, 320),
            debug: attributes[0] & 0x02 != 0,
        })
    }
}

impl TdReport {
    /// Decode a TD 1.0 (584 bytes) or TD 1.5 (648 bytes) body.
    pub fn from_bytes(b: &[u8]) -> Result<Self, QuoteError> {
        if b.len() != TD10_LEN && b.len() != TD15_LEN {
            return Err(QuoteError::Unsupported {
                field: "TD report body length",
                value: b.len().to_string(),
            });
        }
        let td_attributes: [u8; 8] = arr(b, 120);
        let td15 = b.len() == TD15_LEN;
        Ok(TdReport {
            tee_tcb_svn: arr(b, 0),
            mr_seam: arr(b, 16),
            mr_signer_seam: arr(b, 64),
            seam_attributes: arr(b, 112),
            td_attributes,
            xfam: arr(b, 128),
            mr_td: arr(b, 136),
            mr_config_id: arr(b, 184),
            mr_owner: arr(b, 232),
            mr_owner_config: arr(b, 280),
            rtmr0: arr(b, 328),
            rtmr1: arr(b, 376),
            rtmr2: arr(b, 424),
            rtmr3: arr(b, 472),
            report_data: arr(b, 520),
            tee_tcb_svn2: td15.then(|| hex::encode(&b[584..600])),
            mr_servicetd: td15.then(|| hex::encode(&b[600..648])),
            debug: td_attributes[0] & 0x01 != 0,
        })
    }
}

impl Quote {
    /// Parse a raw quote.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, QuoteError> {
        let mut r = Reader::new(&bytes, 0, "quote");
        let version = r.u16("version")?;
        let att_key_type = r.u16("att_key_type")?;
        let tee_type = r.u32("tee_type")?;
        let qe_svn = r.u16("qe_svn")?;
        let pce_svn = r.u16("pce_svn")?;
        let qe_vendor_id = r.array::<16>("qe_vendor_id")?;
        let user_data = r.array::<20>("user_data")?;
        let header = Header {
            version,
            att_key_type,
            tee_type,
            qe_svn,
            pce_svn,
            qe_vendor_id,
            user_data,
        };
        if att_key_type != ATT_KEY_ECDSA_P256 {
            return Err(QuoteError::Unsupported {
                field: "attestation key type",
                value: format!("{att_key_type} (only 2, ECDSA-256 with P-256)"),
            });
        }
        let body = match version {
            3 => {
                if tee_type != TEE_TYPE_SGX {
                    return Err(QuoteError::Unsupported {
                        field: "tee_type of a version 3 quote",
                        value: format!("{tee_type:#x}"),
                    });
                }
                Body::Sgx(EnclaveReport::from_bytes(
                    r.take(ENCLAVE_REPORT_LEN, "body")?.0,
                )?)
            }
            4 => {
                if tee_type != TEE_TYPE_TDX {
                    return Err(QuoteError::Unsupported {
                        field: "tee_type of a version 4 quote",
                        value: format!("{tee_type:#x}"),
                    });
                }
                Body::Td10(TdReport::from_bytes(r.take(TD10_LEN, "body")?.0)?)
            }
            5 => {
                let body_type = r.u16("body_type")?;
                let size = r.u32("body_size")? as usize;
                let (b, _) = r.take(size, "body")?;
                match (body_type, size, tee_type) {
                    (1, ENCLAVE_REPORT_LEN, TEE_TYPE_SGX) => {
                        Body::Sgx(EnclaveReport::from_bytes(b)?)
                    }
                    (2, TD10_LEN, TEE_TYPE_TDX) => Body::Td10(TdReport::from_bytes(b)?),
                    (3, TD15_LEN, TEE_TYPE_TDX) => Body::Td15(TdReport::from_bytes(b)?),
                    _ => {
                        return Err(QuoteError::Unsupported {
                            field: "v5 body (type, size, tee_type)",
                            value: format!("({body_type}, {size}, {tee_type:#x})"),
                        })
                    }
                }
            }
            v => {
                return Err(QuoteError::Unsupported {
                    field: "quote version",
                    value: format!("{v} (supported: 3, 4, 5)"),
                })
            }
        };
        let signed = 0..r.pos;
        let (sig_data, sig_range) = r.len_prefixed_u32("signature data")?;
        let trailing_bytes = r.rest();

        let mut s = Reader::new(sig_data, sig_range.start, "signature data");
        let signature = s.array::<64>("quote signature")?;
        let attestation_key = s.array::<64>("attestation key")?;
        let (qe_report_range, qe_report_signature, qe_auth_range, pck_chain_range);
        if version == 3 {
            (
                qe_report_range,
                qe_report_signature,
                qe_auth_range,
                pck_chain_range,
            ) = qe_cert_data(&mut s)?;
        } else {
            let cert_type = s.u16("certification data type")?;
            if cert_type != CERT_TYPE_QE_REPORT {
                return Err(QuoteError::Unsupported {
                    field: "certification data type",
                    value: format!("{cert_type} (version 4/5 quotes carry type 6, QE report)"),
                });
            }
            let (inner, inner_range) = s.len_prefixed_u32("QE report certification data")?;
            let mut i = Reader::new(inner, inner_range.start, "QE report certification data");
            (
                qe_report_range,
                qe_report_signature,
                qe_auth_range,
                pck_chain_range,
            ) = qe_cert_data(&mut i)?;
        }
        let qe_report = EnclaveReport::from_bytes(&bytes[qe_report_range.clone()])?;
        Ok(Quote {
            signed,
            qe_report_range,
            pck_chain_range,
            qe_auth_range,
            header,
            body,
            signature,
            attestation_key,
            qe_report,
            qe_report_signature,
            trailing_bytes,
            bytes,
        })
    }

    /// The bytes as received.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The region the attestation key signs: header and body.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes[self.signed.clone()]
    }

    /// Offsets of the signed region.
    pub fn signed_range(&self) -> Range<usize> {
        self.signed.clone()
    }

    /// The QE report as received (what the PCK key signs).
    pub fn qe_report_bytes(&self) -> &[u8] {
        &self.bytes[self.qe_report_range.clone()]
    }

    /// Offsets of the QE report.
    pub fn qe_report_range(&self) -> Range<usize> {
        self.qe_report_range.clone()
    }

    /// QE authentication data.
    pub fn qe_auth_data(&self) -> &[u8] {
        &self.bytes[self.qe_auth_range.clone()]
    }

    /// The PCK certificate chain (PEM, as received; often NUL-terminated).
    pub fn pck_chain_pem(&self) -> &[u8] {
        &self.bytes[self.pck_chain_range.clone()]
    }

    /// Whether this is a TDX quote.
    pub fn is_tdx(&self) -> bool {
        self.body.td().is_some()
    }

    /// The fields as JSON-friendly data.
    pub fn fields(&self) -> QuoteFields {
        QuoteFields {
            header: self.header.clone(),
            body: self.body.clone(),
            qe_report: self.qe_report.clone(),
            attestation_key: hex::encode(self.attestation_key),
            qe_auth_data: hex::encode(self.qe_auth_data()),
            size: self.bytes.len(),
            signed_length: self.signed.end,
            trailing_bytes: self.trailing_bytes,
        }
    }
}

/// `QE report(384) sig(64) u16 auth_len auth u16 type=5 u32 len pem`.
#[allow(clippy::type_complexity)]
fn qe_cert_data(
    r: &mut Reader<'_>,
) -> Result<(Range<usize>, [u8; 64], Range<usize>, Range<usize>), QuoteError> {
    let (_, qe_report) = r.take(ENCLAVE_REPORT_LEN, "QE report")?;
    let qe_sig = r.array::<64>("QE report signature")?;
    let auth_len = r.u16("QE authentication data length")? as usize;
    let (_, auth) = r.take(auth_len, "QE authentication data")?;
    let cert_type = r.u16("PCK certification data type")?;
    if cert_type != CERT_TYPE_PCK_CHAIN {
        return Err(QuoteError::Unsupported {
            field: "PCK certification data type",
            value: format!("{cert_type} (only 5, a PCK certificate chain, can be verified)"),
        });
    }
    let (_, pem) = r.len_prefixed_u32("PCK certificate chain")?;
    Ok((qe_report, qe_sig, auth, pem))
}

/// A quote's fields for JSON output.
#[derive(Clone, Debug, Serialize)]
pub struct QuoteFields {
    /// Header.
    pub header: Header,
    /// Body.
    pub body: Body,
    /// QE report.
    pub qe_report: EnclaveReport,
    /// Attestation key x‖y, hex.
    pub attestation_key: String,
    /// QE authentication data, hex.
    pub qe_auth_data: String,
    /// Quote length in bytes.
    pub size: usize,
    /// Length of the signed region.
    pub signed_length: usize,
    /// Ignored bytes after the signature data.
    pub trailing_bytes: usize,
}
