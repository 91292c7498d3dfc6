//! Headers forged by the host: well-formed LUKS2 (both copies edited and re-checksummed) whose
//! metadata would make a volume "unlock" with a key the host chose, or make the agent panic,
//! allocate without bound or divide by zero. Each is refused with an error naming the field.
//!
//! These tests use only the API that existed before the metadata was validated (`create`,
//! `Luks2::open`, `unlock`, `Volume::open_source`) and the error texts, so they can be run
//! against that code: there `stripes = 0` and the empty digest unlocked with any passphrase,
//! the equal-halves key was returned, `sector_size = 0` panicked (division by zero), a huge
//! `key_size` aborted on a multi-petabyte allocation and `key_size x stripes` overflowed.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// The allocation guard below is a GlobalAlloc (unsafe by definition); the library forbids unsafe.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use coffer_encfs::Luks2;
use openssl::hash::MessageDigest;
use openssl::symm::{Cipher, Crypter, Mode};
use serde_json::{json, Value};

/// Records the largest single allocation, so forged sizes are shown not to be allocated.
struct Guard;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Guard = Guard;

/// Far more than opening needs (the largest legitimate buffer is a 4 MiB JSON area; test
/// images are built in a growing Vec of about 16 MiB), far less than any forged size.
const ALLOCATION_LIMIT: usize = 64 << 20;

const PASS: &[u8] = b"the key the TEE was given";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

/// A valid image made by the crate's `create`: 64 KiB of plaintext.
fn image() -> Vec<u8> {
    let plain = vec![0x5au8; 64 << 10];
    let mut out = Vec::new();
    coffer_encfs::create(
        &mut Cursor::new(plain),
        64 << 10,
        PASS,
        &mut out,
        &Default::default(),
    )
    .unwrap();
    out
}

fn hdr_size(img: &[u8]) -> usize {
    u64::from_be_bytes(img[8..16].try_into().unwrap()) as usize
}

/// The primary copy's JSON.
fn json_of(img: &[u8]) -> Value {
    let area = &img[4096..hdr_size(img)];
    let end = area.iter().position(|&b| b == 0).unwrap();
    serde_json::from_slice(&area[..end]).unwrap()
}

/// Checksum a header copy (binary header + JSON area) in place, as the spec says: SHA-256 over
/// the whole area with the csum field zeroed, stored at offset 448.
fn reseal(area: &mut [u8]) {
    area[448..512].fill(0);
    let c = openssl::sha::sha256(area);
    area[448..480].copy_from_slice(&c);
}

/// Edit the JSON of both header copies and re-checksum them: a well-formed header again.
fn forge(img: &mut [u8], edit: impl Fn(&mut Value)) {
    let hs = hdr_size(img);
    for off in [0, hs] {
        let area = &mut img[off..off + hs];
        let end = 4096 + area[4096..].iter().position(|&b| b == 0).unwrap();
        let mut v: Value = serde_json::from_slice(&area[4096..end]).unwrap();
        edit(&mut v);
        let text = serde_json::to_vec(&v).unwrap();
        assert!(text.len() < hs - 4096);
        area[4096..].fill(0);
        area[4096..4096 + text.len()].copy_from_slice(&text);
        reseal(area);
    }
}

/// `Luks2::open` then `unlock`: Ok, or the error text.
fn unlock(img: &[u8], pass: &[u8]) -> Result<(), String> {
    LARGEST.store(0, Ordering::Relaxed);
    let mut c = Cursor::new(img);
    let r = Luks2::open(&mut c)
        .map_err(|e| e.to_string())
        .and_then(|l| {
            l.unlock(&mut c, pass)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest < ALLOCATION_LIMIT, "allocated {largest} bytes");
    r
}

/// An image in memory as an image source.
struct Mem(Arc<Vec<u8>>);

impl coffer_encfs::source::Source for Mem {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        let s = usize::try_from(off)
            .ok()
            .and_then(|o| self.0.get(o..o.checked_add(buf.len())?))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(s);
        Ok(())
    }
}

/// What the agent does: `Volume::open_source`.
fn open_volume(img: &[u8], pass: &[u8]) -> Result<(), String> {
    coffer_encfs::block::Volume::open_source(Box::new(Mem(Arc::new(img.to_vec()))), pass, false)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn pbkdf2_sha256(key: &[u8], salt: &[u8], iterations: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    openssl::pkcs5::pbkdf2_hmac(key, salt, iterations, MessageDigest::sha256(), &mut out).unwrap();
    out
}

/// The digest field for `key` as the image's digest section specifies (PBKDF2-SHA256 with its
/// salt and iterations).
fn digest_of(img: &[u8], key: &[u8]) -> String {
    let d = &json_of(img)["digests"]["0"];
    b64(&pbkdf2_sha256(
        key,
        &unb64(&d["salt"]),
        d["iterations"].as_u64().unwrap() as usize,
        32,
    ))
}

#[test]
fn the_forging_helper_keeps_a_valid_image_valid() {
    let mut img = image();
    forge(&mut img, |_| {});
    unlock(&img, PASS).unwrap();
    open_volume(&img, PASS).unwrap();
    assert!(unlock(&img, b"another passphrase")
        .unwrap_err()
        .contains("wrong key"));
}

#[test]
fn stripes_zero_with_the_digest_of_the_zero_key_does_not_unlock() {
    // With af.stripes = 0 the anti-forensic merge of nothing is the all-zero key whatever the
    // passphrase; its digest is public arithmetic. Before validation this unlocked with any
    // passphrase and returned the 64 zero bytes as the volume key.
    let mut img = image();
    let zero = digest_of(&img, &[0u8; 64]);
    forge(&mut img, |v| {
        v["keyslots"]["0"]["af"]["stripes"] = json!(0);
        v["digests"]["0"]["digest"] = json!(zero);
    });
    for pass in [PASS, b"any passphrase".as_slice(), b""] {
        let err = unlock(&img, pass).unwrap_err();
        assert!(err.contains("stripes") && err.contains("4000"), "{err}");
        let err = open_volume(&img, pass).unwrap_err();
        assert!(
            err.contains("af.stripes is 0, LUKS2 requires 4000"),
            "{err}"
        );
    }
    // Any count but 4000 is refused (cryptsetup merges 4000 whatever the JSON says).
    for stripes in [1u64, 3999, 4001, u32::MAX as u64] {
        let mut img = image();
        forge(&mut img, |v| {
            v["keyslots"]["0"]["af"]["stripes"] = json!(stripes)
        });
        let err = unlock(&img, PASS).unwrap_err();
        assert!(err.contains("stripes"), "{err}");
    }
}

#[test]
fn an_empty_or_short_digest_is_refused() {
    // An empty stored digest compared equal to anything: any passphrase "unlocked".
    for digest in ["", "AAAA", &b64(&[0u8; 20]), &b64(&[0u8; 33])] {
        let mut img = image();
        forge(&mut img, |v| v["digests"]["0"]["digest"] = json!(digest));
        let err = unlock(&img, b"any passphrase").unwrap_err();
        assert!(err.contains("digest 0: digest"), "{digest:?}: {err}");
        let err = unlock(&img, PASS).unwrap_err();
        assert!(err.contains("digest"), "{err}");
    }
}

/// LUKS AF diffusion (SHA-256): each 32-byte chunk hashed with its big-endian index.
fn diffuse(d: &[u8]) -> Vec<u8> {
    d.chunks(32)
        .enumerate()
        .flat_map(|(j, c)| {
            let mut h = openssl::sha::Sha256::new();
            h.update(&(j as u32).to_be_bytes());
            h.update(c);
            h.finish()[..c.len()].to_vec()
        })
        .collect()
}

/// Rewrite keyslot 0 so that it holds `key` (4000 stripes, encrypted with the key the
/// passphrase derives), and the digest so that it matches `key`: a keyslot as its creator
/// would have written it.
fn store_in_keyslot(img: &mut [u8], key: &[u8; 64]) {
    let v = json_of(img);
    let slot = &v["keyslots"]["0"];
    let kek = pbkdf2_sha256(
        PASS,
        &unb64(&slot["kdf"]["salt"]),
        slot["kdf"]["iterations"].as_u64().unwrap() as usize,
        64,
    );
    // Stripes 0..3999 zero; the last is the key XOR the diffused chain of the zeros.
    let mut d = vec![0u8; 64];
    for _ in 0..3999 {
        d = diffuse(&d);
    }
    let mut material = vec![0u8; 64 * 4000];
    for (i, x) in material[3999 * 64..].iter_mut().enumerate() {
        *x = d[i] ^ key[i];
    }
    for (s, sector) in material.chunks_mut(512).enumerate() {
        let mut iv = [0u8; 16];
        iv[..8].copy_from_slice(&(s as u64).to_le_bytes());
        let mut c = Crypter::new(Cipher::aes_256_xts(), Mode::Encrypt, &kek, Some(&iv)).unwrap();
        let mut out = vec![0u8; 512 + 16];
        let n = c.update(sector, &mut out).unwrap();
        sector.copy_from_slice(&out[..n]);
    }
    let off: usize = slot["area"]["offset"].as_str().unwrap().parse().unwrap();
    img[off..off + material.len()].copy_from_slice(&material);
    let digest = digest_of(img, key);
    forge(img, |v| v["digests"]["0"]["digest"] = json!(digest));
}

#[test]
fn a_keyslot_holding_an_xts_key_with_equal_halves_is_refused() {
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(&[0x42; 32]);
    key[32..].copy_from_slice(&[0x42; 32]);
    let mut img = image();
    store_in_keyslot(&mut img, &key);
    let err = unlock(&img, PASS).unwrap_err();
    assert!(err.contains("halves are equal"), "{err}");
    let err = open_volume(&img, PASS).unwrap_err();
    assert!(err.contains("halves are equal"), "{err}");
    // The same forgery with a sound key opens: the refusal is the halves.
    key[63] ^= 1;
    let mut img = image();
    store_in_keyslot(&mut img, &key);
    unlock(&img, PASS).unwrap();
}

#[test]
fn sector_size_zero_and_other_sizes_are_clean_errors() {
    // Before validation: a division by zero when the volume was opened.
    for size in [0u64, 1, 256, 511, 513, 8192, 1 << 40] {
        let mut img = image();
        forge(&mut img, |v| {
            v["segments"]["0"]["sector_size"] = json!(size)
        });
        let err = open_volume(&img, PASS).unwrap_err();
        assert!(err.contains("sector_size"), "{size}: {err}");
    }
}

#[test]
fn absurd_key_sizes_and_their_products_are_clean_errors() {
    // Before: key_size x stripes bytes were allocated (a petabyte), or the product overflowed.
    for key_size in [0u64, 16, 48, 128, 1 << 31, 1 << 40, u64::MAX] {
        let mut img = image();
        forge(&mut img, |v| {
            v["keyslots"]["0"]["key_size"] = json!(key_size)
        });
        let err = unlock(&img, PASS).unwrap_err();
        assert!(err.contains("key_size"), "{key_size}: {err}");
    }
    let mut img = image();
    forge(&mut img, |v| {
        v["keyslots"]["0"]["key_size"] = json!(1u64 << 33);
        v["keyslots"]["0"]["af"]["stripes"] = json!(1u64 << 33);
    });
    let err = unlock(&img, PASS).unwrap_err();
    assert!(err.contains("key_size") || err.contains("stripes"), "{err}");
    for area_key in [0u64, 1 << 33] {
        let mut img = image();
        forge(&mut img, |v| {
            v["keyslots"]["0"]["area"]["key_size"] = json!(area_key)
        });
        let err = unlock(&img, PASS).unwrap_err();
        assert!(err.contains("area.key_size"), "{err}");
    }
}

#[test]
fn kdf_bounds_are_enforced_without_running_the_kdf() {
    let argon = |time: u64, memory: u64, cpus: u64| {
        move |v: &mut Value| {
            let salt = v["keyslots"]["0"]["kdf"]["salt"].clone();
            v["keyslots"]["0"]["kdf"] = json!({"type": "argon2id", "time": time, "memory": memory, "cpus": cpus, "salt": salt});
        }
    };
    for (edit, field) in [
        (
            Box::new(argon(4, 1 << 40, 1)) as Box<dyn Fn(&mut Value)>,
            "memory",
        ),
        (Box::new(argon(4, 4 << 20, 1)), "memory"),
        (Box::new(argon(4, 16, 1)), "memory"),
        (Box::new(argon(1 << 20, 1 << 20, 1)), "time"),
        (Box::new(argon(0, 1024, 1)), "time"),
        (Box::new(argon(4, 1024, 0)), "cpus"),
        (Box::new(argon(4, 1024, 64)), "cpus"),
        (
            Box::new(|v: &mut Value| v["keyslots"]["0"]["kdf"]["iterations"] = json!(0)),
            "iterations",
        ),
        (
            Box::new(|v: &mut Value| v["keyslots"]["0"]["kdf"]["iterations"] = json!(999)),
            "iterations",
        ),
        (
            Box::new(|v: &mut Value| v["keyslots"]["0"]["kdf"]["iterations"] = json!(u32::MAX)),
            "iterations",
        ),
        (
            Box::new(|v: &mut Value| v["digests"]["0"]["iterations"] = json!(4_000_000_000u64)),
            "iterations",
        ),
        (
            Box::new(|v: &mut Value| v["keyslots"]["0"]["kdf"]["salt"] = json!("")),
            "salt",
        ),
        (
            Box::new(|v: &mut Value| v["digests"]["0"]["salt"] = json!(b64(&[1; 16]))),
            "salt",
        ),
    ] {
        let mut img = image();
        forge(&mut img, edit);
        let t = std::time::Instant::now();
        let err = unlock(&img, PASS).unwrap_err();
        assert!(err.contains(field), "{field}: {err}");
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{err}");
    }
}

#[test]
fn keyslot_areas_must_lie_inside_the_keyslots_area() {
    let area = |offset: &str, size: &str| {
        let (offset, size) = (offset.to_string(), size.to_string());
        move |v: &mut Value| {
            v["keyslots"]["0"]["area"]["offset"] = json!(offset);
            v["keyslots"]["0"]["area"]["size"] = json!(size);
        }
    };
    for (offset, size) in [
        ("0", "258048"),                     // over the headers
        ("16384", "258048"),                 // over the secondary header
        ("16777216", "258048"),              // the data segment
        ("16744448", "258048"),              // straddles the data segment
        ("32768", "4096"),                   // too small for the split key
        ("32769", "258048"),                 // not 4096-aligned
        ("18446744073709547520", "8192"),    // offset + size overflows
        ("32768", "18446744073709551615"),   // ditto
        ("99999999999999999999999", "4096"), // not 64-bit
    ] {
        let mut img = image();
        forge(&mut img, area(offset, size));
        let err = unlock(&img, PASS).unwrap_err();
        assert!(err.contains("area"), "{offset}+{size}: {err}");
    }
    // The data segment may not start inside the keyslots area either.
    let mut img = image();
    forge(&mut img, |v| {
        v["segments"]["0"]["offset"] = json!("1048576")
    });
    let err = open_volume(&img, PASS).unwrap_err();
    assert!(err.contains("offset"), "{err}");
}

#[test]
fn header_and_json_area_sizes_are_bounded() {
    // hdr_size says how much JSON to read: only 16 KiB .. 4 MiB, both copies checked.
    for size in [0u64, 4096, 16383, 16385, 8 << 20, 1 << 40, u64::MAX] {
        let mut img = image();
        for off in [0, 16384] {
            img[off + 8..off + 16].copy_from_slice(&size.to_be_bytes());
            reseal(&mut img[off..off + 16384]);
        }
        let err = unlock(&img, PASS).unwrap_err();
        assert!(
            err.contains("hdr_size") || err.contains("header"),
            "{size}: {err}"
        );
    }
    // config.json_size must agree with the binary header.
    let mut img = image();
    forge(&mut img, |v| {
        v["config"]["json_size"] = json!("1099511627776")
    });
    let err = unlock(&img, PASS).unwrap_err();
    assert!(err.contains("json_size"), "{err}");
    // A JSON area not terminated by NUL bytes.
    let mut img = image();
    for off in [0, 16384] {
        let area = &mut img[off..off + 16384];
        let end = 4096 + area[4096..].iter().position(|&b| b == 0).unwrap();
        area[end..].fill(b' ');
        reseal(area);
    }
    let err = unlock(&img, PASS).unwrap_err();
    assert!(err.contains("JSON area"), "{err}");
    // One copy with a bad checksum: the other is used; both bad: refused.
    let mut img = image();
    img[20000] ^= 1;
    unlock(&img, PASS).unwrap();
    img[4000] ^= 1;
    assert!(unlock(&img, PASS).unwrap_err().contains("checksum"));
}

#[test]
fn the_plaintext_verity_root_pins_what_a_volume_holds() {
    let plain: Vec<u8> = (0..64u32 << 10).map(|i| (i * 7 + i / 4096) as u8).collect();
    let make = |plain: &[u8]| {
        let mut out = Vec::new();
        coffer_encfs::create(
            &mut Cursor::new(plain.to_vec()),
            plain.len() as u64,
            PASS,
            &mut out,
            &Default::default(),
        )
        .unwrap();
        coffer_encfs::block::Volume::open_source(Box::new(Mem(Arc::new(out))), PASS, false).unwrap()
    };
    let vol = make(&plain);
    let want = coffer_verity::root_hash(&plain[..]).unwrap();
    assert_eq!(vol.plaintext_verity_root(64 << 10).unwrap(), want);
    assert_eq!(
        vol.plaintext_verity_root(8192).unwrap(),
        coffer_verity::root_hash(&plain[..8192]).unwrap()
    );
    // Another volume opening with the same key but holding other bytes: another root.
    let mut other = plain.clone();
    other[40000] ^= 1;
    assert_ne!(make(&other).plaintext_verity_root(64 << 10).unwrap(), want);
    for len in [0u64, 4095, 4097, (64 << 10) + 4096, u64::MAX] {
        let err = vol.plaintext_verity_root(len).unwrap_err().to_string();
        assert!(err.contains("dm-verity"), "{len}: {err}");
    }
}

/// A pinned volume in a file its owner (the host) can still write: the image as `make` wrote
/// it, opened read-only and pinned to its plaintext's level-0 hashes.
fn pinned_file(plain: &[u8]) -> (tempfile::NamedTempFile, coffer_encfs::block::Volume) {
    let mut out = Vec::new();
    coffer_encfs::create(
        &mut Cursor::new(plain.to_vec()),
        plain.len() as u64,
        PASS,
        &mut out,
        &Default::default(),
    )
    .unwrap();
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &out).unwrap();
    let mut vol = coffer_encfs::block::Volume::open(f.path(), PASS, false).unwrap();
    let level0 = vol.plaintext_hashes(plain.len() as u64).unwrap();
    assert_eq!(
        coffer_verity::root_from_level0(&level0).unwrap(),
        coffer_verity::root_hash(plain).unwrap()
    );
    vol.pin(level0).unwrap();
    (f, vol)
}

#[test]
fn a_block_changed_after_pinning_reads_as_an_error() {
    let plain: Vec<u8> = (0..64u32 << 10).map(|i| (i * 3 + i / 4096) as u8).collect();
    let (f, vol) = pinned_file(&plain);
    assert_eq!(
        vol.read_at(5 * 4096 + 10, 100).unwrap(),
        &plain[5 * 4096 + 10..][..100]
    );
    // The host rewrites one ciphertext byte of block 5 (the data segment starts at 16 MiB).
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(f.path())
        .unwrap();
    file.write_at(&[0x5a], (16 << 20) + 5 * 4096 + 7).unwrap();
    let err = vol.read_at(5 * 4096 + 10, 100).unwrap_err().to_string();
    assert!(
        err.contains("block 5 of the plaintext is not the one measured"),
        "{err}"
    );
    // A read that only touches the block, at its end, fails too; the other blocks still read.
    assert!(vol.read_at(6 * 4096 - 1, 2).is_err());
    assert_eq!(
        vol.read_at(6 * 4096, 4096).unwrap(),
        &plain[6 * 4096..7 * 4096]
    );
}

#[test]
fn a_pinned_volume_exposes_only_what_was_measured() {
    let mut plain: Vec<u8> = (0..64u32 << 10).map(|i| (i % 251) as u8).collect();
    plain.resize(96 << 10, 0);
    let mut out = Vec::new();
    coffer_encfs::create(
        &mut Cursor::new(plain.clone()),
        plain.len() as u64,
        PASS,
        &mut out,
        &Default::default(),
    )
    .unwrap();
    let mut vol =
        coffer_encfs::block::Volume::open_source(Box::new(Mem(Arc::new(out))), PASS, false)
            .unwrap();
    let level0 = vol.plaintext_hashes(64 << 10).unwrap();
    vol.pin(level0).unwrap();
    assert_eq!(vol.size(), 64 << 10);
    assert!(vol.read_at(64 << 10, 4096).unwrap().is_empty());
    assert_eq!(vol.read_at((64 << 10) - 4, 100).unwrap().len(), 4);
}

#[test]
fn a_writable_volume_cannot_be_pinned() {
    let plain = vec![1u8; 16 << 10];
    let mut out = Vec::new();
    coffer_encfs::create(
        &mut Cursor::new(plain.clone()),
        plain.len() as u64,
        PASS,
        &mut out,
        &Default::default(),
    )
    .unwrap();
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &out).unwrap();
    let mut vol = coffer_encfs::block::Volume::open(f.path(), PASS, true).unwrap();
    let level0 = vol.plaintext_hashes(16 << 10).unwrap();
    let err = vol.pin(level0).unwrap_err().to_string();
    assert!(err.contains("writable volume cannot be pinned"), "{err}");
}
