//! The parts of an OVMF image a launch digest needs: the GUIDed footer table at its end and the SEV
//! metadata (`ASEV`) it points to.
//!
//! Layout (edk2 `OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm`, `X64/OvmfSevMetadata.asm`):
//!
//! ```text
//! ... | entry data | size:u16 | guid:16 | ... | table size:u16 | OVMF_TABLE_FOOTER_GUID | 32 bytes (reset vector)
//!                                               ^ footer entry, at len - 32 - 18
//! ```
//!
//! Entries are read from the footer backwards; each `size` counts its data and its 18-byte header;
//! the footer's `size` counts the whole table including itself. All parsing is bounds-checked.

use crate::error::MeasureError;
use crate::guid::Guid;

/// Ends the footer table, 32 bytes before the end of the image.
pub const OVMF_TABLE_FOOTER_GUID: Guid = Guid::from_fields(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// Entry holding the GPA (u32) of the SEV kernel/initrd/cmdline hash table, and its size.
pub const SEV_HASH_TABLE_RV_GUID: Guid = Guid::from_fields(
    0x7255_371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);
/// Entry holding the SEV-ES AP reset vector (u32 EIP).
pub const SEV_ES_RESET_BLOCK_GUID: Guid = Guid::from_fields(
    0x00f7_71de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);
/// Entry holding the offset (u32, from the end of the image) of the SEV metadata.
pub const OVMF_SEV_METADATA_GUID: Guid = Guid::from_fields(
    0xdc88_6566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);

/// Size of a footer table entry header: `size: u16`, `guid: [u8; 16]`.
pub const FOOTER_ENTRY_HEADER_LEN: usize = 18;
/// Bytes after the footer entry: the reset vector code.
pub const FOOTER_TRAILER_LEN: usize = 32;

/// One entry of the footer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FooterEntry<'a> {
    /// Its GUID.
    pub guid: Guid,
    /// Its data (without the 18-byte header).
    pub data: &'a [u8],
}

impl FooterEntry<'_> {
    /// The little-endian u32 at the start of the data, which is what every entry used here holds.
    pub fn u32_at_start(&self) -> Result<u32, MeasureError> {
        match self.data.first_chunk::<4>() {
            Some(b) => Ok(u32::from_le_bytes(*b)),
            None => Err(MeasureError::FooterEntryTooShort {
                guid: self.guid,
                len: self.data.len(),
                need: 4,
            }),
        }
    }
}

/// The OVMF footer table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FooterTable<'a> {
    /// Entries in the order read: from the one nearest the footer backwards.
    pub entries: Vec<FooterEntry<'a>>,
}

impl<'a> FooterTable<'a> {
    /// Parse the table at the end of `image`. An image without the footer GUID in its place (or
    /// too short to hold it) has an empty table, as in sev-snp-measure.
    pub fn parse(image: &'a [u8]) -> Result<Self, MeasureError> {
        let Some(footer_at) = image
            .len()
            .checked_sub(FOOTER_TRAILER_LEN + FOOTER_ENTRY_HEADER_LEN)
        else {
            return Ok(Self::default());
        };
        let (size, guid) = entry_header(&image[footer_at..footer_at + FOOTER_ENTRY_HEADER_LEN]);
        if guid != OVMF_TABLE_FOOTER_GUID {
            return Ok(Self::default());
        }
        let Some(table_len) = size.checked_sub(FOOTER_ENTRY_HEADER_LEN) else {
            return Ok(Self::default());
        };
        let Some(start) = footer_at.checked_sub(table_len) else {
            return Err(MeasureError::FooterTableOutOfBounds {
                size: table_len,
                available: footer_at,
            });
        };
        let mut rest = &image[start..footer_at];
        let mut entries = Vec::new();
        while rest.len() >= FOOTER_ENTRY_HEADER_LEN {
            let header_at = rest.len() - FOOTER_ENTRY_HEADER_LEN;
            let (size, guid) = entry_header(&rest[header_at..]);
            if size < FOOTER_ENTRY_HEADER_LEN || size > rest.len() {
                return Err(MeasureError::FooterEntrySize {
                    guid,
                    size,
                    remaining: rest.len(),
                });
            }
            let entry_at = rest.len() - size;
            entries.push(FooterEntry {
                guid,
                data: &rest[entry_at..header_at],
            });
            rest = &rest[..entry_at];
        }
        Ok(FooterTable { entries })
    }

    /// The entry with this GUID. Should the GUID repeat, the one farthest from the footer wins, as
    /// in sev-snp-measure (a dict filled while walking backwards).
    pub fn get(&self, guid: Guid) -> Option<&FooterEntry<'a>> {
        self.entries.iter().rev().find(|e| e.guid == guid)
    }
}

/// `size` and `guid` of an 18-byte entry header.
fn entry_header(b: &[u8]) -> (usize, Guid) {
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&b[2..FOOTER_ENTRY_HEADER_LEN]);
    (usize::from(u16::from_le_bytes([b[0], b[1]])), Guid(guid))
}

/// The type of an SEV metadata section (edk2 `OvmfSevMetadata.asm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SectionType {
    /// OVMF_SECTION_TYPE_SNP_SEC_MEM: memory the firmware uses early; measured as zero pages.
    SnpSecMem = 1,
    /// OVMF_SECTION_TYPE_SNP_SECRETS: the secrets page.
    SnpSecrets = 2,
    /// OVMF_SECTION_TYPE_CPUID: the CPUID page.
    Cpuid = 3,
    /// OVMF_SECTION_TYPE_SVSM_CAA: the SVSM calling area; measured as zero pages.
    SvsmCaa = 4,
    /// OVMF_SECTION_TYPE_KERNEL_HASHES: the page QEMU fills with the kernel hash table.
    SnpKernelHashes = 0x10,
}

impl TryFrom<u32> for SectionType {
    type Error = MeasureError;

    fn try_from(v: u32) -> Result<Self, MeasureError> {
        Ok(match v {
            1 => SectionType::SnpSecMem,
            2 => SectionType::SnpSecrets,
            3 => SectionType::Cpuid,
            4 => SectionType::SvsmCaa,
            0x10 => SectionType::SnpKernelHashes,
            other => return Err(MeasureError::UnknownSectionType(other)),
        })
    }
}

/// One section descriptor of the SEV metadata (`OvmfSevMetadataSectionDesc`, 12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionDesc {
    /// Guest-physical address.
    pub gpa: u32,
    /// Size in bytes.
    pub size: u32,
    /// Type.
    pub kind: SectionType,
}

impl SectionDesc {
    /// Size of the encoding.
    pub const LEN: usize = 12;
}

/// The SEV metadata header (`OvmfSevMetadataHeader`, 16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevMetadataHeader {
    /// `ASEV`.
    pub signature: [u8; 4],
    /// Size of the metadata, header included.
    pub size: u32,
    /// 1.
    pub version: u32,
    /// Number of section descriptors that follow.
    pub num_items: u32,
}

impl SevMetadataHeader {
    /// Size of the encoding.
    pub const LEN: usize = 16;
    /// The expected signature.
    pub const SIGNATURE: [u8; 4] = *b"ASEV";
}

/// Read a little-endian u32 at `at`; callers have checked the bounds.
fn le32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

/// Parse the SEV metadata that `offset_from_end` (from the footer table) points at.
pub fn parse_sev_metadata(
    image: &[u8],
    offset_from_end: u32,
) -> Result<(SevMetadataHeader, Vec<SectionDesc>), MeasureError> {
    let out_of_bounds = || MeasureError::MetadataOutOfBounds {
        offset_from_end,
        len: image.len(),
    };
    let start = image
        .len()
        .checked_sub(offset_from_end as usize)
        .ok_or_else(out_of_bounds)?;
    let h = image
        .get(start..start + SevMetadataHeader::LEN)
        .ok_or_else(out_of_bounds)?;
    let header = SevMetadataHeader {
        signature: [h[0], h[1], h[2], h[3]],
        size: le32(h, 4),
        version: le32(h, 8),
        num_items: le32(h, 12),
    };
    if header.signature != SevMetadataHeader::SIGNATURE {
        return Err(MeasureError::MetadataSignature(header.signature));
    }
    if header.version != 1 {
        return Err(MeasureError::MetadataVersion(header.version));
    }
    // The descriptors lie within the declared size and within the image.
    let items_start = start + SevMetadataHeader::LEN;
    let items_end = start
        .saturating_add(header.size as usize)
        .min(image.len())
        .max(items_start);
    let items = &image[items_start..items_end];
    let fits = items.len() / SectionDesc::LEN;
    if header.num_items as usize > fits {
        return Err(MeasureError::MetadataItemsOutOfBounds {
            items: header.num_items,
            size: header.size,
            fits,
        });
    }
    let sections = items
        .chunks_exact(SectionDesc::LEN)
        .take(header.num_items as usize)
        .map(|d| {
            Ok(SectionDesc {
                gpa: le32(d, 0),
                size: le32(d, 4),
                kind: SectionType::try_from(le32(d, 8))?,
            })
        })
        .collect::<Result<Vec<_>, MeasureError>>()?;
    Ok((header, sections))
}

/// An OVMF image with its footer table and SEV metadata parsed.
#[derive(Debug, Clone)]
pub struct Ovmf<'a> {
    image: &'a [u8],
    table: FooterTable<'a>,
    sections: Vec<SectionDesc>,
}

impl<'a> Ovmf<'a> {
    /// Parse `image` (the whole OVMF.fd as QEMU maps it: ending at 4 GiB).
    pub fn parse(image: &'a [u8]) -> Result<Self, MeasureError> {
        let table = FooterTable::parse(image)?;
        let sections = match table.get(OVMF_SEV_METADATA_GUID) {
            Some(e) => parse_sev_metadata(image, e.u32_at_start()?)?.1,
            None => Vec::new(),
        };
        Ok(Ovmf {
            image,
            table,
            sections,
        })
    }

    /// The image bytes.
    pub fn image(&self) -> &'a [u8] {
        self.image
    }

    /// The footer table.
    pub fn footer_table(&self) -> &FooterTable<'a> {
        &self.table
    }

    /// The SEV metadata sections, in order (empty without metadata).
    pub fn sections(&self) -> &[SectionDesc] {
        &self.sections
    }

    /// Whether the metadata lists a section of this type.
    pub fn has_section(&self, kind: SectionType) -> bool {
        self.sections.iter().any(|s| s.kind == kind)
    }

    /// The SEV-ES reset vector (the APs' initial EIP), if the image has a reset block.
    pub fn sev_es_reset_eip(&self) -> Result<Option<u32>, MeasureError> {
        self.table
            .get(SEV_ES_RESET_BLOCK_GUID)
            .map(FooterEntry::u32_at_start)
            .transpose()
    }

    /// The GPA of the SEV hash table, if the image has that entry.
    pub fn sev_hash_table_gpa(&self) -> Result<Option<u32>, MeasureError> {
        self.table
            .get(SEV_HASH_TABLE_RV_GUID)
            .map(FooterEntry::u32_at_start)
            .transpose()
    }

    /// The GPA the image starts at: it is mapped so that it ends at 4 GiB.
    pub fn gpa(&self) -> Result<u64, MeasureError> {
        const FOUR_GIB: u64 = 1 << 32;
        FOUR_GIB
            .checked_sub(self.image.len() as u64)
            .ok_or(MeasureError::FirmwareTooLarge {
                len: self.image.len(),
            })
    }
}
