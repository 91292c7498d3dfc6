//! The confidential group runtime.
//!
//! ```text
//!  host (untrusted)                         |  sandbox = the emulated TEE (trusted)
//!  launcher: policy, HOST_DATA, MEASUREMENT |  agent, PID 1 of fresh pid/mount/net/uts/ipc namespaces,
//!  emulated secure processor (sp.sock) <----|-- asks for its report; refuses to serve unless
//!                                           |  SHA-256(policy) == HOST_DATA
//!  client: layers, requests  --agent.sock-->|  every request -> policy enforcement point -> act:
//!                                           |  measure layers itself, overlayfs, OCI spec, runc
//! ```
//!
//! The protocol ([`protocol`]) is length-prefixed JSON over a Unix socket, version [`protocol::VERSION`].

#![warn(missing_docs)]

pub mod agent;
pub mod host;
pub mod net;
pub mod protocol;
pub mod sandbox;
pub mod sev_guest;
pub mod skr;
pub mod sp;

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// I/O failure, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A protocol violation.
    #[error("agent protocol: {0}")]
    Protocol(String),
    /// The policy denied a request.
    #[error("denied by policy ({rule}): {reason}")]
    Denied {
        /// Enforcement point.
        rule: String,
        /// The policy's reason.
        reason: String,
    },
    /// The agent refused or failed a request.
    #[error("{0}")]
    Agent(String),
    /// Secure processor failure.
    #[error("secure processor: {0}")]
    SecureProcessor(String),
    /// Policy engine failure.
    #[error(transparent)]
    Policy(#[from] coffer_policy::PolicyError),
    /// System call failure.
    #[error("{what}: {source}")]
    Sys {
        /// What.
        what: String,
        /// errno.
        source: nix::Error,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Sys { what, source }
}
