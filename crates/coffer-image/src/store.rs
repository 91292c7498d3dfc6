//! The local store: an OCI image layout under `$COFFER_HOME/images` plus a measurement cache.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, MediaType};

use crate::layout::{Image, Layout, REF_NAME};
use crate::measure::{measure_layers, LayerMeasurement, Progress};
use crate::{io_err, Digest, ImageError};

/// Where an image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// An OCI layout directory, optionally with a tag (`oci:DIR[:TAG]`).
    OciLayout {
        /// Directory.
        dir: PathBuf,
        /// Tag (ref name).
        tag: Option<String>,
    },
    /// An image in the store, by name.
    Stored(String),
}

impl ImageRef {
    /// Parse `oci:DIR[:TAG]` or a stored image name.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        if let Some(rest) = s.strip_prefix("oci:") {
            if rest.is_empty() {
                return Err(ImageError::BadReference(
                    "'oci:' needs a directory: oci:DIR[:TAG]".into(),
                ));
            }
            // The tag is what follows the last ':' when that part is not a path.
            if let Some((dir, tag)) = rest.rsplit_once(':') {
                if !tag.contains('/') && !tag.is_empty() && !dir.is_empty() {
                    return Ok(ImageRef::OciLayout {
                        dir: dir.into(),
                        tag: Some(tag.into()),
                    });
                }
            }
            return Ok(ImageRef::OciLayout {
                dir: rest.into(),
                tag: None,
            });
        }
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ImageError::BadReference(format!(
                "'{s}' is not an image name"
            )));
        }
        Ok(ImageRef::Stored(s.to_string()))
    }
}

/// An image found in the store or a layout, with where its blobs are.
#[derive(Clone, Debug)]
pub struct StoredImage {
    /// Its name (stored) or `oci:DIR:TAG`.
    pub name: String,
    /// The layout holding its blobs.
    pub layout: Layout,
    /// The image.
    pub image: Image,
}

/// The image store.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    layout: Layout,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension(format!("tmp-{}", unique()));
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

pub(crate) fn unique() -> String {
    let mut b = [0u8; 8];
    if openssl::rand::rand_bytes(&mut b).is_err() {
        return format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
    }
    hex::encode(b)
}

impl Store {
    /// Open (creating if needed) the store under `home/images`.
    pub fn open(home: &Path) -> Result<Self, ImageError> {
        let root = home.join("images");
        fs::create_dir_all(root.join("blobs/sha256")).map_err(io_err(&root))?;
        fs::create_dir_all(root.join("measurements-ext4")).map_err(io_err(&root))?;
        let marker = root.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            write_atomic(&index, br#"{"schemaVersion":2,"manifests":[]}"#)?;
        }
        let layout = Layout::open(&root)?;
        Ok(Store { root, layout })
    }

    /// The store's own layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Stored images: (name, manifest digest).
    pub fn list(&self) -> Result<Vec<(String, Digest)>, ImageError> {
        let mut tags = self.layout.tags()?;
        tags.sort();
        Ok(tags)
    }

    /// Resolve a reference (stored name or OCI layout).
    pub fn resolve(&self, r: &ImageRef) -> Result<StoredImage, ImageError> {
        match r {
            ImageRef::Stored(name) => {
                let image = self.layout.resolve(Some(name)).map_err(|e| match e {
                    ImageError::NotFound(_) => ImageError::NotFound(format!(
                        "no image '{name}' in the store (coffer image ls lists them; import with coffer image import oci:DIR[:TAG])"
                    )),
                    other => other,
                })?;
                Ok(StoredImage {
                    name: name.clone(),
                    layout: self.layout.clone(),
                    image,
                })
            }
            ImageRef::OciLayout { dir, tag } => {
                let layout = Layout::open(dir)?;
                let image = layout.resolve(tag.as_deref())?;
                let name = match tag {
                    Some(t) => format!("oci:{}:{t}", dir.display()),
                    None => format!("oci:{}", dir.display()),
                };
                Ok(StoredImage {
                    name,
                    layout,
                    image,
                })
            }
        }
    }

    fn cache_path(&self, layer: &Digest) -> PathBuf {
        // `measurements-ext4`: the layer hash changed from the tar's root to the ext4 image's;
        // roots cached under the old name are not reused.
        self.root
            .join("measurements-ext4")
            .join(format!("{}.json", layer.hex()))
    }

    /// Where layer images (ext4 + dm-verity tree, as Azure's layer VHDs) are kept.
    fn layer_images(&self) -> PathBuf {
        self.root.join("layer-images")
    }

    /// The ext4 image of an image's layer `index` with its dm-verity tree appended: built once
    /// (and measured while built), kept by layer digest, rebuilt if missing. Whoever mounts it
    /// checks its root against the policy; the file itself is not trusted.
    pub fn layer_image(&self, img: &StoredImage, index: usize) -> Result<PathBuf, ImageError> {
        let layer =
            img.image.layers.get(index).ok_or_else(|| {
                ImageError::NotFound(format!("{} has no layer {index}", img.name))
            })?;
        let path = self
            .layer_images()
            .join(format!("{}.img", layer.digest.hex()));
        if path.exists() {
            return Ok(path);
        }
        let dir = self.layer_images();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let m = measure_layers(&img.layout, std::slice::from_ref(layer), None, Some(&dir))?;
        if let Some(m) = m.first() {
            if let Ok(json) = serde_json::to_vec(m) {
                let _ = write_atomic(&self.cache_path(&layer.digest), &json);
            }
        }
        Ok(path)
    }

    /// Measure an image's layers (base first), using and filling the cache.
    pub fn measure(
        &self,
        img: &StoredImage,
        progress: Option<&Progress>,
    ) -> Result<Vec<LayerMeasurement>, ImageError> {
        let mut out: Vec<Option<LayerMeasurement>> = Vec::with_capacity(img.image.layers.len());
        let mut todo = Vec::new();
        for (i, l) in img.image.layers.iter().enumerate() {
            let cached = fs::read(self.cache_path(&l.digest))
                .ok()
                .and_then(|b| serde_json::from_slice::<LayerMeasurement>(&b).ok())
                .filter(|m| m.diff_id == l.diff_id);
            if cached.is_none() {
                todo.push(i);
            }
            out.push(cached);
        }
        if !todo.is_empty() {
            let layers: Vec<_> = todo.iter().map(|&i| img.image.layers[i].clone()).collect();
            // Measuring builds each layer's image anyway: keep it for the groups that mount it.
            let dir = self.layer_images();
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let measured = measure_layers(&img.layout, &layers, progress, Some(&dir))?;
            for (&i, m) in todo.iter().zip(measured) {
                if let Ok(json) = serde_json::to_vec(&m) {
                    // The cache is an optimisation: failing to write it is not an error.
                    let _ = write_atomic(&self.cache_path(&img.image.layers[i].digest), &json);
                }
                out[i] = Some(m);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Import an image from an OCI layout under `name`.
    ///
    /// Every blob is copied into a staging directory and checked (digest; for layers also the
    /// diff_id, and the measurement is cached); only when all pass are the blobs moved into the
    /// store and the name recorded. On any failure the store is unchanged.
    pub fn import(
        &self,
        src: &ImageRef,
        name: Option<&str>,
        progress: Option<&Progress>,
    ) -> Result<StoredImage, ImageError> {
        let ImageRef::OciLayout { dir, tag } = src else {
            return Err(ImageError::BadReference(
                "import needs an OCI layout: oci:DIR[:TAG]".into(),
            ));
        };
        let source = self.resolve(src)?;
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                let base = dir
                    .canonicalize()
                    .ok()
                    .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "image".into());
                format!("{base}:{}", tag.clone().unwrap_or_else(|| "latest".into()))
            }
        };
        ImageRef::parse(&name)?;
        let staging = self.root.join(format!(".staging-{}", unique()));
        let result = self.stage_and_commit(&source, &staging, &name, progress);
        let _ = fs::remove_dir_all(&staging);
        result?;
        self.resolve(&ImageRef::Stored(name))
    }

    fn stage_and_commit(
        &self,
        source: &StoredImage,
        staging: &Path,
        name: &str,
        progress: Option<&Progress>,
    ) -> Result<(), ImageError> {
        let blobs = staging.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let img = &source.image;
        // Small blobs: already digest-checked by the reader.
        let manifest_path = blobs.join(img.manifest_digest.hex());
        fs::write(&manifest_path, &img.manifest_bytes).map_err(io_err(&manifest_path))?;
        let config = source.layout.read_blob(&img.config_digest)?;
        let config_path = blobs.join(img.config_digest.hex());
        fs::write(&config_path, &config).map_err(io_err(&config_path))?;
        for l in &img.layers {
            let from = source.layout.blob_path(&l.digest);
            let to = blobs.join(l.digest.hex());
            if self.layout.blob_path(&l.digest).exists() {
                continue;
            }
            fs::copy(&from, &to).map_err(io_err(&from))?;
        }
        // Check every staged layer (digest, diff_id) and measure it, in parallel.
        write_atomic(
            &staging.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        let staged = Layout::open(staging)?;
        let new_layers: Vec<_> = img
            .layers
            .iter()
            .filter(|l| blobs.join(l.digest.hex()).exists())
            .cloned()
            .collect();
        let measured: Vec<(Digest, LayerMeasurement)> = new_layers
            .iter()
            .map(|l| l.digest)
            .zip(measure_layers(&staged, &new_layers, progress, None)?)
            .collect();
        // Commit: blobs first (content-addressed, harmless if we stop here), then the name.
        for entry in fs::read_dir(&blobs).map_err(io_err(&blobs))? {
            let entry = entry.map_err(io_err(&blobs))?;
            let dest = self.root.join("blobs/sha256").join(entry.file_name());
            if !dest.exists() {
                fs::rename(entry.path(), &dest).map_err(io_err(&dest))?;
            }
        }
        for (digest, m) in measured {
            if let Ok(json) = serde_json::to_vec(&m) {
                let _ = write_atomic(&self.cache_path(&digest), &json);
            }
        }
        self.set_ref(name, &img.manifest_digest, img.manifest_bytes.len() as u64)
    }

    /// Point `name` at a manifest in `index.json`, under an exclusive lock.
    fn set_ref(&self, name: &str, digest: &Digest, size: u64) -> Result<(), ImageError> {
        let lock_path = self.root.join(".lock");
        let lock = fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        let mut index: ImageIndex = self.layout.index()?;
        let mut manifests: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|m| {
                m.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .map(String::as_str)
                    != Some(name)
            })
            .cloned()
            .collect();
        let mut d = Descriptor::new(
            MediaType::ImageManifest,
            size,
            oci_spec::image::Digest::try_from(digest.to_string())
                .map_err(|e| ImageError::BadReference(e.to_string()))?,
        );
        d.set_annotations(Some(
            [(REF_NAME.to_string(), name.to_string())]
                .into_iter()
                .collect(),
        ));
        manifests.push(d);
        index.set_manifests(manifests);
        let bytes = serde_json::to_vec_pretty(&index)
            .map_err(|e| ImageError::BadReference(e.to_string()))?;
        write_atomic(&self.root.join("index.json"), &bytes)
    }
}

/// Largest file [`StoredImage::read_file`] returns (account databases are small).
const MAX_IMAGE_FILE: u64 = 1 << 20;

impl Store {
    /// [`StoredImage::read_file`], remembered per image manifest (the scan decompresses every
    /// layer until the file is found: seconds for a big image, on every `coffer run`).
    pub fn read_image_file(
        &self,
        img: &StoredImage,
        path: &str,
    ) -> Result<Option<Vec<u8>>, ImageError> {
        let key = hex::encode(openssl::sha::sha256(path.as_bytes()));
        let cache = self
            .root
            .join("files")
            .join(img.image.manifest_digest.hex())
            .join(key);
        if let Ok(bytes) = fs::read(&cache) {
            // First byte: 1 = the file follows, 0 = the image has no such file.
            return Ok(match bytes.split_first() {
                Some((1, rest)) => Some(rest.to_vec()),
                _ => None,
            });
        }
        let found = img.read_file(path)?;
        let mut record = vec![u8::from(found.is_some())];
        record.extend_from_slice(found.as_deref().unwrap_or_default());
        if let Some(dir) = cache.parent() {
            // A cache: failing to write it is not an error.
            if fs::create_dir_all(dir).is_ok() {
                let _ = write_atomic(&cache, &record);
            }
        }
        Ok(found)
    }
}

impl StoredImage {
    /// The content of a regular file of the image's root file system (layers applied in order,
    /// whiteouts honoured), e.g. `etc/passwd`; `None` when the image does not have it. For the
    /// policy generator: what it reads is part of the measured layers.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, ImageError> {
        let want = Path::new(path.trim_start_matches('/'));
        let (dir, name) = (want.parent().unwrap_or(Path::new("")), want.file_name());
        let whiteout = name.map(|n| format!(".wh.{}", n.to_string_lossy()));
        for layer in self.image.layers.iter().rev() {
            let bad = |e: std::io::Error| ImageError::Layout {
                path: self.layout.blob_path(&layer.digest),
                reason: format!("layer tar: {e}"),
            };
            let mut archive = tar::Archive::new(self.layout.open_layer(layer)?);
            let mut found = None;
            let mut hidden = false;
            for entry in archive.entries().map_err(bad)? {
                let mut entry = entry.map_err(bad)?;
                let p = entry.path().map_err(bad)?;
                let p: PathBuf = p.components().filter(|c| c.as_os_str() != ".").collect();
                if p == want {
                    if entry.header().entry_type().is_file() {
                        if entry.size() > MAX_IMAGE_FILE {
                            return Err(bad(std::io::Error::other(format!(
                                "{path} is larger than {MAX_IMAGE_FILE} bytes"
                            ))));
                        }
                        let mut buf = Vec::new();
                        std::io::Read::read_to_end(&mut entry, &mut buf).map_err(bad)?;
                        found = Some(buf);
                    } else {
                        found = None;
                        hidden = true;
                    }
                } else if p.parent() == Some(dir) {
                    let n = p.file_name().map(|n| n.to_string_lossy().into_owned());
                    if n == whiteout || n.as_deref() == Some(".wh..wh..opq") {
                        hidden = true;
                    }
                }
            }
            if found.is_some() {
                return Ok(found);
            }
            if hidden {
                return Ok(None);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert_eq!(
            ImageRef::parse("oci:/tmp/x:v1").unwrap(),
            ImageRef::OciLayout {
                dir: "/tmp/x".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci:dir").unwrap(),
            ImageRef::OciLayout {
                dir: "dir".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("hello:latest").unwrap(),
            ImageRef::Stored("hello:latest".into())
        );
        assert!(ImageRef::parse("oci:").is_err());
        assert!(ImageRef::parse("a b").is_err());
    }
}
