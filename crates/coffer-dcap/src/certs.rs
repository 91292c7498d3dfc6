//! X.509 certificates and CRLs of Intel's SGX PKI: parsing (`x509-cert`), the SGX extension of PCK
//! certificates, and ECDSA P-256/SHA-256 signatures (`openssl`) over the TBS bytes as received.

use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, OctetStringRef};
use der::{Decode, Encode, Tag, Tagged};
use openssl::ec::EcKey;
use openssl::ecdsa::EcdsaSig;
use openssl::pkey::{PKey, Public};
use serde::Serialize;

use crate::error::CertError;

/// ecdsa-with-SHA256.
pub const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// OIDs of the SGX extension (arc 1.2.840.113741.1.13.1).
pub mod oid {
    use der::asn1::ObjectIdentifier;
    /// The SGX extension.
    pub const SGX_EXTENSION: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1");
    /// PPID (OCTET STRING, 16).
    pub const PPID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1.1");
    /// TCB (SEQUENCE of component SVNs, PCESVN, CPUSVN).
    pub const TCB: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1.2");
    /// PCESVN inside TCB.
    pub const PCESVN: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1.2.17");
    /// CPUSVN inside TCB.
    pub const CPUSVN: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1.2.18");
    /// PCE-ID (OCTET STRING, 2).
    pub const PCEID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1.3");
    /// FMSPC (OCTET STRING, 6).
    pub const FMSPC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1.4");
    /// SGX type (ENUMERATED: 0 standard, 1 scalable, 2 scalable with integrity).
    pub const SGX_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113741.1.13.1.5");
}

/// The outer structure of a certificate or CRL, with the TBS kept as received.
#[derive(der::Sequence)]
struct Signed<'a> {
    tbs: AnyRef<'a>,
    algorithm: x509_cert::spki::AlgorithmIdentifierRef<'a>,
    signature: BitStringRef<'a>,
}

/// What a signed structure keeps for verification.
#[derive(Clone)]
struct SignedParts {
    tbs_der: Vec<u8>,
    algorithm: ObjectIdentifier,
    signature: Vec<u8>,
}

impl SignedParts {
    fn parse(der: &[u8], context: &str) -> Result<Self, CertError> {
        let raw = Signed::from_der(der).map_err(|e| parse_err(context, e))?;
        Ok(SignedParts {
            tbs_der: raw.tbs.to_der().map_err(|e| parse_err(context, e))?,
            algorithm: raw.algorithm.oid,
            signature: raw
                .signature
                .as_bytes()
                .ok_or_else(|| parse_err(context, "signature BIT STRING has unused bits"))?
                .to_vec(),
        })
    }

    /// ECDSA P-256 / SHA-256 by `key`. `Ok(false)`: well-formed, does not verify (or another
    /// algorithm).
    fn verify(&self, key: &EcKey<Public>) -> bool {
        if self.algorithm != OID_ECDSA_SHA256 {
            return false;
        }
        let Ok(sig) = EcdsaSig::from_der(&self.signature) else {
            return false;
        };
        let digest = openssl::sha::sha256(&self.tbs_der);
        sig.verify(&digest, key).unwrap_or(false)
    }
}

fn parse_err(context: &str, e: impl std::fmt::Display) -> CertError {
    CertError::Parse {
        context: context.to_string(),
        reason: e.to_string(),
    }
}

fn common_name(name: &x509_cert::name::Name) -> String {
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == OID_CN {
                return String::from_utf8_lossy(atv.value.value()).into_owned();
            }
        }
    }
    String::new()
}

/// A parsed certificate with its DER bytes, SHA-256 fingerprint and (EC P-256) key.
#[derive(Clone)]
pub struct Certificate {
    der: Vec<u8>,
    signed: SignedParts,
    cert: x509_cert::Certificate,
    fingerprint: [u8; 32],
    subject_cn: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Certificate({}, {})",
            self.subject_cn,
            hex::encode(self.fingerprint)
        )
    }
}

/// Every base64 body of `-----BEGIN {label}-----` blocks in `text`.
///
/// Written here rather than with `x509_cert`'s PEM loader, which panics on truncated input.
pub(crate) fn pem_blocks(
    text: &[u8],
    label: &str,
    context: &str,
) -> Result<Vec<Vec<u8>>, CertError> {
    use base64::Engine as _;
    let begin = format!("-----BEGIN {label}-----");
    let end_marker = format!("-----END {label}-----");
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    let mut rest: &str = &text;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let end = after
            .find(&end_marker)
            .ok_or_else(|| parse_err(context, format!("PEM block without END {label}")))?;
        let body: String = after[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| parse_err(context, format!("PEM body is not base64: {e}")))?;
        out.push(der);
        rest = &after[end + end_marker.len()..];
    }
    Ok(out)
}

impl Certificate {
    /// Parse DER.
    pub fn from_der(der: &[u8], context: &str) -> Result<Self, CertError> {
        let signed = SignedParts::parse(der, context)?;
        let cert = x509_cert::Certificate::from_der(der).map_err(|e| parse_err(context, e))?;
        let subject_cn = common_name(&cert.tbs_certificate.subject);
        Ok(Certificate {
            der: der.to_vec(),
            signed,
            fingerprint: openssl::sha::sha256(der),
            cert,
            subject_cn,
        })
    }

    /// Parse every `CERTIFICATE` block of a PEM text (other text, and a trailing NUL, ignored).
    pub fn pem_chain(pem: &[u8], context: &str) -> Result<Vec<Self>, CertError> {
        let blocks = pem_blocks(pem, "CERTIFICATE", context)?;
        if blocks.is_empty() {
            return Err(CertError::Source(format!(
                "{context}: no PEM certificate found"
            )));
        }
        blocks.iter().map(|d| Self::from_der(d, context)).collect()
    }

    /// One certificate, DER or PEM.
    pub fn from_der_or_pem(bytes: &[u8], context: &str) -> Result<Self, CertError> {
        if bytes.first() == Some(&0x30) {
            return Self::from_der(bytes, context);
        }
        let mut certs = Self::pem_chain(bytes, context)?;
        if certs.len() != 1 {
            return Err(CertError::Source(format!(
                "{context}: expected one certificate, found {}",
                certs.len()
            )));
        }
        Ok(certs.remove(0))
    }

    /// DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// SHA-256 of the DER.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Subject common name.
    pub fn subject_cn(&self) -> &str {
        &self.subject_cn
    }

    /// Issuer common name.
    pub fn issuer_cn(&self) -> String {
        common_name(&self.cert.tbs_certificate.issuer)
    }

    /// Subject name, DER.
    pub fn subject_der(&self) -> Vec<u8> {
        self.cert
            .tbs_certificate
            .subject
            .to_der()
            .unwrap_or_default()
    }

    /// Issuer name, DER.
    pub fn issuer_der(&self) -> Vec<u8> {
        self.cert
            .tbs_certificate
            .issuer
            .to_der()
            .unwrap_or_default()
    }

    /// Serial number (the INTEGER's content bytes).
    pub fn serial(&self) -> &[u8] {
        self.cert.tbs_certificate.serial_number.as_bytes()
    }

    /// Whether subject and issuer are the same name.
    pub fn is_self_issued(&self) -> bool {
        self.cert.tbs_certificate.subject == self.cert.tbs_certificate.issuer
    }

    /// Whether `issuer`'s subject is this certificate's issuer.
    pub fn names_issuer(&self, issuer: &Certificate) -> bool {
        self.cert.tbs_certificate.issuer == issuer.cert.tbs_certificate.subject
    }

    /// Validity period as Unix seconds (not_before, not_after).
    pub fn validity(&self) -> (u64, u64) {
        let v = &self.cert.tbs_certificate.validity;
        (
            v.not_before.to_unix_duration().as_secs(),
            v.not_after.to_unix_duration().as_secs(),
        )
    }

    /// The subject key, which must be EC P-256.
    pub fn ec_key(&self) -> Result<EcKey<Public>, CertError> {
        let err = |e: &dyn std::fmt::Display| CertError::Parse {
            context: format!("public key of {}", self.subject_cn),
            reason: e.to_string(),
        };
        let spki = self
            .cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| err(&e))?;
        let key = PKey::public_key_from_der(&spki)
            .and_then(|k| k.ec_key())
            .map_err(|e| err(&e))?;
        if key.group().curve_name() != Some(openssl::nid::Nid::X9_62_PRIME256V1) {
            return Err(err(&"not a P-256 key"));
        }
        Ok(key)
    }

    /// Whether `issuer`'s key signed this certificate (ECDSA P-256 / SHA-256).
    pub fn is_signed_by(&self, issuer: &Certificate) -> bool {
        match issuer.ec_key() {
            Ok(key) => self.signed.verify(&key),
            Err(_) => false,
        }
    }

    fn extension(&self, oid: &ObjectIdentifier) -> Option<&[u8]> {
        self.cert
            .tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|e| &e.extn_id == oid)
            .map(|e| e.extn_value.as_bytes())
    }

    /// Read the SGX extension of a PCK certificate.
    pub fn sgx_extension(&self) -> Result<SgxExtension, CertError> {
        let value = self
            .extension(&oid::SGX_EXTENSION)
            .ok_or_else(|| CertError::Extension {
                oid: oid::SGX_EXTENSION.to_string(),
                reason: format!("{} has no SGX extension", self.subject_cn),
            })?;
        SgxExtension::from_der(value)
    }
}

/// `SEQUENCE { OID, value }`, the element of the SGX extension and of its TCB.
#[derive(der::Sequence)]
struct Entry<'a> {
    id: ObjectIdentifier,
    value: AnyRef<'a>,
}

/// What a PCK certificate says of its platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SgxExtension {
    /// PPID.
    #[serde(serialize_with = "hex_ser")]
    pub ppid: Vec<u8>,
    /// SGX TCB component SVNs 1..16.
    pub components: [u8; 16],
    /// PCESVN.
    pub pce_svn: u16,
    /// CPUSVN.
    #[serde(serialize_with = "hex_ser")]
    pub cpu_svn: [u8; 16],
    /// PCE-ID.
    #[serde(serialize_with = "hex_ser")]
    pub pce_id: [u8; 2],
    /// FMSPC.
    #[serde(serialize_with = "hex_ser")]
    pub fmspc: [u8; 6],
    /// SGX type (0 standard, 1 scalable, 2 scalable with integrity).
    pub sgx_type: u8,
}

fn hex_ser<S: serde::Serializer, T: AsRef<[u8]>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v.as_ref()))
}

impl SgxExtension {
    /// Decode the extension value (a SEQUENCE of `{OID, value}`).
    pub fn from_der(value: &[u8]) -> Result<Self, CertError> {
        let err = |id: &ObjectIdentifier, reason: String| CertError::Extension {
            oid: id.to_string(),
            reason,
        };
        let entries: Vec<Entry<'_>> =
            Vec::from_der(value).map_err(|e| err(&oid::SGX_EXTENSION, e.to_string()))?;
        let find = |id: &ObjectIdentifier| -> Result<AnyRef<'_>, CertError> {
            let mut found = entries.iter().filter(|e| &e.id == id);
            let first = found.next().ok_or_else(|| err(id, "missing".into()))?;
            if found.next().is_some() {
                return Err(err(id, "present twice".into()));
            }
            Ok(first.value)
        };
        let octets =
            |id: &ObjectIdentifier, v: AnyRef<'_>, len: usize| -> Result<Vec<u8>, CertError> {
                let s: OctetStringRef<'_> = v.decode_as().map_err(|e| err(id, e.to_string()))?;
                if s.as_bytes().len() != len {
                    return Err(err(
                        id,
                        format!("{} bytes, expected {len}", s.as_bytes().len()),
                    ));
                }
                Ok(s.as_bytes().to_vec())
            };
        let ppid = octets(&oid::PPID, find(&oid::PPID)?, 16)?;
        let pce_id = octets(&oid::PCEID, find(&oid::PCEID)?, 2)?;
        let fmspc = octets(&oid::FMSPC, find(&oid::FMSPC)?, 6)?;
        let sgx_type_any = find(&oid::SGX_TYPE)?;
        if sgx_type_any.tag() != Tag::Enumerated || sgx_type_any.value().len() != 1 {
            return Err(err(&oid::SGX_TYPE, "not a one-byte ENUMERATED".into()));
        }
        let sgx_type = sgx_type_any.value()[0];

        let tcb_any = find(&oid::TCB)?;
        let tcb: Vec<Entry<'_>> = tcb_any
            .decode_as()
            .map_err(|e| err(&oid::TCB, e.to_string()))?;
        let tcb_find = |id: &ObjectIdentifier| -> Result<AnyRef<'_>, CertError> {
            let mut found = tcb.iter().filter(|e| &e.id == id);
            let first = found.next().ok_or_else(|| err(id, "missing".into()))?;
            if found.next().is_some() {
                return Err(err(id, "present twice".into()));
            }
            Ok(first.value)
        };
        let mut components = [0u8; 16];
        for (i, c) in components.iter_mut().enumerate() {
            let id = oid::TCB
                .push_arc(i as u32 + 1)
                .map_err(|e| err(&oid::TCB, e.to_string()))?;
            *c = tcb_find(&id)?
                .decode_as::<u8>()
                .map_err(|e| err(&id, e.to_string()))?;
        }
        let pce_svn = tcb_find(&oid::PCESVN)?
            .decode_as::<u16>()
            .map_err(|e| err(&oid::PCESVN, e.to_string()))?;
        let cpu_svn = octets(&oid::CPUSVN, tcb_find(&oid::CPUSVN)?, 16)?;
        Ok(SgxExtension {
            ppid,
            components,
            pce_svn,
            cpu_svn: cpu_svn.try_into().unwrap_or([0; 16]),
            pce_id: pce_id.try_into().unwrap_or([0; 2]),
            fmspc: fmspc.try_into().unwrap_or([0; 6]),
            sgx_type,
        })
    }
}

/// A certificate revocation list with the TBS kept as received.
#[derive(Clone)]
pub struct Crl {
    signed: SignedParts,
    crl: x509_cert::crl::CertificateList,
    issuer_cn: String,
    digest: [u8; 32],
}

impl std::fmt::Debug for Crl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Crl({}, {} revoked)",
            self.issuer_cn,
            self.revoked_count()
        )
    }
}

impl Crl {
    /// Parse DER, PEM (`X509 CRL`) or hex of DER.
    pub fn decode(bytes: &[u8], context: &str) -> Result<Self, CertError> {
        if bytes.first() == Some(&0x30) {
            return Self::from_der(bytes, context);
        }
        let blocks = pem_blocks(bytes, "X509 CRL", context)?;
        if let Some(der) = blocks.first() {
            return Self::from_der(der, context);
        }
        let text: String = String::from_utf8_lossy(bytes)
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = hex::decode(text.trim_start_matches("0x"))
            .map_err(|_| parse_err(context, "neither DER, PEM nor hex of a CRL"))?;
        Self::from_der(&der, context)
    }

    /// Parse DER.
    pub fn from_der(der: &[u8], context: &str) -> Result<Self, CertError> {
        let signed = SignedParts::parse(der, context)?;
        let crl =
            x509_cert::crl::CertificateList::from_der(der).map_err(|e| parse_err(context, e))?;
        Ok(Crl {
            issuer_cn: common_name(&crl.tbs_cert_list.issuer),
            signed,
            crl,
            digest: openssl::sha::sha256(der),
        })
    }

    /// SHA-256 of the DER.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Issuer common name.
    pub fn issuer_cn(&self) -> &str {
        &self.issuer_cn
    }

    /// Whether `cert` is the issuer by name.
    pub fn named_issuer_is(&self, cert: &Certificate) -> bool {
        self.crl.tbs_cert_list.issuer == cert.cert.tbs_certificate.subject
    }

    /// Whether `issuer`'s key signed this CRL.
    pub fn is_signed_by(&self, issuer: &Certificate) -> bool {
        match issuer.ec_key() {
            Ok(key) => self.signed.verify(&key),
            Err(_) => false,
        }
    }

    /// thisUpdate and nextUpdate (Unix seconds; `u64::MAX` when there is no nextUpdate).
    pub fn window(&self) -> (u64, u64) {
        let t = &self.crl.tbs_cert_list;
        (
            t.this_update.to_unix_duration().as_secs(),
            t.next_update
                .map(|n| n.to_unix_duration().as_secs())
                .unwrap_or(u64::MAX),
        )
    }

    /// Number of revoked entries.
    pub fn revoked_count(&self) -> usize {
        self.crl
            .tbs_cert_list
            .revoked_certificates
            .as_ref()
            .map_or(0, |r| r.len())
    }

    /// Whether `cert` (issued by this CRL's issuer) is listed.
    pub fn revokes(&self, cert: &Certificate) -> bool {
        if cert.cert.tbs_certificate.issuer != self.crl.tbs_cert_list.issuer {
            return false;
        }
        self.revoked_serials().any(|s| s == cert.serial())
    }

    /// The serial numbers listed.
    pub fn revoked_serials(&self) -> impl Iterator<Item = &[u8]> {
        self.crl
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
            .map(|r| r.serial_number.as_bytes())
    }
}
