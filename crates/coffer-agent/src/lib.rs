//! The agent: the only code inside the TEE, and the only code the launch measurement covers.
//!
//! ```text
//!  host (untrusted)                          |  TEE (trusted): this crate, its own binary
//!  coffer-host: policy, HOST_DATA at launch  |  `coffer-agent --vm`: init of the group's VM
//!  emulated secure processor (dev only) <----|-- `coffer-agent --io DIR`: PID 1 of namespaces
//!  client: layers, requests  ---channel----->|  refuses to serve unless SHA-256(policy) == HOST_DATA;
//!                                            |  every request -> policy enforcement point -> act:
//!                                            |  measure layers itself, overlayfs, OCI spec, runc
//! ```
//!
//! The protocol is `coffer-proto`; the secure processor `coffer-sp`. This crate depends on nothing
//! from the host's side or the emulator (checked by `tests/boundary.rs`).

#![warn(missing_docs)]

pub mod agent;
mod dm;
mod loopdev;
pub mod sandbox;
pub mod skr;
pub mod vm;

pub use agent::{start, Agent};

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
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
    #[error(transparent)]
    SecureProcessor(#[from] coffer_sp::SpError),
    /// The host broke the framing.
    #[error(transparent)]
    Proto(#[from] coffer_proto::ProtoError),
    /// The channel (VM backend).
    #[error(transparent)]
    Mux(#[from] coffer_mux::MuxError),
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

/// Errors of the block-device ioctls (`dm`, `loopdev`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeviceError {
    #[error("invalid device-mapper name '{0}'")]
    Name(String),
    #[error("invalid device-mapper target '{0}'")]
    Target(String),
    #[error("device-mapper request too large")]
    TooLarge,
    #[error("/dev/mapper/control: {0} (is dm_mod loaded?)")]
    Control(#[source] std::io::Error),
    #[error("device-mapper {op}: {source}")]
    Ioctl {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("device-mapper create: short answer")]
    ShortAnswer,
    #[error("{} did not appear", .0.display())]
    NoNode(std::path::PathBuf),
    #[error("/dev/loop-control: {0}")]
    LoopControl(#[source] std::io::Error),
    #[error("no free loop device: {0}")]
    NoFreeLoop(#[source] std::io::Error),
    #[error("no free loop device: every one was taken meanwhile")]
    LoopsTaken,
    #[error("a negative file descriptor")]
    BadFd,
    #[error("{}: {source}", path.display())]
    Open {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("attaching {}: {source}", path.display())]
    Attach {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The agent answers the host with a reason string.
impl From<DeviceError> for String {
    fn from(e: DeviceError) -> String {
        e.to_string()
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Sys { what, source }
}
