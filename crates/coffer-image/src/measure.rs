//! One streaming pass per layer: blob digest, diff_id and the layer hash, layers in parallel.
//!
//! The layer hash is Azure's: the dm-verity root of the ext4 image that hcsshim's tar2ext4 makes
//! of the uncompressed tar (`coffer-ext4`), so Azure's policies and Coffer's name layers alike.
//! The same pass can write that image with its hash tree appended, which is what groups mount.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
    /// The layer hash: dm-verity root of the tar's ext4 image (tar2ext4, whiteouts converted).
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

/// The layer hash of an uncompressed layer tar (`coffer image measure --tar`).
pub fn layer_root<R: Read>(tar: R) -> Result<[u8; 32], coffer_ext4::Ext4Error> {
    coffer_ext4::root_digest(tar)
}

/// Measure one layer blob at `path`, checking its digest and diff_id. With `image`, the layer's
/// ext4 image with its dm-verity tree appended is written there too (the caller keeps it only
/// when the blob checks out).
pub(crate) fn measure_blob(
    path: &Path,
    layer: &Layer,
    progress: Option<&Progress>,
    image: Option<&Path>,
) -> Result<LayerMeasurement, ImageError> {
    let compression = layer.compression()?;
    let file = File::open(path).map_err(io_err(path))?;
    let mut src = CountingHash::new(file, progress.map(|p| &p.bytes));
    let decompress_err = |e: io::Error| ImageError::Decompress {
        digest: layer.digest,
        reason: e.to_string(),
    };
    let layer_err = |e: coffer_ext4::Ext4Error| ImageError::Layer {
        digest: layer.digest,
        source: e,
    };
    let root_hash = {
        let reader: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut src),
            Compression::Gzip => Box::new(GzDecoder::new(&mut src)),
        };
        // The diff_id covers every uncompressed byte, also those after the archive's end.
        let mut tar = DiffHash {
            inner: reader,
            sha: (compression == Compression::Gzip).then(Sha256::new),
        };
        let root = match image {
            Some(out) => {
                let f = File::create(out).map_err(io_err(out))?;
                let w = io::BufWriter::with_capacity(1 << 20, f);
                // A fixed UUID (from the layer digest) keeps the file the same on every build.
                let mut uuid = [0u8; 16];
                uuid.copy_from_slice(&layer.digest.bytes()[..16]);
                coffer_ext4::convert_with_verity(
                    &mut tar,
                    w,
                    &coffer_ext4::Options::default(),
                    uuid,
                )
                .map(|(_, v)| v.root)
            }
            None => coffer_ext4::root_digest(&mut tar),
        };
        // Read to the end whatever happened: a corrupted blob is reported as such, not as
        // the bad tar it decompresses to.
        let drained = io::copy(&mut tar, &mut io::sink());
        (root, drained, tar.sha)
    };
    let (root, drained, diff) = root_hash;
    // Bytes after the gzip stream still belong to the blob digest.
    io::copy(&mut src, &mut io::sink()).map_err(io_err(path))?;
    let actual = Digest::from_bytes(src.finish());
    if actual != layer.digest {
        return Err(ImageError::DigestMismatch {
            digest: layer.digest,
            actual,
        });
    }
    let diff_id = match diff {
        Some(sha) => Digest::from_bytes(sha.finish()),
        None => actual,
    };
    drained.map_err(decompress_err)?;
    if diff_id != layer.diff_id {
        return Err(ImageError::DiffIdMismatch {
            digest: layer.digest,
            diff_id: layer.diff_id,
            actual: diff_id,
        });
    }
    let root_hash = root.map_err(layer_err)?;
    Ok(LayerMeasurement { diff_id, root_hash })
}

/// Reader that hashes what passes (when it has a hasher).
struct DiffHash<R> {
    inner: R,
    sha: Option<Sha256>,
}

impl<R: Read> Read for DiffHash<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(sha) = &mut self.sha {
            sha.update(&buf[..n]);
        }
        Ok(n)
    }
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

/// Measure layers of `layout` in parallel (one thread per core), results in layer order. With
/// `images`, each layer's ext4 image (hash tree appended) is left there as `<digest hex>.img`.
pub fn measure_layers(
    layout: &Layout,
    layers: &[Layer],
    progress: Option<&Progress>,
    images: Option<&Path>,
) -> Result<Vec<LayerMeasurement>, ImageError> {
    if let Some(p) = progress {
        p.total
            .fetch_add(layers.iter().map(|l| l.size).sum(), Ordering::Relaxed);
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let workers = cores.min(layers.len()).max(1);
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
                        // Built under a name of this process's own (two launchers may build
                        // the same layer at once), renamed into place when complete.
                        let out = images.map(|d| {
                            let hex = layer.digest.hex();
                            let partial =
                                d.join(format!("{hex}.{}-{i}.partial", std::process::id()));
                            (partial, d.join(format!("{hex}.img")))
                        });
                        let r = measure_blob(
                            &layout.blob_path(&layer.digest),
                            layer,
                            progress,
                            out.as_ref().map(|(partial, _)| partial.as_path()),
                        )
                        .and_then(|m| {
                            if let Some((partial, done)) = &out {
                                std::fs::rename(partial, done).map_err(io_err(done))?;
                            }
                            Ok(m)
                        });
                        if r.is_err() {
                            if let Some((partial, _)) = &out {
                                let _ = std::fs::remove_file(partial);
                            }
                        }
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
