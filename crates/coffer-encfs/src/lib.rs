//! LUKS2 volumes opened in user space (no dm-crypt): both binary headers and their checksums, the
//! JSON metadata, a PBKDF2 keyslot unlocked with the passphrase (key file bytes), the
//! anti-forensic merge, the digest check, and the `aes-xts-plain64` data segment decrypted sector
//! by sector (the IV counts 512-byte sectors whatever the sector size, as dm-crypt does).
//!
//! Layout reference: the LUKS2 on-disk format specification (cryptsetup `docs/on-disk-format-luks2.pdf`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod block;
pub mod header;
pub mod metadata;
pub mod source;

use std::io::{Read, Seek, SeekFrom, Write};

use base64::Engine as _;
use openssl::hash::MessageDigest;
use openssl::symm::{Cipher, Crypter, Mode};

use header::{BinaryHeader, HeaderCopy, HeaderError, BIN_LEN, HDR_SIZES};
use metadata::{
    Argon2Variant, Digest, Kdf, Keyslot, Metadata, MetadataError, SegmentSize, STRIPES,
};

/// Errors opening a LUKS2 volume. None of them changes the image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LuksError {
    /// Reading the image failed.
    #[error("reading the image: {0}")]
    Io(#[from] std::io::Error),
    /// Not LUKS2, or a damaged binary header or JSON area.
    #[error("not a valid LUKS2 image: {0}")]
    Header(#[from] HeaderError),
    /// The JSON metadata is invalid or out of bounds.
    #[error("invalid LUKS2 metadata: {0}")]
    Metadata(#[from] MetadataError),
    /// The metadata uses something not supported here.
    #[error("unsupported LUKS2 feature: {0}")]
    Unsupported(String),
    /// No keyslot opens with this key.
    #[error("wrong key: no keyslot accepts it")]
    WrongKey,
    /// An aes-xts key whose two halves are equal (refused by cryptsetup and by the kernel in
    /// FIPS mode: XTS is then no longer a tweakable cipher).
    #[error("weak key: {0}")]
    WeakKey(String),
    /// The image is shorter than its metadata says.
    #[error("the image is truncated: {0}")]
    Truncated(String),
    /// The plaintext is not ext4 where ext4 was asked for.
    #[error("the volume does not hold an ext4 file system")]
    NoExt4,
    /// `create` was given something it cannot write.
    #[error("cannot create the image: {0}")]
    Create(String),
    /// A plaintext range that cannot be measured.
    #[error("dm-verity measurement: {0}")]
    Verity(String),
    /// Crypto backend failure.
    #[error("crypto: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

/// An aes-xts-plain64 key: 32 or 64 bytes (two AES-128 or AES-256 keys) whose two halves
/// differ. Volume and keyslot keys exist only as this type.
#[derive(Clone)]
pub struct XtsKey(Vec<u8>);

impl XtsKey {
    /// Refuses sizes other than 32 and 64 bytes, and equal halves.
    pub fn new(bytes: &[u8]) -> Result<Self, LuksError> {
        if bytes.len() != 32 && bytes.len() != 64 {
            return Err(LuksError::Unsupported(format!(
                "aes-xts key of {} bytes (32 or 64)",
                bytes.len()
            )));
        }
        let (a, b) = bytes.split_at(bytes.len() / 2);
        if openssl::memcmp::eq(a, b) {
            return Err(LuksError::WeakKey(
                "the two halves of the aes-xts key are equal".into(),
            ));
        }
        Ok(XtsKey(bytes.to_vec()))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn cipher(&self) -> Cipher {
        if self.0.len() == 64 {
            Cipher::aes_256_xts()
        } else {
            Cipher::aes_128_xts()
        }
    }
}

impl std::fmt::Debug for XtsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "XtsKey({} bytes)", self.0.len())
    }
}

impl Drop for XtsKey {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

/// The parsed, checksum-verified, validated metadata of a LUKS2 image.
#[derive(Clone, Debug)]
pub struct Luks2 {
    /// The binary header of the copy in use.
    pub header: BinaryHeader,
    /// The JSON metadata, validated.
    pub metadata: Metadata,
    /// Header area size (binary header + JSON).
    pub hdr_size: u64,
}

fn read_at<R: Read + Seek>(
    r: &mut R,
    off: u64,
    buf: &mut [u8],
    what: &str,
) -> Result<(), LuksError> {
    r.seek(SeekFrom::Start(off))?;
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            LuksError::Truncated(format!("{what} at offset {off}"))
        }
        _ => LuksError::Io(e),
    })
}

/// One header copy whose binary header and checksum are good; its metadata may still be invalid.
struct CopyRead {
    header: BinaryHeader,
    metadata: Result<Metadata, MetadataError>,
}

/// Read the copy at `offset`: binary header checks, then the JSON area (at most 4 MiB, as the
/// checked `hdr_size` says), its checksum, its framing, then the metadata.
fn read_copy<R: Read + Seek>(
    r: &mut R,
    copy: HeaderCopy,
    offset: u64,
) -> Result<CopyRead, LuksError> {
    let mut bin = [0u8; BIN_LEN];
    read_at(r, offset, &mut bin, &format!("{copy} binary header"))?;
    let header = BinaryHeader::parse(&bin);
    let hash = header.check(copy, offset)?;
    // hdr_size is one of HDR_SIZES (<= 4 MiB).
    let mut area = vec![0u8; header.hdr_size as usize - BIN_LEN];
    read_at(
        r,
        offset + BIN_LEN as u64,
        &mut area,
        &format!("{copy} JSON area"),
    )?;
    if !header.csum_matches(hash, &area)? {
        return Err(HeaderError::Checksum { copy, offset }.into());
    }
    let json = header::json_text(&area, copy, offset)?;
    let metadata = Metadata::from_json(json, header.hdr_size);
    Ok(CopyRead { header, metadata })
}

fn xts(
    key: &XtsKey,
    data: &mut [u8],
    sector_size: usize,
    first_iv_sector: u64,
    iv_step: u64,
    decrypt: bool,
) -> Result<(), LuksError> {
    for (i, sector) in data.chunks_mut(sector_size).enumerate() {
        let mut iv = [0u8; 16];
        let n = (i as u64)
            .checked_mul(iv_step)
            .and_then(|n| n.checked_add(first_iv_sector))
            .ok_or_else(|| LuksError::Unsupported("IV sector number overflows".into()))?;
        iv[..8].copy_from_slice(&n.to_le_bytes());
        let mut c = Crypter::new(
            key.cipher(),
            if decrypt {
                Mode::Decrypt
            } else {
                Mode::Encrypt
            },
            key.as_bytes(),
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

/// LUKS anti-forensic merge of `material` (`stripes` blocks of `key_size`, stripes >= 1).
fn af_merge(
    material: &[u8],
    key_size: usize,
    stripes: usize,
    hash: MessageDigest,
) -> Result<Vec<u8>, LuksError> {
    let len = key_size.checked_mul(stripes);
    if stripes == 0 || len.is_none_or(|n| n > material.len()) {
        return Err(LuksError::Unsupported(format!(
            "anti-forensic merge of {stripes} stripes of {key_size} bytes"
        )));
    }
    let mut d = vec![0u8; key_size];
    for (i, block) in material.chunks_exact(key_size).take(stripes).enumerate() {
        for (x, y) in d.iter_mut().zip(block) {
            *x ^= y;
        }
        if i + 1 < stripes {
            d = diffuse(&d, hash)?;
        }
    }
    Ok(d)
}

/// The keyslot key (the key of its area) derived from `passphrase`.
fn derive_area_key(slot: &Keyslot, passphrase: &[u8]) -> Result<XtsKey, LuksError> {
    let mut kek = vec![0u8; slot.area.key_size.bytes()];
    match &slot.kdf {
        Kdf::Pbkdf2 {
            hash,
            iterations,
            salt,
        } => openssl::pkcs5::pbkdf2_hmac(
            passphrase,
            salt,
            *iterations as usize,
            hash.md(),
            &mut kek,
        )?,
        Kdf::Argon2 {
            variant,
            time,
            memory_kib,
            cpus,
            salt,
        } => {
            // Argon2 is not in OpenSSL 3.0 (Debian 12): the RustCrypto implementation.
            let algorithm = match variant {
                Argon2Variant::Id => argon2::Algorithm::Argon2id,
                Argon2Variant::I => argon2::Algorithm::Argon2i,
            };
            let params =
                argon2::Params::new(*memory_kib, *time, *cpus, Some(kek.len())).map_err(|e| {
                    LuksError::Unsupported(format!("keyslot {}: argon2 parameters: {e}", slot.id))
                })?;
            argon2::Argon2::new(algorithm, argon2::Version::V0x13, params)
                .hash_password_into(passphrase, salt, &mut kek)
                .map_err(|e| LuksError::Unsupported(format!("keyslot {}: argon2: {e}", slot.id)))?;
        }
    }
    let key = XtsKey::new(&kek).map_err(|e| match e {
        LuksError::WeakKey(_) => LuksError::WeakKey(format!(
            "keyslot {}: the passphrase derives an area key whose two halves are equal",
            slot.id
        )),
        e => e,
    });
    kek.fill(0);
    key
}

impl Digest {
    /// Whether `key` is the key this digest was made of (PBKDF2, constant-time compare over the
    /// stored digest, whose length is the hash's output size).
    pub fn matches(&self, key: &[u8]) -> Result<bool, LuksError> {
        let mut got = vec![0u8; self.digest.len()];
        openssl::pkcs5::pbkdf2_hmac(
            key,
            &self.salt,
            self.iterations as usize,
            self.hash.md(),
            &mut got,
        )?;
        Ok(!self.digest.is_empty() && openssl::memcmp::eq(&got, &self.digest))
    }
}

impl Luks2 {
    /// Read both header copies as cryptsetup does (binary header checks, checksum, JSON framing,
    /// metadata validation) and keep the valid one with the higher seqid (the primary on a tie).
    pub fn open<R: Read + Seek>(r: &mut R) -> Result<Self, LuksError> {
        let primary = read_copy(r, HeaderCopy::Primary, 0);
        let secondary = match &primary {
            Ok(p) => read_copy(r, HeaderCopy::Secondary, p.header.hdr_size),
            Err(_) => {
                // The primary is damaged: look for the secondary at the offsets LUKS2 allows.
                let mut found = Err(LuksError::Unsupported("no secondary header".into()));
                for off in HDR_SIZES {
                    found = read_copy(r, HeaderCopy::Secondary, off);
                    if found.is_ok() {
                        break;
                    }
                }
                found
            }
        };
        let valid = |c: &Result<CopyRead, LuksError>| {
            matches!(
                c,
                Ok(CopyRead {
                    metadata: Ok(_),
                    ..
                })
            )
        };
        let chosen = match (valid(&primary), valid(&secondary)) {
            (true, true) => {
                let seq = |c: &Result<CopyRead, LuksError>| {
                    c.as_ref().map(|c| c.header.seqid).unwrap_or(0)
                };
                if seq(&secondary) > seq(&primary) {
                    secondary
                } else {
                    primary
                }
            }
            (true, false) => primary,
            (false, true) => secondary,
            // Report the primary's problem, unless only the secondary got as far as its metadata.
            (false, false) => match (primary, secondary) {
                (Ok(p), _) => Ok(p),
                (Err(_), Ok(s)) => Ok(s),
                (Err(e), Err(_)) => Err(e),
            },
        };
        let CopyRead { header, metadata } = chosen?;
        let metadata = metadata?;
        let len = r.seek(SeekFrom::End(0))?;
        if len < metadata.areas_end() {
            return Err(LuksError::Truncated(format!(
                "the metadata and keyslots areas end at {}, the image has {len} bytes",
                metadata.areas_end()
            )));
        }
        Ok(Luks2 {
            hdr_size: header.hdr_size,
            header,
            metadata,
        })
    }

    /// Unlock with `passphrase` (key file bytes): the volume key, checked against the digest
    /// that binds the keyslot to the data segment.
    pub fn unlock<R: Read + Seek>(
        &self,
        r: &mut R,
        passphrase: &[u8],
    ) -> Result<XtsKey, LuksError> {
        for slot in self.metadata.keyslots_to_try() {
            let Some(digest) = self.metadata.digest_for(slot.id) else {
                continue;
            };
            let kek = derive_area_key(slot, passphrase)?;
            let mut material = vec![0u8; slot.split_key_len()];
            read_at(
                r,
                slot.area.offset,
                &mut material,
                &format!("keyslot {} area", slot.id),
            )?;
            xts(&kek, &mut material, 512, 0, 1, true)?;
            let key_size = slot.key_size.bytes();
            let mut key = af_merge(&material, key_size, STRIPES as usize, slot.af_hash.md())?;
            material.fill(0);
            let matches = digest.matches(&key)?;
            let checked = XtsKey::new(&key);
            key.fill(0);
            if matches {
                return checked.map_err(|e| match e {
                    LuksError::WeakKey(_) => LuksError::WeakKey(format!(
                        "keyslot {} holds a volume key whose two aes-xts halves are equal",
                        slot.id
                    )),
                    e => e,
                });
            }
        }
        Err(LuksError::WrongKey)
    }

    /// The data segment's extent `(offset, size)` in an image of `image_len` bytes.
    pub fn data_extent(&self, image_len: u64) -> Result<(u64, u64), LuksError> {
        let seg = &self.metadata.segment;
        let sector = u64::from(seg.sector_size);
        let size = match seg.size {
            SegmentSize::Dynamic => image_len.saturating_sub(seg.offset),
            SegmentSize::Fixed(n) => n,
        };
        let end = seg.offset.checked_add(size);
        if size == 0 || end.is_none_or(|e| e > image_len) || !size.is_multiple_of(sector) {
            return Err(LuksError::Truncated(format!(
                "the data segment needs {size} bytes at offset {} in whole {sector}-byte sectors, the image has {image_len}",
                seg.offset
            )));
        }
        Ok((seg.offset, size))
    }

    /// Decrypt the data segment into `out` (e.g. a file then loop-mounted read-only).
    pub fn decrypt_to<R: Read + Seek, W: Write>(
        &self,
        r: &mut R,
        key: &XtsKey,
        out: &mut W,
    ) -> Result<u64, LuksError> {
        let image_len = r.seek(SeekFrom::End(0))?;
        let (offset, size) = self.data_extent(image_len)?;
        let seg = &self.metadata.segment;
        let sector = seg.sector_size as usize;
        r.seek(SeekFrom::Start(offset))?;
        let step = (sector / 512) as u64;
        let mut buf = vec![0u8; sector * 256];
        let mut done = 0u64;
        while done < size {
            let n = ((size - done) as usize).min(buf.len());
            r.read_exact(&mut buf[..n])?;
            xts(
                key,
                &mut buf[..n],
                sector,
                seg.iv_tweak + (done / 512),
                step,
                true,
            )?;
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
    // The host chooses these bytes: a block size past 64 KiB or a size past u64 is no ext4.
    if log > 6 {
        return None;
    }
    ((blocks_hi << 32) | blocks_lo).checked_mul(1u64 << (10 + log))
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
        None => Err(LuksError::NoExt4),
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

/// The encrypted keyslot area holding `volume_key` split into [`STRIPES`], `area_size` bytes.
fn keyslot_area(volume_key: &[u8], kek: &XtsKey, area_size: usize) -> Result<Vec<u8>, LuksError> {
    let mut material = af_split(volume_key, STRIPES as usize, MessageDigest::sha256())?;
    material.resize(area_size, 0);
    xts(kek, &mut material, 512, 0, 1, false)?;
    Ok(material)
}

/// Parameters of a new image.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// PBKDF2-SHA256 iterations for the keyslot and the digest (Azure's tooling uses 1000),
    /// clamped to what [`Luks2::open`] accepts.
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
        return Err(LuksError::Create(format!(
            "the plaintext must be a whole number of 4096-byte sectors, got {plaintext_len} bytes"
        )));
    }
    let b64e = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut raw_key = [0u8; 64];
    openssl::rand::rand_bytes(&mut raw_key)?;
    let volume_key = XtsKey::new(&raw_key)?;
    raw_key.fill(0);
    let (mut ks_salt, mut dg_salt) = ([0u8; 32], [0u8; 32]);
    openssl::rand::rand_bytes(&mut ks_salt)?;
    openssl::rand::rand_bytes(&mut dg_salt)?;
    let iterations = opts.iterations.clamp(
        metadata::PBKDF2_MIN_ITERATIONS,
        metadata::PBKDF2_MAX_ITERATIONS,
    ) as usize;
    let mut digest = [0u8; 32];
    openssl::pkcs5::pbkdf2_hmac(
        volume_key.as_bytes(),
        &dg_salt,
        iterations,
        MessageDigest::sha256(),
        &mut digest,
    )?;
    let area_size = (64 * u64::from(STRIPES)).div_ceil(4096) * 4096;
    let keyslots_size = DATA_OFFSET - 2 * HDR_SIZE;
    let metadata = serde_json::json!({
        "keyslots": {"0": {"type": "luks2", "key_size": 64,
            "af": {"type": "luks1", "stripes": STRIPES, "hash": "sha256"},
            "area": {"type": "raw", "offset": (2 * HDR_SIZE).to_string(), "size": area_size.to_string(), "encryption": "aes-xts-plain64", "key_size": 64},
            "kdf": {"type": "pbkdf2", "hash": "sha256", "iterations": iterations, "salt": b64e(&ks_salt)}}},
        "tokens": {},
        "segments": {"0": {"type": "crypt", "offset": DATA_OFFSET.to_string(), "size": "dynamic", "iv_tweak": "0", "encryption": "aes-xts-plain64", "sector_size": 4096}},
        "digests": {"0": {"type": "pbkdf2", "keyslots": ["0"], "segments": ["0"], "hash": "sha256", "iterations": iterations, "salt": b64e(&dg_salt), "digest": b64e(&digest)}},
        "config": {"json_size": (HDR_SIZE - BIN_LEN as u64).to_string(), "keyslots_size": keyslots_size.to_string()},
    });
    let json = serde_json::to_vec(&metadata).map_err(|e| LuksError::Create(e.to_string()))?;
    let mut json_area = vec![0u8; HDR_SIZE as usize - BIN_LEN];
    if json.len() >= json_area.len() {
        return Err(LuksError::Create("metadata too large".into()));
    }
    json_area[..json.len()].copy_from_slice(&json);
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
    for copy in [HeaderCopy::Primary, HeaderCopy::Secondary] {
        let mut bin = BinaryHeader::new(copy, HDR_SIZE, 1, &uuid, salt);
        bin.seal(&json_area)?;
        out.write_all(&bin.encode())?;
        out.write_all(&json_area)?;
    }
    let mut kek = [0u8; 64];
    openssl::pkcs5::pbkdf2_hmac(
        passphrase,
        &ks_salt,
        iterations,
        MessageDigest::sha256(),
        &mut kek,
    )?;
    let kek_key = XtsKey::new(&kek)?;
    kek.fill(0);
    out.write_all(&keyslot_area(
        volume_key.as_bytes(),
        &kek_key,
        area_size as usize,
    )?)?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_ext4_size_past_u64_or_a_huge_block_size_is_no_file_system() {
        let mut start = vec![0u8; 2048];
        start[1024 + 0x38..1024 + 0x3A].copy_from_slice(&[0x53, 0xEF]);
        start[1024 + 0x04..1024 + 0x08].copy_from_slice(&8u32.to_le_bytes());
        start[1024 + 0x18..1024 + 0x1C].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(ext4_size(&start), Some(8 * 4096));
        // 64-bit, every block count bit set: the size does not fit in u64.
        start[1024 + 0x60..1024 + 0x64].copy_from_slice(&0x80u32.to_le_bytes());
        start[1024 + 0x04..1024 + 0x08].copy_from_slice(&u32::MAX.to_le_bytes());
        start[1024 + 0x150..1024 + 0x154].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(ext4_size(&start), None);
        start[1024 + 0x60..1024 + 0x64].copy_from_slice(&0u32.to_le_bytes());
        start[1024 + 0x18..1024 + 0x1C].copy_from_slice(&40u32.to_le_bytes());
        assert_eq!(ext4_size(&start), None);
    }

    #[test]
    fn xts_keys_are_32_or_64_bytes_with_unequal_halves() {
        for n in [32usize, 64] {
            let mut k = vec![0x33u8; n];
            assert!(matches!(XtsKey::new(&k), Err(LuksError::WeakKey(_))));
            k[n - 1] ^= 1;
            assert_eq!(XtsKey::new(&k).unwrap().as_bytes(), &k[..]);
            k[0] ^= 1;
            k[n / 2] ^= 1;
            k[n - 1] ^= 1;
            assert!(matches!(XtsKey::new(&k), Err(LuksError::WeakKey(_))));
        }
        for n in [0usize, 16, 31, 48, 65, 128] {
            let k: Vec<u8> = (0..n as u8).collect();
            assert!(matches!(XtsKey::new(&k), Err(LuksError::Unsupported(_))));
        }
    }

    #[test]
    fn af_merge_refuses_what_it_cannot_merge() {
        let h = MessageDigest::sha256();
        assert!(af_merge(&[], 64, 0, h).is_err());
        assert!(af_merge(&[0; 100], 64, 2, h).is_err());
        assert!(af_merge(&[0; 64], usize::MAX, 2, h).is_err());
        let key: Vec<u8> = (0..64).collect();
        let split = af_split(&key, 4000, h).unwrap();
        assert_eq!(af_merge(&split, 64, 4000, h).unwrap(), key);
    }
}
