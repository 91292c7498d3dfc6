//! Reading OCI image layouts (image-spec `image-layout.md`).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use crate::{io_err, Digest, ImageError};

/// Annotation holding a manifest's tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout directory.
#[derive(Clone, Debug)]
pub struct Layout {
    dir: PathBuf,
}

/// One layer of an image: its blob and what it must decompress to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Blob digest (of the bytes as stored, possibly compressed).
    pub digest: Digest,
    /// Media type.
    pub media_type: String,
    /// Blob size.
    pub size: u64,
    /// Digest of the uncompressed tar (from the config's rootfs.diff_ids).
    pub diff_id: Digest,
}

impl Layer {
    /// Whether the blob is gzip-compressed.
    pub(crate) fn compression(&self) -> Result<Compression, ImageError> {
        match self.media_type.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
            other => Err(ImageError::UnsupportedMediaType {
                digest: self.digest,
                media_type: other.to_string(),
            }),
        }
    }
}

/// Layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
}

/// A resolved image: manifest, config and layers (base first).
#[derive(Clone, Debug)]
pub struct Image {
    /// Digest of the manifest.
    pub manifest_digest: Digest,
    /// Manifest bytes as stored.
    pub manifest_bytes: Vec<u8>,
    /// Digest of the config blob.
    pub config_digest: Digest,
    /// Parsed config.
    pub config: ImageConfiguration,
    /// Layers, base first.
    pub layers: Vec<Layer>,
}

fn layout_err(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Layout {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Layout {
    /// Open a directory that holds an OCI image layout.
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        let marker = dir.join("oci-layout");
        let text = fs::read_to_string(&marker).map_err(|e| {
            layout_err(
                dir,
                format!("not an OCI image layout (no readable oci-layout file: {e})"),
            )
        })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| layout_err(&marker, format!("not JSON: {e}")))?;
        if v.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
            return Err(layout_err(&marker, "imageLayoutVersion is not 1.0.0"));
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a blob.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// A layer's uncompressed tar stream. Not checked here: whoever consumes it measures it
    /// (the agent inside the TEE never trusts the host's copy).
    pub fn open_layer(&self, layer: &Layer) -> Result<Box<dyn Read + Send>, ImageError> {
        let path = self.blob_path(&layer.digest);
        let f = fs::File::open(&path).map_err(io_err(&path))?;
        let f = std::io::BufReader::with_capacity(1 << 20, f);
        Ok(match layer.compression()? {
            Compression::None => Box::new(f),
            Compression::Gzip => Box::new(flate2::read::GzDecoder::new(f)),
        })
    }

    /// Read a small blob (manifest, config) whole, checking its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest);
        let mut bytes = Vec::new();
        fs::File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_err(&path))?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(ImageError::DigestMismatch {
                digest: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// The parsed `index.json`.
    pub fn index(&self) -> Result<ImageIndex, ImageError> {
        let path = self.dir.join("index.json");
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| layout_err(&path, format!("invalid index: {e}")))
    }

    /// Tags (ref names) in `index.json`, with their manifest digests.
    pub fn tags(&self) -> Result<Vec<(String, Digest)>, ImageError> {
        let index = self.index()?;
        let mut out = Vec::new();
        for m in index.manifests() {
            if let Some(name) = m.annotations().as_ref().and_then(|a| a.get(REF_NAME)) {
                out.push((name.clone(), m.digest().to_string().parse()?));
            }
        }
        Ok(out)
    }

    /// Resolve a tag (or the only manifest, when `tag` is `None`) to an image.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Image, ImageError> {
        let index = self.index()?;
        let manifests = index.manifests();
        let chosen = match tag {
            Some(t) => manifests
                .iter()
                .find(|m| {
                    m.annotations()
                        .as_ref()
                        .and_then(|a| a.get(REF_NAME))
                        .map(String::as_str)
                        == Some(t)
                })
                .ok_or_else(|| {
                    let tags: Vec<String> = self
                        .tags()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(t, _)| t)
                        .collect();
                    ImageError::NotFound(format!(
                        "{}: no image tagged '{t}' (tags: {})",
                        self.dir.display(),
                        if tags.is_empty() {
                            "none".into()
                        } else {
                            tags.join(", ")
                        }
                    ))
                })?,
            None => match manifests.as_slice() {
                [one] => one,
                [] => {
                    return Err(ImageError::NotFound(format!(
                        "{}: the layout holds no image",
                        self.dir.display()
                    )))
                }
                _ => {
                    return Err(ImageError::NotFound(format!(
                        "{}: the layout holds {} images; name one with oci:DIR:TAG",
                        self.dir.display(),
                        manifests.len()
                    )))
                }
            },
        };
        let mut digest: Digest = chosen.digest().to_string().parse()?;
        let mut media = chosen.media_type().clone();
        // A tag may point at an index (multi-platform): take linux/amd64 or its only entry.
        if media == MediaType::ImageIndex {
            let bytes = self.read_blob(&digest)?;
            let inner: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| layout_err(&self.blob_path(&digest), format!("invalid index: {e}")))?;
            let pick = inner
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
                    })
                })
                .or(inner.manifests().first())
                .ok_or_else(|| ImageError::NotFound(format!("index {digest} lists no manifest")))?;
            digest = pick.digest().to_string().parse()?;
            media = pick.media_type().clone();
        }
        if media != MediaType::ImageManifest
            && media.to_string() != "application/vnd.docker.distribution.manifest.v2+json"
        {
            return Err(layout_err(
                &self.blob_path(&digest),
                format!("unsupported manifest media type {media}"),
            ));
        }
        self.image(&digest)
    }

    /// Load the image whose manifest has `digest`.
    pub fn image(&self, digest: &Digest) -> Result<Image, ImageError> {
        let manifest_bytes = self.read_blob(digest)?;
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| layout_err(&self.blob_path(digest), format!("invalid manifest: {e}")))?;
        let config_digest: Digest = manifest.config().digest().to_string().parse()?;
        let config_bytes = self.read_blob(&config_digest)?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|e| {
            layout_err(
                &self.blob_path(&config_digest),
                format!("invalid image config: {e}"),
            )
        })?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(layout_err(
                &self.blob_path(&config_digest),
                format!(
                    "config lists {} diff_ids for {} layers",
                    diff_ids.len(),
                    manifest.layers().len()
                ),
            ));
        }
        let layers = manifest
            .layers()
            .iter()
            .zip(diff_ids)
            .map(|(l, d)| {
                Ok(Layer {
                    digest: l.digest().to_string().parse()?,
                    media_type: l.media_type().to_string(),
                    size: l.size(),
                    diff_id: d.parse()?,
                })
            })
            .collect::<Result<Vec<_>, ImageError>>()?;
        for l in &layers {
            l.compression()?;
        }
        Ok(Image {
            manifest_digest: *digest,
            manifest_bytes,
            config_digest,
            config,
            layers,
        })
    }
}
