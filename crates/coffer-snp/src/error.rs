//! One error vocabulary for the crate: every variant names the check that failed.

/// Why bytes could not be read as an ATTESTATION_REPORT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The input was none of: 1184 raw bytes, 2368 hex digits, base64 of 1184 bytes.
    #[error("not an attestation report: expected 1184 bytes as binary, hex or base64, got {what}")]
    UnrecognisedEncoding {
        /// What the input looked like.
        what: String,
    },
    /// Raw bytes of the wrong length.
    #[error("attestation report must be {expected} bytes, got {got}")]
    Length {
        /// Required length.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// VERSION is not one this crate knows the layout of.
    #[error("unsupported attestation report version {0} (supported: 2, 3, 4, 5)")]
    UnsupportedVersion(u32),
    /// A must-be-zero byte is not zero.
    #[error("reserved byte at offset {offset:#05x} ({field}) must be zero")]
    ReservedNonZero {
        /// Offset of the first non-zero reserved byte.
        offset: usize,
        /// The reserved area it belongs to.
        field: &'static str,
    },
}

/// Why a certificate could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Not DER or PEM X.509.
    #[error("cannot parse certificate{}: {reason}", context_suffix(.context))]
    Parse {
        /// Where the certificate came from.
        context: String,
        /// Parser message.
        reason: String,
    },
    /// An extension that must be a given ASN.1 type is something else.
    #[error("certificate extension {oid} is malformed: {reason}")]
    Extension {
        /// Extension OID.
        oid: String,
        /// What was wrong.
        reason: String,
    },
    /// Signature algorithm is not RSASSA-PSS SHA-384 / MGF1-SHA-384 / salt 48.
    #[error("certificate '{subject}' is not signed with RSASSA-PSS SHA-384 salt 48: {reason}")]
    SignatureAlgorithm {
        /// Subject CN.
        subject: String,
        /// What differs.
        reason: String,
    },
    /// The key in the certificate cannot be used.
    #[error("certificate '{subject}' has an unusable public key: {reason}")]
    PublicKey {
        /// Subject CN.
        subject: String,
        /// What was wrong.
        reason: String,
    },
    /// An input that should hold certificates holds none we can use.
    #[error("{0}")]
    Source(String),
}

fn context_suffix(context: &str) -> String {
    if context.is_empty() {
        String::new()
    } else {
        format!(" ({context})")
    }
}

/// Why a report failed verification. [`VerifyError::check`] gives the stable short name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The report bytes are not a report.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// A certificate is unreadable.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The report is well-formed but cannot be verified as given.
    #[error("{0}")]
    Malformed(String),
    /// ECDSA P-384 signature over bytes 0x000..0x2A0 does not verify.
    #[error("report signature does not verify with the {signer} key")]
    Signature {
        /// "VCEK" or "VLEK".
        signer: &'static str,
    },
    /// A link of the certificate chain does not verify.
    #[error("certificate chain: {0}")]
    Chain(String),
    /// The chain ends in a root that is not trusted.
    #[error("untrusted root: {0}")]
    UnknownRoot(String),
    /// The evidence comes from the emulated secure processor and emulation is not enabled.
    #[error("evidence is signed by the development (emulated) root; it is accepted only with --allow-emulated")]
    EmulatedNotAllowed,
    /// A certificate is outside its validity period at the verification time.
    #[error("{cert} certificate is not valid at {at} (valid {not_before} .. {not_after})")]
    Expired {
        /// Which certificate.
        cert: &'static str,
        /// Verification time, RFC 3339.
        at: String,
        /// Start of validity, RFC 3339.
        not_before: String,
        /// End of validity, RFC 3339.
        not_after: String,
    },
    /// The VCEK/VLEK was issued for another TCB than REPORTED_TCB.
    #[error("{component} SPL in the {signer} is {cert}, REPORTED_TCB has {report}")]
    TcbMismatch {
        /// "VCEK" or "VLEK" (or "THIM tcbm").
        signer: &'static str,
        /// TCB component name.
        component: &'static str,
        /// Value in the certificate.
        cert: u8,
        /// Value in the report.
        report: u8,
    },
    /// The VCEK was issued for another chip.
    #[error("VCEK hwID {cert} does not match report CHIP_ID {report}")]
    ChipIdMismatch {
        /// hwID from the certificate, hex.
        cert: String,
        /// CHIP_ID compared, hex.
        report: String,
    },
    /// Products disagree (CPUID, VCEK productName, or the one requested).
    #[error("product mismatch: {0}")]
    ProductMismatch(String),
    /// The product could not be determined.
    #[error("cannot tell the product (Milan, Genoa, Turin): the report has no CPUID (v2) and the {0}; pass --product")]
    UnknownProduct(String),
    /// Crypto backend failure (not a verdict on the evidence).
    #[error("crypto backend: {0}")]
    Crypto(String),
}

impl VerifyError {
    /// Stable short name of the failed check, part of the CLI contract.
    pub fn check(&self) -> &'static str {
        match self {
            VerifyError::Report(_)
            | VerifyError::Cert(_)
            | VerifyError::Malformed(_)
            | VerifyError::UnknownProduct(_)
            | VerifyError::Crypto(_) => "malformed",
            VerifyError::Signature { .. } => "signature",
            VerifyError::Chain(_) | VerifyError::ProductMismatch(_) => "chain",
            VerifyError::UnknownRoot(_) | VerifyError::EmulatedNotAllowed => "unknown-root",
            VerifyError::Expired { .. } => "expired",
            VerifyError::TcbMismatch { .. } => "tcb-mismatch",
            VerifyError::ChipIdMismatch { .. } => "chip-id-mismatch",
        }
    }
}
