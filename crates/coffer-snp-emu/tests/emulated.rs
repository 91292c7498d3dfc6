//! The emulated secure processor: round trips, the separate root, and tampering.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::OnceLock;

use coffer_snp::{
    Endorsements, Product, Report, Roots, TcbComponent, TcbVersion, Tee, Verifier, VerifyError,
    VerifyOptions,
};
use coffer_snp_emu::{EmulatedSp, ReportRequest};
use coffer_testkit::Need;

fn home() -> &'static Path {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn sp() -> EmulatedSp {
    EmulatedSp::open_or_create(home()).unwrap()
}

fn roots_with_emulated() -> Roots {
    let sp = sp();
    Roots::amd()
        .unwrap()
        .with_emulated(
            sp.ark().clone(),
            sp.ask().clone(),
            Some(sp.asvk().unwrap().clone()),
        )
        .unwrap()
}

fn now() -> VerifyOptions {
    VerifyOptions {
        at: coffer_snp::time::now(),
        product: None,
    }
}

fn request(product: Product) -> ReportRequest {
    let mut req = ReportRequest {
        product,
        vmpl: 1,
        guest_svn: 7,
        ..Default::default()
    };
    req.report_data[..32].copy_from_slice(&[0xab; 32]);
    req.host_data = [0x42; 32];
    req.measurement = [0x17; 48];
    req
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        emulated_reports_round_trip_for_each_product;
        emulated_evidence_is_refused_unless_allowed;
        tampered_emulated_reports_fail;
        vcek_of_another_tcb_or_chip_is_refused;
        real_reports_never_verify_under_the_development_root: Need::Vectors;
        private_keys_are_owner_only_and_state_is_reused;
        vlek_signed_reports_verify_through_the_asvk;
        chain_cache_is_bounded_and_repeat_reports_verify;
    ])
}

fn emulated_reports_round_trip_for_each_product() {
    let sp = sp();
    let v = Verifier::new(roots_with_emulated(), true);
    for product in Product::ALL {
        let req = request(product);
        let made = sp.report(&req).unwrap();
        let e = Endorsements::from_pem_chain(made.chain_pem.as_bytes(), "chain").unwrap();
        let report = Report::from_bytes(made.report.bytes()).unwrap();
        let ok = v
            .verify(&report, &e, &now())
            .unwrap_or_else(|e| panic!("{product}: {e}"));
        assert_eq!(ok.tee, Tee::EmulatedSnp);
        assert_eq!(ok.product, product);
        let r = ok.report;
        assert_eq!(r.report_data, req.report_data);
        assert_eq!(r.host_data, req.host_data);
        assert_eq!(r.measurement, req.measurement);
        assert_eq!((r.vmpl, r.guest_svn, r.policy.0), (1, 7, 0x30000));
        assert_eq!(r.chip_id, sp.chip_id());
        assert_eq!(r.version, if product == Product::Turin { 5 } else { 3 });
        if product == Product::Turin {
            assert_eq!(r.reported_tcb.get(TcbComponent::Fmc), Some(1));
            assert_eq!(r.reported_tcb.get(TcbComponent::Bootloader), Some(3));
            assert_eq!(r.launch_mit_vector, Some(0x3f));
        }
        // The VCEK alone is enough: intermediates come from the roots.
        let vek_only = Endorsements::from_vek(made.vcek.der(), "vcek").unwrap();
        v.verify(&report, &vek_only, &now()).unwrap();
    }
}

fn emulated_evidence_is_refused_unless_allowed() {
    let made = sp().report(&request(Product::Milan)).unwrap();
    let e = Endorsements::from_pem_chain(made.chain_pem.as_bytes(), "chain").unwrap();
    let err = Verifier::new(roots_with_emulated(), false)
        .verify(&made.report, &e, &now())
        .unwrap_err();
    assert_eq!(err, VerifyError::EmulatedNotAllowed);
    assert_eq!(err.check(), "unknown-root");
    // A verifier that does not know the development root at all: never verifies under AMD roots.
    let err = Verifier::new(Roots::amd().unwrap(), true)
        .verify(&made.report, &e, &now())
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::UnknownRoot { .. } | VerifyError::Chain { .. }
        ),
        "{err}"
    );
}

fn tampered_emulated_reports_fail() {
    let made = sp().report(&request(Product::Genoa)).unwrap();
    let e = Endorsements::from_pem_chain(made.chain_pem.as_bytes(), "chain").unwrap();
    let v = Verifier::new(roots_with_emulated(), true);
    let mut bytes = made.report.bytes().to_vec();
    bytes[0xC0] ^= 1; // HOST_DATA
    let err = v
        .verify(&Report::from_bytes(&bytes).unwrap(), &e, &now())
        .unwrap_err();
    assert_eq!(err.check(), "signature");
    // Signature bytes themselves.
    let mut bytes = made.report.bytes().to_vec();
    bytes[0x2A0] ^= 1;
    let err = v
        .verify(&Report::from_bytes(&bytes).unwrap(), &e, &now())
        .unwrap_err();
    assert_eq!(err.check(), "signature");
    // The certificate is valid only for a window around its creation.
    let later = VerifyOptions {
        at: coffer_snp::time::now() + 8 * 366 * 86_400,
        product: None,
    };
    assert_eq!(
        v.verify(&made.report, &e, &later).unwrap_err().check(),
        "expired"
    );
}

fn vcek_of_another_tcb_or_chip_is_refused() {
    let sp = sp();
    let v = Verifier::new(roots_with_emulated(), true);
    let a = sp.report(&request(Product::Milan)).unwrap();
    let mut req = request(Product::Milan);
    req.tcb = Some(TcbVersion::milan_genoa(3, 0, 9, 115));
    let b = sp.report(&req).unwrap();
    let e_b = Endorsements::from_vek(b.vcek.der(), "b").unwrap();
    assert_eq!(
        v.verify(&a.report, &e_b, &now()).unwrap_err().check(),
        "tcb-mismatch"
    );
    let mut req = request(Product::Milan);
    req.chip_id = Some([9; 64]);
    let c = sp.report(&req).unwrap();
    let e_c = Endorsements::from_vek(c.vcek.der(), "c").unwrap();
    assert_eq!(
        v.verify(&a.report, &e_c, &now()).unwrap_err().check(),
        "chip-id-mismatch"
    );
}

fn real_reports_never_verify_under_the_development_root() {
    let dir = coffer_testkit::vectors();
    let sp = sp();
    let report = Report::from_bytes(&coffer_testkit::read(
        &dir,
        "sev-snp/trustee-milan-v2/report.bin",
    ))
    .unwrap();
    let mut e = Endorsements::from_vek(
        &coffer_testkit::read(&dir, "sev-snp/trustee-milan-v2/vcek.der"),
        "vcek",
    )
    .unwrap();
    e.intermediate = Some(sp.ask().clone());
    e.ark = Some(sp.ark().clone());
    let at = VerifyOptions {
        at: coffer_snp::time::parse_rfc3339("2024-06-01T00:00:00Z").unwrap(),
        product: None,
    };
    let err = Verifier::new(roots_with_emulated(), true)
        .verify(&report, &e, &at)
        .unwrap_err();
    assert_eq!(err.check(), "unknown-root", "{err}");
    // And with the genuine chain it is real evidence, not emulated, even when emulation is allowed.
    e.intermediate = None;
    e.ark = None;
    let ok = Verifier::new(roots_with_emulated(), true)
        .verify(&report, &e, &at)
        .unwrap();
    assert_eq!(ok.tee, Tee::SevSnp);
}

fn private_keys_are_owner_only_and_state_is_reused() {
    let sp1 = sp();
    sp1.report(&request(Product::Milan)).unwrap();
    let dir = EmulatedSp::state_dir(home());
    let mut keys = vec![dir.join("ark.key"), dir.join("ask.key")];
    for entry in std::fs::read_dir(dir.join("vcek")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) == Some("pem") {
            keys.push(p);
        }
    }
    assert!(keys.len() >= 3);
    for k in keys {
        let mode = std::fs::metadata(&k).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", k.display());
    }
    let sp2 = sp();
    assert_eq!(sp1.ark().fingerprint(), sp2.ark().fingerprint());
    assert_eq!(sp1.chip_id(), sp2.chip_id());
}

fn vlek_signed_reports_verify_through_the_asvk() {
    let sp = sp();
    let v = Verifier::new(roots_with_emulated(), true);
    for product in [Product::Milan, Product::Turin] {
        let mut req = request(product);
        req.signing_key = coffer_snp::SigningKey::Vlek;
        let made = sp.report(&req).unwrap();
        assert_eq!(made.report.fields().chip_id, [0u8; 64]);
        let e = Endorsements::from_pem_chain(made.chain_pem.as_bytes(), "chain").unwrap();
        assert!(e
            .intermediate
            .as_ref()
            .unwrap()
            .subject_cn()
            .contains("VLEK"));
        let ok = v
            .verify(&made.report, &e, &now())
            .unwrap_or_else(|e| panic!("{product}: {e}"));
        assert_eq!(ok.signer, coffer_snp::SigningKey::Vlek);
        assert_eq!(ok.report.host_data, req.host_data);
        // The VLEK alone: the ASVK comes from the roots.
        let alone = Endorsements::from_vek(made.vcek.der(), "vlek").unwrap();
        v.verify(&made.report, &alone, &now()).unwrap();
        // A VLEK report presented with a VCEK, and a VLEK for a VCEK-signed report: refused.
        let vcek_made = sp.report(&request(product)).unwrap();
        let vcek_e = Endorsements::from_vek(vcek_made.vcek.der(), "vcek").unwrap();
        assert_eq!(
            v.verify(&made.report, &vcek_e, &now()).unwrap_err().check(),
            "chain"
        );
        assert_eq!(
            v.verify(&vcek_made.report, &alone, &now())
                .unwrap_err()
                .check(),
            "chain"
        );
        // Tampering still breaks the signature.
        let mut bytes = made.report.bytes().to_vec();
        bytes[0x90] ^= 1;
        assert_eq!(
            v.verify(&Report::from_bytes(&bytes).unwrap(), &e, &now())
                .unwrap_err()
                .check(),
            "signature"
        );
    }
}

/// Many chips: the chain cache stays bounded, and every chip's second report (checked through its
/// comb table) still verifies, while a tampered one does not.
fn chain_cache_is_bounded_and_repeat_reports_verify() {
    let sp = sp();
    let v = Verifier::new(roots_with_emulated(), true);
    let mut most = 0;
    for chip in 0..70u8 {
        let mut req = request(Product::Milan);
        req.chip_id = Some([chip; 64]);
        let made = sp.report(&req).unwrap();
        let e = Endorsements::from_vek(made.vcek.der(), "vcek").unwrap();
        v.verify(&made.report, &e, &now()).unwrap();
        v.verify(&made.report, &e, &now()).unwrap();
        let mut bytes = made.report.bytes().to_vec();
        bytes[0x50] ^= 1; // REPORT_DATA
        let tampered = Report::from_bytes(&bytes).unwrap();
        assert_eq!(
            v.verify(&tampered, &e, &now()).unwrap_err().check(),
            "signature"
        );
        most = most.max(v.cached_chains());
    }
    assert_eq!(most, 64);
    assert!(v.cached_chains() <= 64);
}
