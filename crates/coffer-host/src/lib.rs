//! The untrusted host's side of a confidential group: the agent client and the namespace
//! sandbox ([`launch`]), the utility VM's guest image ([`image`]) and QEMU backend ([`qemu`]),
//! the [`Backend`] choice between them, the group's network ([`net`]), the egress relay, and the
//! emulated secure processor's service ([`emu`], development only).
//!
//! Nothing here is trusted by the group: the agent (`coffer-agent`) checks everything it gets.

#![warn(missing_docs)]

pub mod annotation;
pub mod cpio;
pub mod emu;
pub mod image;
pub mod launch;
pub mod net;
pub mod qemu;
pub mod snp;

use std::path::{Path, PathBuf};

use launch::{AgentClient, LaunchSpec};
use serde_json::Value;

/// Name of the virtio-serial port carrying the channel (the guest looks for it).
pub const PORT_NAME: &str = "coffer.0";

/// Errors of the host side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// I/O, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A host tool (apt, dpkg, ldd, QEMU) failed or is missing.
    #[error("{0}")]
    Tool(String),
    /// The VM did not come up, or its agent refused to serve.
    #[error("{0}")]
    Refused(String),
    /// Not supported by this backend yet.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The channel.
    #[error(transparent)]
    Mux(#[from] coffer_mux::MuxError),
    /// The framing of the agent protocol.
    #[error(transparent)]
    Proto(#[from] coffer_proto::ProtoError),
    /// The agent broke the protocol.
    #[error("agent protocol: {0}")]
    Protocol(String),
    /// The policy denied a request (the agent's answer).
    #[error("denied by policy ({rule}): {reason}")]
    Denied {
        /// Enforcement point.
        rule: String,
        /// The policy's reason.
        reason: String,
    },
    /// The agent refused or failed a request, or the group could not be set up.
    #[error("{0}")]
    Agent(String),
    /// The emulated secure processor.
    #[error("secure processor: {0}")]
    SecureProcessor(String),
    /// The policy could not be read.
    #[error(transparent)]
    Policy(#[from] coffer_policy::PolicyError),
    /// A system call.
    #[error("{what}: {source}")]
    Sys {
        /// What.
        what: String,
        /// errno.
        source: nix::Error,
    },
}

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> HostError {
    let what = what.into();
    move |source| HostError::Sys { what, source }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostError {
    let what = what.into();
    move |source| HostError::Io { what, source }
}

/// A group's isolation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Namespaces on the host's kernel (fast; the host kernel is trusted).
    Namespace,
    /// A QEMU VM per group.
    Vm,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isolation::Namespace => "namespace",
            Isolation::Vm => "vm",
        })
    }
}

/// A running group, whatever isolates it.
pub trait RunningGroup {
    /// Its isolation.
    fn isolation(&self) -> Isolation;
    /// Hand a layer image to the agent; returns the name for `AgentClient::mount_layer`.
    fn stage_layer(&self, image: &Path) -> Result<String, HostError>;
    /// The agent's socket on the host.
    fn socket(&self) -> PathBuf;
    /// A new client connection.
    fn client(&self) -> Result<AgentClient, HostError>;
    /// Shut down and remove every trace.
    fn shutdown(self: Box<Self>) -> Result<Value, HostError>;
    /// The group's address and published ports, when it has a network of its own.
    fn network_summary(&self) -> Option<String> {
        None
    }
}

impl RunningGroup for launch::Group {
    fn isolation(&self) -> Isolation {
        Isolation::Namespace
    }
    fn stage_layer(&self, image: &Path) -> Result<String, HostError> {
        launch::Group::stage_layer(self, image)
    }
    fn socket(&self) -> PathBuf {
        launch::Group::socket(self)
    }
    fn client(&self) -> Result<AgentClient, HostError> {
        launch::Group::client(self)
    }
    fn shutdown(self: Box<Self>) -> Result<Value, HostError> {
        launch::Group::shutdown(*self)
    }
    fn network_summary(&self) -> Option<String> {
        let net = self.network()?;
        let published: Vec<String> = net.published().iter().map(|p| p.to_string()).collect();
        Some(if published.is_empty() {
            net.info().address.to_string()
        } else {
            format!("{}, published {}", net.info().address, published.join(", "))
        })
    }
}

impl RunningGroup for qemu::VmGroup {
    fn isolation(&self) -> Isolation {
        Isolation::Vm
    }
    fn stage_layer(&self, image: &Path) -> Result<String, HostError> {
        qemu::VmGroup::stage_layer(self, image)
    }
    fn socket(&self) -> PathBuf {
        qemu::VmGroup::socket(self)
    }
    fn client(&self) -> Result<AgentClient, HostError> {
        qemu::VmGroup::client(self)
    }
    fn shutdown(self: Box<Self>) -> Result<Value, HostError> {
        qemu::VmGroup::shutdown(*self)
    }
}

/// Something that starts groups.
pub trait Backend {
    /// Start a group and wait until its agent serves (or refuses).
    fn launch(&self, spec: LaunchSpec) -> Result<Box<dyn RunningGroup>, HostError>;
}

/// The namespace sandbox ([`launch::launch`]).
pub struct NamespaceBackend;

impl Backend for NamespaceBackend {
    fn launch(&self, spec: LaunchSpec) -> Result<Box<dyn RunningGroup>, HostError> {
        Ok(Box::new(launch::launch(spec)?))
    }
}

/// A QEMU VM per group.
pub struct QemuBackend(pub qemu::VmConfig);

impl Backend for QemuBackend {
    fn launch(&self, spec: LaunchSpec) -> Result<Box<dyn RunningGroup>, HostError> {
        Ok(Box::new(qemu::launch(spec, &self.0)?))
    }
}

/// Refuse to start a group whose name a live one has.
pub(crate) fn refuse_if_running(dir: &Path, name: &str) -> Result<(), HostError> {
    let pid = std::fs::read_to_string(dir.join("pid")).unwrap_or_default();
    if !pid.trim().is_empty() && Path::new(&format!("/proc/{}", pid.trim())).exists() {
        return Err(HostError::Refused(format!(
            "a group named '{name}' is already running (pid {})",
            pid.trim()
        )));
    }
    Ok(())
}
