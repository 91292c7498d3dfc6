//! Malformed firmware and inputs fail with the error that names the problem, and no bytes make the
//! parser or the digest panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use coffer_snp_measure::ovmf::{
    FooterTable, OVMF_TABLE_FOOTER_GUID, SEV_ES_RESET_BLOCK_GUID, SEV_HASH_TABLE_RV_GUID,
};
use coffer_snp_measure::{
    launch_digest, ovmf_hash, KernelHashes, LaunchInputs, MeasureError, Ovmf, SectionType, VcpuType,
};
use common::{footer_table, SyntheticOvmf, METADATA_OFFSET_FROM_END};
use proptest::prelude::*;

fn digest(ovmf: Vec<u8>, vcpus: u32, kernel: bool) -> Result<[u8; 48], MeasureError> {
    launch_digest(&LaunchInputs {
        kernel: kernel.then(|| KernelHashes::new(b"kernel", Some(b"initrd"), Some("ro"))),
        ..LaunchInputs::new(ovmf, vcpus, VcpuType::EpycV4)
    })
}

#[test]
fn synthetic_firmware_parses() {
    let img = SyntheticOvmf::amd_sev(4, 7).build();
    let ovmf = Ovmf::parse(&img).unwrap();
    assert_eq!(ovmf.sections().len(), 7);
    assert!(ovmf.has_section(SectionType::SnpKernelHashes));
    assert_eq!(ovmf.sev_es_reset_eip().unwrap(), Some(0x80_b004));
    assert_eq!(ovmf.sev_hash_table_gpa().unwrap(), Some(0x81_0c00));
    assert_eq!(ovmf.gpa().unwrap(), 0x1_0000_0000 - 4 * 4096);
    assert_eq!(ovmf.footer_table().entries.len(), 3);
    digest(img.clone(), 4, true).unwrap();
    assert_ne!(
        digest(img.clone(), 1, true).unwrap(),
        digest(img, 1, false).unwrap()
    );
}

#[test]
fn firmware_must_be_whole_pages() {
    let mut img = SyntheticOvmf::amd_sev(1, 1).build();
    img.insert(0, 0);
    assert!(matches!(
        digest(img.clone(), 1, false),
        Err(MeasureError::FirmwareNotPageAligned { len: 4097 })
    ));
    assert!(ovmf_hash(&img).is_err());
}

#[test]
fn no_footer_means_no_reset_block() {
    assert!(matches!(
        digest(vec![0; 4096], 1, false),
        Err(MeasureError::NoResetBlock)
    ));
    assert!(matches!(
        digest(Vec::new(), 1, false),
        Err(MeasureError::NoResetBlock)
    ));
    assert!(FooterTable::parse(&[0; 49]).unwrap().entries.is_empty());
}

#[test]
fn kernel_needs_a_kernel_hashes_section() {
    let img = SyntheticOvmf::ovmf_x64(1, 1).build();
    digest(img.clone(), 2, false).unwrap();
    assert!(matches!(
        digest(img, 1, true),
        Err(MeasureError::KernelHashesUnsupported)
    ));
}

#[test]
fn kernel_needs_a_hash_table_gpa() {
    let img = SyntheticOvmf {
        hash_table_gpa: None,
        ..SyntheticOvmf::amd_sev(1, 1)
    }
    .build();
    digest(img.clone(), 1, false).unwrap();
    assert!(matches!(
        digest(img, 1, true),
        Err(MeasureError::NoHashTableGpa)
    ));
}

#[test]
fn hash_table_must_fit_its_page() {
    let img = SyntheticOvmf {
        hash_table_gpa: Some(0x81_0f80),
        ..SyntheticOvmf::amd_sev(1, 1)
    }
    .build();
    assert!(matches!(
        digest(img, 1, true),
        Err(MeasureError::HashTableOffset { offset: 0xf80 })
    ));
}

#[test]
fn kernel_hashes_section_is_one_page() {
    let mut s = SyntheticOvmf::amd_sev(1, 1);
    s.sections = Some(vec![(0x81_0000, 0x2000, 0x10)]);
    let img = s.build();
    digest(img.clone(), 1, false).unwrap();
    assert!(matches!(
        digest(img, 1, true),
        Err(MeasureError::KernelHashesSectionSize { size: 0x2000 })
    ));
}

#[test]
fn sections_are_whole_pages() {
    let mut s = SyntheticOvmf::amd_sev(1, 1);
    s.sections = Some(vec![(0x80_0000, 0x1800, 1)]);
    assert!(matches!(
        digest(s.build(), 1, false),
        Err(MeasureError::SectionNotPageAligned { .. })
    ));
    // Secrets and CPUID are one page whatever their size says.
    s.sections = Some(vec![(0x80_d000, 0x1800, 2), (0x80_e000, 0, 3)]);
    digest(s.build(), 1, false).unwrap();
}

#[test]
fn unknown_section_type() {
    let mut s = SyntheticOvmf::amd_sev(1, 1);
    s.sections = Some(vec![(0x80_0000, 0x1000, 5)]);
    assert!(matches!(
        Ovmf::parse(&s.build()),
        Err(MeasureError::UnknownSectionType(5))
    ));
}

#[test]
fn metadata_header_checks() {
    let good = SyntheticOvmf::amd_sev(1, 1).build();
    let at = good.len() - METADATA_OFFSET_FROM_END;

    let mut img = good.clone();
    img[at] = b'X';
    assert!(matches!(
        Ovmf::parse(&img),
        Err(MeasureError::MetadataSignature(_))
    ));

    let mut img = good.clone();
    img[at + 8] = 2;
    assert!(matches!(
        Ovmf::parse(&img),
        Err(MeasureError::MetadataVersion(2))
    ));

    // More items than the declared size holds.
    let mut img = good.clone();
    img[at + 12..at + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Ovmf::parse(&img),
        Err(MeasureError::MetadataItemsOutOfBounds { .. })
    ));

    // A declared size past the end of the image is clamped, items still checked.
    let mut img = good.clone();
    img[at + 4..at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    Ovmf::parse(&img).unwrap();
}

#[test]
fn metadata_offset_out_of_bounds() {
    for offset in [0u32, 8, 4097, u32::MAX] {
        let mut img = vec![0u8; 4096];
        footer_table(
            &[(
                coffer_snp_measure::ovmf::OVMF_SEV_METADATA_GUID,
                offset.to_le_bytes().to_vec(),
            )],
            &mut img,
        );
        assert!(
            matches!(
                Ovmf::parse(&img),
                Err(MeasureError::MetadataOutOfBounds { .. })
            ),
            "offset {offset}"
        );
    }
}

#[test]
fn footer_table_checks() {
    // Footer claims a table larger than the image.
    let mut img = vec![0u8; 200];
    let f = 200 - 50;
    img[f..f + 2].copy_from_slice(&(18 + 151u16).to_le_bytes());
    img[f + 2..f + 18].copy_from_slice(OVMF_TABLE_FOOTER_GUID.bytes());
    assert!(matches!(
        FooterTable::parse(&img),
        Err(MeasureError::FooterTableOutOfBounds {
            size: 151,
            available: 150
        })
    ));
    // Exactly the bytes before the footer: a table of zero-size entries, which is malformed.
    img[f..f + 2].copy_from_slice(&(18 + 150u16).to_le_bytes());
    assert!(matches!(
        FooterTable::parse(&img),
        Err(MeasureError::FooterEntrySize { size: 0, .. })
    ));
    // A size below 18 (the header) is an empty table.
    img[f..f + 2].copy_from_slice(&3u16.to_le_bytes());
    assert!(FooterTable::parse(&img).unwrap().entries.is_empty());

    // An entry smaller than its header, or larger than the table.
    for bad in [0u16, 17, 200] {
        let mut img = vec![0u8; 4096];
        footer_table(&[(SEV_ES_RESET_BLOCK_GUID, vec![4, 0, 0, 0])], &mut img);
        let e = 4096 - 32 - 18 - 18;
        img[e..e + 2].copy_from_slice(&bad.to_le_bytes());
        assert!(
            matches!(
                FooterTable::parse(&img),
                Err(MeasureError::FooterEntrySize { .. })
            ),
            "size {bad}"
        );
    }

    // An entry too short for its value.
    let mut img = vec![0u8; 4096];
    footer_table(&[(SEV_HASH_TABLE_RV_GUID, vec![1, 2])], &mut img);
    let ovmf = Ovmf::parse(&img).unwrap();
    assert!(matches!(
        ovmf.sev_hash_table_gpa(),
        Err(MeasureError::FooterEntryTooShort {
            need: 4,
            len: 2,
            ..
        })
    ));
}

#[test]
fn vcpu_counts() {
    let img = SyntheticOvmf::amd_sev(1, 1).build();
    assert!(matches!(
        digest(img.clone(), 0, false),
        Err(MeasureError::NoVcpus)
    ));
    let no_ap = SyntheticOvmf {
        reset_eip: Some(0),
        ..SyntheticOvmf::amd_sev(1, 1)
    }
    .build();
    digest(no_ap.clone(), 1, false).unwrap();
    assert!(matches!(
        digest(no_ap, 2, false),
        Err(MeasureError::NoApResetVector { vcpus: 2 })
    ));
    // Each AP adds one VMSA: 2 and 3 vCPUs differ.
    assert_ne!(
        digest(img.clone(), 2, false).unwrap(),
        digest(img, 3, false).unwrap()
    );
}

/// A footer entry and table of arbitrary sizes, so that the table walk is exercised (random bytes
/// alone almost never hold the footer GUID in place).
fn with_footer(mut prefix: Vec<u8>, table_size: u16, tail: [u8; 32]) -> Vec<u8> {
    prefix.extend_from_slice(&table_size.to_le_bytes());
    prefix.extend_from_slice(OVMF_TABLE_FOOTER_GUID.bytes());
    prefix.extend_from_slice(&tail);
    prefix
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
        let _ = FooterTable::parse(&bytes);
        let _ = Ovmf::parse(&bytes);
        let _ = digest(bytes, 2, true);
    }

    #[test]
    fn arbitrary_footer_tables_never_panic(
        prefix in proptest::collection::vec(any::<u8>(), 0..600),
        table_size in any::<u16>(),
        tail in any::<[u8; 32]>(),
    ) {
        let img = with_footer(prefix, table_size, tail);
        if let Ok(table) = FooterTable::parse(&img) {
            // Every entry's data lies within the image, before the footer.
            for e in &table.entries {
                prop_assert!(e.data.len() <= img.len() - 50);
            }
        }
        let _ = Ovmf::parse(&img);
        let _ = digest(img, 2, true);
    }

    #[test]
    fn mutated_firmware_never_panics(
        pages in 1usize..3,
        edits in proptest::collection::vec((0usize..METADATA_OFFSET_FROM_END + 64, any::<u8>()), 1..8),
        vcpus in 0u32..4,
        kernel in any::<bool>(),
    ) {
        let mut img = SyntheticOvmf::amd_sev(pages, 3).build();
        let len = img.len();
        for (back, value) in edits {
            // Edit the footer region and the metadata, counted from the end.
            img[len - 1 - back.min(len - 1)] = value;
        }
        let _ = Ovmf::parse(&img);
        let _ = digest(img, vcpus, kernel);
    }
}
