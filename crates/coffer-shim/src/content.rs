//! The image's layers, from containerd's content store over its gRPC API.
//!
//! Chosen over reading `content/blobs/sha256/` under containerd's root: the API needs no
//! knowledge of containerd's directories (the shim is told only its socket), works the same for
//! any content store, and takes a lease so that the blobs cannot be collected while they are read.
//! The cost is one gRPC client (tonic, via `containerd-client` 0.8, which fits the workspace's Rust
//! version and containerd 1.6+).
//!
//! containerd's unpacked snapshot is never used: it is not the measured bytes. The blobs are
//! copied into a local OCI layout (`$COFFER_HOME/shim/content`), checked against their digests
//! (manifest, config) and diff_ids (layers) as `coffer image import` checks them, and each
//! layer becomes an ext4 image with its dm-verity tree (`coffer-image`, the bytes Azure's tar2ext4
//! makes). The agent computes the layer's root itself and mounts it only if the policy names it:
//! nothing here can make it accept another layer.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use coffer_image::{measure_layers, Digest, Image, Layout};
use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient,
    images_client::ImagesClient, leases_client::LeasesClient, CreateRequest, DeleteRequest,
    GetContainerRequest, GetImageRequest, ReadContentRequest,
};
use containerd_client::tonic::{self, metadata::MetadataValue, transport::Channel, Request};

use crate::{io, ShimError};

/// Where a container's image was put: the local layout, the image, and each layer's image
/// (ext4 + dm-verity tree), base first.
#[derive(Debug)]
pub struct Fetched {
    /// The image as resolved for this platform.
    pub image: Image,
    /// Layer images, base first (same order as `image.layers`).
    pub layer_images: Vec<PathBuf>,
}

fn grpc(what: &str) -> impl FnOnce(tonic::Status) -> ShimError + '_ {
    move |s| ShimError::Containerd {
        what: what.to_string(),
        reason: format!("{}: {}", s.code(), s.message()),
    }
}

struct Api {
    channel: Channel,
    namespace: String,
    lease: Option<String>,
}

impl Api {
    fn req<T>(&self, msg: T) -> Result<Request<T>, ShimError> {
        let mut r = Request::new(msg);
        let bad = |e: tonic::metadata::errors::InvalidMetadataValue| ShimError::Containerd {
            what: "request".into(),
            reason: format!("namespace or lease is not a header value: {e}"),
        };
        let ns: MetadataValue<_> = self.namespace.parse().map_err(bad)?;
        r.metadata_mut().insert("containerd-namespace", ns);
        if let Some(l) = &self.lease {
            let l: MetadataValue<_> = l.parse().map_err(bad)?;
            r.metadata_mut().insert("containerd-lease", l);
        }
        Ok(r)
    }

    /// Copy a blob into `dst` (written aside, renamed when whole).
    async fn copy_blob(&self, digest: &Digest, dst: &Path) -> Result<(), ShimError> {
        if dst.exists() {
            return Ok(());
        }
        let tmp = dst.with_extension(format!("partial-{}", std::process::id()));
        let mut f =
            std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        let mut stream = ContentClient::new(self.channel.clone())
            .read(self.req(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            })?)
            .await
            .map_err(grpc("content read"))?
            .into_inner();
        let result = async {
            while let Some(chunk) = stream.message().await.map_err(grpc("content read"))? {
                f.write_all(&chunk.data)
                    .map_err(io(format!("writing {}", tmp.display())))?;
            }
            f.sync_all().map_err(io("syncing a blob"))?;
            std::fs::rename(&tmp, dst).map_err(io(format!("renaming to {}", dst.display())))
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// This machine's architecture as OCI names it.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Fetch the image of containerd's container `container_id` (in `namespace`, containerd's gRPC
/// socket `address`) into `cache`, and build its layer images.
pub fn fetch(
    address: &str,
    namespace: &str,
    container_id: &str,
    cache: &Path,
) -> Result<Fetched, ShimError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("starting the gRPC client's runtime"))?;
    rt.block_on(fetch_async(address, namespace, container_id, cache))
}

async fn fetch_async(
    address: &str,
    namespace: &str,
    container_id: &str,
    cache: &Path,
) -> Result<Fetched, ShimError> {
    let address = address.strip_prefix("unix://").unwrap_or(address);
    let channel = containerd_client::connect(address)
        .await
        .map_err(|e| ShimError::Containerd {
            what: format!("connect to {address}"),
            reason: e.to_string(),
        })?;
    let mut api = Api {
        channel,
        namespace: namespace.to_string(),
        lease: None,
    };
    let container = ContainersClient::new(api.channel.clone())
        .get(api.req(GetContainerRequest {
            id: container_id.to_string(),
        })?)
        .await
        .map_err(grpc("containers get"))?
        .into_inner()
        .container
        .ok_or_else(|| ShimError::Containerd {
            what: "containers get".into(),
            reason: format!("no container {container_id}"),
        })?;
    let name = container.image;
    if name.is_empty() {
        return Err(ShimError::Containerd {
            what: "containers get".into(),
            reason: format!("container {container_id} names no image (coffer runs images, not bare root file systems)"),
        });
    }
    let img_err = |reason: String| ShimError::Image {
        image: name.clone(),
        reason,
    };
    // A lease for the reads: the image's blobs stay while they are copied, even if the image is
    // deleted meanwhile. Deleted again at the end (the copies are ours).
    let lease_id = format!("coffer-shim-{}-{}", std::process::id(), container_id);
    LeasesClient::new(api.channel.clone())
        .create(api.req(CreateRequest {
            id: lease_id.clone(),
            labels: HashMap::new(),
        })?)
        .await
        .map_err(grpc("leases create"))?;
    api.lease = Some(lease_id.clone());
    let result = fetch_image(&api, &name, cache, &img_err).await;
    api.lease = None;
    let dropped = LeasesClient::new(api.channel.clone())
        .delete(api.req(DeleteRequest {
            id: lease_id,
            sync: false,
        })?)
        .await;
    let fetched = result?;
    dropped.map_err(grpc("leases delete"))?;
    Ok(fetched)
}

async fn fetch_image(
    api: &Api,
    name: &str,
    cache: &Path,
    img_err: &dyn Fn(String) -> ShimError,
) -> Result<Fetched, ShimError> {
    let target = ImagesClient::new(api.channel.clone())
        .get(api.req(GetImageRequest {
            name: name.to_string(),
        })?)
        .await
        .map_err(grpc("images get"))?
        .into_inner()
        .image
        .and_then(|i| i.target)
        .ok_or_else(|| img_err("containerd has no target for it".into()))?;
    let blobs = cache.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io(format!("mkdir {}", blobs.display())))?;
    let marker = cache.join("oci-layout");
    if !marker.exists() {
        std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io(format!("writing {}", marker.display())))?;
    }
    let layout = Layout::open(cache)?;
    let mut digest: Digest = target.digest.parse()?;
    api.copy_blob(&digest, &layout.blob_path(&digest)).await?;
    if INDEX_TYPES.contains(&target.media_type.as_str()) {
        let index: oci_spec::image::ImageIndex =
            serde_json::from_slice(&layout.read_blob(&digest)?)
                .map_err(|e| img_err(format!("index {digest}: {e}")))?;
        let pick = index
            .manifests()
            .iter()
            .find(|m| {
                m.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == "linux" && p.architecture().to_string() == oci_arch()
                })
            })
            .ok_or_else(|| {
                img_err(format!(
                    "index {digest} has no linux/{} manifest",
                    oci_arch()
                ))
            })?;
        digest = pick.digest().to_string().parse()?;
        api.copy_blob(&digest, &layout.blob_path(&digest)).await?;
    }
    // The config, named by the manifest (read unchecked here: `Layout::image` checks both).
    let manifest: oci_spec::image::ImageManifest =
        serde_json::from_slice(&layout.read_blob(&digest)?)
            .map_err(|e| img_err(format!("manifest {digest}: {e}")))?;
    let config: Digest = manifest.config().digest().to_string().parse()?;
    api.copy_blob(&config, &layout.blob_path(&config)).await?;
    let image = layout.image(&digest)?;
    let images_dir = cache.join("layer-images");
    std::fs::create_dir_all(&images_dir).map_err(io(format!("mkdir {}", images_dir.display())))?;
    let image_of = |l: &coffer_image::Layer| images_dir.join(format!("{}.img", l.digest.hex()));
    let missing: Vec<_> = image
        .layers
        .iter()
        .filter(|l| !image_of(l).exists())
        .cloned()
        .collect();
    for l in &missing {
        api.copy_blob(&l.digest, &layout.blob_path(&l.digest))
            .await?;
    }
    if !missing.is_empty() {
        let measured = measure_layers(&layout, &missing, None, Some(&images_dir));
        // The compressed blobs are not needed once their images exist.
        for l in &missing {
            let _ = std::fs::remove_file(layout.blob_path(&l.digest));
        }
        measured?;
    }
    let layer_images = image.layers.iter().map(image_of).collect();
    Ok(Fetched {
        image,
        layer_images,
    })
}
