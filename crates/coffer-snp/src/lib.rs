//! AMD SEV-SNP evidence: attestation reports, the AMD certificate chain, and verification.
//!
//! This is part of Coffer's trust core: no I/O, no `unsafe`. Callers read files and pass bytes
//! (turning hex or base64 text into bytes is theirs to do, not the verifier's); the verification
//! time is always an argument.
//!
//! ```text
//! Report::from_bytes(bytes) -> Report      (exactly 1184 bytes; exact ABI layout)
//! Endorsements::from_{vek,pem_chain,thim_json}
//! Verifier::new(Roots::amd()?[.with_emulated(..)], allow_emulated).verify(..) -> Verified
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod certs;
mod ecdsa;
pub mod error;
pub mod report;
pub mod time;
pub mod verify;

pub use certs::{AmdExtensions, Certificate, RsaPssParams};
pub use error::{
    CertError, CertRole, ChainFailure, ProductNameError, ProductSource, ProductUnknown,
    PssMismatch, ReportError, RootProblem, TcbmError, TimeError, VerifyError, Warning,
};
pub use report::{
    AttestationReport, Cpuid, GuestPolicy, PlatformInfo, Product, Report, Signature, SignerInfo,
    SigningKey, TcbComponent, TcbLayout, TcbVersion, REPORT_LEN, SIGNED_LEN,
};
pub use verify::{Endorsements, Roots, Tee, TrustedRoot, Verified, Verifier, VerifyOptions};
