//! The utility VM a group runs in, on the host's side: the guest image ([`image`]), the QEMU
//! backend ([`qemu`]), and the [`Backend`] choice between it and the namespace sandbox.

#![warn(missing_docs)]

pub mod cpio;
pub mod image;
pub mod qemu;

use std::path::{Path, PathBuf};

use coffer_runtime::host::{AgentClient, LaunchSpec};
use serde_json::Value;

/// Name of the virtio-serial port carrying the channel (the guest looks for it).
pub const PORT_NAME: &str = "coffer.0";

/// Errors of the VM backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UvmError {
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
    /// The runtime (agent client, emulated secure processor, egress).
    #[error(transparent)]
    Runtime(#[from] coffer_runtime::RuntimeError),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UvmError {
    let what = what.into();
    move |source| UvmError::Io { what, source }
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
    fn stage_layer(&self, image: &Path) -> Result<String, UvmError>;
    /// The agent's socket on the host.
    fn socket(&self) -> PathBuf;
    /// A new client connection.
    fn client(&self) -> Result<AgentClient, UvmError>;
    /// Shut down and remove every trace.
    fn shutdown(self: Box<Self>) -> Result<Value, UvmError>;
    /// The group's address and published ports, when it has a network of its own.
    fn network_summary(&self) -> Option<String> {
        None
    }
}

impl RunningGroup for coffer_runtime::host::Group {
    fn isolation(&self) -> Isolation {
        Isolation::Namespace
    }
    fn stage_layer(&self, image: &Path) -> Result<String, UvmError> {
        Ok(coffer_runtime::host::Group::stage_layer(self, image)?)
    }
    fn socket(&self) -> PathBuf {
        coffer_runtime::host::Group::socket(self)
    }
    fn client(&self) -> Result<AgentClient, UvmError> {
        Ok(coffer_runtime::host::Group::client(self)?)
    }
    fn shutdown(self: Box<Self>) -> Result<Value, UvmError> {
        Ok(coffer_runtime::host::Group::shutdown(*self)?)
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
    fn stage_layer(&self, image: &Path) -> Result<String, UvmError> {
        qemu::VmGroup::stage_layer(self, image)
    }
    fn socket(&self) -> PathBuf {
        qemu::VmGroup::socket(self)
    }
    fn client(&self) -> Result<AgentClient, UvmError> {
        qemu::VmGroup::client(self)
    }
    fn shutdown(self: Box<Self>) -> Result<Value, UvmError> {
        qemu::VmGroup::shutdown(*self)
    }
}

/// Something that starts groups.
pub trait Backend {
    /// Start a group and wait until its agent serves (or refuses).
    fn launch(&self, spec: LaunchSpec) -> Result<Box<dyn RunningGroup>, UvmError>;
}

/// The namespace sandbox (`coffer_runtime::host::launch`).
pub struct NamespaceBackend;

impl Backend for NamespaceBackend {
    fn launch(&self, spec: LaunchSpec) -> Result<Box<dyn RunningGroup>, UvmError> {
        Ok(Box::new(coffer_runtime::host::launch(spec)?))
    }
}

/// A QEMU VM per group.
pub struct QemuBackend(pub qemu::VmConfig);

impl Backend for QemuBackend {
    fn launch(&self, spec: LaunchSpec) -> Result<Box<dyn RunningGroup>, UvmError> {
        Ok(Box::new(qemu::launch(spec, &self.0)?))
    }
}

/// Refuse to start a group whose name a live one has.
pub(crate) fn refuse_if_running(dir: &Path, name: &str) -> Result<(), UvmError> {
    let pid = std::fs::read_to_string(dir.join("pid")).unwrap_or_default();
    if !pid.trim().is_empty() && Path::new(&format!("/proc/{}", pid.trim())).exists() {
        return Err(UvmError::Refused(format!(
            "a group named '{name}' is already running (pid {})",
            pid.trim()
        )));
    }
    Ok(())
}
