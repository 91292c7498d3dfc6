//! The image store on real images (umoci-built) and hand-made layouts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use coffer_image::{Digest, ImageError, ImageRef, Store, StoredImage};
use coffer_testkit::Need;
use serde_json::json;

fn veritysetup_root(padded: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (d, h) = (dir.path().join("d"), dir.path().join("h"));
    std::fs::write(&d, padded).unwrap();
    let out = Command::new("veritysetup")
        .args([
            "format",
            "--no-superblock",
            &format!("--salt={}", "0".repeat(64)),
        ])
        .args([&d, &h])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap()
        .trim()
        .to_string()
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A layout with one uncompressed layer made by the real `tar`.
fn hand_layout(dir: &Path, tamper_diff_id: bool) -> Vec<u8> {
    let content = dir.join("content");
    std::fs::create_dir_all(content.join("etc")).unwrap();
    std::fs::write(content.join("etc/motd"), "hello\n").unwrap();
    let tar = dir.join("layer.tar");
    let st = Command::new("tar")
        .args(["-C"])
        .arg(&content)
        .args(["-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let layer = std::fs::read(&tar).unwrap();
    let oci = dir.join("oci");
    std::fs::create_dir_all(oci.join("blobs/sha256")).unwrap();
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |bytes: &[u8]| -> Digest {
        let d = Digest::of(bytes);
        std::fs::write(oci.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        d
    };
    let ld = put(&layer);
    let diff_id = if tamper_diff_id {
        Digest::of(b"other")
    } else {
        ld
    };
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]}
    }))
    .unwrap();
    let cd = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.to_string(), "size": layer.len()}]
    })).unwrap();
    let md = put(&manifest);
    std::fs::write(oci.join("index.json"), serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(), "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}]
    })).unwrap()).unwrap();
    layer
}

/// [`hand_layout`] under `dir`, imported as `hand:v1` into a store at `dir/home`: the layer
/// tar, the store, the image.
fn import_hand(dir: &Path) -> (Vec<u8>, Store, StoredImage) {
    let layer = hand_layout(dir, false);
    let store = Store::open(&dir.join("home")).unwrap();
    let img = store
        .import(
            &ImageRef::parse(&format!("oci:{}:v1", dir.join("oci").display())).unwrap(),
            Some("hand:v1"),
            None,
        )
        .unwrap();
    (layer, store, img)
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        umoci_image_imports_and_measures_as_azure_does:
            coffer_testkit::EXAMPLE_IMAGE,
            Need::Tool("veritysetup"),
            Need::Vectors,
            coffer_testkit::TAR2EXT4;
        uncompressed_layers_import_and_measure;
        corrupted_blobs_are_refused_and_the_store_is_unchanged;
        files_are_read_from_the_images_root_file_system;
        measurements_and_account_files_are_cached;
        a_missing_layer_image_is_built_again_the_same;
    ])
}

fn umoci_image_imports_and_measures_as_azure_does() {
    let tmp = tempfile::tempdir().unwrap();
    let oci = tmp.path().join("hello");
    coffer_testkit::build_example_image(&oci);
    let home = tmp.path().join("home");
    let store = Store::open(&home).unwrap();
    let src = ImageRef::parse(&format!("oci:{}:latest", oci.display())).unwrap();
    let direct = store.measure(&store.resolve(&src).unwrap(), None).unwrap();
    let img = store.import(&src, None, None).unwrap();
    assert_eq!(img.name, "hello:latest");
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(img.image.layers.len(), 2);
    assert!(img
        .image
        .layers
        .iter()
        .all(|l| l.media_type.ends_with("+gzip")));
    let m = store.measure(&img, None).unwrap();
    assert_eq!(m, direct);
    for (i, (layer, meas)) in img.image.layers.iter().zip(&m).enumerate() {
        assert_eq!(meas.diff_id, layer.diff_id);
        let gz = std::fs::read(store.layout().blob_path(&layer.digest)).unwrap();
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
        assert_eq!(Digest::of(&tar), layer.diff_id);
        // Azure's layer hash: the dm-verity root of the tar's ext4 image.
        assert_eq!(meas.root_hash, coffer_ext4::root_digest(&tar[..]).unwrap());
        // The kept layer image: that ext4 image, its root as veritysetup computes it, then the tree.
        let image = std::fs::read(store.layer_image(&img, i).unwrap()).unwrap();
        let f = tempfile::tempfile().unwrap();
        coffer_ext4::convert(&tar[..], &f, &Default::default()).unwrap();
        let mut fs = Vec::new();
        std::io::Seek::rewind(&mut &f).unwrap();
        std::io::Read::read_to_end(&mut &f, &mut fs).unwrap();
        assert_eq!(&image[..fs.len()], &fs[..]);
        assert_eq!(hex::encode(meas.root_hash), veritysetup_root(&fs));
        // And what hcsshim's own code (Azure's policy tooling) computes for this layer.
        let reference = coffer_testkit::tar2ext4_reference();
        let t = tmp.path().join("layer.tar");
        std::fs::write(&t, &tar).unwrap();
        let out = Command::new(reference).arg(&t).output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            hex::encode(meas.root_hash)
        );
    }
    // Importing the same image again under another name reuses blobs.
    let again = store.import(&src, Some("hello:v2"), None).unwrap();
    assert_eq!(again.image.manifest_digest, img.image.manifest_digest);
    assert_eq!(store.list().unwrap().len(), 2);
}

fn uncompressed_layers_import_and_measure() {
    let tmp = tempfile::tempdir().unwrap();
    let (layer, store, img) = import_hand(tmp.path());
    let m = store.measure(&img, None).unwrap();
    assert_eq!(
        m[0].root_hash,
        coffer_ext4::root_digest(&layer[..]).unwrap()
    );
    assert!(matches!(
        store.resolve(&ImageRef::parse("nope:1").unwrap()),
        Err(ImageError::NotFound(_))
    ));
    let err = store
        .resolve(&ImageRef::parse(&format!("oci:{}:v9", tmp.path().join("oci").display())).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("tags: v1"), "{err}");
}

fn corrupted_blobs_are_refused_and_the_store_is_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = hand_layout(tmp.path(), false);
    let home = tmp.path().join("home");
    let store = Store::open(&home).unwrap();
    let before = snapshot(&home);
    let blob = tmp
        .path()
        .join("oci/blobs/sha256")
        .join(Digest::of(&layer).hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[600] ^= 1;
    std::fs::write(&blob, &bytes).unwrap();
    let err = store
        .import(
            &ImageRef::parse(&format!("oci:{}", tmp.path().join("oci").display())).unwrap(),
            None,
            None,
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_eq!(snapshot(&home), before);

    let tmp2 = tempfile::tempdir().unwrap();
    hand_layout(tmp2.path(), true);
    let err = store
        .import(
            &ImageRef::parse(&format!("oci:{}", tmp2.path().join("oci").display())).unwrap(),
            None,
            None,
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    assert_eq!(snapshot(&home), before);
    let err = Store::open(&home)
        .unwrap()
        .import(&ImageRef::parse("oci:/nonexistent").unwrap(), None, None)
        .unwrap_err();
    assert!(err.to_string().contains("not an OCI image layout"), "{err}");
}

fn files_are_read_from_the_images_root_file_system() {
    let tmp = tempfile::tempdir().unwrap();
    hand_layout(tmp.path(), false);
    let store = Store::open(&tmp.path().join("home")).unwrap();
    let img = store
        .resolve(&ImageRef::parse(&format!("oci:{}:v1", tmp.path().join("oci").display())).unwrap())
        .unwrap();
    assert_eq!(img.read_file("/etc/motd").unwrap().unwrap(), b"hello\n");
    assert_eq!(img.read_file("etc/motd").unwrap().unwrap(), b"hello\n");
    assert!(img.read_file("/etc/passwd").unwrap().is_none());
    assert!(
        img.read_file("/etc").unwrap().is_none(),
        "a directory is not a file"
    );
}

fn measurements_and_account_files_are_cached() {
    let tmp = tempfile::tempdir().unwrap();
    hand_layout(tmp.path(), false);
    let home = tmp.path().join("home");
    let store = Store::open(&home).unwrap();
    let img = store
        .resolve(&ImageRef::parse(&format!("oci:{}:v1", tmp.path().join("oci").display())).unwrap())
        .unwrap();
    let m = store.measure(&img, None).unwrap();
    let cached = home
        .join("images/measurements-ext4")
        .join(format!("{}.json", img.image.layers[0].digest.hex()));
    assert!(cached.is_file(), "the root is cached by layer digest");
    // A second measure is served from the cache (a changed cache entry would show).
    assert_eq!(store.measure(&img, None).unwrap(), m);
    assert_eq!(
        store.read_image_file(&img, "etc/motd").unwrap().unwrap(),
        b"hello\n"
    );
    assert!(store.read_image_file(&img, "etc/passwd").unwrap().is_none());
    let files = home
        .join("images/files")
        .join(img.image.manifest_digest.hex());
    assert_eq!(
        std::fs::read_dir(files).unwrap().count(),
        2,
        "both answers remembered"
    );
}

fn a_missing_layer_image_is_built_again_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let (layer, store, img) = import_hand(tmp.path());
    let path = store.layer_image(&img, 0).unwrap();
    let first = std::fs::read(&path).unwrap();
    // The ext4 image of the layer, then its tree.
    let f = tempfile::tempfile().unwrap();
    coffer_ext4::convert(&layer[..], &f, &Default::default()).unwrap();
    let fs_len = usize::try_from(f.metadata().unwrap().len()).unwrap();
    assert!(first.len() > fs_len);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(store.layer_image(&img, 0).unwrap(), path);
    assert_eq!(std::fs::read(&path).unwrap(), first);
    // Nothing half-built is left beside it.
    let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.ends_with(".img")), "{names:?}");
    assert!(matches!(
        store.layer_image(&img, 1),
        Err(ImageError::NotFound(_))
    ));
}
