//! The dm-verity hash tree of an ext4 image as hcsshim builds it: SHA-256, 4096-byte blocks,
//! 32 zero bytes of salt. Appended to the image it is a verity superblock (one block) followed
//! by the tree levels from the root block down to the data hashes, as `tar2ext4
//! --append-dm-verity` (dmverity.ComputeAndWriteHashDevice) writes it.

use std::io::{Read, Seek, SeekFrom, Write};

use crate::format::BLOCK_SIZE;
use crate::sink::hash_block;
use crate::Ext4Error;

/// Where the hash tree went and its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerityInfo {
    /// The dm-verity root hash (the layer hash).
    pub root: [u8; 32],
    /// Data blocks covered (the image size / 4096).
    pub data_blocks: u64,
    /// Byte offset of the verity superblock (= the image size); the tree follows one block on.
    pub superblock_offset: u64,
    /// Bytes appended: superblock block plus tree.
    pub appended: u64,
}

/// Compute the hash tree of the whole of `image` (an ext4 image, a multiple of 4096 bytes)
/// and append a verity superblock and the tree after it. `uuid` goes into the superblock
/// (hcsshim puts a random one there; pass a fixed one for reproducible files).
pub fn append_dm_verity<F: Read + Write + Seek>(
    image: &mut F,
    uuid: [u8; 16],
) -> Result<VerityInfo, Ext4Error> {
    let size = image.seek(SeekFrom::End(0))?;
    if size == 0 || size % BLOCK_SIZE as u64 != 0 {
        return Err(Ext4Error::NotBlockAligned(size));
    }
    image.seek(SeekFrom::Start(0))?;
    let mut level0 = Vec::with_capacity((size / BLOCK_SIZE as u64) as usize);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        image.read_exact(&mut buf[..n])?;
        level0.extend(buf[..n].chunks_exact(BLOCK_SIZE).map(hash_block));
        left -= n as u64;
    }
    image.seek(SeekFrom::Start(size))?;
    write_tree(image, level0, uuid)
}

/// Write the verity superblock and the tree over data blocks with hashes `level0` to `out`.
pub(crate) fn write_tree<W: Write>(
    out: &mut W,
    level0: Vec<[u8; 32]>,
    uuid: [u8; 16],
) -> Result<VerityInfo, Ext4Error> {
    if level0.is_empty() {
        return Err(Ext4Error::NotBlockAligned(0));
    }
    let d = coffer_verity::write_hash_device(out, &level0, uuid)?;
    Ok(VerityInfo {
        root: d.root,
        data_blocks: d.data_blocks,
        superblock_offset: d.data_blocks * BLOCK_SIZE as u64,
        appended: d.bytes,
    })
}

/// A random superblock UUID, as hcsshim uses.
pub fn random_uuid() -> Result<[u8; 16], Ext4Error> {
    let mut u = [0u8; 16];
    openssl::rand::rand_bytes(&mut u).map_err(|e| Ext4Error::Io(std::io::Error::other(e)))?;
    Ok(u)
}
