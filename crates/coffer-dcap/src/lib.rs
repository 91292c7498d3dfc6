//! Intel DCAP evidence: SGX quotes (v3) and TDX quotes (v4, v5 with TD 1.0 and TD 1.5 bodies),
//! Intel's collateral, and verification down to the pinned Intel SGX Root CA.
//!
//! Part of Coffer's trust core: no I/O, no `unsafe`. Callers read files and pass bytes; the
//! verification time is always an argument.
//!
//! ```text
//! Quote::from_bytes(bytes) -> Quote                    (the raw quote; spellings are the caller's)
//! Collateral::from_qvl_json(json) | Collateral::from_pcs(&PcsFiles{..})
//! Verifier::new(Roots::intel()?).verify(&quote, &collateral, &VerifyOptions{at, check_crl})
//!     -> Verified { tcb_status, advisory_ids, .. } | VerifyError (check(): "signature", ...)
//! Verifier::verify_evidence(&quote, at) -> Evidence    (signatures, QE binding, PCK chain only)
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod certs;
pub mod collateral;
pub mod error;
pub mod quote;
pub mod tcb;
/// Verification instants (Unix seconds, RFC 3339 at the edges): the same helpers as SEV-SNP's.
pub use coffer_snp::time;
pub mod verify;

pub use certs::{Certificate, Crl, SgxExtension};
pub use collateral::{Collateral, PcsFiles, QeIdentity, TcbInfo};
pub use error::{CertError, CollateralError, QuoteError, VerifyError};
pub use quote::{Body, EnclaveReport, Header, Quote, QuoteFields, TdReport};
pub use tcb::{Graded, TcbMismatch, TcbStatus, UnknownTcbStatus};
pub use verify::{
    Evidence, PckInfo, Roots, Tee, Verified, Verifier, VerifyOptions, Window, INTEL_ROOT_SHA256,
};
