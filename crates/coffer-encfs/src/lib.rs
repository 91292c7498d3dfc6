//! LUKS2 volumes opened in user space (no dm-crypt): both binary headers and their checksums, the
//! JSON metadata, a PBKDF2 keyslot unlocked with the passphrase (key file bytes), the
//! anti-forensic merge, the digest check, and the `aes-xts-plain64` data segment decrypted sector
//! by sector (the IV counts 512-byte sectors whatever the sector size, as dm-crypt does).
//!
//! Layout reference: the LUKS2 on-disk format specification (cryptsetup `docs/on-disk-format-luks2.pdf`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod block;
pub mod source;

use std::io::{Read, Seek, SeekFrom, Write};

use base64::Engine as _;
use openssl::hash::MessageDigest;
use openssl::symm::{Cipher, Crypter, Mode};
use serde_json::Value;

/// Errors opening a LUKS2 volume. None of them changes the image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LuksError {
    /// Reading the image failed.
    #[error("reading the image: {0}")]
    Io(#[from] std::io::Error),
    /// Not LUKS2, or a damaged header.
    #[error("not a valid LUKS2 image: {0}")]
    Header(String),
    /// The metadata uses something not supported here.
    #[error("unsupported LUKS2 feature: {0}")]
    Unsupported(String),
    /// No keyslot opens with this key.
    #[error("wrong key: no keyslot accepts it")]
    WrongKey,
    /// The image is shorter than its metadata says.
    #[error("the image is truncated: {0}")]
    Truncated(String),
    /// Crypto backend failure.
    #[error("crypto: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

const MAGIC1: &[u8; 6] = b"LUKS\xba\xbe";
const MAGIC2: &[u8; 6] = b"SKUL\xba\xbe";

/// The parsed, checksum-verified metadata of a LUKS2 image.
#[derive(Clone, Debug)]
pub struct Luks2 {
    /// The JSON metadata.
    pub metadata: Value,
    /// Header area size (binary header + JSON).
    pub hdr_size: u64,
}

pub(crate) fn num(v: &Value, what: &str) -> Result<u64, LuksError> {
    match v {
        Value::String(s) => s
            .parse()
            .map_err(|_| LuksError::Header(format!("{what} is not a number"))),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| LuksError::Header(format!("{what} is not a number"))),
        _ => Err(LuksError::Header(format!("{what} is missing"))),
    }
}

fn read_header<R: Read + Seek>(
    r: &mut R,
    offset: u64,
    magic: &[u8; 6],
) -> Result<(u64, u64, Value), LuksError> {
    let mut bin = [0u8; 4096];
    r.seek(SeekFrom::Start(offset))?;
    r.read_exact(&mut bin)
        .map_err(|_| LuksError::Truncated("binary header".into()))?;
    if &bin[..6] != magic {
        return Err(LuksError::Header(format!("bad magic at offset {offset}")));
    }
    let version = u16::from_be_bytes([bin[6], bin[7]]);
    if version != 2 {
        return Err(LuksError::Unsupported(format!("LUKS version {version}")));
    }
    let hdr_size = u64::from_be_bytes(
        bin[8..16]
            .try_into()
            .map_err(|_| LuksError::Header("size".into()))?,
    );
    let seqid = u64::from_be_bytes(
        bin[16..24]
            .try_into()
            .map_err(|_| LuksError::Header("seqid".into()))?,
    );
    let csum_alg = String::from_utf8_lossy(&bin[72..104])
        .trim_end_matches('\0')
        .to_string();
    if csum_alg != "sha256" {
        return Err(LuksError::Unsupported(format!(
            "header checksum {csum_alg}"
        )));
    }
    let hdr_offset = u64::from_be_bytes(
        bin[256..264]
            .try_into()
            .map_err(|_| LuksError::Header("offset".into()))?,
    );
    if hdr_offset != offset || !(16384..=4 << 20).contains(&hdr_size) {
        return Err(LuksError::Header(format!(
            "header at {offset} claims offset {hdr_offset}, size {hdr_size}"
        )));
    }
    let mut area = vec![0u8; hdr_size as usize];
    r.seek(SeekFrom::Start(offset))?;
    r.read_exact(&mut area)
        .map_err(|_| LuksError::Truncated("header area".into()))?;
    let stored: [u8; 32] = area[448..480]
        .try_into()
        .map_err(|_| LuksError::Header("csum".into()))?;
    area[448..512].fill(0);
    if openssl::sha::sha256(&area) != stored {
        return Err(LuksError::Header(format!(
            "checksum mismatch in the header at offset {offset}"
        )));
    }
    let json_end = area[4096..]
        .iter()
        .position(|&b| b == 0)
        .map(|p| 4096 + p)
        .unwrap_or(area.len());
    let metadata: Value = serde_json::from_slice(&area[4096..json_end])
        .map_err(|e| LuksError::Header(format!("JSON metadata: {e}")))?;
    Ok((seqid, hdr_size, metadata))
}

fn xts(
    key: &[u8],
    data: &mut [u8],
    sector_size: usize,
    first_iv_sector: u64,
    iv_step: u64,
    decrypt: bool,
) -> Result<(), LuksError> {
    let cipher = match key.len() {
        64 => Cipher::aes_256_xts(),
        32 => Cipher::aes_128_xts(),
        n => return Err(LuksError::Unsupported(format!("aes-xts key of {n} bytes"))),
    };
    for (i, sector) in data.chunks_mut(sector_size).enumerate() {
        let mut iv = [0u8; 16];
        iv[..8].copy_from_slice(&(first_iv_sector + i as u64 * iv_step).to_le_bytes());
        let mut c = Crypter::new(
            cipher,
            if decrypt {
                Mode::Decrypt
            } else {
                Mode::Encrypt
            },
            key,
            Some(&iv),
        )?;
        c.pad(false);
        let mut out = vec![0u8; sector.len() + 16];
        let mut n = c.update(sector, &mut out)?;
        n += c.finalize(&mut out[n..])?;
        sector.copy_from_slice(&out[..n]);
    }
    Ok(())
}

fn digest_of(name: &str) -> Result<MessageDigest, LuksError> {
    match name {
        "sha256" => Ok(MessageDigest::sha256()),
        "sha512" => Ok(MessageDigest::sha512()),
        "sha1" => Ok(MessageDigest::sha1()),
        other => Err(LuksError::Unsupported(format!("hash {other}"))),
    }
}

/// LUKS AF diffusion: hash the buffer in digest-sized chunks, each prefixed by its index.
fn diffuse(d: &[u8], hash: MessageDigest) -> Result<Vec<u8>, LuksError> {
    let mut out = Vec::with_capacity(d.len());
    for (j, chunk) in d.chunks(hash.size()).enumerate() {
        let mut h = openssl::hash::Hasher::new(hash)?;
        h.update(&(j as u32).to_be_bytes())?;
        h.update(chunk)?;
        out.extend_from_slice(&h.finish()?[..chunk.len()]);
    }
    Ok(out)
}

/// LUKS anti-forensic merge.
fn af_merge(
    material: &[u8],
    key_size: usize,
    stripes: usize,
    hash: MessageDigest,
) -> Result<Vec<u8>, LuksError> {
    let mut d = vec![0u8; key_size];
    for i in 0..stripes {
        let block = &material[i * key_size..(i + 1) * key_size];
        for (x, y) in d.iter_mut().zip(block) {
            *x ^= y;
        }
        if i + 1 < stripes {
            d = diffuse(&d, hash)?;
        }
    }
    Ok(d)
}

fn b64(v: &Value, what: &str) -> Result<Vec<u8>, LuksError> {
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(|| LuksError::Header(format!("{what} is not base64")))
}

impl Luks2 {
    /// Read both headers, check their checksums, and keep the newer valid one.
    pub fn open<R: Read + Seek>(r: &mut R) -> Result<Self, LuksError> {
        let primary = read_header(r, 0, MAGIC1);
        let secondary = match &primary {
            Ok((_, size, _)) => read_header(r, *size, MAGIC2),
            Err(_) => {
                // The primary is damaged: look for the secondary at the usual offsets.
                let mut found = Err(LuksError::Header("no valid header copy".into()));
                for off in [
                    16384u64,
                    32768,
                    65536,
                    131072,
                    262144,
                    524288,
                    1 << 20,
                    2 << 20,
                    4 << 20,
                ] {
                    if let Ok(h) = read_header(r, off, MAGIC2) {
                        found = Ok(h);
                        break;
                    }
                }
                found
            }
        };
        let (seq, hdr_size, metadata) = match (primary, secondary) {
            (Ok(a), Ok(b)) => {
                if b.0 > a.0 {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(e), Err(_)) => return Err(e),
        };
        let _ = seq;
        Ok(Luks2 { metadata, hdr_size })
    }

    /// Unlock with `passphrase` (key file bytes): the volume key.
    pub fn unlock<R: Read + Seek>(
        &self,
        r: &mut R,
        passphrase: &[u8],
    ) -> Result<Vec<u8>, LuksError> {
        let slots = self.metadata["keyslots"]
            .as_object()
            .ok_or_else(|| LuksError::Header("no keyslots".into()))?;
        let digests = self.metadata["digests"]
            .as_object()
            .ok_or_else(|| LuksError::Header("no digests".into()))?;
        for (id, slot) in slots {
            let kdf = &slot["kdf"];
            let area = &slot["area"];
            let af = &slot["af"];
            let kdf_type = kdf["type"].as_str().unwrap_or_default();
            if !matches!(kdf_type, "pbkdf2" | "argon2id" | "argon2i") {
                return Err(LuksError::Unsupported(format!(
                    "keyslot {id} uses kdf {kdf_type}"
                )));
            }
            if area["encryption"] != "aes-xts-plain64" || af["type"] != "luks1" {
                return Err(LuksError::Unsupported(format!(
                    "keyslot {id}: {} / {}",
                    area["encryption"], af["type"]
                )));
            }
            let key_size = num(&slot["key_size"], "key_size")? as usize;
            let stripes = num(&af["stripes"], "stripes")? as usize;
            let area_key_size = num(&area["key_size"], "area key_size")? as usize;
            let mut kek = vec![0u8; area_key_size];
            let salt = b64(&kdf["salt"], "kdf salt")?;
            if kdf_type == "pbkdf2" {
                openssl::pkcs5::pbkdf2_hmac(
                    passphrase,
                    &salt,
                    num(&kdf["iterations"], "iterations")? as usize,
                    digest_of(kdf["hash"].as_str().unwrap_or(""))?,
                    &mut kek,
                )?;
            } else {
                // Argon2 is not in OpenSSL 3.0 (Debian 12): the RustCrypto implementation.
                let algorithm = if kdf_type == "argon2id" {
                    argon2::Algorithm::Argon2id
                } else {
                    argon2::Algorithm::Argon2i
                };
                let small = |v: u64, what: &str| {
                    u32::try_from(v).map_err(|_| LuksError::Header(format!("{what} out of range")))
                };
                let params = argon2::Params::new(
                    small(num(&kdf["memory"], "argon2 memory")?, "memory")?,
                    small(num(&kdf["time"], "argon2 time")?, "time")?,
                    small(num(&kdf["cpus"], "argon2 cpus")?, "cpus")?,
                    Some(area_key_size),
                )
                .map_err(|e| LuksError::Header(format!("argon2 parameters: {e}")))?;
                argon2::Argon2::new(algorithm, argon2::Version::V0x13, params)
                    .hash_password_into(passphrase, &salt, &mut kek)
                    .map_err(|e| LuksError::Header(format!("argon2: {e}")))?;
            }
            let len = key_size * stripes;
            let mut material = vec![0u8; len.div_ceil(512) * 512];
            r.seek(SeekFrom::Start(num(&area["offset"], "area offset")?))?;
            r.read_exact(&mut material)
                .map_err(|_| LuksError::Truncated(format!("keyslot {id} area")))?;
            xts(&kek, &mut material, 512, 0, 1, true)?;
            let key = af_merge(
                &material[..len],
                key_size,
                stripes,
                digest_of(af["hash"].as_str().unwrap_or(""))?,
            )?;
            for d in digests.values() {
                let covers = d["keyslots"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|x| x == id.as_str()));
                if !covers || d["type"] != "pbkdf2" {
                    continue;
                }
                let want = b64(&d["digest"], "digest")?;
                let mut got = vec![0u8; want.len()];
                openssl::pkcs5::pbkdf2_hmac(
                    &key,
                    &b64(&d["salt"], "digest salt")?,
                    num(&d["iterations"], "digest iterations")? as usize,
                    digest_of(d["hash"].as_str().unwrap_or(""))?,
                    &mut got,
                )?;
                if openssl::memcmp::eq(&got, &want) {
                    return Ok(key);
                }
            }
        }
        Err(LuksError::WrongKey)
    }

    /// Decrypt the data segment into `out` (e.g. a file then loop-mounted read-only).
    pub fn decrypt_to<R: Read + Seek, W: Write>(
        &self,
        r: &mut R,
        key: &[u8],
        out: &mut W,
    ) -> Result<u64, LuksError> {
        let seg = self.metadata["segments"]["0"].clone();
        if seg["type"] != "crypt" || seg["encryption"] != "aes-xts-plain64" {
            return Err(LuksError::Unsupported(format!(
                "segment {} {}",
                seg["type"], seg["encryption"]
            )));
        }
        let offset = num(&seg["offset"], "segment offset")?;
        let sector = seg["sector_size"].as_u64().unwrap_or(512) as usize;
        let tweak = seg
            .get("iv_tweak")
            .map(|t| num(t, "iv_tweak"))
            .transpose()?
            .unwrap_or(0);
        let end = r.seek(SeekFrom::End(0))?;
        let size = match &seg["size"] {
            Value::String(s) if s == "dynamic" => end.saturating_sub(offset),
            other => num(other, "segment size")?,
        };
        if offset + size > end || size % sector as u64 != 0 {
            return Err(LuksError::Truncated(format!(
                "segment needs {} bytes, image has {end}",
                offset + size
            )));
        }
        r.seek(SeekFrom::Start(offset))?;
        let step = (sector / 512) as u64;
        let mut buf = vec![0u8; sector * 256];
        let mut done = 0u64;
        while done < size {
            let n = ((size - done) as usize).min(buf.len());
            r.read_exact(&mut buf[..n])?;
            xts(key, &mut buf[..n], sector, tweak + (done / 512), step, true)?;
            out.write_all(&buf[..n])?;
            done += n as u64;
        }
        Ok(done)
    }
}

/// The size an ext2/3/4 file system says it has (from its superblock at offset 1024), so that a
/// decrypted volume shorter than its file system is refused as truncated rather than mounted.
pub fn ext4_size(start: &[u8]) -> Option<u64> {
    let sb = start.get(1024..1024 + 1024)?;
    if sb[0x38..0x3A] != [0x53, 0xEF] {
        return None;
    }
    let blocks_lo = u32::from_le_bytes(sb[0x04..0x08].try_into().ok()?) as u64;
    let log = u32::from_le_bytes(sb[0x18..0x1C].try_into().ok()?);
    let incompat = u32::from_le_bytes(sb[0x60..0x64].try_into().ok()?);
    let blocks_hi = if incompat & 0x80 != 0 {
        u32::from_le_bytes(sb[0x150..0x154].try_into().ok()?) as u64
    } else {
        0
    };
    Some(((blocks_hi << 32) | blocks_lo) << (10 + log.min(6)))
}

/// Open, unlock and decrypt an image holding ext4 into `out`; refuses a volume shorter than its
/// file system. Returns the plaintext size.
pub fn open_ext4<R: Read + Seek, W: Write + Read + Seek>(
    image: &mut R,
    passphrase: &[u8],
    out: &mut W,
) -> Result<u64, LuksError> {
    let luks = Luks2::open(image)?;
    let key = luks.unlock(image, passphrase)?;
    let n = luks.decrypt_to(image, &key, out)?;
    let mut start = vec![0u8; 2048];
    out.seek(SeekFrom::Start(0))?;
    out.read_exact(&mut start)
        .map_err(|_| LuksError::Truncated("no file system in the volume".into()))?;
    match ext4_size(&start) {
        Some(fs) if fs > n => Err(LuksError::Truncated(format!(
            "the file system needs {fs} bytes, the volume has {n}"
        ))),
        Some(_) => Ok(n),
        None => Err(LuksError::Header(
            "the volume does not hold an ext4 file system (wrong key material?)".into(),
        )),
    }
}

/// LUKS anti-forensic split: `stripes` blocks whose merge is `key`.
fn af_split(key: &[u8], stripes: usize, hash: MessageDigest) -> Result<Vec<u8>, LuksError> {
    let n = key.len();
    let mut out = vec![0u8; n * stripes];
    openssl::rand::rand_bytes(&mut out[..n * (stripes - 1)])?;
    let mut d = vec![0u8; n];
    for i in 0..stripes - 1 {
        for (x, y) in d.iter_mut().zip(&out[i * n..(i + 1) * n]) {
            *x ^= y;
        }
        d = diffuse(&d, hash)?;
    }
    for (x, (a, b)) in out[(stripes - 1) * n..].iter_mut().zip(d.iter().zip(key)) {
        *x = a ^ b;
    }
    Ok(out)
}

/// Parameters of a new image.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// PBKDF2-SHA256 iterations for the keyslot (Azure's tooling uses 1000).
    pub iterations: u32,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions { iterations: 1000 }
    }
}

/// Header area: two 16 KiB metadata copies, then the keyslots area up to the data at 16 MiB.
const HDR_SIZE: u64 = 16384;
const DATA_OFFSET: u64 = 16 << 20;

/// Write a LUKS2 image (aes-xts-plain64, 512-bit key, 4096-byte sectors, one PBKDF2 keyslot
/// opened by `passphrase`) whose data segment is `plaintext` (a whole number of 4096-byte sectors).
pub fn create<R: Read, W: Write>(
    plaintext: &mut R,
    plaintext_len: u64,
    passphrase: &[u8],
    out: &mut W,
    opts: &CreateOptions,
) -> Result<(), LuksError> {
    if plaintext_len == 0 || !plaintext_len.is_multiple_of(4096) {
        return Err(LuksError::Header(format!(
            "the plaintext must be a whole number of 4096-byte sectors, got {plaintext_len} bytes"
        )));
    }
    let b64e = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut volume_key = [0u8; 64];
    openssl::rand::rand_bytes(&mut volume_key)?;
    let (mut ks_salt, mut dg_salt) = ([0u8; 32], [0u8; 32]);
    openssl::rand::rand_bytes(&mut ks_salt)?;
    openssl::rand::rand_bytes(&mut dg_salt)?;
    let iterations = opts.iterations.max(1000) as usize;
    let mut digest = [0u8; 32];
    openssl::pkcs5::pbkdf2_hmac(
        &volume_key,
        &dg_salt,
        iterations,
        MessageDigest::sha256(),
        &mut digest,
    )?;
    let stripes = 4000usize;
    let area_size = ((64 * stripes) as u64).div_ceil(4096) * 4096;
    let keyslots_size = DATA_OFFSET - 2 * HDR_SIZE;
    let metadata = serde_json::json!({
        "keyslots": {"0": {"type": "luks2", "key_size": 64,
            "af": {"type": "luks1", "stripes": stripes, "hash": "sha256"},
            "area": {"type": "raw", "offset": (2 * HDR_SIZE).to_string(), "size": area_size.to_string(), "encryption": "aes-xts-plain64", "key_size": 64},
            "kdf": {"type": "pbkdf2", "hash": "sha256", "iterations": iterations, "salt": b64e(&ks_salt)}}},
        "tokens": {},
        "segments": {"0": {"type": "crypt", "offset": DATA_OFFSET.to_string(), "size": "dynamic", "iv_tweak": "0", "encryption": "aes-xts-plain64", "sector_size": 4096}},
        "digests": {"0": {"type": "pbkdf2", "keyslots": ["0"], "segments": ["0"], "hash": "sha256", "iterations": iterations, "salt": b64e(&dg_salt), "digest": b64e(&digest)}},
        "config": {"json_size": (HDR_SIZE - 4096).to_string(), "keyslots_size": keyslots_size.to_string()},
    });
    let json = serde_json::to_vec(&metadata).map_err(|e| LuksError::Header(e.to_string()))?;
    if json.len() >= (HDR_SIZE - 4096) as usize {
        return Err(LuksError::Header("metadata too large".into()));
    }
    let mut salt = [0u8; 64];
    openssl::rand::rand_bytes(&mut salt)?;
    let mut u = [0u8; 16];
    openssl::rand::rand_bytes(&mut u)?;
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    let h = hex::encode(u);
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    );
    let header = |offset: u64, magic: &[u8; 6]| -> Vec<u8> {
        let mut a = vec![0u8; HDR_SIZE as usize];
        a[..6].copy_from_slice(magic);
        a[6..8].copy_from_slice(&2u16.to_be_bytes());
        a[8..16].copy_from_slice(&HDR_SIZE.to_be_bytes());
        a[16..24].copy_from_slice(&1u64.to_be_bytes());
        a[72..78].copy_from_slice(b"sha256");
        a[104..168].copy_from_slice(&salt);
        a[168..168 + uuid.len()].copy_from_slice(uuid.as_bytes());
        a[256..264].copy_from_slice(&offset.to_be_bytes());
        a[4096..4096 + json.len()].copy_from_slice(&json);
        let csum = openssl::sha::sha256(&a);
        a[448..480].copy_from_slice(&csum);
        a
    };
    out.write_all(&header(0, MAGIC1))?;
    out.write_all(&header(HDR_SIZE, MAGIC2))?;
    let mut kek = [0u8; 64];
    openssl::pkcs5::pbkdf2_hmac(
        passphrase,
        &ks_salt,
        iterations,
        MessageDigest::sha256(),
        &mut kek,
    )?;
    let mut material = af_split(&volume_key, stripes, MessageDigest::sha256())?;
    material.resize(area_size as usize, 0);
    xts(&kek, &mut material, 512, 0, 1, false)?;
    out.write_all(&material)?;
    let pad = DATA_OFFSET - 2 * HDR_SIZE - area_size;
    out.write_all(&vec![0u8; pad as usize])?;
    let mut buf = vec![0u8; 4096 * 256];
    let mut done = 0u64;
    while done < plaintext_len {
        let n = ((plaintext_len - done) as usize).min(buf.len());
        plaintext.read_exact(&mut buf[..n])?;
        xts(&volume_key, &mut buf[..n], 4096, done / 512, 8, false)?;
        out.write_all(&buf[..n])?;
        done += n as u64;
    }
    out.flush()?;
    Ok(())
}
