//! OCI layer tar -> compact ext4 image, byte for byte as hcsshim's `tar2ext4` writes it, and
//! the image's dm-verity root: the layer hash Azure Confidential Containers put in their
//! policies (`tar2ext4.ConvertAndComputeRootDigest`).
//!
//! The conversion streams: file data goes from the tar straight to its place in the image (or
//! into the hasher); only metadata (inodes, directory entries) is kept in memory, and for
//! [`root_digest`] the 32-byte hash of each image block instead of the image.
//!
//! What tar2ext4 does, and so this crate does (read from hcsshim 7c9ff7f48):
//! - OCI whiteouts become overlay whiteouts: `.wh.NAME` a 0/0 character device `NAME`,
//!   `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory.
//! - Missing parent directories are created with their parent's attributes; a later entry for
//!   them updates them in place.
//! - An entry for an existing path updates that inode in place (a hard-linked one is replaced),
//!   except that a file whose data is already written cannot be listed again.
//! - Timestamps, xattr placement and the odd corners of tar2ext4 (the 59-byte fast symlink
//!   limit, its xattr block sort, its time round trip for implicit parents) are reproduced.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::{Read, Seek, Write};

pub mod format;
mod gosort;
mod gotar;
mod sink;
mod verity;
mod writer;

pub use verity::{append_dm_verity, random_uuid, VerityInfo};

use gotar::*;
use writer::{components, FileSpec, Sink, Writer};

/// What can go wrong converting a layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Ext4Error {
    /// The tar stream could not be read (truncated, bad checksum, I/O).
    #[error("reading the tar: {0}")]
    Tar(#[source] std::io::Error),
    /// A header field that does not decode.
    #[error("tar entry {path}: {reason}")]
    TarHeader {
        /// The entry's name as far as known.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// A path component longer than 255 bytes.
    #[error("{0}: invalid name (a component is longer than 255 bytes)")]
    InvalidName(String),
    /// A parent directory is missing or not a directory.
    #[error("{0}: parent path not found or not a directory")]
    PathNotFound(String),
    /// A hard link's target does not exist.
    #[error("{0}: hard link target not found")]
    FileNotFound(String),
    /// A non-directory entry for a path that is a directory.
    #[error("{0}: cannot replace a directory with a file")]
    ReplaceDirectory(String),
    /// A directory entry for a path that is a file.
    #[error("{0}: cannot replace a file with a directory")]
    ReplaceWithDirectory(String),
    /// A file listed twice (or whited out) after its data was written.
    #[error("{0}: file listed twice: its data is already written and cannot be overwritten")]
    Overwrite(String),
    /// A hard link over an existing directory or singly linked file.
    #[error("{0}: hard link would orphan an existing file or directory")]
    LinkOverwrites(String),
    /// A hard link to a directory.
    #[error("{link}: hard link to a directory ({target})")]
    LinkToDirectory {
        /// The link's path.
        link: String,
        /// The directory it names.
        target: String,
    },
    /// More than 65000 links to one inode (or subdirectories in one directory).
    #[error("{0}: too many links")]
    TooManyLinks(String),
    /// A regular file over 128 GiB.
    #[error("{path}: file too big ({size} bytes, at most 128 GiB)")]
    FileTooBig {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
    },
    /// Extended attributes that fit neither the inode nor one block.
    #[error("{path}: extended attribute {name} does not fit")]
    XattrTooBig {
        /// The file.
        path: String,
        /// The attribute.
        name: String,
    },
    /// An entry tar2ext4 (or this crate) does not handle.
    #[error("{path}: unsupported: {what}")]
    Unsupported {
        /// The entry.
        path: String,
        /// What about it.
        what: String,
    },
    /// The image would exceed the maximum disk size.
    #[error("image exceeds the maximum disk size of {max} bytes")]
    DiskFull {
        /// The limit.
        max: u64,
    },
    /// A file's data ended before (or went past) its size.
    #[error("file data does not match its size: {0}")]
    SizeMismatch(String),
    /// Writing (or reading back) the image failed.
    #[error("image I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Hashing failed.
    #[error("dm-verity: {0}")]
    Verity(#[from] coffer_verity::VerityError),
    /// `append_dm_verity` on something that is not whole blocks.
    #[error("image size {0} is not a positive multiple of 4096")]
    NotBlockAligned(u64),
    /// A bug: an invariant of the writer did not hold.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Conversion options. The default is what Azure's layer hash uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Turn OCI whiteouts into overlay whiteouts (tar2ext4 `ConvertWhiteout`).
    pub convert_whiteouts: bool,
    /// Maximum image size in bytes; it also sizes the group descriptor table, so it changes
    /// the image (tar2ext4 `MaximumDiskSize`: 0 means 16 GiB, over 16 TiB means 16 TiB).
    pub max_disk_size: u64,
}

/// 128 GiB: `dmverity.RecommendedVHDSizeGB`, the size ConvertAndComputeRootDigest uses.
pub const LAYER_MAX_DISK_SIZE: u64 = 128 << 30;

impl Default for Options {
    fn default() -> Self {
        Options {
            convert_whiteouts: true,
            max_disk_size: LAYER_MAX_DISK_SIZE,
        }
    }
}

impl Options {
    fn effective_max_disk_size(&self) -> u64 {
        const MAX: u64 = 16 << 40;
        match self.max_disk_size {
            0 => 16 << 30,
            s if s > MAX => MAX,
            s => s.div_ceil(4096) * 4096,
        }
    }
}

/// The image written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// Image size in bytes.
    pub size: u64,
    /// Block groups.
    pub groups: u32,
    /// Inodes per group.
    pub inodes_per_group: u32,
    /// Inodes in use (the reserved ones not counted).
    pub inodes: u32,
}

/// Convert `tar` into an ext4 image written to `out` (from its offset 0; `out` is left
/// positioned at the image's end).
pub fn convert<R: Read, W: Write + Seek>(
    tar: R,
    out: W,
    opts: &Options,
) -> Result<ImageInfo, Ext4Error> {
    let (sink, info) = run(tar, sink::FileSink::new(out), opts)?;
    sink.into_inner()?;
    Ok(info)
}

/// [`convert`], then the dm-verity superblock and hash tree appended after the image, as
/// `tar2ext4 --append-dm-verity` writes them (the image is hashed while it is written, not
/// read back). `uuid` goes into the verity superblock (hcsshim uses a random one:
/// [`random_uuid`]). The returned root is the layer hash.
pub fn convert_with_verity<R: Read, W: Write + Seek>(
    tar: R,
    out: W,
    opts: &Options,
    uuid: [u8; 16],
) -> Result<(ImageInfo, VerityInfo), Ext4Error> {
    let tee = sink::TeeSink(sink::FileSink::new(out), sink::HashSink::new());
    let (sink::TeeSink(file, hashes), info) = run(tar, tee, opts)?;
    let mut out = file.into_inner()?;
    let v = verity::write_tree(&mut out, hashes.hashes, uuid)?;
    Ok((info, v))
}

/// The layer hash: dm-verity root of the image `convert` would write with default options
/// (`tar2ext4.ConvertAndComputeRootDigest`). No image is stored.
pub fn root_digest<R: Read>(tar: R) -> Result<[u8; 32], Ext4Error> {
    root_digest_with(tar, &Options::default()).map(|(root, _)| root)
}

/// [`root_digest`] with other options, and the image's geometry.
pub fn root_digest_with<R: Read>(
    tar: R,
    opts: &Options,
) -> Result<([u8; 32], ImageInfo), Ext4Error> {
    let (sink, info) = run(tar, sink::HashSink::new(), opts)?;
    Ok((coffer_verity::root_from_level0(&sink.hashes)?, info))
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
const XATTR_PAX_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Go's `path.Split`: everything through the last '/', and the rest.
fn split_last(name: &[u8]) -> (&[u8], &[u8]) {
    match name.iter().rposition(|&c| c == b'/') {
        Some(i) => (&name[..=i], &name[i + 1..]),
        None => (&name[..0], name),
    }
}

/// tar2ext4's `ConvertTarToExt4`, entry by entry.
fn run<R: Read, S: Sink>(tar: R, sink: S, opts: &Options) -> Result<(S, ImageInfo), Ext4Error> {
    let mut w = Writer::new(sink, opts.effective_max_disk_size())?;
    let mut tar = TarReader::new(tar);
    let mut buf = vec![0u8; 1 << 20];
    while let Some(h) = tar.next()? {
        let comps = components(&h.name);
        w.make_parents(&comps)?;

        if opts.convert_whiteouts {
            let (dir, file) = split_last(&h.name);
            if let Some(hidden) = file.strip_prefix(WHITEOUT_PREFIX) {
                let dir_comps = components(dir);
                if file == OPAQUE_WHITEOUT {
                    let mut f = w.stat(&dir_comps)?;
                    f.xattrs
                        .insert(b"trusted.overlay.opaque".to_vec(), b"y".to_vec());
                    w.create(&dir_comps, f)?;
                } else {
                    let mut target = dir.to_vec();
                    target.push(b'/');
                    target.extend_from_slice(hidden);
                    let f = FileSpec {
                        mode: format::S_IFCHR,
                        ..FileSpec::default()
                    };
                    w.create(&components(&target), f)?;
                }
                continue;
            }
        }

        if h.typeflag == TYPE_LINK {
            w.link(&components(&h.linkname), &comps)?;
            continue;
        }
        let typ = match h.typeflag {
            TYPE_REG => format::S_IFREG,
            TYPE_SYMLINK => format::S_IFLNK,
            TYPE_CHAR => format::S_IFCHR,
            TYPE_BLOCK => format::S_IFBLK,
            TYPE_DIR => format::S_IFDIR,
            TYPE_FIFO => format::S_IFIFO,
            // Anything else becomes a regular file with the entry's data.
            _ => 0,
        };
        let mut xattrs = std::collections::BTreeMap::new();
        for (k, v) in &h.pax {
            if let Some(name) = k.strip_prefix(XATTR_PAX_PREFIX) {
                xattrs.insert(name.to_vec(), v.clone());
            }
        }
        let f = FileSpec {
            mode: (h.mode as u16 & !format::TYPE_MASK) | typ,
            atime: h.atime,
            mtime: h.mtime,
            ctime: h.ctime,
            crtime: h.mtime,
            size: h.size.max(0) as u64,
            uid: h.uid as u32,
            gid: h.gid as u32,
            linkname: h.linkname,
            devmajor: h.devmajor as u32,
            devminor: h.devminor as u32,
            xattrs,
        };
        w.create(&comps, f)?;
        if typ == format::S_IFREG || typ == 0 {
            loop {
                let n = tar.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                w.write_data(&buf[..n])?;
            }
        }
    }
    let (sink, g) = w.close()?;
    Ok((
        sink,
        ImageInfo {
            size: u64::from(g.blocks) * 4096,
            groups: g.groups,
            inodes_per_group: g.inodes_per_group,
            inodes: g.inodes,
        },
    ))
}
