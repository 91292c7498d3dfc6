//! `containerd-shim-coffer-v2`: a containerd shim v2 (runtime type `io.containerd.coffer.v2`)
//! that runs containerd tasks as a confidential group.
//!
//! containerd asks; the shim, which is untrusted like the rest of the host, turns each request
//! into the agent protocol (`coffer-proto`) and the agent inside the TEE decides through the
//! policy. The policy comes from the annotation `coffer.dev/policy`
//! ([`coffer_host::annotation`]); HOST_DATA = SHA-256 of its text, as `coffer run --policy`.
//!
//! - [`spec`]: containerd's OCI bundle read into what the agent is asked for (process, grouping).
//! - [`content`]: the image's compressed layer blobs, read over containerd's gRPC content API
//!   and turned into layer images (ext4 + dm-verity tree) that the agent measures.
//! - [`service`]: the shim (`start`, `delete`) and its Task service.
//!
//! One shim serves a CRI Pod (grouped by the `io.kubernetes.cri.sandbox-id` annotation) or, for
//! a plain `ctr run`, one container. The first task creates the group; the others join it.

#![warn(missing_docs)]

pub mod content;
pub mod service;
pub mod spec;

/// Runtime type containerd names this shim by.
pub const RUNTIME_ID: &str = "io.containerd.coffer.v2";

/// Errors of the shim.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShimError {
    /// The bundle's OCI spec could not be read or lacks what a task needs.
    #[error("bundle {bundle}: {reason}")]
    Bundle {
        /// The bundle directory.
        bundle: String,
        /// What is wrong.
        reason: String,
    },
    /// The policy annotation.
    #[error(transparent)]
    Annotation(#[from] coffer_host::annotation::AnnotationError),
    /// containerd's gRPC API (containers, images, content, leases).
    #[error("containerd {what}: {reason}")]
    Containerd {
        /// The call.
        what: String,
        /// Its error.
        reason: String,
    },
    /// The image in containerd cannot be used (media type, platform, layers).
    #[error("image {image}: {reason}")]
    Image {
        /// Image name.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or measuring layers.
    #[error(transparent)]
    Store(#[from] coffer_image::ImageError),
    /// The host side of the group (launch, agent, policy denials).
    #[error(transparent)]
    Host(#[from] coffer_host::HostError),
    /// Local I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
    let what = what.into();
    move |source| ShimError::Io { what, source }
}

/// `$COFFER_HOME` of the shim: the variable (containerd passes its environment on), else
/// `/var/lib/coffer` (a shim runs as root, for containerd).
pub fn coffer_home() -> std::path::PathBuf {
    std::env::var_os("COFFER_HOME")
        .filter(|h| !h.is_empty())
        .map(Into::into)
        .unwrap_or_else(|| "/var/lib/coffer".into())
}
