//! Coffer's image store and OCI image layouts.
//!
//! The store under `$COFFER_HOME/images` is itself an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/`), with each stored image named by the
//! `org.opencontainers.image.ref.name` annotation. So one reader serves both `oci:DIR[:TAG]` inputs
//! and stored images, and every blob is checked against its digest as it is read.
//!
//! A layer's measurement is the dm-verity root hash of its uncompressed tar stream (see
//! `coffer-verity`), computed in one streaming pass that also checks the blob digest and the
//! config's `diff_id`. Results are cached by blob digest.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod digest;
mod layout;
mod measure;
mod pull;
mod store;

pub use digest::Digest;
pub use layout::{Image, Layer, Layout, REF_NAME};
pub use measure::{layer_root, measure_layers, LayerMeasurement, Progress};
pub use store::{ImageRef, Store, StoredImage};

use std::path::PathBuf;

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// File system access failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not an OCI image layout, or a malformed document in one.
    #[error("{path}: {reason}")]
    Layout {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A blob's content does not match its digest.
    #[error("blob {digest} is corrupted: its content hashes to {actual}")]
    DigestMismatch {
        /// Expected digest.
        digest: Digest,
        /// Actual digest of the bytes.
        actual: Digest,
    },
    /// A layer's uncompressed content does not match the config's diff_id.
    #[error(
        "layer {digest}: uncompressed content hashes to {actual}, config says diff_id {diff_id}"
    )]
    DiffIdMismatch {
        /// Layer blob digest.
        digest: Digest,
        /// diff_id from the config.
        diff_id: Digest,
        /// Actual.
        actual: Digest,
    },
    /// A layer media type coffer cannot read.
    #[error("layer {digest} has unsupported media type {media_type} (supported: tar, tar+gzip)")]
    UnsupportedMediaType {
        /// Layer digest.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
    /// The requested image or tag does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A malformed image reference or digest.
    #[error("{0}")]
    BadReference(String),
    /// Decompression failed.
    #[error("layer {digest}: cannot decompress: {reason}")]
    Decompress {
        /// Layer digest.
        digest: Digest,
        /// Decoder message.
        reason: String,
    },
    /// A layer tar that does not convert to an ext4 image (tar2ext4's rules).
    #[error("layer {digest}: {source}")]
    Layer {
        /// Layer digest.
        digest: Digest,
        /// The error.
        source: coffer_ext4::Ext4Error,
    },
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}
