//! X.509 certificates of AMD's SEV-SNP key hierarchy: parsing (x509-cert), the VCEK/VLEK extensions,
//! and RSASSA-PSS chain signatures (openssl).
//!
//! Parsing is separate from the crypto: `x509-cert` reads the structure (it accepts AMD's serial
//! number 0), and the signature is checked over the TBS bytes exactly as received.

use der::asn1::{AnyRef, BitStringRef, Ia5StringRef, ObjectIdentifier, OctetStringRef};
use der::{Decode, Encode};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Verifier as OsslVerifier};
use x509_cert::spki::AlgorithmIdentifierOwned;

use crate::error::{CertError, PssMismatch};

/// RSASSA-PSS (PKCS #1).
pub const OID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
/// MGF1.
pub const OID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
/// SHA-384.
pub const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
/// Common name attribute.
const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// AMD VCEK/VLEK extension OIDs (arc 1.3.6.1.4.1.3704.1).
pub mod oid {
    use der::asn1::ObjectIdentifier;
    /// structVersion (INTEGER).
    pub const STRUCT_VERSION: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.1");
    /// productName (IA5String).
    pub const PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
    /// blSPL (INTEGER).
    pub const BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
    /// teeSPL (INTEGER).
    pub const TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
    /// snpSPL (INTEGER).
    pub const SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
    /// spl_4 .. spl_7 (INTEGER, 0).
    pub const SPL_4_TO_7: [ObjectIdentifier; 4] = [
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.4"),
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.5"),
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.6"),
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.7"),
    ];
    /// ucodeSPL (INTEGER).
    pub const UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
    /// fmcSPL (INTEGER, Turin).
    pub const FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
    /// hwID (raw bytes: 64, Turin 8).
    pub const HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
    /// CSP id (IA5String, VLEK only).
    pub const CSP_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.5");
}

/// RSASSA-PSS-params (RFC 4055), explicit tags as in the PKCS #1 module.
#[derive(Clone, Debug, PartialEq, Eq, der::Sequence)]
pub struct RsaPssParams {
    /// hashAlgorithm, default SHA-1.
    #[asn1(context_specific = "0", optional = "true")]
    pub hash: Option<AlgorithmIdentifierOwned>,
    /// maskGenAlgorithm, default MGF1 with SHA-1.
    #[asn1(context_specific = "1", optional = "true")]
    pub mask_gen: Option<AlgorithmIdentifierOwned>,
    /// saltLength, default 20.
    #[asn1(context_specific = "2", optional = "true")]
    pub salt_len: Option<u32>,
    /// trailerField, default 1.
    #[asn1(context_specific = "3", optional = "true")]
    pub trailer: Option<u32>,
}

impl RsaPssParams {
    /// The parameters AMD uses: SHA-384, MGF1-SHA-384, salt 48.
    pub fn sha384() -> Self {
        let sha384 = AlgorithmIdentifierOwned {
            oid: OID_SHA384,
            parameters: Some(der::Any::null()),
        };
        let mgf_params = sha384
            .to_der()
            .ok()
            .and_then(|d| der::Any::from_der(&d).ok());
        RsaPssParams {
            hash: Some(sha384),
            mask_gen: Some(AlgorithmIdentifierOwned {
                oid: OID_MGF1,
                parameters: mgf_params,
            }),
            salt_len: Some(48),
            trailer: None,
        }
    }

    /// The AlgorithmIdentifier for RSASSA-PSS with these parameters.
    pub fn algorithm_identifier(&self) -> Result<AlgorithmIdentifierOwned, der::Error> {
        Ok(AlgorithmIdentifierOwned {
            oid: OID_RSASSA_PSS,
            parameters: Some(der::Any::from_der(&self.to_der()?)?),
        })
    }

    /// Check these are exactly SHA-384 / MGF1-SHA-384 / salt 48 / trailer 1.
    fn check_sha384(&self) -> Result<(), PssMismatch> {
        let oid_text = |oid: Option<ObjectIdentifier>, none: &str| {
            oid.map_or_else(|| none.to_string(), |o| o.to_string())
        };
        let hash = self.hash.as_ref().map(|h| h.oid);
        if hash != Some(OID_SHA384) {
            return Err(PssMismatch::Hash {
                oid: oid_text(hash, "default (SHA-1)"),
            });
        }
        let mgf = self.mask_gen.as_ref().ok_or(PssMismatch::DefaultMgf)?;
        if mgf.oid != OID_MGF1 {
            return Err(PssMismatch::Mgf {
                oid: mgf.oid.to_string(),
            });
        }
        let mgf_hash = mgf
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<AlgorithmIdentifierOwned>().ok())
            .map(|a| a.oid);
        if mgf_hash != Some(OID_SHA384) {
            return Err(PssMismatch::MgfHash {
                oid: oid_text(mgf_hash, "none"),
            });
        }
        if self.salt_len != Some(48) {
            return Err(PssMismatch::SaltLength { got: self.salt_len });
        }
        let trailer = self.trailer.unwrap_or(1);
        if trailer != 1 {
            return Err(PssMismatch::Trailer { got: trailer });
        }
        Ok(())
    }
}

/// The outer certificate structure with the TBS kept as received bytes.
#[derive(der::Sequence)]
struct RawCertificate<'a> {
    tbs: AnyRef<'a>,
    _algorithm: AnyRef<'a>,
    signature: BitStringRef<'a>,
}

/// A parsed certificate with its DER bytes and SHA-256 fingerprint.
#[derive(Clone)]
pub struct Certificate {
    der: Vec<u8>,
    tbs_der: Vec<u8>,
    signature: Vec<u8>,
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

impl Certificate {
    /// Parse DER.
    pub fn from_der(der: &[u8], context: &str) -> Result<Self, CertError> {
        let raw = RawCertificate::from_der(der).map_err(|e| parse_err(context, e))?;
        let tbs_der = raw.tbs.to_der().map_err(|e| parse_err(context, e))?;
        let signature = raw
            .signature
            .as_bytes()
            .ok_or_else(|| parse_err(context, "signature BIT STRING has unused bits"))?
            .to_vec();
        let cert = x509_cert::Certificate::from_der(der).map_err(|e| parse_err(context, e))?;
        let subject_cn = common_name(&cert.tbs_certificate.subject);
        Ok(Certificate {
            der: der.to_vec(),
            tbs_der,
            signature,
            fingerprint: openssl::sha::sha256(der),
            cert,
            subject_cn,
        })
    }

    /// Parse one certificate, DER or PEM.
    pub fn from_der_or_pem(bytes: &[u8], context: &str) -> Result<Self, CertError> {
        if bytes.starts_with(b"-----") || bytes.iter().take(64).all(|b| b.is_ascii()) {
            let mut certs = Self::pem_chain(bytes, context)?;
            if certs.len() != 1 {
                return Err(CertError::Count {
                    context: context.to_string(),
                    expected: "one certificate",
                    got: certs.len(),
                });
            }
            return Ok(certs.remove(0));
        }
        Self::from_der(bytes, context)
    }

    /// Parse every `CERTIFICATE` block of a PEM text; other blocks are ignored.
    ///
    /// Written here rather than using `x509_cert::Certificate::load_pem_chain`, which panics
    /// (integer underflow) on empty or truncated input, found by this crate's property tests.
    pub fn pem_chain(pem: &[u8], context: &str) -> Result<Vec<Self>, CertError> {
        const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
        const END: &str = "-----END CERTIFICATE-----";
        let text = std::str::from_utf8(pem).map_err(|e| parse_err(context, e))?;
        let mut certs = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find(BEGIN) {
            let body_and_more = &rest[start + BEGIN.len()..];
            let end = body_and_more
                .find(END)
                .ok_or_else(|| parse_err(context, "PEM block without END CERTIFICATE"))?;
            let body: String = body_and_more[..end]
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            use base64::Engine as _;
            let der = base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|e| parse_err(context, format!("PEM body is not base64: {e}")))?;
            certs.push(Self::from_der(&der, context)?);
            rest = &body_and_more[end + END.len()..];
        }
        if certs.is_empty() {
            return Err(CertError::NoPem {
                context: context.to_string(),
            });
        }
        Ok(certs)
    }

    /// DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM text.
    pub fn to_pem(&self) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.der);
        let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
        out
    }

    /// SHA-256 of the DER.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Subject common name ("ARK-Milan", "SEV-Milan", "SEV-VCEK", ...).
    pub fn subject_cn(&self) -> &str {
        &self.subject_cn
    }

    /// Whether subject and issuer are the same name (a root).
    pub fn is_self_issued(&self) -> bool {
        self.cert.tbs_certificate.subject == self.cert.tbs_certificate.issuer
    }

    /// Validity period as Unix seconds (not_before, not_after).
    pub fn validity(&self) -> (u64, u64) {
        let v = &self.cert.tbs_certificate.validity;
        (
            v.not_before.to_unix_duration().as_secs(),
            v.not_after.to_unix_duration().as_secs(),
        )
    }

    /// The subject public key for openssl.
    pub fn public_key(&self) -> Result<PKey<Public>, CertError> {
        let spki = self
            .cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| self.key_err(e))?;
        PKey::public_key_from_der(&spki).map_err(|e| self.key_err(e))
    }

    fn key_err(&self, e: impl std::fmt::Display) -> CertError {
        CertError::PublicKey {
            subject: self.subject_cn.clone(),
            reason: e.to_string(),
        }
    }

    /// Whether the subject key is an EC key (VCEK/VLEK) rather than RSA (ARK/ASK/ASVK).
    pub fn has_ec_key(&self) -> bool {
        const ID_EC_PUBLIC_KEY: ObjectIdentifier =
            ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .algorithm
            .oid
            == ID_EC_PUBLIC_KEY
    }

    /// Check this certificate's RSASSA-PSS (SHA-384, salt 48) signature with `issuer`'s key.
    ///
    /// `Ok(false)` means the signature is well-formed but does not verify.
    pub fn is_signed_by(&self, issuer: &Certificate) -> Result<bool, CertError> {
        let alg = &self.cert.signature_algorithm;
        let sig_err = |why: PssMismatch| CertError::SignatureAlgorithm {
            subject: self.subject_cn.clone(),
            why,
        };
        if alg.oid != OID_RSASSA_PSS {
            return Err(sig_err(PssMismatch::NotPss {
                oid: alg.oid.to_string(),
            }));
        }
        let params = alg
            .parameters
            .as_ref()
            .ok_or_else(|| sig_err(PssMismatch::NoParameters))?
            .decode_as::<RsaPssParams>()
            .map_err(|e| {
                sig_err(PssMismatch::Unparsable {
                    reason: e.to_string(),
                })
            })?;
        params.check_sha384().map_err(sig_err)?;
        let key = issuer.public_key()?;
        if key.rsa().is_err() {
            return Err(issuer.key_err("issuer key is not RSA"));
        }
        let verify = || -> Result<bool, openssl::error::ErrorStack> {
            let mut v = OsslVerifier::new(MessageDigest::sha384(), &key)?;
            v.set_rsa_padding(Padding::PKCS1_PSS)?;
            v.set_rsa_pss_saltlen(RsaPssSaltlen::custom(48))?;
            v.set_rsa_mgf1_md(MessageDigest::sha384())?;
            v.update(&self.tbs_der)?;
            // openssl reports a malformed signature as an error; that is a failed verification.
            Ok(v.verify(&self.signature).unwrap_or(false))
        };
        verify().map_err(|e| issuer.key_err(e))
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

    /// Read the AMD VCEK/VLEK extensions.
    pub fn amd_extensions(&self) -> Result<AmdExtensions, CertError> {
        let ext_err = |oid: &ObjectIdentifier, e: &dyn std::fmt::Display| CertError::Extension {
            oid: oid.to_string(),
            reason: e.to_string(),
        };
        let int = |oid: &ObjectIdentifier| -> Result<Option<u8>, CertError> {
            self.extension(oid)
                .map(|v| u8::from_der(v).map_err(|e| ext_err(oid, &e)))
                .transpose()
        };
        let ia5 = |oid: &ObjectIdentifier| -> Result<Option<String>, CertError> {
            self.extension(oid)
                .map(|v| {
                    Ia5StringRef::from_der(v)
                        .map(|s| s.as_str().to_string())
                        .map_err(|e| ext_err(oid, &e))
                })
                .transpose()
        };
        let struct_version = self
            .extension(&oid::STRUCT_VERSION)
            .map(|v| u32::from_der(v).map_err(|e| ext_err(&oid::STRUCT_VERSION, &e)))
            .transpose()?;
        let hw_id = self.extension(&oid::HW_ID).map(|v| {
            // Real KDS certificates hold the raw bytes; some tools wrap them in an OCTET STRING.
            match OctetStringRef::from_der(v) {
                Ok(inner) if v.len() != 64 && v.len() != 8 => inner.as_bytes().to_vec(),
                _ => v.to_vec(),
            }
        });
        Ok(AmdExtensions {
            struct_version,
            product_name: ia5(&oid::PRODUCT_NAME)?,
            bl_spl: int(&oid::BL_SPL)?,
            tee_spl: int(&oid::TEE_SPL)?,
            snp_spl: int(&oid::SNP_SPL)?,
            ucode_spl: int(&oid::UCODE_SPL)?,
            fmc_spl: int(&oid::FMC_SPL)?,
            hw_id,
            csp_id: ia5(&oid::CSP_ID)?,
        })
    }
}

/// The AMD-specific extensions of a VCEK or VLEK.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AmdExtensions {
    /// structVersion (0 Milan/Genoa, 1 Turin).
    pub struct_version: Option<u32>,
    /// productName, e.g. "Milan-B0".
    pub product_name: Option<String>,
    /// Boot loader SPL.
    pub bl_spl: Option<u8>,
    /// TEE SPL.
    pub tee_spl: Option<u8>,
    /// SNP SPL.
    pub snp_spl: Option<u8>,
    /// Microcode SPL.
    pub ucode_spl: Option<u8>,
    /// FMC SPL (Turin).
    pub fmc_spl: Option<u8>,
    /// hwID: the chip id the VCEK belongs to (absent in a VLEK).
    pub hw_id: Option<Vec<u8>>,
    /// CSP id (VLEK).
    pub csp_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pss_params_roundtrip_and_check() {
        let p = RsaPssParams::sha384();
        assert_eq!(p.check_sha384(), Ok(()));
        let der = p.to_der().unwrap();
        assert_eq!(RsaPssParams::from_der(&der).unwrap(), p);
        let mut bad = p.clone();
        bad.salt_len = Some(32);
        assert_eq!(
            bad.check_sha384(),
            Err(PssMismatch::SaltLength { got: Some(32) })
        );
        let mut trailer = p.clone();
        trailer.trailer = Some(2);
        assert_eq!(trailer.check_sha384(), Err(PssMismatch::Trailer { got: 2 }));
        let mut default = p;
        default.hash = None;
        assert!(matches!(
            default.check_sha384(),
            Err(PssMismatch::Hash { .. })
        ));
    }

    #[test]
    fn garbage_is_a_parse_error() {
        let err = Certificate::from_der(b"\x30\x03\x02\x01\x00", "test").unwrap_err();
        assert!(matches!(err, CertError::Parse { .. }));
        let err = Certificate::from_der_or_pem(b"hello", "x.pem").unwrap_err();
        assert_eq!(
            err,
            CertError::NoPem {
                context: "x.pem".into()
            }
        );
        assert!(err.to_string().contains("x.pem"), "{err}");
    }
}
