//! One streaming pass per layer: blob digest, diff_id and dm-verity root, layers in parallel.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use coffer_verity::VerityHasher;
use flate2::read::GzDecoder;
use openssl::sha::Sha256;

use crate::layout::{Compression, Layer, Layout};
use crate::{io_err, Digest, ImageError};

/// A measured layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerMeasurement {
    /// Digest of the uncompressed tar.
    #[serde(with = "digest_str")]
    pub diff_id: Digest,
    /// dm-verity root hash of the tar, zero-padded to 4096-byte blocks.
    #[serde(with = "hex::serde")]
    pub root_hash: [u8; 32],
}

mod digest_str {
    use super::Digest;
    use serde::{Deserialize, Deserializer, Serializer};
    pub(super) fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.to_string())
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Work done so far, for progress display by the caller.
#[derive(Debug, Default)]
pub struct Progress {
    /// Compressed bytes read.
    pub bytes: AtomicU64,
    /// Total compressed bytes to read.
    pub total: AtomicU64,
}

/// Measure one layer blob at `path`, checking its digest and diff_id.
pub(crate) fn measure_blob(
    path: &Path,
    layer: &Layer,
    progress: Option<&Progress>,
    verity_threads: usize,
) -> Result<LayerMeasurement, ImageError> {
    let compression = layer.compression()?;
    let file = File::open(path).map_err(io_err(path))?;
    let mut src = CountingHash::new(file, progress.map(|p| &p.bytes));
    let mut verity = VerityHasher::new().threads(verity_threads);
    let mut diff = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let decompress_err = |e: io::Error| ImageError::Decompress {
        digest: layer.digest,
        reason: e.to_string(),
    };
    {
        let mut reader: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut src),
            Compression::Gzip => Box::new(GzDecoder::new(&mut src)),
        };
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(decompress_err(e)),
            };
            // Uncompressed: the diff_id is the blob digest, already being computed.
            if compression == Compression::Gzip {
                diff.update(&buf[..n]);
            }
            verity.update(&buf[..n]);
        }
    }
    // Bytes after the gzip stream still belong to the blob digest.
    io::copy(&mut src, &mut io::sink()).map_err(io_err(path))?;
    let actual = Digest::from_bytes(src.finish());
    if actual != layer.digest {
        return Err(ImageError::DigestMismatch {
            digest: layer.digest,
            actual,
        });
    }
    let diff_id = match compression {
        Compression::Gzip => Digest::from_bytes(diff.finish()),
        Compression::None => actual,
    };
    if diff_id != layer.diff_id {
        return Err(ImageError::DiffIdMismatch {
            digest: layer.digest,
            diff_id: layer.diff_id,
            actual: diff_id,
        });
    }
    let root_hash = verity.finish().map_err(|source| ImageError::Verity {
        digest: layer.digest,
        source,
    })?;
    Ok(LayerMeasurement { diff_id, root_hash })
}

/// File reader that hashes and counts.
struct CountingHash<'a> {
    inner: File,
    sha: Sha256,
    counter: Option<&'a AtomicU64>,
}

impl<'a> CountingHash<'a> {
    fn new(inner: File, counter: Option<&'a AtomicU64>) -> Self {
        CountingHash {
            inner,
            sha: Sha256::new(),
            counter,
        }
    }
    fn finish(self) -> [u8; 32] {
        self.sha.finish()
    }
}

impl Read for CountingHash<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        if let Some(c) = self.counter {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// Measure layers of `layout` in parallel (one thread per core), results in layer order.
pub fn measure_layers(
    layout: &Layout,
    layers: &[Layer],
    progress: Option<&Progress>,
) -> Result<Vec<LayerMeasurement>, ImageError> {
    if let Some(p) = progress {
        p.total
            .fetch_add(layers.iter().map(|l| l.size).sum(), Ordering::Relaxed);
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let workers = cores.min(layers.len()).max(1);
    let verity_threads = (cores / workers).max(1);
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<Result<LayerMeasurement, ImageError>>> =
        (0..layers.len()).map(|_| None).collect();
    let done: Vec<(usize, Result<LayerMeasurement, ImageError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(layer) = layers.get(i) else { break };
                        let r = measure_blob(
                            &layout.blob_path(&layer.digest),
                            layer,
                            progress,
                            verity_threads,
                        );
                        mine.push((i, r));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for (i, r) in done {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .zip(layers)
        .map(|(r, l)| {
            r.unwrap_or_else(|| {
                Err(ImageError::NotFound(format!(
                    "layer {} was not measured (worker failed)",
                    l.digest
                )))
            })
        })
        .collect()
}
