//! The parser never panics, and whatever it accepts it re-encodes exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_snp::{AttestationReport, Certificate, Endorsements, Report, ReportError, REPORT_LEN};
use proptest::prelude::*;

fn valid_shape() -> impl Strategy<Value = Vec<u8>> {
    // Mostly-zero reports with a known version, so that many inputs get past the version and
    // reserved-byte checks and exercise the field decoding and re-encoding.
    (
        2u32..=5,
        proptest::collection::vec(any::<u8>(), 0x1A0),
        any::<[u8; 64]>(),
        any::<u64>(),
    )
        .prop_map(|(version, head, chip, mit)| {
            let mut b = vec![0u8; REPORT_LEN];
            b[..0x1A0].copy_from_slice(&head);
            b[0..4].copy_from_slice(&version.to_le_bytes());
            b[0x04C..0x050].fill(0);
            if version < 3 {
                b[0x188..0x18B].fill(0);
            }
            b[0x18B..0x1A0].fill(0);
            b[0x1A0..0x1E0].copy_from_slice(&chip);
            if version >= 5 {
                b[0x1F8..0x200].copy_from_slice(&mit.to_le_bytes());
            }
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let _ = Report::from_bytes(&bytes);
        let _ = Certificate::from_der_or_pem(&bytes, "fuzz");
        let _ = Endorsements::from_pem_chain(&bytes, "fuzz");
        let _ = Endorsements::from_thim_json(&bytes, "fuzz");
    }

    #[test]
    fn arbitrary_reports_never_panic(bytes in proptest::collection::vec(any::<u8>(), REPORT_LEN)) {
        if let Ok(r) = AttestationReport::from_bytes(&bytes) {
            prop_assert_eq!(r.to_bytes().to_vec(), bytes);
        }
    }

    #[test]
    fn accepted_reports_reencode_exactly(bytes in valid_shape()) {
        let r = AttestationReport::from_bytes(&bytes);
        prop_assert!(r.is_ok(), "{:?}", r.err());
        if let Ok(r) = r {
            prop_assert_eq!(r.to_bytes().to_vec(), bytes.clone());
            let text = serde_json::to_string(&r);
            prop_assert!(text.is_ok());
        }
    }
}

#[test]
fn bad_inputs_name_what_was_wrong() {
    assert_eq!(
        Report::from_bytes(b"hello").unwrap_err(),
        ReportError::Length {
            expected: REPORT_LEN,
            got: 5
        }
    );
    let mut b = vec![0u8; REPORT_LEN];
    b[0] = 9;
    let err = Report::from_bytes(&b).unwrap_err();
    assert_eq!(err, ReportError::UnsupportedVersion(9));
    assert_eq!(
        err.to_string(),
        "unsupported attestation report version 9 (supported: 2, 3, 4, 5)"
    );
    b[0] = 2;
    b[0x04C] = 1;
    let err = Report::from_bytes(&b).unwrap_err();
    assert!(
        matches!(err, ReportError::ReservedNonZero { offset: 0x04C, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("0x04c"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Mutated real certificates (AMD's embedded ASK/ARK) never panic the X.509 path.
    #[test]
    fn mutated_certificates_never_panic(which in 0usize..6, edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8), cut in any::<u16>()) {
        static ROOTS: std::sync::OnceLock<coffer_snp::Roots> = std::sync::OnceLock::new();
        let roots = ROOTS.get_or_init(|| coffer_snp::Roots::amd().unwrap());
        let certs: Vec<&Certificate> = roots.iter().flat_map(|r| [&r.ark, &r.ask]).collect();
        let mut der = certs[which % certs.len()].der().to_vec();
        for (pos, val) in edits {
            let i = usize::from(pos) % der.len();
            der[i] = val;
        }
        der.truncate(usize::from(cut).max(1));
        if let Ok(c) = Certificate::from_der(&der, "mutated") {
            let _ = c.amd_extensions();
            let _ = c.is_signed_by(&c);
            let _ = c.validity();
        }
    }
}
