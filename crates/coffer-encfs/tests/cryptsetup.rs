//! LUKS2 images made by the real cryptsetup open in user space; bad keys and damage are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use coffer_encfs::{open_ext4, Luks2, LuksError};
use coffer_testkit::Need;

/// ext4 with /secret.txt, encrypted in place by `cryptsetup reencrypt --encrypt`.
pub fn make_image(dir: &Path, secret: &str) -> (PathBuf, Vec<u8>) {
    make_image_with(
        dir,
        secret,
        &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
    )
}

fn make_image_with(dir: &Path, secret: &str, kdf: &[&str]) -> (PathBuf, Vec<u8>) {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("secret.txt"), secret).unwrap();
    let img = dir.join("img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(48 << 20).unwrap();
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-b", "4096", "-d"])
        .arg(&src)
        .arg(&img)
        .arg("32M")
        .status()
        .unwrap();
    assert!(ok.success());
    let mut key = vec![0u8; 32];
    openssl::rand::rand_bytes(&mut key).unwrap();
    std::fs::write(dir.join("key"), &key).unwrap();
    let ok = Command::new("cryptsetup")
        .args([
            "reencrypt",
            "--encrypt",
            "--type",
            "luks2",
            "--cipher",
            "aes-xts-plain64",
            "--sector-size",
            "4096",
            "--reduce-device-size",
            "16M",
            "--batch-mode",
        ])
        .args(kdf)
        .arg("--key-file")
        .arg(dir.join("key"))
        .arg(&img)
        .status()
        .unwrap();
    assert!(ok.success());
    (img, key)
}

/// cryptsetup makes the images, debugfs reads what they hold.
const LUKS_TOOLS: &[Need] = &[Need::Tool("cryptsetup"), Need::Tool("debugfs")];
/// cryptsetup makes the images, FUSE serves them, root loop-mounts them.
const LUKS_FUSE: &[Need] = &[
    Need::Tool("cryptsetup"),
    Need::Path("/dev/fuse"),
    Need::Root,
];

fn decrypt(img: &Path, key: &[u8], out: &Path) -> Result<u64, LuksError> {
    let mut f = std::fs::File::open(img)?;
    let luks = Luks2::open(&mut f)?;
    let vk = luks.unlock(&mut f, key)?;
    luks.decrypt_to(&mut f, &vk, &mut std::fs::File::create(out)?)
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        real_cryptsetup_image_opens_and_damage_is_refused: LUKS_TOOLS;
        images_written_by_coffer_are_accepted_by_cryptsetup: LUKS_TOOLS;
        argon2id_keyslots_open: LUKS_TOOLS;
        fuse_block_file_mounts_read_only_and_read_write: LUKS_FUSE;
        images_read_over_http_range_requests: LUKS_FUSE;
        images_read_over_https: LUKS_TOOLS;
    ])
}

fn real_cryptsetup_image_opens_and_damage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (img, key) = make_image(dir.path(), "the secret\n");
    let before = std::fs::read(&img).unwrap();
    let plain = dir.path().join("plain");
    let n = decrypt(&img, &key, &plain).unwrap();
    assert_eq!(n, 40 << 20);
    assert_eq!(debugfs_cat(&plain, "/secret.txt"), "the secret\n");

    let mut wrong = key.clone();
    wrong[0] ^= 1;
    assert!(matches!(
        decrypt(&img, &wrong, &plain),
        Err(LuksError::WrongKey)
    ));

    // Truncated images: inside the keyslot area, and inside the file system.
    let short = dir.path().join("short");
    std::fs::write(&short, &before[..6 << 20]).unwrap();
    assert!(
        matches!(decrypt(&short, &key, &plain), Err(LuksError::Truncated(_))),
        "{:?}",
        decrypt(&short, &key, &plain)
    );
    std::fs::write(&short, &before[..20 << 20]).unwrap();
    let mut out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&plain)
        .unwrap();
    let err = open_ext4(&mut std::fs::File::open(&short).unwrap(), &key, &mut out).unwrap_err();
    assert!(matches!(err, LuksError::Truncated(_)), "{err}");
    let mut out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&plain)
        .unwrap();
    assert_eq!(
        open_ext4(&mut std::fs::File::open(&img).unwrap(), &key, &mut out).unwrap(),
        40 << 20
    );
    // A damaged primary header: the secondary copy still opens it.
    let mut bytes = before.clone();
    bytes[5000] ^= 0xff;
    let one = dir.path().join("one");
    std::fs::write(&one, &bytes).unwrap();
    decrypt(&one, &key, &plain).unwrap();
    // Both copies damaged.
    bytes[16384 + 5000] ^= 0xff;
    std::fs::write(&one, &bytes).unwrap();
    assert!(matches!(
        decrypt(&one, &key, &plain),
        Err(LuksError::Header(_))
    ));
    // Opening never changes the image.
    assert_eq!(std::fs::read(&img).unwrap(), before);
    assert!(matches!(
        decrypt(Path::new("/dev/null"), &key, &plain),
        Err(LuksError::Truncated(_) | LuksError::Io(_))
    ));
}

fn images_written_by_coffer_are_accepted_by_cryptsetup() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("secret.txt"), "written by coffer\n").unwrap();
    let plain = dir.path().join("fs");
    std::fs::File::create(&plain)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&src)
        .arg(&plain)
        .status()
        .unwrap()
        .success());
    let key = b"0123456789abcdef0123456789abcdef";
    let img = dir.path().join("img");
    coffer_encfs::create(
        &mut std::fs::File::open(&plain).unwrap(),
        16 << 20,
        key,
        &mut std::fs::File::create(&img).unwrap(),
        &Default::default(),
    )
    .unwrap();
    let dump = Command::new("cryptsetup")
        .arg("luksDump")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(String::from_utf8_lossy(&dump.stdout).contains("aes-xts-plain64"));
    let keyfile = dir.path().join("key");
    std::fs::write(&keyfile, key).unwrap();
    let ok = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(&keyfile)
        .arg(&img)
        .status()
        .unwrap();
    assert!(ok.success(), "cryptsetup rejects coffer's keyslot");
    std::fs::write(&keyfile, b"another key of thirty-two bytes!").unwrap();
    let bad = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(&keyfile)
        .arg(&img)
        .status()
        .unwrap();
    assert!(!bad.success());
    let out = dir.path().join("out");
    decrypt(&img, key, &out).unwrap();
    assert_eq!(debugfs_cat(&out, "/secret.txt"), "written by coffer\n");
    let mut odd = std::io::Cursor::new(vec![0u8; 100]);
    assert!(
        coffer_encfs::create(&mut odd, 100, key, &mut Vec::new(), &Default::default()).is_err()
    );
}

fn argon2id_keyslots_open() {
    let dir = tempfile::tempdir().unwrap();
    let (img, key) = make_image_with(
        dir.path(),
        "argon secret\n",
        &[
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32768",
            "--pbkdf-force-iterations",
            "4",
            "--pbkdf-parallel",
            "1",
        ],
    );
    let dump = Command::new("cryptsetup")
        .arg("luksDump")
        .arg(&img)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&dump.stdout).contains("argon2id"));
    let plain = dir.path().join("plain");
    decrypt(&img, &key, &plain).unwrap();
    assert_eq!(debugfs_cat(&plain, "/secret.txt"), "argon secret\n");
    let mut wrong = key.clone();
    wrong[31] ^= 1;
    assert!(matches!(
        decrypt(&img, &wrong, &plain),
        Err(LuksError::WrongKey)
    ));
}

/// A file's bytes inside an ext4 image, read by e2fsprogs (not by coffer).
fn debugfs_cat(fs: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(fs)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn fuse_block_file_mounts_read_only_and_read_write() {
    let dir = tempfile::tempdir().unwrap();
    let (img, key) = make_image(dir.path(), "through fuse\n");
    let before = std::fs::read(&img).unwrap();
    let fuse_dir = dir.path().join("fuse");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&fuse_dir).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();

    // Read-only: the ext4 inside mounts from the FUSE block file and the secret reads back.
    let vol = coffer_encfs::block::Volume::open(&img, &key, false).unwrap();
    let m = coffer_encfs::block::mount(vol, &fuse_dir).unwrap();
    assert_eq!(std::fs::metadata(&m.disk).unwrap().len(), 40 << 20);
    assert!(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&m.disk)
            .is_err(),
        "read-only block file opened for writing"
    );
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,ro,noload"])
        .arg(&m.disk)
        .arg(&mnt));
    assert_eq!(
        std::fs::read_to_string(mnt.join("secret.txt")).unwrap(),
        "through fuse\n"
    );
    run(Command::new("umount").arg(&mnt));
    drop(m);
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "a read-only mount changed the image"
    );

    // Read-write: a file written through the mount is encrypted back into the image.
    let vol = coffer_encfs::block::Volume::open(&img, &key, true).unwrap();
    let m = coffer_encfs::block::mount(vol, &fuse_dir).unwrap();
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "loop"])
        .arg(&m.disk)
        .arg(&mnt));
    std::fs::write(mnt.join("new.txt"), "written inside\n").unwrap();
    run(Command::new("umount").arg(&mnt));
    drop(m);
    let after = std::fs::read(&img).unwrap();
    assert_ne!(after, before);
    assert!(
        !after.windows(14).any(|w| w == b"written inside"),
        "plaintext reached the image"
    );
    let plain = dir.path().join("plain");
    decrypt(&img, &key, &plain).unwrap();
    assert_eq!(debugfs_cat(&plain, "/new.txt"), "written inside\n");
    // The wrong key opens nothing.
    let mut wrong = key.clone();
    wrong[0] ^= 1;
    assert!(matches!(
        coffer_encfs::block::Volume::open(&img, &wrong, false),
        Err(LuksError::WrongKey)
    ));
}

/// Answer one HTTP request on `stream`: 206 with the requested byte range, or (without Range
/// support) 200 with an empty body.
fn answer_range<S: std::io::Read + std::io::Write>(stream: S, data: &[u8], honour_range: bool) {
    use std::io::{BufRead, BufReader};
    let mut r = BufReader::new(stream);
    let mut range = None;
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 || l.trim().is_empty() {
            break;
        }
        if let Some(v) = l.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (a, b) = v.trim().split_once('-').unwrap();
            range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
        }
    }
    let s = r.get_mut();
    match (range, honour_range) {
        (Some((a, b)), true) => {
            let b = b.min(data.len() - 1);
            let _ = write!(s, "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{b}/{}\r\n\r\n", b - a + 1, data.len());
            let _ = s.write_all(&data[a..=b]);
        }
        _ => {
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    }
}

/// A minimal HTTP server answering Range requests for one file; counts requests.
fn range_server(
    data: Vec<u8>,
    honour_range: bool,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/vol.img", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c2 = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            c2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            answer_range(conn, &data, honour_range);
        }
    });
    (url, count)
}

fn images_read_over_http_range_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (img, key) = make_image(dir.path(), "over http\n");
    let (url, count) = range_server(std::fs::read(&img).unwrap(), true);
    let src = coffer_encfs::source::HttpSource::new(&url, None).unwrap();
    let vol = coffer_encfs::block::Volume::open_source(Box::new(src), &key, false).unwrap();
    let fuse_dir = dir.path().join("fuse");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&fuse_dir).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let m = coffer_encfs::block::mount(vol, &fuse_dir).unwrap();
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,ro,noload"])
        .arg(&m.disk)
        .arg(&mnt));
    assert_eq!(
        std::fs::read_to_string(mnt.join("secret.txt")).unwrap(),
        "over http\n"
    );
    run(Command::new("umount").arg(&mnt));
    drop(m);
    // Only the blocks needed were fetched: far fewer requests than the image's 512 KiB blocks.
    let n = count.load(std::sync::atomic::Ordering::Relaxed);
    assert!(n > 1 && n < (48 << 20) / (512 << 10), "{n} requests");
    let (no_range, _) = range_server(vec![0u8; 10], false);
    let err = coffer_encfs::source::HttpSource::new(&no_range, None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("206"), "{err}");
}

/// A self-signed certificate for 127.0.0.1, trusted through SSL_CERT_FILE.
fn tls_acceptor(dir: &Path) -> openssl::ssl::SslAcceptor {
    use openssl::x509::extension::SubjectAlternativeName;
    let key = openssl::pkey::PKey::from_ec_key(
        openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "127.0.0.1").unwrap();
    let name = name.build();
    let mut b = openssl::x509::X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .ip("127.0.0.1")
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    let cert = b.build();
    let pem = dir.join("ca.pem");
    std::fs::write(&pem, cert.to_pem().unwrap()).unwrap();
    std::env::set_var("SSL_CERT_FILE", &pem);
    let mut acc =
        openssl::ssl::SslAcceptor::mozilla_intermediate_v5(openssl::ssl::SslMethod::tls()).unwrap();
    acc.set_private_key(&key).unwrap();
    acc.set_certificate(&cert).unwrap();
    acc.build()
}

fn images_read_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (img, key) = make_image(dir.path(), "over https\n");
    let data = std::fs::read(&img).unwrap();
    let acceptor = tls_acceptor(dir.path());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/vol.img", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if let Ok(tls) = acceptor.accept(conn) {
                answer_range(tls, &data, true);
            }
        }
    });
    let src = coffer_encfs::source::HttpSource::new(&url, None).unwrap();
    let vol = coffer_encfs::block::Volume::open_source(Box::new(src), &key, false).unwrap();
    let start = vol.read_at(0, 2048).unwrap();
    let fs = coffer_encfs::ext4_size(&start).unwrap();
    assert!(fs <= vol.size());
    let mut plain = vec![0u8; 0];
    let mut off = 0u64;
    while off < vol.size() {
        let chunk = vol.read_at(off, 4 << 20).unwrap();
        off += chunk.len() as u64;
        plain.extend_from_slice(&chunk);
    }
    let out = dir.path().join("plain");
    std::fs::write(&out, &plain).unwrap();
    assert_eq!(debugfs_cat(&out, "/secret.txt"), "over https\n");
}
