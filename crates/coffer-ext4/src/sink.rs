//! Destinations for the image bytes: a seekable writer, or a hasher that keeps only the
//! dm-verity hashes of the image's blocks (no image is stored at all).

use std::io::{self, BufWriter, Seek, SeekFrom, Write};

use crate::format::BLOCK_SIZE;
use crate::writer::Sink;

const BLOCK: u64 = BLOCK_SIZE as u64;
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// Writes the image into a seekable writer.
pub(crate) struct FileSink<W: Write + Seek> {
    out: BufWriter<W>,
    /// Byte offset where the next sequential write goes.
    end: u64,
}

impl<W: Write + Seek> FileSink<W> {
    pub(crate) fn new(out: W) -> Self {
        FileSink {
            out: BufWriter::with_capacity(1 << 20, out),
            end: 0,
        }
    }

    pub(crate) fn into_inner(self) -> io::Result<W> {
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

impl<W: Write + Seek> Sink for FileSink<W> {
    fn start(&mut self, block: u64) -> io::Result<()> {
        self.end = block * BLOCK;
        self.out.seek(SeekFrom::Start(self.end))?;
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.end += data.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, mut n: u64) -> io::Result<()> {
        self.end += n;
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            self.out.write_all(&ZEROS[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    fn rewrite(&mut self, block: u64, data: &[u8]) -> io::Result<()> {
        self.out.seek(SeekFrom::Start(block * BLOCK))?;
        self.out.write_all(data)?;
        self.out.seek(SeekFrom::Start(self.end))?;
        Ok(())
    }

    fn finish(&mut self, end: u64) -> io::Result<()> {
        self.out.flush()?;
        self.out.seek(SeekFrom::Start(end))?;
        Ok(())
    }
}

pub(crate) use coffer_verity::block_hash as hash_block;

/// Keeps the level-0 dm-verity hash of every image block (32 bytes per 4 KiB written) instead
/// of the image: the superblock and descriptors arrive last but only replace their blocks'
/// hashes. The root is then the dm-verity root over those hashes.
pub(crate) struct HashSink {
    pub(crate) hashes: Vec<[u8; 32]>,
    pending: Vec<u8>,
    zero_hash: [u8; 32],
}

impl HashSink {
    pub(crate) fn new() -> Self {
        HashSink {
            hashes: Vec::new(),
            pending: Vec::with_capacity(BLOCK_SIZE),
            zero_hash: hash_block(&[0u8; BLOCK_SIZE]),
        }
    }

    fn hash_blocks(&mut self, data: &[u8]) {
        self.hashes
            .extend(data.chunks_exact(BLOCK_SIZE).map(hash_block));
    }
}

impl Sink for HashSink {
    fn start(&mut self, block: u64) -> io::Result<()> {
        self.hashes = vec![[0; 32]; block as usize];
        Ok(())
    }

    fn append(&mut self, mut data: &[u8]) -> io::Result<()> {
        if !self.pending.is_empty() {
            let k = (BLOCK_SIZE - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..k]);
            data = &data[k..];
            if self.pending.len() < BLOCK_SIZE {
                return Ok(());
            }
            let h = hash_block(&self.pending);
            self.hashes.push(h);
            self.pending.clear();
        }
        let full = data.len() / BLOCK_SIZE * BLOCK_SIZE;
        self.hash_blocks(&data[..full]);
        self.pending.extend_from_slice(&data[full..]);
        Ok(())
    }

    fn zeros(&mut self, mut n: u64) -> io::Result<()> {
        if !self.pending.is_empty() {
            let k = ((BLOCK_SIZE - self.pending.len()) as u64).min(n) as usize;
            self.append(&ZEROS[..k])?;
            n -= k as u64;
        }
        let full = n / BLOCK;
        self.hashes
            .extend(std::iter::repeat_n(self.zero_hash, full as usize));
        self.pending
            .extend_from_slice(&ZEROS[..(n % BLOCK) as usize]);
        Ok(())
    }

    fn rewrite(&mut self, block: u64, data: &[u8]) -> io::Result<()> {
        for (i, chunk) in data.chunks(BLOCK_SIZE).enumerate() {
            let slot = self
                .hashes
                .get_mut(block as usize + i)
                .ok_or_else(|| io::Error::other("rewrite past the end of the image"))?;
            let mut full = [0u8; BLOCK_SIZE];
            full[..chunk.len()].copy_from_slice(chunk);
            *slot = hash_block(&full);
        }
        Ok(())
    }

    fn finish(&mut self, end: u64) -> io::Result<()> {
        if !self.pending.is_empty() || self.hashes.len() as u64 * BLOCK != end {
            return Err(io::Error::other("image does not end on a block boundary"));
        }
        Ok(())
    }
}

/// Both: the image to a writer and its block hashes kept, so the hash tree can be appended
/// without reading the image back.
pub(crate) struct TeeSink<A: Sink, B: Sink>(pub(crate) A, pub(crate) B);

impl<A: Sink, B: Sink> Sink for TeeSink<A, B> {
    fn start(&mut self, block: u64) -> io::Result<()> {
        self.0.start(block)?;
        self.1.start(block)
    }
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.append(data)?;
        self.1.append(data)
    }
    fn zeros(&mut self, n: u64) -> io::Result<()> {
        self.0.zeros(n)?;
        self.1.zeros(n)
    }
    fn rewrite(&mut self, block: u64, data: &[u8]) -> io::Result<()> {
        self.0.rewrite(block, data)?;
        self.1.rewrite(block, data)
    }
    fn finish(&mut self, end: u64) -> io::Result<()> {
        self.0.finish(end)?;
        self.1.finish(end)
    }
}
