use super::*;

#[test]
fn tcb_layouts_decode_per_product() {
    let raw = [1, 2, 3, 4, 0, 0, 0, 9];
    let milan = TcbVersion::from_bytes(raw, TcbLayout::MilanGenoa);
    assert_eq!(
        (
            milan.get(TcbComponent::Bootloader),
            milan.get(TcbComponent::Tee),
            milan.get(TcbComponent::Snp),
            milan.get(TcbComponent::Fmc)
        ),
        (Some(1), Some(2), Some(0), None)
    );
    let turin = milan.with_layout(TcbLayout::Turin);
    assert_eq!(
        (
            turin.get(TcbComponent::Fmc),
            turin.get(TcbComponent::Bootloader),
            turin.get(TcbComponent::Tee),
            turin.get(TcbComponent::Snp)
        ),
        (Some(1), Some(2), Some(3), Some(4))
    );
    assert_eq!(turin.get(TcbComponent::Microcode), Some(9));
    // THIM's tcbm is the raw bytes reversed.
    let t = TcbVersion::from_tcbm("7308000000000003", TcbLayout::MilanGenoa).unwrap();
    assert_eq!(t, TcbVersion::milan_genoa(3, 0, 8, 115));
    assert!(matches!(
        TcbVersion::from_tcbm("73", TcbLayout::MilanGenoa),
        Err(crate::error::TcbmError::Length { .. })
    ));
    assert!(matches!(
        TcbVersion::from_tcbm("zz08000000000003", TcbLayout::MilanGenoa),
        Err(crate::error::TcbmError::NotHex { .. })
    ));
}

#[test]
fn tcb_minimums_compare_each_component() {
    let t = TcbVersion::milan_genoa(3, 0, 8, 115);
    assert!(t
        .meets_minimum(&TcbVersion::milan_genoa(3, 0, 8, 115))
        .is_ok());
    assert!(t
        .meets_minimum(&TcbVersion::milan_genoa(2, 0, 0, 0))
        .is_ok());
    // Lexicographically larger, but the SNP component is below the minimum.
    assert_eq!(
        t.meets_minimum(&TcbVersion::milan_genoa(2, 0, 9, 0)),
        Err((TcbComponent::Snp, 8, 9))
    );
}

#[test]
fn reserved_platform_info_bits_are_reported_not_fatal() {
    let p = PlatformInfo(0x65);
    assert_eq!(p.reserved_bits(), 0x40);
    assert_eq!(PlatformInfo(0x25).reserved_bits(), 0);
    let mut bytes = [0u8; REPORT_LEN];
    bytes[0] = 5;
    bytes[0x40] = 0x65;
    let r = AttestationReport::from_bytes(&bytes).unwrap();
    assert_eq!(r.platform_info.reserved_bits(), 0x40);
    let s = SignerInfo::new(true, false, SigningKey::Vlek);
    assert!(s.author_key_en() && !s.mask_chip_key());
    assert_eq!(s.signing_key(), SigningKey::Vlek);
}

#[test]
fn products_from_cpuid_and_names() {
    assert_eq!(Product::from_cpuid(0x19, 0x01), Some(Product::Milan));
    assert_eq!(Product::from_cpuid(0x19, 0xA0), Some(Product::Genoa));
    assert_eq!(Product::from_cpuid(0x1A, 0x02), Some(Product::Turin));
    assert_eq!(Product::from_cpuid(0x17, 0x01), None);
    assert_eq!(Product::from_product_name("Milan-B0"), Some(Product::Milan));
    assert_eq!(Product::from_product_name("Siena"), None);
    assert_eq!(
        "venice".parse::<Product>(),
        Err(crate::error::ProductNameError {
            name: "venice".into()
        })
    );
}

#[test]
fn signature_byte_order_round_trips() {
    let mut r = [0u8; 48];
    let mut s = [0u8; 48];
    r[47] = 1;
    s[0] = 2;
    let sig = Signature::from_be(&r, &s);
    assert_eq!(sig.r[0], 1);
    assert_eq!(sig.s[47], 2);
    assert_eq!(sig.to_be(), (r, s));
}
