//! dm-verity root hash of a byte stream (format 1, SHA-256, 4096-byte data and hash blocks, no
//! superblock), as `veritysetup format --no-superblock` computes it.
//!
//! Coffer measures an image layer as the root hash of its ext4 image (hcsshim's tar2ext4 layout,
//! `coffer-ext4`), and pins encrypted volumes by the root of their plaintext. The tree is built
//! while the bytes stream past: each level keeps only its current partial hash block, so memory is
//! constant whatever the input size. Data blocks arriving in large writes are hashed on several
//! threads. [`write_hash_device`] writes the tree itself, for dm-verity to read.
//!
//! Tree shape (cryptsetup `VERITY_create`): level 0 are the hashes `SHA-256(salt ‖ block)` of the
//! data blocks; each next level hashes the previous one's hashes packed 128 to a zero-padded block.
//! The root is the single hash of the first level that has only one. One data block: its hash.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::{Read, Write};

use openssl::sha::Sha256;

/// Data and hash block size.
pub const BLOCK: usize = 4096;
const DIGEST: usize = 32;

/// Errors of measurement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerityError {
    /// dm-verity needs at least one data block.
    #[error("cannot measure an empty stream: dm-verity needs at least one data block")]
    Empty,
    /// Reading the stream failed.
    #[error("reading the data: {0}")]
    Io(#[from] std::io::Error),
}

/// One tree level: the hashes of the current, not yet full, block of this level.
#[derive(Clone, Default)]
struct Level {
    buf: Vec<u8>,
    count: u64,
}

/// Streaming dm-verity hasher.
#[derive(Clone)]
pub struct VerityHasher {
    salt: [u8; 32],
    pending: Vec<u8>,
    levels: Vec<Level>,
    bytes: u64,
    threads: usize,
}

impl Default for VerityHasher {
    fn default() -> Self {
        Self::new()
    }
}

fn hash_block(salt: &[u8; 32], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finish()
}

impl VerityHasher {
    /// A hasher with Coffer's parameters: salt of 32 zero bytes, threads = available cores.
    pub fn new() -> Self {
        Self::with_salt([0; 32])
    }

    /// A hasher with another salt.
    pub fn with_salt(salt: [u8; 32]) -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        VerityHasher {
            salt,
            pending: Vec::with_capacity(BLOCK),
            levels: vec![Level::default()],
            bytes: 0,
            threads,
        }
    }

    /// Limit the threads used for data blocks (1 = hash on the caller's thread).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Bytes consumed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Feed bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.bytes += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (BLOCK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == BLOCK {
                let h = hash_block(&self.salt, &self.pending);
                self.pending.clear();
                self.push(0, h);
            }
        }
        let full = data.len() / BLOCK * BLOCK;
        self.hash_data_blocks(&data[..full]);
        self.pending.extend_from_slice(&data[full..]);
    }

    /// Hash whole data blocks, in parallel when there are enough of them.
    fn hash_data_blocks(&mut self, blocks: &[u8]) {
        let n = blocks.len() / BLOCK;
        if n == 0 {
            return;
        }
        if self.threads == 1 || n < 64 {
            for b in blocks.chunks_exact(BLOCK) {
                let h = hash_block(&self.salt, b);
                self.push(0, h);
            }
            return;
        }
        let per = n.div_ceil(self.threads) * BLOCK;
        let salt = self.salt;
        let hash_all = move |part: &[u8]| -> Vec<[u8; DIGEST]> {
            part.chunks_exact(BLOCK)
                .map(|b| hash_block(&salt, b))
                .collect()
        };
        let parts: Vec<&[u8]> = blocks.chunks(per).collect();
        let hashes: Vec<Vec<[u8; DIGEST]>> = std::thread::scope(|s| {
            let handles: Vec<_> = parts
                .iter()
                .map(|&p| s.spawn(move || hash_all(p)))
                .collect();
            handles
                .into_iter()
                .zip(&parts)
                // A panicked worker (not expected: SHA-256 does not panic) is redone here.
                .map(|(h, &p)| h.join().unwrap_or_else(|_| hash_all(p)))
                .collect()
        });
        for h in hashes.into_iter().flatten() {
            self.push(0, h);
        }
    }

    /// Append a hash to `level`; a full hash block is hashed into the next level.
    fn push(&mut self, level: usize, hash: [u8; DIGEST]) {
        if self.levels.len() <= level {
            self.levels.push(Level::default());
        }
        let l = &mut self.levels[level];
        l.buf.extend_from_slice(&hash);
        l.count += 1;
        if l.buf.len() == BLOCK {
            let h = hash_block(&self.salt, &l.buf);
            l.buf.clear();
            self.push(level + 1, h);
        }
    }

    /// Pad the last data block with zeros and return the root hash.
    pub fn finish(mut self) -> Result<[u8; DIGEST], VerityError> {
        if !self.pending.is_empty() {
            self.pending.resize(BLOCK, 0);
            let h = hash_block(&self.salt, &self.pending);
            self.pending.clear();
            self.push(0, h);
        }
        if self.levels[0].count == 0 {
            return Err(VerityError::Empty);
        }
        let mut level = 0;
        loop {
            let top = level + 1 == self.levels.len();
            let l = &self.levels[level];
            if top && l.count == 1 {
                let mut root = [0u8; DIGEST];
                root.copy_from_slice(&l.buf[..DIGEST]);
                return Ok(root);
            }
            if !l.buf.is_empty() {
                let mut block = l.buf.clone();
                block.resize(BLOCK, 0);
                let h = hash_block(&self.salt, &block);
                self.levels[level].buf.clear();
                self.push(level + 1, h);
            }
            level += 1;
        }
    }
}

/// Root hash of everything `reader` yields, zero-padded to whole blocks.
pub fn root_hash<R: Read>(mut reader: R) -> Result<[u8; DIGEST], VerityError> {
    let mut h = VerityHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        h.update(&buf[..n]);
    }
    h.finish()
}

/// The SHA-256 hash of one 4096-byte block with the 32 zero bytes of salt Coffer and hcsshim
/// use: a level-0 entry of the tree.
pub fn block_hash(block: &[u8]) -> [u8; DIGEST] {
    hash_block(&[0; 32], block)
}

/// The root over data whose level-0 hashes (one per data block, [`block_hash`]) are `level0`.
///
/// The tree above level 0 is the tree of the level-0 hash bytes taken as data, so the root over
/// the hashes is the root over the data.
pub fn root_from_level0(level0: &[[u8; DIGEST]]) -> Result<[u8; DIGEST], VerityError> {
    if let [only] = level0 {
        return Ok(*only);
    }
    let mut v = VerityHasher::new().threads(1);
    let mut buf = Vec::with_capacity(BLOCK);
    for chunk in level0.chunks(BLOCK / DIGEST) {
        buf.clear();
        for h in chunk {
            buf.extend_from_slice(h);
        }
        v.update(&buf);
    }
    v.finish()
}

/// A hash device as [`write_hash_device`] wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashDevice {
    /// The root hash.
    pub root: [u8; DIGEST],
    /// Data blocks the tree covers.
    pub data_blocks: u64,
    /// Bytes written: the superblock block, then the tree.
    pub bytes: u64,
}

/// The 512-byte verity superblock (format version 1, "normal" hash type, SHA-256, 4096-byte
/// blocks, 32 zero bytes of salt).
fn superblock(uuid: [u8; 16], data_blocks: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..6].copy_from_slice(b"verity");
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[12..16].copy_from_slice(&1u32.to_le_bytes());
    b[16..32].copy_from_slice(&uuid);
    b[32..38].copy_from_slice(b"sha256");
    b[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    b[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    b[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    b[80..82].copy_from_slice(&(DIGEST as u16).to_le_bytes());
    // Salt: 32 zero bytes at 88, already zero.
    b
}

/// Hash bytes of one level, zero-padded to whole blocks.
fn level_bytes(hashes: impl Iterator<Item = [u8; DIGEST]>) -> Vec<u8> {
    let mut out = Vec::new();
    for h in hashes {
        out.extend_from_slice(&h);
    }
    let rem = out.len() % BLOCK;
    if rem != 0 {
        out.resize(out.len() + BLOCK - rem, 0);
    }
    out
}

/// Write what dm-verity reads as its hash device for data whose level-0 hashes are `level0`:
/// a verity superblock (one block; `uuid` goes into it), then the levels from the top down, as
/// `veritysetup format` and hcsshim's `tar2ext4 --append-dm-verity` lay them out. The tree
/// then starts at hash block 1 of this output.
pub fn write_hash_device<W: Write>(
    out: &mut W,
    level0: &[[u8; DIGEST]],
    uuid: [u8; 16],
) -> Result<HashDevice, VerityError> {
    if level0.is_empty() {
        return Err(VerityError::Empty);
    }
    // Levels bottom-up until one fits a single block; one data block needs no level at all
    // (its hash is the root).
    let mut levels = Vec::new();
    let root = if let [only] = level0 {
        *only
    } else {
        levels.push(level_bytes(level0.iter().copied()));
        while let Some(last) = levels.last().filter(|l| l.len() > BLOCK) {
            let next = level_bytes(last.chunks_exact(BLOCK).map(block_hash));
            levels.push(next);
        }
        block_hash(levels.last().map_or(&[][..], |l| &l[..]))
    };
    let mut sb = vec![0u8; BLOCK];
    sb[..512].copy_from_slice(&superblock(uuid, level0.len() as u64));
    out.write_all(&sb)?;
    let mut bytes = BLOCK as u64;
    for level in levels.iter().rev() {
        out.write_all(level)?;
        bytes += level.len() as u64;
    }
    out.flush()?;
    Ok(HashDevice {
        root,
        data_blocks: level0.len() as u64,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root hash does not bind the data's length: any level of a tree, read as data, has the
    /// tree's root. Whoever checks a stream against a root must also check that the stream is
    /// what it claims to be (the agent takes the length from the ext4 superblock; dm-verity, a data size).
    #[test]
    fn a_hash_level_taken_as_data_has_the_same_root() {
        let data: Vec<u8> = (0..(200 * BLOCK)).map(|i| (i % 251) as u8).collect();
        let root = |d: &[u8]| {
            let mut v = VerityHasher::new();
            v.update(d);
            v.finish().unwrap()
        };
        let mut level0: Vec<u8> = data
            .chunks(BLOCK)
            .flat_map(|b| hash_block(&[0; 32], b))
            .collect();
        level0.resize(level0.len().div_ceil(BLOCK) * BLOCK, 0);
        assert_eq!(level0.len(), 2 * BLOCK);
        assert_eq!(root(&level0), root(&data));
    }

    #[test]
    fn chunking_and_threads_do_not_change_the_root() {
        let data: Vec<u8> = (0..(300 * BLOCK + 123))
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let one = {
            let mut h = VerityHasher::new().threads(1);
            h.update(&data);
            h.finish().unwrap()
        };
        for (threads, step) in [(2, 1usize << 20), (4, 4097), (3, 1), (2, 65536 * 3)] {
            let mut h = VerityHasher::new().threads(threads);
            for c in data.chunks(step) {
                h.update(c);
            }
            assert_eq!(h.finish().unwrap(), one, "threads {threads} step {step}");
        }
        let mut padded = data.clone();
        padded.resize(301 * BLOCK, 0);
        assert_eq!(root_hash(&padded[..]).unwrap(), one);
        padded.push(0);
        assert_ne!(
            root_hash(&padded[..]).unwrap(),
            one,
            "an extra block changes the root"
        );
    }

    #[test]
    fn the_hash_device_root_is_the_data_root() {
        for blocks in [1usize, 2, 128, 129, 300] {
            let data: Vec<u8> = (0..blocks * BLOCK).map(|i| (i % 253) as u8).collect();
            let level0: Vec<_> = data.chunks(BLOCK).map(block_hash).collect();
            let mut out = Vec::new();
            let dev = write_hash_device(&mut out, &level0, [0; 16]).unwrap();
            let root = root_hash(&data[..]).unwrap();
            assert_eq!(dev.root, root, "{blocks} blocks");
            assert_eq!(root_from_level0(&level0).unwrap(), root, "{blocks} blocks");
            assert_eq!(dev.bytes, out.len() as u64);
            assert_eq!(dev.data_blocks, blocks as u64);
            assert_eq!(&out[..6], b"verity");
            // The block after the superblock is the top level: its hash is the root.
            if blocks > 1 {
                assert_eq!(block_hash(&out[BLOCK..2 * BLOCK]), root);
            }
        }
    }

    #[test]
    fn a_hash_device_over_nothing_is_an_error() {
        assert!(matches!(
            write_hash_device(&mut Vec::new(), &[], [0; 16]),
            Err(VerityError::Empty)
        ));
    }

    #[test]
    fn empty_is_an_error() {
        assert!(matches!(
            VerityHasher::new().finish(),
            Err(VerityError::Empty)
        ));
    }

    #[test]
    fn one_block_root_is_its_hash() {
        let block = [5u8; BLOCK];
        assert_eq!(root_hash(&block[..]).unwrap(), hash_block(&[0; 32], &block));
    }
}
