//! Why a launch digest could not be computed. Every variant names the check that failed; malformed
//! firmware is an error, never a panic.

use std::path::PathBuf;

use crate::guid::Guid;
use crate::ovmf::SectionType;

/// Why the firmware, the inputs or a file could not be measured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureError {
    /// The firmware is not a whole number of 4 KiB pages.
    #[error("the firmware is {len} bytes, not a multiple of 4096")]
    FirmwareNotPageAligned {
        /// Its length.
        len: usize,
    },
    /// The firmware is larger than the 4 GiB it is mapped below.
    #[error("the firmware is {len} bytes, more than the 4 GiB below which it is mapped")]
    FirmwareTooLarge {
        /// Its length.
        len: usize,
    },
    /// The OVMF footer table claims more bytes than the firmware has before it.
    #[error("the OVMF footer table is {size} bytes, more than the {available} before its footer")]
    FooterTableOutOfBounds {
        /// The table size the footer entry declares (without the footer entry).
        size: usize,
        /// Bytes of firmware before the footer entry.
        available: usize,
    },
    /// An entry of the OVMF footer table declares a size smaller than its header (18 bytes) or
    /// larger than what is left of the table.
    #[error("OVMF footer table entry {guid} has size {size}, outside 18..={remaining}")]
    FooterEntrySize {
        /// The entry's GUID.
        guid: Guid,
        /// The size it declares (header included).
        size: usize,
        /// Bytes of table left, this entry included.
        remaining: usize,
    },
    /// A footer table entry is too short for the value read from it.
    #[error("OVMF footer table entry {guid} has {len} data bytes, need {need}")]
    FooterEntryTooShort {
        /// The entry's GUID.
        guid: Guid,
        /// Its data length.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The SEV metadata (`ASEV`) lies outside the firmware.
    #[error("the SEV metadata at {offset_from_end:#x} bytes from the end lies outside the firmware ({len} bytes)")]
    MetadataOutOfBounds {
        /// Its offset from the end of the firmware, as the footer table gives it.
        offset_from_end: u32,
        /// The firmware length.
        len: usize,
    },
    /// The SEV metadata header does not start with `ASEV`.
    #[error("wrong SEV metadata signature {0:02x?} (expected \"ASEV\")")]
    MetadataSignature([u8; 4]),
    /// The SEV metadata header has a version other than 1.
    #[error("unsupported SEV metadata version {0} (expected 1)")]
    MetadataVersion(u32),
    /// The SEV metadata lists more section descriptors than its declared size holds.
    #[error("the SEV metadata declares {items} sections but its {size} bytes hold only {fits}")]
    MetadataItemsOutOfBounds {
        /// Declared number of sections.
        items: u32,
        /// Declared size of the metadata (header included).
        size: u32,
        /// How many 12-byte descriptors fit in the bytes available.
        fits: usize,
    },
    /// A section descriptor has a type this crate (and sev-snp-measure) does not know.
    #[error("unknown SEV metadata section type {0:#x}")]
    UnknownSectionType(u32),
    /// A section whose pages are measured one by one is not a whole number of pages.
    #[error(
        "SEV metadata section {kind:?} at {gpa:#x} has size {size:#x}, not a multiple of 4096"
    )]
    SectionNotPageAligned {
        /// The section type.
        kind: SectionType,
        /// Its guest-physical address.
        gpa: u32,
        /// Its size.
        size: u32,
    },
    /// The footer table has no SEV-ES reset block: the vCPUs' reset vector is unknown.
    #[error(
        "the firmware has no SEV-ES reset block (footer GUID {})",
        crate::ovmf::SEV_ES_RESET_BLOCK_GUID
    )]
    NoResetBlock,
    /// More than one vCPU, but the reset block's AP reset vector is 0.
    #[error("the firmware's AP reset vector is 0, so only 1 vCPU can be measured, not {vcpus}")]
    NoApResetVector {
        /// vCPUs asked for.
        vcpus: u32,
    },
    /// A guest needs at least one vCPU.
    #[error("a guest needs at least one vCPU")]
    NoVcpus,
    /// A kernel was given but the firmware cannot measure one (e.g. OvmfX64, not AmdSevX64).
    #[error("the firmware has no SNP_KERNEL_HASHES section, so a kernel cannot be measured")]
    KernelHashesUnsupported,
    /// A kernel was given, the firmware has an SNP_KERNEL_HASHES section but no hash table GPA.
    #[error("the firmware has an SNP_KERNEL_HASHES section but no SEV hash table entry (footer GUID {})", crate::ovmf::SEV_HASH_TABLE_RV_GUID)]
    NoHashTableGpa,
    /// The SNP_KERNEL_HASHES section is not exactly one page, as QEMU fills it.
    #[error("the SNP_KERNEL_HASHES section is {size:#x} bytes, expected one page (0x1000)")]
    KernelHashesSectionSize {
        /// Its size.
        size: u32,
    },
    /// The hash table does not fit in its page at the offset the firmware gives.
    #[error("the SEV hash table at page offset {offset:#x} does not fit in its page")]
    HashTableOffset {
        /// Offset of the table within the page.
        offset: usize,
    },
    /// The vCPU type is not one of QEMU's EPYC models.
    #[error("unknown vCPU type {0:?} (expected one of {list})", list = crate::vcpu::VcpuType::NAMES.join(", "))]
    UnknownVcpuType(String),
    /// Reading a kernel or initrd failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}
