//! Pulling from an OCI registry (oci-client) into a temporary layout, then importing it.
//!
//! The download is not trusted: the import that follows checks every digest and diff_id and
//! measures each layer, exactly as for a local layout. Plain HTTP is used only for `localhost` and
//! `127.0.0.1` registries.

use std::path::Path;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{ImageIndex, ImageManifest};

use crate::measure::Progress;
use crate::store::{ImageRef, Store, StoredImage};
use crate::{io_err, Digest, ImageError};

const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

fn pull_err(what: &str, e: impl std::fmt::Display) -> ImageError {
    ImageError::NotFound(format!("pull: {what}: {e}"))
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

impl Store {
    /// Pull `reference` (e.g. `127.0.0.1:5000/hello:latest`) and import it as `name`
    /// (default: the reference as written).
    pub fn pull(
        &self,
        reference: &str,
        name: Option<&str>,
        progress: Option<&Progress>,
    ) -> Result<StoredImage, ImageError> {
        let r: Reference = reference.parse().map_err(|e| {
            ImageError::BadReference(format!("'{reference}' is not an image reference: {e}"))
        })?;
        let tmp = self
            .layout()
            .dir()
            .join(format!(".pull-{}", crate::store::unique()));
        let result = self.download(&r, &tmp).and_then(|()| {
            self.import(
                &ImageRef::OciLayout {
                    dir: tmp.clone(),
                    tag: Some("pulled".into()),
                },
                Some(name.unwrap_or(reference)),
                progress,
            )
        });
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    fn download(&self, r: &Reference, dir: &Path) -> Result<(), ImageError> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let protocol = if is_loopback(r.resolve_registry()) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            ..Default::default()
        });
        let auth = RegistryAuth::Anonymous;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err(dir))?;
        rt.block_on(async {
            let (mut bytes, _) = client
                .pull_manifest_raw(r, &auth, &MANIFEST_TYPES)
                .await
                .map_err(|e| pull_err(&r.whole(), e))?;
            let mut target = r.clone();
            // An index (multi-platform): take linux/amd64.
            if let Ok(index) = serde_json::from_slice::<ImageIndex>(&bytes) {
                if !index.manifests().is_empty() {
                    let pick = index
                        .manifests()
                        .iter()
                        .find(|m| {
                            m.platform().as_ref().is_some_and(|p| {
                                p.os().to_string() == "linux"
                                    && p.architecture().to_string() == "amd64"
                            })
                        })
                        .or(index.manifests().first())
                        .ok_or_else(|| pull_err(&r.whole(), "empty index"))?;
                    target = r.clone_with_digest(pick.digest().to_string());
                    bytes = client
                        .pull_manifest_raw(&target, &auth, &MANIFEST_TYPES[..2])
                        .await
                        .map_err(|e| pull_err(&target.whole(), e))?
                        .0;
                }
            }
            let manifest: ImageManifest = serde_json::from_slice(&bytes)
                .map_err(|e| pull_err(&target.whole(), format!("invalid manifest: {e}")))?;
            let mdigest = Digest::of(&bytes);
            let write = |d: &Digest, b: &[u8]| -> Result<(), ImageError> {
                let p = blobs.join(d.hex());
                std::fs::write(&p, b).map_err(io_err(&p))
            };
            write(&mdigest, &bytes)?;
            let mut wanted = vec![manifest.config().digest().to_string()];
            wanted.extend(manifest.layers().iter().map(|l| l.digest().to_string()));
            for digest in wanted {
                let d: Digest = digest.parse()?;
                let path = blobs.join(d.hex());
                let file = tokio::fs::File::create(&path)
                    .await
                    .map_err(io_err(&path))?;
                client
                    .pull_blob(&target, digest.as_str(), file)
                    .await
                    .map_err(|e| pull_err(&digest, e))?;
            }
            let index = serde_json::json!({
                "schemaVersion": 2,
                "manifests": [{
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": mdigest.to_string(),
                    "size": bytes.len(),
                    "annotations": {"org.opencontainers.image.ref.name": "pulled"}
                }]
            });
            let ip = dir.join("index.json");
            std::fs::write(&ip, index.to_string()).map_err(io_err(&ip))?;
            let lp = dir.join("oci-layout");
            std::fs::write(&lp, r#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err(&lp))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_http_only_on_loopback() {
        assert!(super::is_loopback("localhost:5000"));
        assert!(super::is_loopback("127.0.0.1:5000"));
        assert!(super::is_loopback("localhost"));
        assert!(!super::is_loopback("registry.example.com"));
        assert!(!super::is_loopback("localhost.evil.com:5000"));
    }
}
