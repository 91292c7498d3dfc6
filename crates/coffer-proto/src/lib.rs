//! The contract between the untrusted host and the agent inside the TEE, shared by both sides:
//! the requests ([`Request`]), their framing, and the layout of the I/O directory ([`layout`]).
//!
//! The agent API: frames of a 4-byte big-endian length and a JSON document. `mount_layer` is
//! followed by the layer's uncompressed tar as chunks (4-byte big-endian length, bytes), ended
//! by an empty chunk: the host streams without knowing the size, the agent measures as it reads.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod layout;
pub mod reply;
pub use layout::{GroupNet, GROUP_FILE, IO_DIR, MAX_RESOLV_CONF, WORK_DIR};
pub use reply::{AttachFrame, Failure, Response};

/// Errors of the framing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The stream failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A frame broke the protocol (too large, not JSON).
    #[error("agent protocol: {0}")]
    Frame(String),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ProtoError {
    move |source| ProtoError::Io { what, source }
}

/// Protocol version; `hello` must agree.
pub const VERSION: u32 = 2;
/// Largest JSON frame accepted (layer bytes do not count).
pub const MAX_FRAME: usize = 16 << 20;

/// A process as the host asks for it (checked against the policy by the agent).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessSpec {
    /// argv.
    pub args: Vec<String>,
    /// `NAME=value`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary group ids (besides `gid`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
    /// The root file system is read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_rootfs: bool,
    /// Capabilities (bounding = effective = permitted).
    pub capabilities: Vec<String>,
    /// no_new_privileges.
    pub no_new_privileges: bool,
    /// cgroup memory limit, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// cgroup CPU limit, millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
}

/// A volume mount into a container.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Volume name (an emptyDir shared by the group).
    pub name: String,
    /// Path in the container.
    pub destination: String,
    /// Read-only.
    pub read_only: bool,
}

/// Requests from the host.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Version handshake; returns the agent's report fields of interest.
    Hello {
        /// Client's protocol version.
        version: u32,
    },
    /// Mount a layer image at `target`: the ext4 image (tar2ext4, optionally with its dm-verity
    /// tree appended) that the host placed in the I/O directory's `layers/` as `image`. The agent
    /// measures it itself; its root must be a layer of the policy.
    MountLayer {
        /// Where the layer is mounted in the sandbox.
        target: String,
        /// File name under `<io>/layers/`.
        image: String,
    },
    /// Overlay layers (top first) as a container's root.
    MountOverlay {
        /// Container id.
        container_id: String,
        /// Layer targets, top layer first.
        layer_paths: Vec<String>,
    },
    /// Create and start a container.
    CreateContainer {
        /// Container id.
        container_id: String,
        /// Its process.
        process: ProcessSpec,
        /// Volume mounts.
        volumes: Vec<VolumeSpec>,
    },
    /// Stream a container's output: frames `{"stream","data"}`, then `{"exit"}`.
    Attach {
        /// Container id.
        container_id: String,
    },
    /// Run a process in a running container; returns its exit status and output.
    Exec {
        /// Container id.
        container_id: String,
        /// The process.
        process: ProcessSpec,
    },
    /// Signal a container's init process.
    Signal {
        /// Container id.
        container_id: String,
        /// Signal number.
        signal: i32,
    },
    /// Remove a container that has exited (through `shutdown_container`): its runtime state,
    /// overlay and scratch go, so that the same container can be created again (a restart, with
    /// a fresh writable layer; the group's volumes stay).
    RemoveContainer {
        /// Container id.
        container_id: String,
    },
    /// The agent's properties (containers and their state).
    GetProperties,
    /// Stop every container, unmount everything, exit.
    Shutdown,
}

/// Write one JSON frame.
pub fn write_frame<W: Write>(w: &mut W, v: &impl Serialize) -> Result<(), ProtoError> {
    let bytes = serde_json::to_vec(v).map_err(|e| ProtoError::Frame(e.to_string()))?;
    let len =
        u32::try_from(bytes.len()).map_err(|_| ProtoError::Frame("frame too large".into()))?;
    w.write_all(&len.to_be_bytes())
        .map_err(io("writing a frame"))?;
    w.write_all(&bytes).map_err(io("writing a frame"))?;
    w.flush().map_err(io("writing a frame"))
}

/// Read one JSON frame; `None` at a clean end of stream.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Value>, ProtoError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => {
            return Err(ProtoError::Io {
                what: "reading a frame",
                source: e,
            })
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ProtoError::Frame(format!(
            "frame of {len} bytes exceeds {MAX_FRAME}"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(io("reading a frame"))?;
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| ProtoError::Frame(format!("frame is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversize_is_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &serde_json::json!({"op": "shutdown"})).unwrap();
        let v = read_frame(&mut &buf[..]).unwrap().unwrap();
        let req: Request = serde_json::from_value(v).unwrap();
        assert!(matches!(req, Request::Shutdown));
        assert!(read_frame(&mut &b""[..]).unwrap().is_none());
        let big = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(read_frame(&mut &big[..]).is_err());
    }
}
