//! The LUKS2 JSON metadata as typed, bounded structs.
//!
//! The JSON is first read into `Raw*` structs (serde; numbers must fit their types, 64-bit
//! values are decimal strings as cryptsetup writes them), then checked as cryptsetup checks it
//! (`LUKS2_hdr_validate` and the keyslot and digest handlers) and as this implementation needs
//! it, into the validated types below. Nothing an image says is used before it passed here: a
//! value outside its bounds is an error naming the object, the field and the bound.
//!
//! Supported: `luks2` keyslots (`luks1` anti-forensic split with 4000 stripes, `raw` area
//! encrypted with `aes-xts-plain64`, PBKDF2 or Argon2i/id), `pbkdf2` digests, one `crypt`
//! segment `aes-xts-plain64` without integrity, no mandatory requirements (e.g. no
//! reencryption in progress).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::de::{self, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer};

pub use crate::header::Hash;

/// LUKS2 anti-forensic stripes: cryptsetup only ever splits (and merges) keys into 4000.
pub const STRIPES: u32 = 4000;
/// Keyslots a LUKS2 header may have (ids 0..32).
pub const MAX_KEYSLOTS: u32 = 32;
/// Digests a LUKS2 header may have (cryptsetup `LUKS2_DIGEST_MAX`).
pub const MAX_DIGESTS: usize = 8;
/// Salt size of keyslot KDFs and digests (cryptsetup `LUKS_SALTSIZE`).
pub const SALT_LEN: usize = 32;
/// Upper bound of the keyslots area (cryptsetup `LUKS2_MAX_KEYSLOTS_SIZE`, 128 MiB).
pub const MAX_KEYSLOTS_SIZE: u64 = 128 << 20;
/// PBKDF2 floor (cryptsetup's, after NIST SP 800-132), for keyslots and digests.
pub const PBKDF2_MIN_ITERATIONS: u32 = 1000;
/// PBKDF2 ceiling. cryptsetup's 2-second benchmark picks about 2-4 million iterations on
/// current CPUs (1.8 million per second per 256-bit block with SHA-NI on an EPYC vCPU); 2^25 is
/// about 8 times that, room for long `--iter-time`s, and caps one keyslot at tens of seconds
/// (not hours, as `u32::MAX` iterations would be) so the host cannot stall the agent.
pub const PBKDF2_MAX_ITERATIONS: u32 = 1 << 25;
/// Argon2 time floor (cryptsetup's minimum).
pub const ARGON2_MIN_TIME: u32 = 4;
/// Argon2 memory floor in KiB (cryptsetup's hard minimum).
pub const ARGON2_MIN_MEMORY_KIB: u32 = 32;
/// Argon2 memory ceiling in KiB: 1 GiB, cryptsetup's default cap for new keyslots (its hard
/// maximum, 4 GiB, is too much to allocate inside a TEE guest on a host's say-so).
pub const ARGON2_MAX_MEMORY_KIB: u32 = 1 << 20;
/// Argon2 lanes ceiling (cryptsetup's maximum).
pub const ARGON2_MAX_CPUS: u32 = 4;
/// Argon2 work ceiling, time x memory in KiB: 16 GiB of block fills (cryptsetup's benchmark
/// reaches a few GiB in its 2 seconds with 4 lanes; this implementation runs one lane at a time).
pub const ARGON2_MAX_WORK_KIB: u64 = 1 << 24;
/// Sector sizes dm-crypt accepts.
pub const SECTOR_SIZES: [u32; 4] = [512, 1024, 2048, 4096];

/// LUKS2 JSON metadata that cannot be used; each names the object and field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetadataError {
    /// Not JSON, or a field of the wrong type or out of its type's range.
    #[error("JSON metadata: {0}")]
    Json(String),
    /// A value LUKS2 (or cryptsetup) does not allow.
    #[error("{object}: {field} {problem}")]
    Invalid {
        /// e.g. `keyslot 0`.
        object: String,
        /// e.g. `af.stripes`.
        field: &'static str,
        /// e.g. `is 0, LUKS2 requires 4000`.
        problem: String,
    },
    /// A valid LUKS2 feature this implementation does not support.
    #[error("{object}: {field} {value} is not supported here")]
    Unsupported {
        /// e.g. `segment 0`.
        object: String,
        /// e.g. `encryption`.
        field: &'static str,
        /// The value found.
        value: String,
    },
}

fn invalid(
    object: impl fmt::Display,
    field: &'static str,
    problem: impl Into<String>,
) -> MetadataError {
    MetadataError::Invalid {
        object: object.to_string(),
        field,
        problem: problem.into(),
    }
}

fn unsupported(
    object: impl fmt::Display,
    field: &'static str,
    value: impl fmt::Debug,
) -> MetadataError {
    MetadataError::Unsupported {
        object: object.to_string(),
        field,
        value: format!("{value:?}"),
    }
}

// ---- serde: the JSON as it is ----

/// A decimal string of digits (as cryptsetup writes 64-bit values) or a non-negative integer.
fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(U64Visitor)
}

struct U64Visitor;

impl Visitor<'_> for U64Visitor {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative integer or a string of decimal digits")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E::custom(format!("{v:?} is not a decimal number")));
        }
        v.parse()
            .map_err(|_| E::custom(format!("{v:?} does not fit in 64 bits")))
    }
}

fn de_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = de_u64(d)?;
    u32::try_from(v).map_err(|_| de::Error::custom(format!("{v} does not fit in 32 bits")))
}

fn de_opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    de_u32(d).map(Some)
}

/// `"dynamic"` or a 64-bit size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentSize {
    /// To the end of the device.
    Dynamic,
    /// This many bytes.
    Fixed(u64),
}

impl<'de> Deserialize<'de> for SegmentSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SegmentSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"dynamic\" or a size")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SegmentSize, E> {
                Ok(SegmentSize::Fixed(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SegmentSize, E> {
                U64Visitor.visit_i64(v).map(SegmentSize::Fixed)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SegmentSize, E> {
                if v == "dynamic" {
                    Ok(SegmentSize::Dynamic)
                } else {
                    U64Visitor.visit_str(v).map(SegmentSize::Fixed)
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct RawMetadata {
    keyslots: BTreeMap<String, RawKeyslot>,
    #[serde(default)]
    #[allow(dead_code)]
    tokens: IgnoredAny,
    segments: BTreeMap<String, RawSegment>,
    digests: BTreeMap<String, RawDigest>,
    config: RawConfig,
}

#[derive(Deserialize)]
struct RawKeyslot {
    #[serde(rename = "type")]
    kind: String,
    #[serde(deserialize_with = "de_u32")]
    key_size: u32,
    af: RawAf,
    area: RawArea,
    kdf: RawKdf,
    #[serde(default, deserialize_with = "de_opt_u32")]
    priority: Option<u32>,
}

#[derive(Deserialize)]
struct RawAf {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, deserialize_with = "de_opt_u32")]
    stripes: Option<u32>,
    #[serde(default)]
    hash: Option<String>,
}

#[derive(Deserialize)]
struct RawArea {
    #[serde(rename = "type")]
    kind: String,
    #[serde(deserialize_with = "de_u64")]
    offset: u64,
    #[serde(deserialize_with = "de_u64")]
    size: u64,
    #[serde(default)]
    encryption: Option<String>,
    #[serde(default, deserialize_with = "de_opt_u32")]
    key_size: Option<u32>,
}

#[derive(Deserialize)]
struct RawKdf {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default, deserialize_with = "de_opt_u32")]
    iterations: Option<u32>,
    #[serde(default, deserialize_with = "de_opt_u32")]
    time: Option<u32>,
    #[serde(default, deserialize_with = "de_opt_u32")]
    memory: Option<u32>,
    #[serde(default, deserialize_with = "de_opt_u32")]
    cpus: Option<u32>,
    salt: String,
}

#[derive(Deserialize)]
struct RawDigest {
    #[serde(rename = "type")]
    kind: String,
    keyslots: Vec<String>,
    segments: Vec<String>,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default, deserialize_with = "de_opt_u32")]
    iterations: Option<u32>,
    #[serde(default)]
    salt: Option<String>,
    #[serde(default)]
    digest: Option<String>,
}

#[derive(Deserialize)]
struct RawSegment {
    #[serde(rename = "type")]
    kind: String,
    #[serde(deserialize_with = "de_u64")]
    offset: u64,
    size: SegmentSize,
    #[serde(default, deserialize_with = "de_u64")]
    iv_tweak: u64,
    #[serde(default)]
    encryption: Option<String>,
    #[serde(deserialize_with = "de_u32")]
    sector_size: u32,
    #[serde(default)]
    integrity: Option<IgnoredAny>,
    #[serde(default)]
    flags: Vec<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(deserialize_with = "de_u64")]
    json_size: u64,
    #[serde(deserialize_with = "de_u64")]
    keyslots_size: u64,
    #[serde(default)]
    requirements: Option<RawRequirements>,
}

#[derive(Deserialize)]
struct RawRequirements {
    #[serde(default)]
    mandatory: Vec<String>,
}

// ---- validated ----

/// An aes-xts-plain64 key size: two AES keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XtsKeySize {
    /// 32 bytes (AES-128-XTS).
    Bits256,
    /// 64 bytes (AES-256-XTS).
    Bits512,
}

impl XtsKeySize {
    /// From a size in bytes.
    pub fn from_bytes(n: u32) -> Option<Self> {
        match n {
            32 => Some(XtsKeySize::Bits256),
            64 => Some(XtsKeySize::Bits512),
            _ => None,
        }
    }

    /// Size in bytes.
    pub fn bytes(self) -> usize {
        match self {
            XtsKeySize::Bits256 => 32,
            XtsKeySize::Bits512 => 64,
        }
    }
}

/// Keyslot priority: `ignore` slots are not tried with a passphrase; `high` ones first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// 0.
    Ignore,
    /// 1 (the default).
    Normal,
    /// 2.
    High,
}

/// Argon2 flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Argon2Variant {
    /// argon2i.
    I,
    /// argon2id.
    Id,
}

/// A keyslot's key derivation, bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kdf {
    /// PBKDF2-HMAC.
    Pbkdf2 {
        /// HMAC hash.
        hash: Hash,
        /// [`PBKDF2_MIN_ITERATIONS`]..=[`PBKDF2_MAX_ITERATIONS`].
        iterations: u32,
        /// 32 bytes.
        salt: [u8; SALT_LEN],
    },
    /// Argon2i or Argon2id (version 0x13).
    Argon2 {
        /// i or id.
        variant: Argon2Variant,
        /// Passes, at least [`ARGON2_MIN_TIME`].
        time: u32,
        /// KiB, [`ARGON2_MIN_MEMORY_KIB`]..=[`ARGON2_MAX_MEMORY_KIB`], time x memory at most
        /// [`ARGON2_MAX_WORK_KIB`].
        memory_kib: u32,
        /// Lanes, 1..=[`ARGON2_MAX_CPUS`].
        cpus: u32,
        /// 32 bytes.
        salt: [u8; SALT_LEN],
    },
}

/// Where a keyslot's split key lies: inside the keyslots area, 4096-aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyslotArea {
    /// Byte offset on the device.
    pub offset: u64,
    /// Byte length.
    pub size: u64,
    /// aes-xts-plain64 key size of the key that encrypts the area (the KDF output).
    pub key_size: XtsKeySize,
}

/// A validated `luks2` keyslot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyslot {
    /// 0..32.
    pub id: u32,
    /// Try order.
    pub priority: Priority,
    /// Volume key size.
    pub key_size: XtsKeySize,
    /// Anti-forensic diffusion hash (stripes are always [`STRIPES`]).
    pub af_hash: Hash,
    /// The split key's area.
    pub area: KeyslotArea,
    /// Key derivation.
    pub kdf: Kdf,
}

impl Keyslot {
    /// Bytes of the split key: key size x [`STRIPES`], whole 512-byte sectors.
    pub fn split_key_len(&self) -> usize {
        (self.key_size.bytes() * STRIPES as usize).div_ceil(512) * 512
    }
}

/// A validated `pbkdf2` digest of the volume key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    /// Digest id.
    pub id: u32,
    /// Keyslots whose key it checks (existing ones).
    pub keyslots: Vec<u32>,
    /// Segments whose key it checks (existing ones).
    pub segments: Vec<u32>,
    /// HMAC hash.
    pub hash: Hash,
    /// [`PBKDF2_MIN_ITERATIONS`]..=[`PBKDF2_MAX_ITERATIONS`].
    pub iterations: u32,
    /// 32 bytes.
    pub salt: [u8; SALT_LEN],
    /// Exactly the hash's output size.
    pub digest: Vec<u8>,
}

/// The validated data segment (`crypt`, `aes-xts-plain64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset on the device, past the keyslots area, 512-aligned.
    pub offset: u64,
    /// Size: a non-zero multiple of the sector size, or dynamic.
    pub size: SegmentSize,
    /// IV of the first sector (in 512-byte units), aligned to the sector size.
    pub iv_tweak: u64,
    /// One of [`SECTOR_SIZES`].
    pub sector_size: u32,
}

/// `config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// JSON area size: the binary header's `hdr_size` - 4096.
    pub json_size: u64,
    /// Keyslots area size: 4096-aligned, at most [`MAX_KEYSLOTS_SIZE`].
    pub keyslots_size: u64,
}

/// Validated LUKS2 metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// By id.
    pub keyslots: Vec<Keyslot>,
    /// By id.
    pub digests: Vec<Digest>,
    /// Segment 0, the only one.
    pub segment: Segment,
    /// `config`.
    pub config: Config,
}

fn numbered(kind: &str, key: &str, below: u32) -> Result<u32, MetadataError> {
    let ok = !key.is_empty() && key.len() <= 10 && key.bytes().all(|b| b.is_ascii_digit());
    match key.parse::<u32>() {
        Ok(n) if ok && n < below => Ok(n),
        _ => Err(invalid(
            format!("{kind} {key:?}"),
            "id",
            format!("is not a number below {below}"),
        )),
    }
}

fn salt(object: &str, field: &'static str, b64: &str) -> Result<[u8; SALT_LEN], MetadataError> {
    let bytes = decode_b64(object, field, b64, SALT_LEN)?;
    let mut s = [0u8; SALT_LEN];
    if bytes.len() != SALT_LEN {
        return Err(invalid(
            object,
            field,
            format!("is {} bytes, LUKS2 requires {SALT_LEN}", bytes.len()),
        ));
    }
    s.copy_from_slice(&bytes);
    Ok(s)
}

/// Base64 of at most `max` bytes (checked before decoding).
fn decode_b64(
    object: &str,
    field: &'static str,
    b64: &str,
    max: usize,
) -> Result<Vec<u8>, MetadataError> {
    if b64.len() > max.div_ceil(3) * 4 {
        return Err(invalid(
            object,
            field,
            format!("is longer than {max} bytes"),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| invalid(object, field, "is not base64"))
}

fn hash(object: &str, field: &'static str, name: Option<&str>) -> Result<Hash, MetadataError> {
    let name = name.ok_or_else(|| invalid(object, field, "is missing"))?;
    Hash::from_name(name).ok_or_else(|| unsupported(object, field, name))
}

fn pbkdf2_iterations(
    object: &str,
    field: &'static str,
    it: Option<u32>,
) -> Result<u32, MetadataError> {
    let it = it.ok_or_else(|| invalid(object, field, "is missing"))?;
    if !(PBKDF2_MIN_ITERATIONS..=PBKDF2_MAX_ITERATIONS).contains(&it) {
        return Err(invalid(
            object,
            field,
            format!("is {it}, allowed {PBKDF2_MIN_ITERATIONS}..={PBKDF2_MAX_ITERATIONS}"),
        ));
    }
    Ok(it)
}

impl Kdf {
    fn validate(object: &str, k: &RawKdf) -> Result<Self, MetadataError> {
        let salt = salt(object, "kdf.salt", &k.salt)?;
        match k.kind.as_str() {
            "pbkdf2" => Ok(Kdf::Pbkdf2 {
                hash: hash(object, "kdf.hash", k.hash.as_deref())?,
                iterations: pbkdf2_iterations(object, "kdf.iterations", k.iterations)?,
                salt,
            }),
            "argon2i" | "argon2id" => {
                let get =
                    |field, v: Option<u32>| v.ok_or_else(|| invalid(object, field, "is missing"));
                let time = get("kdf.time", k.time)?;
                let memory_kib = get("kdf.memory", k.memory)?;
                let cpus = get("kdf.cpus", k.cpus)?;
                if time < ARGON2_MIN_TIME {
                    return Err(invalid(
                        object,
                        "kdf.time",
                        format!("is {time}, at least {ARGON2_MIN_TIME} required"),
                    ));
                }
                if !(ARGON2_MIN_MEMORY_KIB..=ARGON2_MAX_MEMORY_KIB).contains(&memory_kib) {
                    return Err(invalid(
                        object,
                        "kdf.memory",
                        format!("is {memory_kib} KiB, allowed {ARGON2_MIN_MEMORY_KIB}..={ARGON2_MAX_MEMORY_KIB}"),
                    ));
                }
                if !(1..=ARGON2_MAX_CPUS).contains(&cpus) {
                    return Err(invalid(
                        object,
                        "kdf.cpus",
                        format!("is {cpus}, allowed 1..={ARGON2_MAX_CPUS}"),
                    ));
                }
                if u64::from(memory_kib) < 8 * u64::from(cpus) {
                    return Err(invalid(
                        object,
                        "kdf.memory",
                        format!("is {memory_kib} KiB, Argon2 needs 8 KiB per lane ({cpus} lanes)"),
                    ));
                }
                let work = u64::from(time) * u64::from(memory_kib);
                if work > ARGON2_MAX_WORK_KIB {
                    return Err(invalid(
                        object,
                        "kdf.time",
                        format!(
                            "x kdf.memory is {work} KiB, at most {ARGON2_MAX_WORK_KIB} allowed"
                        ),
                    ));
                }
                Ok(Kdf::Argon2 {
                    variant: if k.kind == "argon2id" {
                        Argon2Variant::Id
                    } else {
                        Argon2Variant::I
                    },
                    time,
                    memory_kib,
                    cpus,
                    salt,
                })
            }
            other => Err(unsupported(object, "kdf.type", other)),
        }
    }
}

/// `[offset, offset + size)` with overflow refused.
fn end(object: &str, field: &'static str, offset: u64, size: u64) -> Result<u64, MetadataError> {
    offset
        .checked_add(size)
        .ok_or_else(|| invalid(object, field, format!("{offset} + {size} overflows")))
}

impl Keyslot {
    fn validate(id: u32, s: &RawKeyslot, keyslots_area: (u64, u64)) -> Result<Self, MetadataError> {
        let object = format!("keyslot {id}");
        let o = object.as_str();
        if s.kind != "luks2" {
            return Err(unsupported(o, "type", &s.kind));
        }
        let key_size = XtsKeySize::from_bytes(s.key_size).ok_or_else(|| {
            invalid(
                o,
                "key_size",
                format!("is {}, aes-xts-plain64 keys are 32 or 64 bytes", s.key_size),
            )
        })?;
        let priority = match s.priority {
            None | Some(1) => Priority::Normal,
            Some(0) => Priority::Ignore,
            Some(2) => Priority::High,
            Some(p) => return Err(invalid(o, "priority", format!("is {p}, allowed 0, 1, 2"))),
        };
        if s.af.kind != "luks1" {
            return Err(unsupported(o, "af.type", &s.af.kind));
        }
        match s.af.stripes {
            Some(STRIPES) => {}
            Some(n) => {
                return Err(invalid(
                    o,
                    "af.stripes",
                    format!("is {n}, LUKS2 requires {STRIPES}"),
                ))
            }
            None => {
                return Err(invalid(
                    o,
                    "af.stripes",
                    format!("is missing, LUKS2 requires {STRIPES}"),
                ))
            }
        }
        let af_hash = hash(o, "af.hash", s.af.hash.as_deref())?;
        let a = &s.area;
        if a.kind != "raw" {
            return Err(unsupported(o, "area.type", &a.kind));
        }
        match a.encryption.as_deref() {
            Some("aes-xts-plain64") => {}
            other => return Err(unsupported(o, "area.encryption", other)),
        }
        let area_key = a
            .key_size
            .ok_or_else(|| invalid(o, "area.key_size", "is missing"))?;
        let area_key_size = XtsKeySize::from_bytes(area_key).ok_or_else(|| {
            invalid(
                o,
                "area.key_size",
                format!("is {area_key}, aes-xts-plain64 keys are 32 or 64 bytes"),
            )
        })?;
        if !a.offset.is_multiple_of(4096) || !a.size.is_multiple_of(4096) {
            return Err(invalid(
                o,
                "area",
                format!(
                    "offset {} / size {} are not multiples of 4096",
                    a.offset, a.size
                ),
            ));
        }
        let area_end = end(o, "area", a.offset, a.size)?;
        let (ks_start, ks_end) = keyslots_area;
        if a.offset < ks_start || area_end > ks_end {
            return Err(invalid(
                o,
                "area",
                format!(
                    "[{}, {area_end}) is outside the keyslots area [{ks_start}, {ks_end})",
                    a.offset
                ),
            ));
        }
        let need = (key_size.bytes() as u64)
            .checked_mul(u64::from(STRIPES))
            .map(|n| n.div_ceil(512) * 512)
            .ok_or_else(|| invalid(o, "key_size", "x af.stripes overflows"))?;
        if a.size < need {
            return Err(invalid(
                o,
                "area.size",
                format!("is {}, the split key needs {need}", a.size),
            ));
        }
        Ok(Keyslot {
            id,
            priority,
            key_size,
            af_hash,
            area: KeyslotArea {
                offset: a.offset,
                size: a.size,
                key_size: area_key_size,
            },
            kdf: Kdf::validate(o, &s.kdf)?,
        })
    }
}

impl Metadata {
    /// Parse and validate the JSON text of a header copy whose binary header says `hdr_size`.
    pub fn from_json(json: &[u8], hdr_size: u64) -> Result<Self, MetadataError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: RawMetadata = serde_path_to_error::deserialize(de)
            .map_err(|e| MetadataError::Json(format!("{}: {}", e.path(), e.inner())))?;
        Self::validate(&raw, hdr_size)
    }

    fn validate(raw: &RawMetadata, hdr_size: u64) -> Result<Self, MetadataError> {
        // config
        let c = &raw.config;
        let json_area = hdr_size.saturating_sub(crate::header::BIN_LEN as u64);
        if c.json_size != json_area {
            return Err(invalid(
                "config",
                "json_size",
                format!(
                    "is {}, the binary header's hdr_size {hdr_size} makes it {json_area}",
                    c.json_size
                ),
            ));
        }
        if !c.keyslots_size.is_multiple_of(4096) || c.keyslots_size > MAX_KEYSLOTS_SIZE {
            return Err(invalid(
                "config",
                "keyslots_size",
                format!(
                    "is {}, must be a multiple of 4096 up to {MAX_KEYSLOTS_SIZE}",
                    c.keyslots_size
                ),
            ));
        }
        if let Some(r) = raw
            .config
            .requirements
            .as_ref()
            .filter(|r| !r.mandatory.is_empty())
        {
            return Err(unsupported(
                "config",
                "requirements.mandatory",
                &r.mandatory,
            ));
        }
        let config = Config {
            json_size: c.json_size,
            keyslots_size: c.keyslots_size,
        };
        // hdr_size <= 4 MiB and keyslots_size <= 128 MiB: no overflow.
        let ks_start = 2 * hdr_size;
        let ks_end = ks_start + c.keyslots_size;

        // segments: exactly one, "0".
        if raw.segments.len() != 1 {
            return Err(unsupported("segments", "count", raw.segments.len()));
        }
        let (sid, s) = raw
            .segments
            .iter()
            .next()
            .ok_or_else(|| invalid("segments", "count", "is 0"))?;
        let sid = numbered("segment", sid, 1)?;
        let o = format!("segment {sid}");
        if s.kind != "crypt" {
            return Err(unsupported(&o, "type", &s.kind));
        }
        match s.encryption.as_deref() {
            Some("aes-xts-plain64") => {}
            other => return Err(unsupported(&o, "encryption", other)),
        }
        if s.integrity.is_some() {
            return Err(unsupported(&o, "integrity", "(dm-integrity)"));
        }
        if !s.flags.is_empty() {
            return Err(unsupported(&o, "flags", &s.flags));
        }
        if !SECTOR_SIZES.contains(&s.sector_size) {
            return Err(invalid(
                &o,
                "sector_size",
                format!("is {}, must be one of 512, 1024, 2048, 4096", s.sector_size),
            ));
        }
        let sector = u64::from(s.sector_size);
        if !s.offset.is_multiple_of(512) {
            return Err(invalid(
                &o,
                "offset",
                format!("{} is not a multiple of 512", s.offset),
            ));
        }
        if s.offset < ks_end {
            return Err(invalid(
                &o,
                "offset",
                format!(
                    "{} overlaps the metadata and keyslots areas, which end at {ks_end}",
                    s.offset
                ),
            ));
        }
        if let SegmentSize::Fixed(n) = s.size {
            if n == 0 || !n.is_multiple_of(sector) {
                return Err(invalid(
                    &o,
                    "size",
                    format!("{n} is not a non-zero multiple of sector_size {sector}"),
                ));
            }
            end(&o, "size", s.offset, n)?;
        }
        if !s.iv_tweak.is_multiple_of(sector / 512) {
            return Err(invalid(
                &o,
                "iv_tweak",
                format!("{} is not aligned to sector_size {sector}", s.iv_tweak),
            ));
        }
        let segment = Segment {
            offset: s.offset,
            size: s.size,
            iv_tweak: s.iv_tweak,
            sector_size: s.sector_size,
        };

        // keyslots
        if raw.keyslots.len() > MAX_KEYSLOTS as usize {
            return Err(invalid(
                "keyslots",
                "count",
                format!("is {}, at most {MAX_KEYSLOTS}", raw.keyslots.len()),
            ));
        }
        let mut keyslots = Vec::with_capacity(raw.keyslots.len());
        for (id, s) in &raw.keyslots {
            let id = numbered("keyslot", id, MAX_KEYSLOTS)?;
            keyslots.push(Keyslot::validate(id, s, (ks_start, ks_end))?);
        }
        keyslots.sort_by_key(|k| k.id);
        for (i, a) in keyslots.iter().enumerate() {
            for b in &keyslots[i + 1..] {
                let (a0, a1) = (a.area.offset, a.area.offset + a.area.size);
                let (b0, b1) = (b.area.offset, b.area.offset + b.area.size);
                if a0 < b1 && b0 < a1 {
                    return Err(invalid(
                        format!("keyslot {}", b.id),
                        "area",
                        format!("[{b0}, {b1}) overlaps keyslot {}'s [{a0}, {a1})", a.id),
                    ));
                }
            }
        }

        // digests
        if raw.digests.len() > MAX_DIGESTS {
            return Err(invalid(
                "digests",
                "count",
                format!("is {}, at most {MAX_DIGESTS}", raw.digests.len()),
            ));
        }
        let mut digests = Vec::with_capacity(raw.digests.len());
        for (id, d) in &raw.digests {
            let id = numbered("digest", id, u32::MAX)?;
            let o = format!("digest {id}");
            let o = o.as_str();
            if d.kind != "pbkdf2" {
                return Err(unsupported(o, "type", &d.kind));
            }
            let mut ks = Vec::new();
            for k in &d.keyslots {
                let k = numbered("keyslot", k, MAX_KEYSLOTS)?;
                if !keyslots.iter().any(|s| s.id == k) {
                    return Err(invalid(
                        o,
                        "keyslots",
                        format!("names keyslot {k}, which does not exist"),
                    ));
                }
                ks.push(k);
            }
            let mut segs = Vec::new();
            for s in &d.segments {
                let s = numbered("segment", s, u32::MAX)?;
                if s != sid {
                    return Err(invalid(
                        o,
                        "segments",
                        format!("names segment {s}, which does not exist"),
                    ));
                }
                segs.push(s);
            }
            let hash = hash(o, "hash", d.hash.as_deref())?;
            let iterations = pbkdf2_iterations(o, "iterations", d.iterations)?;
            let salt = salt(o, "salt", d.salt.as_deref().unwrap_or_default())?;
            let digest = decode_b64(o, "digest", d.digest.as_deref().unwrap_or_default(), 64)?;
            if digest.len() != hash.size() {
                return Err(invalid(
                    o,
                    "digest",
                    format!(
                        "is {} bytes, {} digests are {}",
                        digest.len(),
                        hash.name(),
                        hash.size()
                    ),
                ));
            }
            digests.push(Digest {
                id,
                keyslots: ks,
                segments: segs,
                hash,
                iterations,
                salt,
                digest,
            });
        }
        digests.sort_by_key(|d| d.id);
        if !digests.iter().any(|d| d.segments.contains(&sid)) {
            return Err(invalid(
                format!("segment {sid}"),
                "digest",
                "is not assigned to any digest",
            ));
        }
        Ok(Metadata {
            keyslots,
            digests,
            segment,
            config,
        })
    }

    /// The digest that checks `keyslot`'s key (cryptsetup takes the first that names it), if it
    /// also checks the data segment's key.
    pub fn digest_for(&self, keyslot: u32) -> Option<&Digest> {
        self.digests
            .iter()
            .find(|d| d.keyslots.contains(&keyslot))
            .filter(|d| d.segments.contains(&0))
    }

    /// The keyslots a passphrase is tried on, in cryptsetup's order: high priority first, then
    /// normal; `ignore` ones never.
    pub fn keyslots_to_try(&self) -> Vec<&Keyslot> {
        let mut v: Vec<&Keyslot> = self
            .keyslots
            .iter()
            .filter(|k| k.priority != Priority::Ignore)
            .collect();
        v.sort_by_key(|k| (std::cmp::Reverse(k.priority), k.id));
        v
    }

    /// End of the metadata and keyslots areas: the image must be at least this long.
    pub fn areas_end(&self) -> u64 {
        2 * (self.config.json_size + crate::header::BIN_LEN as u64) + self.config.keyslots_size
    }
}
