//! One error vocabulary for the crate: every variant names the check that failed.

/// Why bytes could not be read as a DCAP quote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuoteError {
    /// The quote ends before a field does.
    #[error("quote truncated: {field} needs bytes {start}..{end}, the {container} has {len}")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Its first byte.
        start: usize,
        /// One past its last byte.
        end: usize,
        /// What holds it ("quote", "signature data", ...).
        container: &'static str,
        /// Length of that container.
        len: usize,
    },
    /// A header or body field has a value this crate does not support.
    #[error("unsupported {field}: {value}")]
    Unsupported {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
    },
}

/// Why a certificate or CRL could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Not DER or PEM X.509 (or not a CRL).
    #[error("cannot parse {context}: {reason}")]
    Parse {
        /// Where it came from.
        context: String,
        /// Parser message.
        reason: String,
    },
    /// The SGX extension (1.2.840.113741.1.13.1) is missing or malformed.
    #[error("PCK certificate SGX extension {oid}: {reason}")]
    Extension {
        /// OID of the failing element.
        oid: String,
        /// What was wrong.
        reason: String,
    },
    /// An input that should hold certificates holds none.
    #[error("{0}")]
    Source(String),
}

/// Why a collateral set could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CollateralError {
    /// A file or field is not what the format says.
    #[error("collateral {field}: {reason}")]
    Field {
        /// Which part.
        field: String,
        /// What was wrong.
        reason: String,
    },
    /// A certificate or CRL inside it.
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// Why a quote failed verification. [`VerifyError::check`] gives the stable short name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The quote bytes are not a quote.
    #[error(transparent)]
    Quote(#[from] QuoteError),
    /// A certificate or CRL is unreadable.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The collateral is unreadable (checked before its signature: see `CollateralSignature`).
    #[error(transparent)]
    Collateral(#[from] CollateralError),
    /// Well-formed bytes that cannot be verified as given.
    #[error("{0}")]
    Malformed(String),
    /// An ECDSA P-256 signature of the quote does not verify.
    #[error("{what} signature does not verify")]
    Signature {
        /// "quote (attestation key)" or "QE report (PCK)".
        what: &'static str,
    },
    /// The QE report does not vouch for the attestation key, or is not Intel's QE.
    #[error("QE binding: {0}")]
    QeBinding(String),
    /// A link of a certificate chain does not verify.
    #[error("certificate chain: {0}")]
    Chain(String),
    /// A chain ends in a root that is not pinned.
    #[error("untrusted root: {0}")]
    UnknownRoot(String),
    /// A CRL is missing, unsigned, or lists a certificate of a chain.
    #[error("CRL: {0}")]
    Crl(String),
    /// TCB info or QE identity is not signed by its issuer over the bytes received.
    #[error("{what} signature does not verify over the text received")]
    CollateralSignature {
        /// "TCB info" or "QE identity".
        what: &'static str,
    },
    /// The collateral does not cover this platform, or no TCB level matches.
    #[error("TCB not supported: {0}")]
    TcbNotSupported(String),
    /// No TCB level of the collateral fits the platform or the TDX module.
    #[error("TCB not supported: {0}")]
    TcbLevel(#[from] crate::tcb::TcbMismatch),
    /// The verification time is outside a validity window.
    #[error("{what} is not valid at {at} (valid {not_before} .. {not_after})")]
    Expired {
        /// What is not valid (a certificate, CRL, TCB info, QE identity, or the window they share).
        what: String,
        /// Verification time, RFC 3339.
        at: String,
        /// Start of validity, RFC 3339.
        not_before: String,
        /// End of validity, RFC 3339.
        not_after: String,
    },
    /// The quote is genuine, but no collateral was supplied for its platform (TEE and FMSPC).
    #[error("no collateral for this platform: {0}")]
    NoCollateral(String),
    /// Crypto backend failure (not a verdict on the evidence).
    #[error("crypto backend: {0}")]
    Crypto(String),
}

impl VerifyError {
    /// Stable short name of the failed check, part of the CLI contract.
    pub fn check(&self) -> &'static str {
        match self {
            VerifyError::Quote(_)
            | VerifyError::Cert(_)
            | VerifyError::Collateral(_)
            | VerifyError::Malformed(_)
            | VerifyError::Crypto(_) => "malformed",
            VerifyError::Signature { .. } => "signature",
            VerifyError::QeBinding(_) => "qe-binding",
            VerifyError::Chain(_) => "chain",
            VerifyError::UnknownRoot(_) => "unknown-root",
            VerifyError::Crl(_) => "crl",
            VerifyError::CollateralSignature { .. } => "collateral-signature",
            VerifyError::TcbNotSupported(_) | VerifyError::TcbLevel(_) => "tcb-not-supported",
            VerifyError::Expired { .. } => "expired",
            VerifyError::NoCollateral(_) => "no-collateral",
        }
    }
}
