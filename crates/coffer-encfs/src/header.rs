//! The LUKS2 binary header (4096 bytes at the start of each of the two metadata copies), one
//! type mirroring the on-disk table of the LUKS2 specification with one parse and one encode,
//! and the checks cryptsetup makes before it trusts a copy (`hdr_disk_sanity_check_pre`,
//! `hdr_checksum_check`, `validate_json_area`).
//!
//! | offset | size | field        |
//! | ------ | ---- | ------------ |
//! | 0      | 6    | magic        |
//! | 6      | 2    | version (BE) |
//! | 8      | 8    | hdr_size (BE, binary header + JSON area) |
//! | 16     | 8    | seqid (BE)   |
//! | 24     | 48   | label        |
//! | 72     | 32   | csum_alg     |
//! | 104    | 64   | salt         |
//! | 168    | 40   | uuid         |
//! | 208    | 48   | subsystem    |
//! | 256    | 8    | hdr_offset (BE) |
//! | 264    | 184  | padding      |
//! | 448    | 64   | csum         |
//! | 512    | 3584 | padding      |

use std::ops::Range;

use openssl::hash::MessageDigest;

/// Size of the binary header.
pub const BIN_LEN: usize = 4096;
/// Magic of the primary copy (at offset 0).
pub const MAGIC_PRIMARY: [u8; 6] = *b"LUKS\xba\xbe";
/// Magic of the secondary copy (at offset `hdr_size`).
pub const MAGIC_SECONDARY: [u8; 6] = *b"SKUL\xba\xbe";
/// The header sizes (binary header + JSON area) LUKS2 allows: 16 KiB, 32 KiB, ... 4 MiB. The
/// secondary copy sits at one of these offsets.
pub const HDR_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];

const MAGIC: Range<usize> = 0..6;
const VERSION: Range<usize> = 6..8;
const HDR_SIZE: Range<usize> = 8..16;
const SEQID: Range<usize> = 16..24;
const LABEL: Range<usize> = 24..72;
const CSUM_ALG: Range<usize> = 72..104;
const SALT: Range<usize> = 104..168;
const UUID: Range<usize> = 168..208;
const SUBSYSTEM: Range<usize> = 208..256;
const HDR_OFFSET: Range<usize> = 256..264;
const PADDING: Range<usize> = 264..448;
const CSUM: Range<usize> = 448..512;
const PADDING4096: Range<usize> = 512..BIN_LEN;

/// Which of the two metadata copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderCopy {
    /// At offset 0, magic `LUKS\xba\xbe`.
    Primary,
    /// At offset `hdr_size`, magic `SKUL\xba\xbe`.
    Secondary,
}

impl HeaderCopy {
    /// The magic this copy must carry.
    pub fn magic(self) -> [u8; 6] {
        match self {
            HeaderCopy::Primary => MAGIC_PRIMARY,
            HeaderCopy::Secondary => MAGIC_SECONDARY,
        }
    }
}

impl std::fmt::Display for HeaderCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeaderCopy::Primary => "primary",
            HeaderCopy::Secondary => "secondary",
        })
    }
}

/// A header copy that cannot be trusted; each names what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// Not a LUKS2 header of this copy.
    #[error("{copy} header at offset {offset}: bad magic")]
    Magic {
        /// Which copy.
        copy: HeaderCopy,
        /// Where it was looked for.
        offset: u64,
    },
    /// Another LUKS version.
    #[error("{copy} header at offset {offset}: LUKS version {version}, only 2 is supported")]
    Version {
        /// Which copy.
        copy: HeaderCopy,
        /// Where.
        offset: u64,
        /// The version found.
        version: u16,
    },
    /// `hdr_size` is not one LUKS2 allows.
    #[error("{copy} header at offset {offset}: hdr_size {hdr_size} is not one of 16 KiB, 32 KiB, ... 4 MiB")]
    HdrSize {
        /// Which copy.
        copy: HeaderCopy,
        /// Where.
        offset: u64,
        /// The size found.
        hdr_size: u64,
    },
    /// `hdr_offset` is not where the copy was found.
    #[error("{copy} header at offset {offset} claims hdr_offset {hdr_offset}")]
    HdrOffset {
        /// Which copy.
        copy: HeaderCopy,
        /// Where it was read.
        offset: u64,
        /// What it says.
        hdr_offset: u64,
    },
    /// The secondary copy is not at `hdr_size`.
    #[error(
        "secondary header at offset {offset} has hdr_size {hdr_size}: it must sit at its hdr_size"
    )]
    SecondaryOffset {
        /// Where it was read.
        offset: u64,
        /// What it says.
        hdr_size: u64,
    },
    /// A text field without its terminating NUL.
    #[error("{copy} header at offset {offset}: {field} is not NUL-terminated")]
    Unterminated {
        /// Which copy.
        copy: HeaderCopy,
        /// Where.
        offset: u64,
        /// The field.
        field: &'static str,
    },
    /// A checksum algorithm not supported here.
    #[error("{copy} header at offset {offset}: checksum algorithm {alg:?} is not supported (sha1, sha256, sha512)")]
    ChecksumAlg {
        /// Which copy.
        copy: HeaderCopy,
        /// Where.
        offset: u64,
        /// The algorithm named.
        alg: String,
    },
    /// The checksum does not match the header and JSON area.
    #[error("{copy} header at offset {offset}: checksum mismatch")]
    Checksum {
        /// Which copy.
        copy: HeaderCopy,
        /// Where.
        offset: u64,
    },
    /// The JSON area is not one JSON text followed by NUL bytes up to its end.
    #[error("{copy} header at offset {offset}: JSON area: {problem}")]
    JsonArea {
        /// Which copy.
        copy: HeaderCopy,
        /// Where.
        offset: u64,
        /// What is wrong.
        problem: &'static str,
    },
}

/// The hash algorithms LUKS2 metadata may name here (header checksum, AF, PBKDF2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    /// SHA-1 (LUKS1-era images).
    Sha1,
    /// SHA-256 (cryptsetup's default).
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Hash {
    /// By its cryptsetup name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha1" => Some(Hash::Sha1),
            "sha256" => Some(Hash::Sha256),
            "sha512" => Some(Hash::Sha512),
            _ => None,
        }
    }

    /// The cryptsetup name.
    pub fn name(self) -> &'static str {
        match self {
            Hash::Sha1 => "sha1",
            Hash::Sha256 => "sha256",
            Hash::Sha512 => "sha512",
        }
    }

    /// Output size in bytes.
    pub fn size(self) -> usize {
        self.md().size()
    }

    pub(crate) fn md(self) -> MessageDigest {
        match self {
            Hash::Sha1 => MessageDigest::sha1(),
            Hash::Sha256 => MessageDigest::sha256(),
            Hash::Sha512 => MessageDigest::sha512(),
        }
    }
}

/// The binary header of one metadata copy, field by field as on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryHeader {
    /// `LUKS\xba\xbe` (primary) or `SKUL\xba\xbe` (secondary).
    pub magic: [u8; 6],
    /// 2.
    pub version: u16,
    /// Binary header + JSON area, one of [`HDR_SIZES`].
    pub hdr_size: u64,
    /// Incremented on every metadata update; the copy with the higher one wins.
    pub seqid: u64,
    /// NUL-terminated label.
    pub label: [u8; 48],
    /// NUL-terminated checksum algorithm name.
    pub csum_alg: [u8; 32],
    /// Per-copy salt.
    pub salt: [u8; 64],
    /// NUL-terminated UUID text.
    pub uuid: [u8; 40],
    /// NUL-terminated subsystem.
    pub subsystem: [u8; 48],
    /// Offset of this copy on the device.
    pub hdr_offset: u64,
    /// Padding (zero as written; covered by the checksum whatever it holds).
    pub padding: [u8; 184],
    /// Checksum over the binary header (with this field zeroed) and the JSON area.
    pub csum: [u8; 64],
    /// Padding to 4096 bytes (likewise).
    pub padding4096: [u8; 3584],
}

fn be64(b: &[u8; BIN_LEN], r: Range<usize>) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[r]);
    u64::from_be_bytes(a)
}

fn arr<const N: usize>(b: &[u8; BIN_LEN], r: Range<usize>) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[r]);
    a
}

/// The text of a NUL-terminated field, if it is terminated and UTF-8.
fn c_str(field: &[u8]) -> Option<&str> {
    let end = field.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&field[..end]).ok()
}

impl BinaryHeader {
    /// Decode the 4096 bytes of a binary header, field by field, without checking anything
    /// (`encode` gives the same bytes back).
    pub fn parse(b: &[u8; BIN_LEN]) -> Self {
        BinaryHeader {
            magic: arr(b, MAGIC),
            version: u16::from_be_bytes(arr(b, VERSION)),
            hdr_size: be64(b, HDR_SIZE),
            seqid: be64(b, SEQID),
            label: arr(b, LABEL),
            csum_alg: arr(b, CSUM_ALG),
            salt: arr(b, SALT),
            uuid: arr(b, UUID),
            subsystem: arr(b, SUBSYSTEM),
            hdr_offset: be64(b, HDR_OFFSET),
            padding: arr(b, PADDING),
            csum: arr(b, CSUM),
            padding4096: arr(b, PADDING4096),
        }
    }

    /// Encode as the 4096 on-disk bytes.
    pub fn encode(&self) -> [u8; BIN_LEN] {
        let mut b = [0u8; BIN_LEN];
        b[MAGIC].copy_from_slice(&self.magic);
        b[VERSION].copy_from_slice(&self.version.to_be_bytes());
        b[HDR_SIZE].copy_from_slice(&self.hdr_size.to_be_bytes());
        b[SEQID].copy_from_slice(&self.seqid.to_be_bytes());
        b[LABEL].copy_from_slice(&self.label);
        b[CSUM_ALG].copy_from_slice(&self.csum_alg);
        b[SALT].copy_from_slice(&self.salt);
        b[UUID].copy_from_slice(&self.uuid);
        b[SUBSYSTEM].copy_from_slice(&self.subsystem);
        b[HDR_OFFSET].copy_from_slice(&self.hdr_offset.to_be_bytes());
        b[PADDING].copy_from_slice(&self.padding);
        b[CSUM].copy_from_slice(&self.csum);
        b[PADDING4096].copy_from_slice(&self.padding4096);
        b
    }

    /// A fresh header for `copy` of a `hdr_size` metadata area (checksum sha256, not yet computed).
    pub fn new(copy: HeaderCopy, hdr_size: u64, seqid: u64, uuid: &str, salt: [u8; 64]) -> Self {
        let mut u = [0u8; 40];
        let n = uuid.len().min(39);
        u[..n].copy_from_slice(&uuid.as_bytes()[..n]);
        let mut alg = [0u8; 32];
        alg[..6].copy_from_slice(b"sha256");
        BinaryHeader {
            magic: copy.magic(),
            version: 2,
            hdr_size,
            seqid,
            label: [0; 48],
            csum_alg: alg,
            salt,
            uuid: u,
            subsystem: [0; 48],
            hdr_offset: match copy {
                HeaderCopy::Primary => 0,
                HeaderCopy::Secondary => hdr_size,
            },
            padding: [0; 184],
            csum: [0; 64],
            padding4096: [0; 3584],
        }
    }

    /// The label text.
    pub fn label(&self) -> Option<&str> {
        c_str(&self.label)
    }

    /// The UUID text.
    pub fn uuid(&self) -> Option<&str> {
        c_str(&self.uuid)
    }

    /// The checksum algorithm, if supported.
    pub fn csum_hash(&self) -> Option<Hash> {
        c_str(&self.csum_alg).and_then(Hash::from_name)
    }

    /// The checks cryptsetup makes before reading the JSON area (`hdr_disk_sanity_check_pre`),
    /// for this header read as `copy` at `offset`.
    pub fn check(&self, copy: HeaderCopy, offset: u64) -> Result<Hash, HeaderError> {
        if self.magic != copy.magic() {
            return Err(HeaderError::Magic { copy, offset });
        }
        if self.version != 2 {
            return Err(HeaderError::Version {
                copy,
                offset,
                version: self.version,
            });
        }
        if self.hdr_offset != offset {
            return Err(HeaderError::HdrOffset {
                copy,
                offset,
                hdr_offset: self.hdr_offset,
            });
        }
        if !HDR_SIZES.contains(&self.hdr_size) {
            return Err(HeaderError::HdrSize {
                copy,
                offset,
                hdr_size: self.hdr_size,
            });
        }
        if copy == HeaderCopy::Secondary && offset != self.hdr_size {
            return Err(HeaderError::SecondaryOffset {
                offset,
                hdr_size: self.hdr_size,
            });
        }
        for (field, bytes) in [
            ("label", &self.label[..]),
            ("csum_alg", &self.csum_alg[..]),
            ("uuid", &self.uuid[..]),
            ("subsystem", &self.subsystem[..]),
        ] {
            if !bytes.contains(&0) {
                return Err(HeaderError::Unterminated {
                    copy,
                    offset,
                    field,
                });
            }
        }
        self.csum_hash().ok_or_else(|| HeaderError::ChecksumAlg {
            copy,
            offset,
            alg: String::from_utf8_lossy(&self.csum_alg)
                .trim_end_matches('\0')
                .to_string(),
        })
    }

    /// The checksum of this header (its `csum` taken as zero) followed by `json_area`.
    pub fn compute_csum(
        &self,
        hash: Hash,
        json_area: &[u8],
    ) -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let mut zeroed = self.clone();
        zeroed.csum = [0; 64];
        let mut h = openssl::hash::Hasher::new(hash.md())?;
        h.update(&zeroed.encode())?;
        h.update(json_area)?;
        Ok(h.finish()?.to_vec())
    }

    /// Whether the stored checksum matches (constant-time over the hash's output size).
    pub fn csum_matches(
        &self,
        hash: Hash,
        json_area: &[u8],
    ) -> Result<bool, openssl::error::ErrorStack> {
        let got = self.compute_csum(hash, json_area)?;
        Ok(openssl::memcmp::eq(&got, &self.csum[..got.len()]))
    }

    /// Set `csum` for `json_area` with this header's algorithm (sha256 when unnamed).
    pub fn seal(&mut self, json_area: &[u8]) -> Result<(), openssl::error::ErrorStack> {
        let hash = self.csum_hash().unwrap_or(Hash::Sha256);
        let sum = self.compute_csum(hash, json_area)?;
        self.csum = [0; 64];
        self.csum[..sum.len()].copy_from_slice(&sum);
        Ok(())
    }
}

/// The JSON text of a JSON area: it must open with `{`, end at a NUL byte, and be followed by
/// nothing but NUL bytes to the end of the area (cryptsetup's `validate_json_area`).
pub fn json_text(area: &[u8], copy: HeaderCopy, offset: u64) -> Result<&[u8], HeaderError> {
    let bad = |problem| HeaderError::JsonArea {
        copy,
        offset,
        problem,
    };
    if area.first() != Some(&b'{') {
        return Err(bad("does not start with '{'"));
    }
    let end = area
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| bad("no NUL byte after the JSON text"))?;
    if area[end..].iter().any(|&b| b != 0) {
        return Err(bad("bytes other than NUL after the JSON text"));
    }
    Ok(&area[..end])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parse_and_encode_are_inverse_and_fields_sit_at_the_spec_offsets() {
        let mut h = BinaryHeader::new(
            HeaderCopy::Secondary,
            0x8000,
            7,
            "12345678-1234-4234-8234-123456789abc",
            [9; 64],
        );
        h.label[..4].copy_from_slice(b"data");
        h.subsystem[..3].copy_from_slice(b"sub");
        h.csum[..32].copy_from_slice(&[0xaa; 32]);
        let b = h.encode();
        assert_eq!(&b[0..6], b"SKUL\xba\xbe");
        assert_eq!(&b[6..8], &[0, 2]);
        assert_eq!(&b[8..16], &0x8000u64.to_be_bytes());
        assert_eq!(&b[16..24], &7u64.to_be_bytes());
        assert_eq!(&b[24..28], b"data");
        assert_eq!(&b[72..78], b"sha256");
        assert_eq!(&b[104..168], &[9; 64]);
        assert_eq!(&b[168..172], b"1234");
        assert_eq!(&b[208..211], b"sub");
        assert_eq!(&b[256..264], &0x8000u64.to_be_bytes());
        assert_eq!(&b[448..480], &[0xaa; 32]);
        assert!(b[264..448].iter().chain(&b[512..]).all(|&x| x == 0));
        assert_eq!(BinaryHeader::parse(&b), h);
        // Every byte round-trips, padding included (the checksum covers it).
        let mut raw = [0u8; BIN_LEN];
        openssl::rand::rand_bytes(&mut raw).unwrap();
        assert_eq!(BinaryHeader::parse(&raw).encode(), raw);
        assert_eq!(h.check(HeaderCopy::Secondary, 0x8000), Ok(Hash::Sha256));
        assert_eq!(h.uuid(), Some("12345678-1234-4234-8234-123456789abc"));
        assert_eq!(h.label(), Some("data"));
    }

    #[test]
    fn sanity_checks_name_the_field() {
        let good = BinaryHeader::new(HeaderCopy::Primary, 0x4000, 1, "u", [0; 64]);
        let mut h = good.clone();
        h.hdr_size = 0x5000;
        assert!(matches!(
            h.check(HeaderCopy::Primary, 0),
            Err(HeaderError::HdrSize {
                hdr_size: 0x5000,
                ..
            })
        ));
        let mut h = good.clone();
        h.hdr_offset = 4096;
        assert!(matches!(
            h.check(HeaderCopy::Primary, 0),
            Err(HeaderError::HdrOffset { .. })
        ));
        assert!(matches!(
            good.check(HeaderCopy::Secondary, 0),
            Err(HeaderError::Magic { .. })
        ));
        let mut h = good.clone();
        h.csum_alg = [b'a'; 32];
        assert!(matches!(
            h.check(HeaderCopy::Primary, 0),
            Err(HeaderError::Unterminated {
                field: "csum_alg",
                ..
            })
        ));
        let mut h = good.clone();
        h.csum_alg[..6].copy_from_slice(b"md5\0\0\0");
        assert!(matches!(
            h.check(HeaderCopy::Primary, 0),
            Err(HeaderError::ChecksumAlg { .. })
        ));
        let mut h = good;
        h.version = 1;
        assert!(matches!(
            h.check(HeaderCopy::Primary, 0),
            Err(HeaderError::Version { version: 1, .. })
        ));
    }

    #[test]
    fn json_area_is_one_text_then_nuls() {
        let p = HeaderCopy::Primary;
        assert_eq!(json_text(b"{}\0\0", p, 0).unwrap(), b"{}");
        assert!(json_text(b"{}\0x", p, 0).is_err());
        assert!(json_text(b"{}}}", p, 0).is_err());
        assert!(json_text(b" {}\0", p, 0).is_err());
        assert!(json_text(b"", p, 0).is_err());
    }
}
