//! dm-verity root hash of a byte stream (format 1, SHA-256, 4096-byte data and hash blocks, no
//! superblock), as `veritysetup format --no-superblock` computes it.
//!
//! Coffer measures an image layer as the root hash of its uncompressed tar stream zero-padded to a
//! whole number of blocks. The tree is built while the bytes stream past: each level keeps only its
//! current partial hash block, so memory is constant whatever the input size. Data blocks arriving
//! in large writes are hashed on several threads.
//!
//! Tree shape (cryptsetup `VERITY_create`): level 0 are the hashes `SHA-256(salt ‖ block)` of the
//! data blocks; each next level hashes the previous one's hashes packed 128 to a zero-padded block.
//! The root is the single hash of the first level that has only one. One data block: its hash.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::Read;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A root hash does not bind the data's length: any level of a tree, read as data, has the
    /// tree's root. Whoever checks a stream against a root must also check that the stream is
    /// what it claims to be (the agent requires a complete tar; dm-verity, a data size).
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
