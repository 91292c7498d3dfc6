//! One error vocabulary for the crate: every variant names the check that failed.

use crate::report::{Product, SigningKey};

/// Why bytes could not be read as an ATTESTATION_REPORT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
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

/// A certificate's place in AMD's key hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CertRole {
    /// Versioned Chip Endorsement Key: signs reports of one chip at one TCB.
    Vcek,
    /// Versioned Loaded Endorsement Key: signs reports for a cloud provider.
    Vlek,
    /// AMD SEV Signing Key: signs VCEKs.
    Ask,
    /// AMD SEV VLEK Signing Key: signs VLEKs.
    Asvk,
    /// AMD Root Key: self-signed, signs the ASK and ASVK.
    Ark,
}

impl CertRole {
    /// The name AMD uses.
    pub fn name(self) -> &'static str {
        match self {
            CertRole::Vcek => "VCEK",
            CertRole::Vlek => "VLEK",
            CertRole::Ask => "ASK",
            CertRole::Asvk => "ASVK",
            CertRole::Ark => "ARK",
        }
    }
}

impl std::fmt::Display for CertRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why RSASSA-PSS parameters are not SHA-384 / MGF1-SHA-384 / salt 48 / trailer 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PssMismatch {
    /// The signature algorithm is not RSASSA-PSS at all.
    #[error("algorithm is {oid}")]
    NotPss {
        /// The algorithm's OID.
        oid: String,
    },
    /// RSASSA-PSS without parameters.
    #[error("no PSS parameters")]
    NoParameters,
    /// The parameters are not DER RSASSA-PSS-params.
    #[error("PSS parameters: {reason}")]
    Unparsable {
        /// Parser message.
        reason: String,
    },
    /// hashAlgorithm is not SHA-384.
    #[error("hash is {oid}, expected SHA-384")]
    Hash {
        /// The OID found ("default" for the SHA-1 default).
        oid: String,
    },
    /// maskGenAlgorithm is absent (MGF1 with SHA-1).
    #[error("MGF is the default (MGF1-SHA-1)")]
    DefaultMgf,
    /// maskGenAlgorithm is not MGF1.
    #[error("MGF is {oid}, expected MGF1")]
    Mgf {
        /// The OID found.
        oid: String,
    },
    /// MGF1's hash is not SHA-384.
    #[error("MGF1 hash is {oid}, expected SHA-384")]
    MgfHash {
        /// The OID found ("none" if unreadable).
        oid: String,
    },
    /// saltLength is not 48.
    #[error("salt length is {got:?}, expected 48")]
    SaltLength {
        /// The value found (`None`: the default, 20).
        got: Option<u32>,
    },
    /// trailerField is not 1.
    #[error("trailer field is {got}, expected 1")]
    Trailer {
        /// The value found.
        got: u32,
    },
}

/// What is wrong with a root of trust (embedded or emulated).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RootProblem {
    /// The ARK does not verify its own signature.
    #[error("ARK is not self-signed")]
    NotSelfSigned,
    /// An ASK or ASVK is not signed by the ARK it came with.
    #[error("{subject} is not signed by the ARK")]
    IntermediateNotSigned {
        /// Subject CN of the intermediate.
        subject: String,
    },
    /// The ARK's SHA-256 is not the pinned value for its product.
    #[error("ARK fingerprint does not match the pinned value")]
    FingerprintNotPinned,
    /// The ASK and ASVK chains end in different ARKs.
    #[error("ASVK chain has another ARK")]
    AsvkChainOtherArk,
    /// An AMD ARK was offered as the emulated development root.
    #[error("an AMD ARK cannot be the emulated root")]
    AmdArkAsEmulated,
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
    #[error("certificate '{subject}' is not signed with RSASSA-PSS SHA-384 salt 48: {why}")]
    SignatureAlgorithm {
        /// Subject CN.
        subject: String,
        /// What differs.
        why: PssMismatch,
    },
    /// The key in the certificate cannot be used.
    #[error("certificate '{subject}' has an unusable public key: {reason}")]
    PublicKey {
        /// Subject CN.
        subject: String,
        /// What was wrong.
        reason: String,
    },
    /// An input holds another number of certificates than it must.
    #[error("{context}: expected {expected}, found {got} certificate(s)")]
    Count {
        /// Where the certificates came from.
        context: String,
        /// What was expected.
        expected: &'static str,
        /// How many there were.
        got: usize,
    },
    /// A PEM input holds no CERTIFICATE block.
    #[error("{context}: no PEM certificate found")]
    NoPem {
        /// Where the text came from.
        context: String,
    },
    /// A THIM response is not the JSON it should be.
    #[error("{context}: not a THIM response (vcekCert, certificateChain, tcbm): {reason}")]
    NotThim {
        /// Where the JSON came from.
        context: String,
        /// JSON parser message.
        reason: String,
    },
    /// Two certificates of a chain claim the same role.
    #[error("{context}: two certificates of the same role ({subject})")]
    DuplicateRole {
        /// Where the chain came from.
        context: String,
        /// Subject CN of the first of them.
        subject: String,
    },
    /// A chain has no EC P-384 (VCEK/VLEK) certificate.
    #[error("{context}: no VCEK/VLEK (EC P-384) certificate")]
    NoVek {
        /// Where the chain came from.
        context: String,
    },
    /// A root of trust is unusable.
    #[error("root {root}: {why}")]
    Root {
        /// The product (or "emulated") and ARK subject.
        root: String,
        /// What is wrong.
        why: RootProblem,
    },
}

fn context_suffix(context: &str) -> String {
    if context.is_empty() {
        String::new()
    } else {
        format!(" ({context})")
    }
}

/// Why `tcbm` (Azure THIM) is not a TCB_VERSION.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TcbmError {
    /// Not hexadecimal.
    #[error("tcbm '{tcbm}' is not hex")]
    NotHex {
        /// The text received.
        tcbm: String,
    },
    /// Hex, but not 8 bytes.
    #[error("tcbm '{tcbm}' must be 16 hex digits")]
    Length {
        /// The text received.
        tcbm: String,
    },
}

/// Why one link of the certificate chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainFailure {
    /// The certificate is not of the kind the report names as its signer.
    #[error("the report is signed by a {expected} but the certificate is '{subject}'")]
    WrongRole {
        /// The role SIGNING_KEY names.
        expected: CertRole,
        /// Subject CN of the certificate supplied.
        subject: String,
    },
    /// No candidate issuer's key verifies the certificate's signature.
    #[error("not signed by the {issuer} of {product} (nor by a supplied one)")]
    NotSignedBy {
        /// The role of the issuer looked for.
        issuer: CertRole,
        /// The product whose roots were tried.
        product: Product,
    },
    /// The signature could not be checked at all (algorithm, key).
    #[error("{0}")]
    Unusable(CertError),
}

/// Where a verifier learnt which product the evidence is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProductSource {
    /// CPUID_FAM_ID/CPUID_MOD_ID of a v3+ report.
    ReportCpuid,
    /// productName of the VCEK/VLEK.
    VekProductName,
    /// The root the chain was verified to.
    VerifiedChain,
    /// The caller's `--product`.
    Requested,
}

impl std::fmt::Display for ProductSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProductSource::ReportCpuid => "report CPUID",
            ProductSource::VekProductName => "VCEK productName",
            ProductSource::VerifiedChain => "verified chain",
            ProductSource::Requested => "--product",
        })
    }
}

/// Why the product (Milan, Genoa, Turin) cannot be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProductUnknown {
    /// CPUID names a family/model this crate does not know, and nothing else tells.
    #[error("the report's CPUID family {family:#x} model {model:#x} is unknown")]
    Cpuid {
        /// CPUID_FAM_ID.
        family: u8,
        /// CPUID_MOD_ID.
        model: u8,
    },
    /// A v2 report (no CPUID) and a VCEK without productName.
    #[error("the report has no CPUID (v2) and the VCEK has no productName")]
    NoProductName,
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
    /// SIGNING_KEY names neither a VCEK nor a VLEK.
    #[error("SIGNING_KEY is {} ({key:?}): the report is not signed by a VCEK or VLEK", .key.name())]
    UnsupportedSigningKey {
        /// The value of SIGNING_KEY.
        key: SigningKey,
    },
    /// SIGNATURE_ALGO is not 1 (ECDSA P-384 with SHA-384).
    #[error("SIGNATURE_ALGO is {0}, only 1 (ECDSA P-384 with SHA-384) is defined")]
    SignatureAlgorithm(u32),
    /// The VCEK/VLEK does not hold an EC P-384 key.
    #[error("{cert} ({subject}) has no EC P-384 key")]
    VekKey {
        /// VCEK or VLEK.
        cert: CertRole,
        /// Subject CN.
        subject: String,
    },
    /// The THIM `tcbm` is unreadable.
    #[error(transparent)]
    Tcbm(#[from] TcbmError),
    /// ECDSA P-384 signature over bytes 0x000..0x2A0 does not verify.
    #[error("report signature does not verify with the {signer} key")]
    Signature {
        /// VCEK or VLEK.
        signer: CertRole,
    },
    /// A link of the certificate chain does not verify.
    #[error("certificate chain: {cert}: {why}")]
    Chain {
        /// The certificate whose link failed.
        cert: CertRole,
        /// Why.
        why: ChainFailure,
    },
    /// The chain ends in a root that is not trusted.
    #[error("untrusted root: {subject} (SHA-256 {sha256}) is not a pinned AMD root")]
    UnknownRoot {
        /// Subject CN of the root supplied.
        subject: String,
        /// Its SHA-256 fingerprint, hex.
        sha256: String,
    },
    /// The evidence comes from the emulated secure processor and emulation is not enabled.
    #[error("evidence is signed by the development (emulated) root; it is accepted only with --allow-emulated")]
    EmulatedNotAllowed,
    /// A certificate is outside its validity period at the verification time.
    #[error("{cert} certificate is not valid at {at} (valid {not_before} .. {not_after})")]
    Expired {
        /// Which certificate.
        cert: CertRole,
        /// Verification time, RFC 3339.
        at: String,
        /// Start of validity, RFC 3339.
        not_before: String,
        /// End of validity, RFC 3339.
        not_after: String,
    },
    /// The VCEK/VLEK (or THIM's tcbm) was issued for another TCB than REPORTED_TCB.
    #[error("{component} SPL in the {signer} is {cert}, REPORTED_TCB has {report}")]
    TcbMismatch {
        /// "VCEK", "VLEK" or "THIM tcbm".
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
    /// Two sources name different products.
    #[error("product mismatch: {first} says {first_product}, {second} says {second_product}")]
    ProductMismatch {
        /// The source consulted first.
        first: ProductSource,
        /// What it says.
        first_product: Product,
        /// The source that disagrees.
        second: ProductSource,
        /// What it says.
        second_product: Product,
    },
    /// The product could not be determined.
    #[error("cannot tell the product (Milan, Genoa, Turin): {0}; pass --product")]
    UnknownProduct(ProductUnknown),
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
            | VerifyError::UnsupportedSigningKey { .. }
            | VerifyError::SignatureAlgorithm(_)
            | VerifyError::VekKey { .. }
            | VerifyError::Tcbm(_)
            | VerifyError::UnknownProduct(_)
            | VerifyError::Crypto(_) => "malformed",
            VerifyError::Signature { .. } => "signature",
            VerifyError::Chain { .. } | VerifyError::ProductMismatch { .. } => "chain",
            VerifyError::UnknownRoot { .. } | VerifyError::EmulatedNotAllowed => "unknown-root",
            VerifyError::Expired { .. } => "expired",
            VerifyError::TcbMismatch { .. } => "tcb-mismatch",
            VerifyError::ChipIdMismatch { .. } => "chip-id-mismatch",
        }
    }
}

/// Why text is not an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not an RFC 3339 time like 2025-01-31T12:00:00Z")]
pub struct TimeError {
    /// The text received.
    pub input: String,
}

/// Why a product name is not one of Milan, Genoa, Turin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown product '{name}' (expected milan, genoa or turin)")]
pub struct ProductNameError {
    /// The name received.
    pub name: String,
}

/// A non-fatal observation made while verifying a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Warning {
    /// PLATFORM_INFO has bits set that the ABI reserves.
    #[error("PLATFORM_INFO has reserved bits set: {0:#x}")]
    PlatformInfoReservedBits(u64),
    /// The signer-info word has bits set that the ABI reserves.
    #[error("signer info has reserved bits set: {0:#x}")]
    SignerInfoReservedBits(u32),
    /// CHIP_ID is all zero (MASK_CHIP_ID), so the VCEK's hwID was not compared.
    #[error("CHIP_ID is masked (all zero): hwID not compared")]
    ChipIdMasked,
}

impl serde::Serialize for Warning {
    /// As its message: the CLI's JSON contract is a list of strings.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
