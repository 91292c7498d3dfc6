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
    fn shutdown(self: Box<Self>) -> Result<coffer_proto::reply::ShutDown, HostError>;
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
    fn shutdown(self: Box<Self>) -> Result<coffer_proto::reply::ShutDown, HostError> {
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
    fn shutdown(self: Box<Self>) -> Result<coffer_proto::reply::ShutDown, HostError> {
        qemu::VmGroup::shutdown(*self)
    }
    fn network_summary(&self) -> Option<String> {
        qemu::VmGroup::network_summary(self)
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
/// Make `cmd`'s process die with the launcher: the kernel sends it SIGKILL when the thread that
/// spawned it ends, so a killed `coffer run` leaves no QEMU or sandbox behind (the group's
/// directory and network are swept by the next launch of the same group). Only for spawns from
/// the main thread, whose end is the process's: a worker thread (the containerd shim's request
/// threads) may end long before the group should, and such launchers clean up on their own
/// (`containerd-shim-coffer-v2 delete`).
#[allow(unsafe_code)]
pub(crate) fn die_with_launcher(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    if nix::unistd::gettid() != nix::unistd::getpid() {
        return;
    }
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
    // which is async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Whether process `pid` (text, as in a pid file) runs: it exists and is not a zombie (a process
/// whose launcher was killed may wait unreaped where PID 1 does not reap).
pub fn process_alive(pid: &str) -> bool {
    let pid = pid.trim();
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) state ...`: comm may hold spaces and parentheses, the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub(crate) fn refuse_if_running(dir: &Path, name: &str) -> Result<(), HostError> {
    let pid = std::fs::read_to_string(dir.join("pid")).unwrap_or_default();
    if process_alive(&pid) {
        return Err(HostError::Refused(format!(
            "a group named '{name}' is already running (pid {})",
            pid.trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_or_a_bad_pid_is_not_alive() {
        assert!(process_alive(&std::process::id().to_string()));
        assert!(!process_alive(""));
        assert!(!process_alive("12abc"));
        assert!(!process_alive("../1"));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id().to_string();
        // Exited, not yet reaped: a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while process_alive(&pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!process_alive(&pid));
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "still a zombie"
        );
        child.wait().unwrap();
    }
}
