//! Real SEV-SNP evidence from `../shared/vectors/sev-snp`: every report verifies with the values its
//! README gives, and every upstream negative fails for the stated reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use coffer_snp::time::parse_rfc3339;
use coffer_snp::{
    CertRole, Endorsements, Product, Report, Roots, SigningKey, Tee, Verified, Verifier,
    VerifyError, VerifyOptions,
};
use coffer_testkit::Need;

fn verifier() -> Verifier {
    Verifier::new(Roots::amd().unwrap(), false)
}

fn at(s: &str) -> VerifyOptions {
    VerifyOptions {
        at: parse_rfc3339(s).unwrap(),
        product: None,
    }
}

fn check(
    v: &Verifier,
    report: &[u8],
    e: &Endorsements,
    when: &str,
) -> Result<Verified, VerifyError> {
    let report = Report::from_bytes(report)?;
    v.verify(&report, e, &at(when))
}

struct Case {
    dir: &'static str,
    report: &'static str,
    vcek: &'static str,
    when: &'static str,
}

const CASES: [Case; 3] = [
    Case {
        dir: "sev-snp/virtee-milan-v2",
        report: "report.hex",
        vcek: "vcek.der",
        when: "2024-06-01T00:00:00Z",
    },
    Case {
        dir: "sev-snp/gosev-milan-v2",
        report: "report.bin",
        vcek: "vcek.der",
        when: "2022-09-24T01:00:00Z",
    },
    Case {
        dir: "sev-snp/trustee-milan-v2",
        report: "report.bin",
        vcek: "vcek.der",
        when: "2024-06-01T00:00:00Z",
    },
];

/// The report's 1184 bytes (`.hex` files hold them as hex text: turning text into bytes is the
/// caller's job, not the library's).
fn load(dir: &Path, c: &Case) -> (Vec<u8>, Endorsements) {
    let mut report = coffer_testkit::read(dir, &format!("{}/{}", c.dir, c.report));
    if c.report.ends_with(".hex") {
        let text = String::from_utf8(report).unwrap();
        report = hex::decode(text.split_ascii_whitespace().collect::<String>()).unwrap();
    }
    let vcek = coffer_testkit::read(dir, &format!("{}/{}", c.dir, c.vcek));
    (report, Endorsements::from_vek(&vcek, c.vcek).unwrap())
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        embedded_roots_match_the_published_ones: Need::Vectors;
        real_reports_verify_with_expected_values: Need::Vectors;
        aci_report_verifies_with_pem_chain_and_thim: Need::Vectors;
        upstream_negatives_fail_for_the_right_reason: Need::Vectors;
        time_wrong_chip_and_wrong_product_are_refused: Need::Vectors;
        every_bit_of_the_signed_area_matters: Need::Vectors;
        every_bit_of_the_signature_matters_on_both_paths: Need::Vectors;
    ])
}

fn embedded_roots_match_the_published_ones() {
    let dir = coffer_testkit::vectors();
    let roots = Roots::amd().unwrap();
    for p in ["milan", "genoa", "turin"] {
        let ark = coffer_snp::Certificate::from_der_or_pem(
            &coffer_testkit::read(&dir, &format!("sev-snp/amd-roots/{p}_ark.pem")),
            p,
        )
        .unwrap();
        let product: Product = p.parse().unwrap();
        let root = roots.iter().find(|r| r.product == Some(product)).unwrap();
        assert_eq!(root.ark.fingerprint(), ark.fingerprint(), "{p} ARK");
        assert_eq!(root.ark.subject_cn(), format!("ARK-{}", product.name()));
    }
}

fn real_reports_verify_with_expected_values() {
    let dir = coffer_testkit::vectors();
    let v = verifier();
    for c in &CASES {
        let (report, e) = load(&dir, c);
        let ok = check(&v, &report, &e, c.when).unwrap_or_else(|err| panic!("{}: {err}", c.dir));
        assert_eq!(ok.tee, Tee::SevSnp);
        assert_eq!(ok.product, Product::Milan);
        assert_eq!(ok.signer, SigningKey::Vcek);
        assert_eq!(ok.report.version, 2);
    }

    let (report, e) = load(&dir, &CASES[0]);
    let r = check(&v, &report, &e, CASES[0].when).unwrap().report;
    assert_eq!(r.policy.0, 0x30000);
    assert_eq!((r.guest_svn, r.vmpl, r.platform_info.0), (0, 0, 1));
    assert_eq!(
        (r.current_major, r.current_minor, r.current_build),
        (1, 52, 4)
    );
    assert_eq!(hex::encode(r.reported_tcb.raw()), "0300000000000873");
    assert_eq!(hex::encode(r.report_data), "d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c645810b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd");
    assert_eq!(hex::encode(r.measurement), "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f");
    assert_eq!(hex::encode(r.chip_id), "d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6");
    assert_eq!(
        hex::encode(r.report_id),
        "92b3b47d59f0a2a10a74c5678868a80238cf593c01a82f3cffb878e904c28d5b"
    );

    let (report, e) = load(&dir, &CASES[1]);
    let r = check(&v, &report, &e, CASES[1].when).unwrap().report;
    assert_eq!(r.policy.0, 0xb0000);
    assert!(r.policy.debug() && r.policy.smt());
    assert_eq!(
        (r.current_major, r.current_minor, r.current_build),
        (1, 49, 3)
    );
    assert_eq!(hex::encode(r.reported_tcb.raw()), "0200000000000544");
    assert_eq!(&r.report_data[..5], &[1, 2, 3, 4, 5]);
    assert!(r.report_data[5..].iter().all(|&b| b == 0));
    assert_eq!(hex::encode(r.measurement), "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01");

    let (report, e) = load(&dir, &CASES[2]);
    let r = check(&v, &report, &e, CASES[2].when).unwrap().report;
    assert_eq!((r.guest_svn, r.policy.0), (4, 0x3001f));
    assert_eq!(r.family_id[0], 1);
    assert_eq!(r.image_id[0], 2);
    assert_eq!(hex::encode(r.current_tcb.raw()), "03000000000008ce");
    assert_eq!(hex::encode(r.reported_tcb.raw()), "0300000000000873");
    assert_eq!(hex::encode(r.id_key_digest), "0356215882a825279a85b300b0b742931d113bf7e32dde2e50ffde7ec743ca491ecdd7f336dc28a6e0b2bb57af7a44a3");
    assert_eq!(
        hex::encode(&r.report_data[..32]),
        "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2"
    );
}

fn aci_report_verifies_with_pem_chain_and_thim() {
    let dir = coffer_testkit::vectors();
    let report = coffer_testkit::read(&dir, "sev-snp/aci-milan-v2/report.bin");
    let pem = coffer_testkit::read(&dir, "sev-snp/aci-milan-v2/vcek_ask_ark_chain.pem");
    let thim = coffer_testkit::read(&dir, "sev-snp/aci-milan-v2/thim_certificate_response.json");
    let when = "2024-06-01T00:00:00Z";
    let from_pem = Endorsements::from_pem_chain(&pem, "chain").unwrap();
    let from_thim = Endorsements::from_thim_json(&thim, "thim").unwrap();
    assert_eq!(from_thim.tcbm.as_deref(), Some("7308000000000003"));
    for e in [&from_pem, &from_thim] {
        let ok = check(&verifier(), &report, e, when).unwrap();
        let r = ok.report;
        assert_eq!(
            hex::encode(r.host_data),
            "cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c"
        );
        assert_eq!(hex::encode(r.measurement), "51068107cdc7ee3d89c7821b05bca6147eb77b2005ae759050fc049b65a1b0beabc65a9d857acecf23225f5ec76849f5");
        assert_eq!(
            hex::encode(&r.report_data[..32]),
            "ee986ff2bd7e3f22e29f640918627816cf8e23b9d9c312767168eab68c861c71"
        );
        assert!(r.report_data[32..].iter().all(|&b| b == 0));
        assert_eq!(hex::encode(r.id_key_digest), "d3ed82823f890b10087105c472e2957541ede92fda7bbb6bbf8660c411c78fec8128955bc6e0efbb24c0c4a781bfee59");
        assert_eq!((r.guest_svn, r.policy.0), (2, 0x3001f));
    }
    // The bindings the README states.
    let runtime = coffer_testkit::read(&dir, "sev-snp/aci-milan-v2/runtime_data.json");
    assert_eq!(
        hex::encode(openssl::sha::sha256(&runtime)),
        "ee986ff2bd7e3f22e29f640918627816cf8e23b9d9c312767168eab68c861c71"
    );

    // Any order of the PEM chain.
    let text = String::from_utf8(pem).unwrap();
    let mut blocks: Vec<String> = text
        .split_inclusive("-----END CERTIFICATE-----")
        .filter(|b| b.contains("BEGIN"))
        .map(|b| b.trim().to_string())
        .collect();
    blocks.reverse();
    let reversed = Endorsements::from_pem_chain(blocks.join("\n").as_bytes(), "reversed").unwrap();
    check(&verifier(), &report, &reversed, when).unwrap();

    // A THIM tcbm that disagrees with REPORTED_TCB.
    let mut wrong = from_thim.clone();
    wrong.tcbm = Some("7308000000000002".into());
    let err = check(&verifier(), &report, &wrong, when).unwrap_err();
    assert_eq!(err.check(), "tcb-mismatch", "{err}");

    // Text is not a report: the library takes bytes (the CLI turns hex/base64 into bytes).
    let err = check(
        &verifier(),
        hex::encode(&report).as_bytes(),
        &from_pem,
        when,
    )
    .unwrap_err();
    assert_eq!(
        err,
        VerifyError::Report(coffer_snp::ReportError::Length {
            expected: coffer_snp::REPORT_LEN,
            got: 2 * coffer_snp::REPORT_LEN
        })
    );
}

fn upstream_negatives_fail_for_the_right_reason() {
    let dir = coffer_testkit::vectors();
    let v = verifier();

    // virtee: report[21] ^= 0x80 changes POLICY -> signature.
    let (report, e) = load(&dir, &CASES[0]);
    let mut bytes = Report::from_bytes(&report).unwrap().bytes().to_vec();
    bytes[21] ^= 0x80;
    assert_eq!(
        check(&v, &bytes, &e, CASES[0].when).unwrap_err().check(),
        "signature"
    );
    // virtee: vcek[40] ^= 0xff -> chain.
    let mut vcek = coffer_testkit::read(&dir, "sev-snp/virtee-milan-v2/vcek.der");
    vcek[40] ^= 0xff;
    let err = match Endorsements::from_vek(&vcek, "vcek") {
        Ok(e) => check(&verifier(), &report, &e, CASES[0].when).unwrap_err(),
        Err(e) => VerifyError::Cert(e),
    };
    assert_eq!(err.check(), "chain", "{err}");

    // trustee: report[42] += 1 -> signature; report[384] += 1 (REPORTED_TCB.bl) -> tcb-mismatch.
    let (report, e) = load(&dir, &CASES[2]);
    let mut b = report.clone();
    b[42] = b[42].wrapping_add(1);
    assert_eq!(
        check(&v, &b, &e, CASES[2].when).unwrap_err().check(),
        "signature"
    );
    let mut b = report.clone();
    b[384] = b[384].wrapping_add(1);
    let err = check(&v, &b, &e, CASES[2].when).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::TcbMismatch {
                component: "bootloader",
                cert: 3,
                report: 4,
                ..
            }
        ),
        "{err}"
    );

    // trustee synthetic VCEKs: parse, extensions readable, not signed by the Milan ASK.
    for f in [
        "vcek_bad_sig_hwid_raw.der",
        "vcek_bad_sig_hwid_octetstring.der",
    ] {
        let der = coffer_testkit::read(&dir, &format!("sev-snp/negative/{f}"));
        let e = Endorsements::from_vek(&der, f).unwrap();
        let ext = e.vek.amd_extensions().unwrap();
        let want: Vec<u8> = (0u8..64).collect();
        assert_eq!(ext.hw_id.as_deref(), Some(&want[..]), "{f}");
        assert!(ext.bl_spl.is_some() && ext.snp_spl.is_some(), "{f}");
        let err = check(&verifier(), &report, &e, CASES[2].when).unwrap_err();
        assert_eq!(err.check(), "chain", "{f}: {err}");
    }
}

fn time_wrong_chip_and_wrong_product_are_refused() {
    let dir = coffer_testkit::vectors();
    let (report, e) = load(&dir, &CASES[0]);
    // VCEK valid 2023-04-03 .. 2030-04-03.
    for when in ["2023-04-02T00:00:00Z", "2030-04-04T00:00:00Z"] {
        let err = check(&verifier(), &report, &e, when).unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::Expired {
                    cert: CertRole::Vcek,
                    ..
                }
            ),
            "{when}: {err}"
        );
    }
    // Another chip's VCEK with the same TCB (trustee): chip-id-mismatch.
    let (_, other) = load(&dir, &CASES[2]);
    let err = check(&verifier(), &report, &other, CASES[0].when).unwrap_err();
    assert_eq!(err.check(), "chip-id-mismatch", "{err}");
    // A VCEK issued for another TCB (go-sev-guest's, TCB 2,0,5,68): tcb-mismatch.
    let (_, older) = load(&dir, &CASES[1]);
    let err = check(&verifier(), &report, &older, CASES[0].when).unwrap_err();
    assert_eq!(err.check(), "tcb-mismatch", "{err}");
    // Asking for Genoa when the VCEK says Milan.
    let mut opts = at(CASES[0].when);
    opts.product = Some(Product::Genoa);
    let err = verifier()
        .verify(&Report::from_bytes(&report).unwrap(), &e, &opts)
        .unwrap_err();
    assert_eq!(err.check(), "chain", "{err}");
    assert_eq!(
        err,
        VerifyError::ProductMismatch {
            first: coffer_snp::ProductSource::VekProductName,
            first_product: Product::Milan,
            second: coffer_snp::ProductSource::Requested,
            second_product: Product::Genoa,
        }
    );
    // A chain whose ARK is not pinned: the ASK presented as the root.
    let pem = coffer_testkit::read(&dir, "sev-snp/aci-milan-v2/vcek_ask_ark_chain.pem");
    let full = Endorsements::from_pem_chain(&pem, "chain").unwrap();
    let aci = coffer_testkit::read(&dir, "sev-snp/aci-milan-v2/report.bin");
    let mut fake = full.clone();
    fake.ark = Some(coffer_testkit_other_ark(&dir));
    let err = check(&verifier(), &aci, &fake, CASES[0].when).unwrap_err();
    assert_eq!(err.check(), "unknown-root", "{err}");
    assert!(
        matches!(&err, VerifyError::UnknownRoot { subject, .. } if subject.contains("ARK-Genoa")),
        "{err}"
    );
}

/// Genoa's ARK: a genuine AMD root, but not the one the Milan chain ends in.
fn coffer_testkit_other_ark(dir: &Path) -> coffer_snp::Certificate {
    coffer_snp::Certificate::from_der_or_pem(
        &coffer_testkit::read(dir, "sev-snp/amd-roots/genoa_ark.pem"),
        "genoa ark",
    )
    .unwrap()
}

fn every_bit_of_the_signed_area_matters() {
    let dir = coffer_testkit::vectors();
    let (report, e) = load(&dir, &CASES[2]);
    let original = Report::from_bytes(&report).unwrap().bytes().to_vec();
    let v = verifier();
    check(&v, &original, &e, CASES[2].when).unwrap();
    let mut failures = 0usize;
    for byte in 0..coffer_snp::SIGNED_LEN {
        for bit in 0..8 {
            let mut b = original.clone();
            b[byte] ^= 1 << bit;
            match check(&v, &b, &e, CASES[2].when) {
                Ok(_) => panic!("flipping bit {bit} of byte {byte:#x} still verifies"),
                Err(_) => failures += 1,
            }
        }
    }
    assert_eq!(failures, 672 * 8);
    assert_eq!(v.cached_chains(), 1);
    // Those went through the cached chain's comb table; it still accepts the original.
    check(&v, &original, &e, CASES[2].when).unwrap();
}

fn every_bit_of_the_signature_matters_on_both_paths() {
    let dir = coffer_testkit::vectors();
    let (report, e) = load(&dir, &CASES[0]);
    let original = Report::from_bytes(&report).unwrap().bytes().to_vec();
    let warm = verifier();
    check(&warm, &original, &e, CASES[0].when).unwrap();
    // R and S are 72-byte little-endian fields at 0x2A0 and 0x2E8; P-384 uses the low 48 bytes.
    for (field, start) in [("R", 0x2a0), ("S", 0x2e8)] {
        for byte in 0..48 {
            for bit in 0..8 {
                let mut b = original.clone();
                b[start + byte] ^= 1 << bit;
                assert!(
                    check(&warm, &b, &e, CASES[0].when).is_err(),
                    "comb table: flipping bit {bit} of {field} byte {byte} still verifies"
                );
                if (byte * 8 + bit) % 37 == 0 {
                    assert!(
                        check(&verifier(), &b, &e, CASES[0].when).is_err(),
                        "OpenSSL: flipping bit {bit} of {field} byte {byte} still verifies"
                    );
                }
            }
        }
    }
}
