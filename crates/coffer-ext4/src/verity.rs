//! The dm-verity hash tree of an ext4 image as hcsshim builds it: SHA-256, 4096-byte blocks,
//! 32 zero bytes of salt. Appended to the image it is a verity superblock (one block) followed
//! by the tree levels from the root block down to the data hashes, as `tar2ext4
//! --append-dm-verity` (dmverity.ComputeAndWriteHashDevice) writes it.

use std::io::{Read, Seek, SeekFrom, Write};

use coffer_verity::VerityHasher;

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

/// The root over data whose level-0 (per data block) hashes are `hashes`.
///
/// The tree above level 0 is the tree of the level-0 hash bytes taken as data, so the root
/// over the hashes is the root over the data: computed by `coffer-verity`.
pub(crate) fn root_from_level0(hashes: &[[u8; 32]]) -> Result<[u8; 32], Ext4Error> {
    let mut v = VerityHasher::new().threads(1);
    let mut buf = Vec::with_capacity(BLOCK_SIZE);
    for chunk in hashes.chunks(BLOCK_SIZE / 32) {
        buf.clear();
        for h in chunk {
            buf.extend_from_slice(h);
        }
        v.update(&buf);
    }
    Ok(v.finish()?)
}

/// The 512-byte verity superblock (format version 1, "normal" hash type).
fn superblock(uuid: [u8; 16], data_blocks: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..6].copy_from_slice(b"verity");
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[12..16].copy_from_slice(&1u32.to_le_bytes());
    b[16..32].copy_from_slice(&uuid);
    b[32..38].copy_from_slice(b"sha256");
    b[64..68].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    b[68..72].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    b[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    b[80..82].copy_from_slice(&32u16.to_le_bytes());
    // Salt: 32 zero bytes at 88, already zero.
    b
}

/// Hash bytes of one level, zero-padded to whole blocks.
fn level_bytes(hashes: impl Iterator<Item = [u8; 32]>) -> Vec<u8> {
    let mut out = Vec::new();
    for h in hashes {
        out.extend_from_slice(&h);
    }
    let rem = out.len() % BLOCK_SIZE;
    if rem != 0 {
        out.resize(out.len() + BLOCK_SIZE - rem, 0);
    }
    out
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
    let blocks = level0.len() as u64;
    if blocks == 0 {
        return Err(Ext4Error::NotBlockAligned(0));
    }
    // Levels bottom-up until one fits a single block.
    let mut levels = vec![level_bytes(level0.into_iter())];
    while let Some(last) = levels.last().filter(|l| l.len() > BLOCK_SIZE) {
        let next = level_bytes(last.chunks_exact(BLOCK_SIZE).map(hash_block));
        levels.push(next);
    }
    let root = hash_block(levels.last().map_or(&[][..], |l| &l[..]));
    let mut sb = vec![0u8; BLOCK_SIZE];
    sb[..512].copy_from_slice(&superblock(uuid, blocks));
    out.write_all(&sb)?;
    let mut appended = BLOCK_SIZE as u64;
    for level in levels.iter().rev() {
        out.write_all(level)?;
        appended += level.len() as u64;
    }
    out.flush()?;
    Ok(VerityInfo {
        root,
        data_blocks: blocks,
        superblock_offset: blocks * BLOCK_SIZE as u64,
        appended,
    })
}

/// A random superblock UUID, as hcsshim uses.
pub fn random_uuid() -> Result<[u8; 16], Ext4Error> {
    let mut u = [0u8; 16];
    openssl::rand::rand_bytes(&mut u).map_err(|e| Ext4Error::Io(std::io::Error::other(e)))?;
    Ok(u)
}
