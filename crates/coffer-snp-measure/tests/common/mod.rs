//! A synthetic OVMF image: pseudo-random pages ending in the same footer table and SEV metadata
//! layout edk2 builds (entries before a footer 32 bytes from the end, `ASEV` metadata pointed to by
//! its offset from the end).

#![allow(dead_code)]

use coffer_snp_measure::ovmf::{
    OVMF_SEV_METADATA_GUID, OVMF_TABLE_FOOTER_GUID, SEV_ES_RESET_BLOCK_GUID, SEV_HASH_TABLE_RV_GUID,
};
use coffer_snp_measure::Guid;

/// What the synthetic image declares.
#[derive(Debug, Clone)]
pub(crate) struct SyntheticOvmf {
    /// Size in 4 KiB pages (at least 1).
    pub(crate) pages: usize,
    /// Seed of the filler bytes.
    pub(crate) seed: u64,
    /// SEV metadata sections: (gpa, size, type). `None`: no metadata entry at all.
    pub(crate) sections: Option<Vec<(u32, u32, u32)>>,
    /// The AP reset vector; `None`: no reset block entry.
    pub(crate) reset_eip: Option<u32>,
    /// The SEV hash table GPA (and size 0x400); `None`: no entry.
    pub(crate) hash_table_gpa: Option<u32>,
}

/// Where the metadata goes, as an offset from the end.
pub(crate) const METADATA_OFFSET_FROM_END: usize = 0x800;

impl SyntheticOvmf {
    /// Like the AmdSevX64 fixture: kernel hashes supported.
    pub(crate) fn amd_sev(pages: usize, seed: u64) -> Self {
        SyntheticOvmf {
            pages,
            seed,
            sections: Some(vec![
                (0x80_0000, 0x9000, 1),
                (0x80_a000, 0x3000, 1),
                (0x80_d000, 0x1000, 2),
                (0x80_e000, 0x1000, 3),
                (0x80_f000, 0x1000, 4),
                (0x81_0000, 0x1000, 0x10),
                (0x81_1000, 0xf000, 1),
            ]),
            reset_eip: Some(0x80_b004),
            hash_table_gpa: Some(0x81_0c00),
        }
    }

    /// Like the OvmfX64 fixture: no kernel hashes section.
    pub(crate) fn ovmf_x64(pages: usize, seed: u64) -> Self {
        SyntheticOvmf {
            sections: Some(vec![
                (0x80_0000, 0x9000, 1),
                (0x80_a000, 0x3000, 1),
                (0x80_d000, 0x1000, 2),
                (0x80_e000, 0x1000, 3),
                (0x80_f000, 0x1000, 4),
                (0x81_0000, 0x10000, 1),
            ]),
            hash_table_gpa: None,
            ..Self::amd_sev(pages, seed)
        }
    }

    /// The image.
    pub(crate) fn build(&self) -> Vec<u8> {
        let len = self.pages.max(1) * 4096;
        let mut img = vec![0u8; len];
        // xorshift filler, so every page hashes differently.
        let mut x = self.seed | 1;
        for b in img.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        if let Some(sections) = &self.sections {
            let at = len - METADATA_OFFSET_FROM_END;
            let size = 16 + 12 * sections.len();
            img[at..at + 4].copy_from_slice(b"ASEV");
            img[at + 4..at + 8].copy_from_slice(&(size as u32).to_le_bytes());
            img[at + 8..at + 12].copy_from_slice(&1u32.to_le_bytes());
            img[at + 12..at + 16].copy_from_slice(&(sections.len() as u32).to_le_bytes());
            for (i, (gpa, sz, kind)) in sections.iter().enumerate() {
                let d = at + 16 + 12 * i;
                img[d..d + 4].copy_from_slice(&gpa.to_le_bytes());
                img[d + 4..d + 8].copy_from_slice(&sz.to_le_bytes());
                img[d + 8..d + 12].copy_from_slice(&kind.to_le_bytes());
            }
        }
        let mut entries: Vec<(Guid, Vec<u8>)> = Vec::new();
        if self.sections.is_some() {
            entries.push((
                OVMF_SEV_METADATA_GUID,
                (METADATA_OFFSET_FROM_END as u32).to_le_bytes().to_vec(),
            ));
        }
        if let Some(gpa) = self.hash_table_gpa {
            let mut d = gpa.to_le_bytes().to_vec();
            d.extend_from_slice(&0x400u32.to_le_bytes());
            entries.push((SEV_HASH_TABLE_RV_GUID, d));
        }
        if let Some(eip) = self.reset_eip {
            entries.push((SEV_ES_RESET_BLOCK_GUID, eip.to_le_bytes().to_vec()));
        }
        footer_table(&entries, &mut img);
        img
    }
}

/// Write a footer table with these entries (the first nearest the start) so that it ends 32
/// bytes before the end of `img`.
pub(crate) fn footer_table(entries: &[(Guid, Vec<u8>)], img: &mut [u8]) {
    let mut table = Vec::new();
    for (guid, data) in entries {
        table.extend_from_slice(data);
        table.extend_from_slice(&((data.len() + 18) as u16).to_le_bytes());
        table.extend_from_slice(guid.bytes());
    }
    table.extend_from_slice(&((table.len() + 18) as u16).to_le_bytes());
    table.extend_from_slice(OVMF_TABLE_FOOTER_GUID.bytes());
    let end = img.len() - 32;
    img[end - table.len()..end].copy_from_slice(&table);
}
