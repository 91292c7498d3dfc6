//! Real DCAP evidence from `../shared/vectors/intel-dcap`: every quote gives the result its README
//! documents, and tampering fails with the documented check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use coffer_dcap::time::parse_rfc3339;
use coffer_dcap::{
    Body, Collateral, Quote, Roots, TcbStatus, Tee, Verified, Verifier, VerifyError, VerifyOptions,
    INTEL_ROOT_SHA256,
};
use coffer_testkit::Need;

const SGX_DIR: &str = "intel-dcap/dcap-qvl-sgx-v3";
/// dcap-qvl's `now` for the SGX collateral: the end of the shared window minus one second.
const SGX_NOW: u64 = 1752919277;
const WINDOW_START: u64 = 1750330571;
const WINDOW_END: u64 = 1752919278;

const SIGNATURE_ONLY: [(&str, Tee, &str); 5] = [
    ("trustee_tdx_v4_quote.bin", Tee::Tdx, "50806f000000"),
    ("trustee_tdx_v5_quote.bin", Tee::Tdx, "90c06f000000"),
    ("trustee_occlum_sgx_v3_quote.bin", Tee::Sgx, "00606a000000"),
    ("trustee_azure_tdx_v4_quote.bin", Tee::Tdx, "00806f050000"),
    ("dcapqvl_tdx_v4_quote.hex", Tee::Tdx, "b0c06f000000"),
];

fn verifier() -> Verifier {
    Verifier::new(Roots::intel().unwrap())
}

fn opts(at: u64) -> VerifyOptions {
    VerifyOptions {
        at,
        check_crl: true,
    }
}

fn sgx(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        coffer_testkit::read(dir, &format!("{SGX_DIR}/quote.bin")),
        coffer_testkit::read(dir, &format!("{SGX_DIR}/collateral.json")),
    )
}

fn run(
    v: &Verifier,
    quote: &[u8],
    collateral: &[u8],
    o: VerifyOptions,
) -> Result<Verified, VerifyError> {
    let q = Quote::from_bytes(quote.to_vec())?;
    let c = Collateral::from_qvl_json(collateral)?;
    v.verify(&q, &c, &o)
}

fn check_of(r: Result<Verified, VerifyError>) -> &'static str {
    match r {
        Ok(_) => "valid",
        Err(e) => e.check(),
    }
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        embedded_root_is_the_pinned_intel_root: Need::Vectors;
        sgx_v3_with_collateral_is_valid_with_the_documented_status: Need::Vectors;
        the_collateral_window_is_inclusive_and_enforced: Need::Vectors;
        signature_only_quotes_verify_to_the_intel_root: Need::Vectors;
        signature_only_quote_fields: Need::Vectors;
        a_tdx_quote_with_sgx_collateral_is_not_supported: Need::Vectors;
        every_bit_flip_in_the_signed_region_fails: Need::Vectors;
        tampering_fails_with_the_named_check: Need::Vectors;
        trailing_bytes_are_counted_and_a_cut_quote_is_malformed: Need::Vectors;
        a_verifier_without_the_intel_root_refuses_intel_chains: Need::Vectors;
    ])
}

fn embedded_root_is_the_pinned_intel_root() {
    let roots = Roots::intel().unwrap();
    let root = roots.iter().next().unwrap();
    assert_eq!(hex::encode(root.fingerprint()), INTEL_ROOT_SHA256);
    assert_eq!(
        INTEL_ROOT_SHA256,
        "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
    );
    assert_eq!(root.subject_cn(), "Intel SGX Root CA");
    let dir = coffer_testkit::vectors();
    assert_eq!(
        root.der(),
        coffer_testkit::read(&dir, "intel-dcap/intel_sgx_root_ca.der")
    );
}

fn sgx_v3_with_collateral_is_valid_with_the_documented_status() {
    let dir = coffer_testkit::vectors();
    let (quote, collateral) = sgx(&dir);
    let v = run(&verifier(), &quote, &collateral, opts(SGX_NOW)).unwrap();
    assert!(v.valid);
    assert_eq!(v.tee, Tee::Sgx);
    assert_eq!(v.tcb_status, TcbStatus::ConfigurationAndSWHardeningNeeded);
    assert_eq!(v.advisory_ids, ["INTEL-SA-00289", "INTEL-SA-00615"]);
    assert_eq!(v.platform_tcb.tcb_date, "2024-03-13T00:00:00Z");
    assert_eq!(v.qe_tcb.status, TcbStatus::UpToDate);
    assert_eq!(v.crl, "checked");
    assert_eq!(v.tcb_evaluation_data_number, 17);
    assert_eq!(v.collateral_window.not_before, "2025-06-19T10:56:11Z");
    assert_eq!(v.collateral_window.not_after, "2025-07-19T10:01:18Z");
    assert_eq!(v.pck.issuer, "Intel SGX PCK Processor CA");
    assert_eq!(hex::encode(v.pck.extension.fmspc), "00a067110000");
    assert_eq!(hex::encode(v.pck.extension.pce_id), "0000");
    assert_eq!(v.pck.extension.pce_svn, 13);
    assert_eq!(&v.pck.extension.components[..7], &[11, 11, 2, 2, 255, 1, 0]);
    assert_eq!(v.quote.header.version, 3);
    assert_eq!(v.quote.header.qe_svn, 10);
    assert_eq!(v.quote.header.pce_svn, 15);
    assert_eq!(v.quote.qe_report.isv_prod_id, 1);
    assert_eq!(v.quote.qe_report.isv_svn, 10);
    let Body::Sgx(r) = &v.quote.body else {
        panic!("not SGX")
    };
    assert_eq!(
        hex::encode(r.mr_enclave),
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    );
    assert_eq!(
        hex::encode(r.mr_signer),
        "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    );
    assert_eq!(
        hex::encode(r.attributes),
        "0500000000000000e700000000000000"
    );
    assert_eq!(hex::encode(r.cpu_svn), "0b0b1a18ffff04000000000000000000");
    assert!(!r.debug);
    assert_eq!(&r.report_data[..13], b"Hello, world!");
    assert!(r.report_data[13..].iter().all(|&b| b == 0));
    // JSON shape of the CLI contract.
    let j = serde_json::to_value(&v).unwrap();
    assert_eq!(j["valid"], true);
    assert_eq!(j["tee"], "sgx");
    assert_eq!(j["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    assert_eq!(j["quote"]["body"]["type"], "sgx");
}

fn the_collateral_window_is_inclusive_and_enforced() {
    let dir = coffer_testkit::vectors();
    let (quote, collateral) = sgx(&dir);
    let v = verifier();
    for at in [WINDOW_START, WINDOW_END] {
        assert_eq!(
            check_of(run(&v, &quote, &collateral, opts(at))),
            "valid",
            "{at}"
        );
    }
    for at in [
        WINDOW_START - 1,
        WINDOW_END + 1,
        parse_rfc3339("2025-01-01T00:00:00Z").unwrap(),
        parse_rfc3339("2026-01-01T00:00:00Z").unwrap(),
        // After the PCK certificate's notAfter.
        parse_rfc3339("2031-01-01T00:00:00Z").unwrap(),
        // Before the PCK certificate's notBefore.
        parse_rfc3339("2022-01-01T00:00:00Z").unwrap(),
    ] {
        assert_eq!(
            check_of(run(&v, &quote, &collateral, opts(at))),
            "expired",
            "{at}"
        );
    }
    // Without CRLs the window is TCB info and QE identity only (the PCK CRL ends at 10:23:18,
    // after the QE identity's 10:01:18, so the end is the same here).
    let no_crl = VerifyOptions {
        at: WINDOW_END + 1,
        check_crl: false,
    };
    assert_eq!(check_of(run(&v, &quote, &collateral, no_crl)), "expired");
}

fn signature_only_quotes_verify_to_the_intel_root() {
    let dir = coffer_testkit::vectors();
    let v = verifier();
    let at = parse_rfc3339("2025-01-01T00:00:00Z").unwrap();
    for (file, tee, fmspc) in SIGNATURE_ONLY {
        let bytes = coffer_testkit::read_bytes(&dir, &format!("intel-dcap/signature-only/{file}"));
        let q = Quote::from_bytes(bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        let e = v
            .verify_evidence(&q, at)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(e.tee, tee, "{file}");
        assert_eq!(hex::encode(e.pck.extension.fmspc), fmspc, "{file}");
        assert_eq!(e.root_sha256, INTEL_ROOT_SHA256, "{file}");
    }
}

fn signature_only_quote_fields() {
    let dir = coffer_testkit::vectors();
    let read = |f: &str| {
        Quote::from_bytes(coffer_testkit::read_bytes(
            &dir,
            &format!("intel-dcap/signature-only/{f}"),
        ))
        .unwrap()
    };
    // Trustee's expected claims for tdx_quote_4.dat.
    let expected: serde_json::Value = serde_json::from_slice(&coffer_testkit::read(
        &dir,
        "intel-dcap/signature-only/trustee_tdx_v4_parsed_claims_expected.json",
    ))
    .unwrap();
    let q = read("trustee_tdx_v4_quote.bin");
    assert_eq!(q.bytes().len(), 4936);
    assert_eq!(q.trailing_bytes, 0);
    assert_eq!(q.signed_bytes().len(), 632);
    let Body::Td10(td) = &q.body else {
        panic!("not TD10")
    };
    let b = &expected["quote"]["body"];
    let h = &expected["quote"]["header"];
    assert_eq!(hex::encode(q.header.version.to_le_bytes()), h["version"]);
    assert_eq!(hex::encode(q.header.tee_type.to_le_bytes()), h["tee_type"]);
    assert_eq!(hex::encode(q.header.user_data), h["user_data"]);
    assert_eq!(hex::encode(q.header.qe_vendor_id), h["vendor_id"]);
    for (ours, key) in [
        (hex::encode(td.mr_td), "mr_td"),
        (hex::encode(td.mr_seam), "mr_seam"),
        (hex::encode(td.mr_signer_seam), "mrsigner_seam"),
        (hex::encode(td.mr_config_id), "mr_config_id"),
        (hex::encode(td.mr_owner), "mr_owner"),
        (hex::encode(td.mr_owner_config), "mr_owner_config"),
        (hex::encode(td.rtmr0), "rtmr_0"),
        (hex::encode(td.rtmr1), "rtmr_1"),
        (hex::encode(td.rtmr2), "rtmr_2"),
        (hex::encode(td.rtmr3), "rtmr_3"),
        (hex::encode(td.report_data), "report_data"),
        (hex::encode(td.seam_attributes), "seam_attributes"),
        (hex::encode(td.td_attributes), "td_attributes"),
        (hex::encode(td.xfam), "xfam"),
        (hex::encode(td.tee_tcb_svn), "tcb_svn"),
    ] {
        assert_eq!(ours, b[key].as_str().unwrap(), "{key}");
    }
    assert!(td.debug);

    let q = read("trustee_tdx_v5_quote.bin");
    assert_eq!(q.header.version, 5);
    assert!(matches!(q.body, Body::Td15(_)));
    assert_eq!(q.signed_bytes().len(), 702);

    let q = read("trustee_occlum_sgx_v3_quote.bin");
    let Body::Sgx(r) = &q.body else {
        panic!("not SGX")
    };
    assert_eq!(
        hex::encode(r.mr_enclave),
        "8f173e4613ff05c52aaf04162d234edae8c9977eae47eb2299ae16a553011c68"
    );
    assert_eq!(&r.report_data[..4], b"test");
    assert!(r.report_data[4..].iter().all(|&b| b == 0));

    let q = read("trustee_azure_tdx_v4_quote.bin");
    assert_eq!(q.bytes().len(), 5006);
    assert_eq!(q.trailing_bytes, 70);
    assert_eq!(
        hex::encode(&q.body.report_data()[..32]),
        "9734504f161d104c74e3165c15f779b06a9bb40dfa71937817d7eee68e593839"
    );
    assert!(q.body.report_data()[32..].iter().all(|&b| b == 0));
}

/// The TDX quote from dcap-qvl with the SGX collateral: everything of the quote verifies, and the
/// collateral is not for it.
fn a_tdx_quote_with_sgx_collateral_is_not_supported() {
    let dir = coffer_testkit::vectors();
    let (_, collateral) = sgx(&dir);
    let quote =
        coffer_testkit::read_bytes(&dir, "intel-dcap/signature-only/dcapqvl_tdx_v4_quote.hex");
    let o = VerifyOptions {
        at: SGX_NOW,
        check_crl: false,
    };
    assert_eq!(
        check_of(run(&verifier(), &quote, &collateral, o)),
        "tcb-not-supported"
    );
}

/// Every single-bit flip in the signed region of every quote fails.
fn every_bit_flip_in_the_signed_region_fails() {
    let dir = coffer_testkit::vectors();
    let v = verifier();
    let at = parse_rfc3339("2025-01-01T00:00:00Z").unwrap();
    let mut files: Vec<String> = SIGNATURE_ONLY
        .iter()
        .map(|(f, ..)| format!("intel-dcap/signature-only/{f}"))
        .collect();
    files.push(format!("{SGX_DIR}/quote.bin"));
    for file in files {
        let q = Quote::from_bytes(coffer_testkit::read_bytes(&dir, &file)).unwrap();
        let raw = q.bytes().to_vec();
        for bit in 0..q.signed_bytes().len() * 8 {
            let mut b = raw.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let r = Quote::from_bytes(b)
                .map_err(VerifyError::from)
                .and_then(|q| v.verify_evidence(&q, at));
            match r {
                Ok(_) => panic!("{file}: flip of bit {bit} verifies"),
                Err(e) => assert!(
                    matches!(e.check(), "signature" | "malformed"),
                    "{file}: bit {bit}: {e}"
                ),
            }
        }
    }
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at] ^= 0x01;
    b
}

fn tampering_fails_with_the_named_check() {
    let dir = coffer_testkit::vectors();
    let (quote, collateral) = sgx(&dir);
    let v = verifier();
    let q = Quote::from_bytes(quote.clone()).unwrap();
    let o = opts(SGX_NOW);
    let sig_start = q.signed_range().end + 4;
    let qe = q.qe_report_range();
    let auth_start = qe.end + 64 + 2;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("body byte", flip(&quote, 48 + 64), "signature"),
        ("header user data", flip(&quote, 40), "signature"),
        ("quote signature", flip(&quote, sig_start + 5), "signature"),
        (
            "attestation key",
            flip(&quote, sig_start + 64 + 5),
            "signature",
        ),
        ("QE report", flip(&quote, qe.start + 100), "signature"),
        ("QE report data", flip(&quote, qe.start + 320), "signature"),
        ("QE report signature", flip(&quote, qe.end + 3), "signature"),
        ("QE auth data", flip(&quote, auth_start), "qe-binding"),
    ];
    // First the genuine quote, so that its PCK chain and QE report are cached: the cache must
    // not let a tampered QE report through.
    assert_eq!(check_of(run(&v, &quote, &collateral, o)), "valid");
    for (what, bytes, check) in cases {
        assert_eq!(check_of(run(&v, &bytes, &collateral, o)), check, "{what}");
    }
    // The untouched quote still passes (the caches hold nothing of the failures).
    assert_eq!(check_of(run(&v, &quote, &collateral, o)), "valid");

    let json: serde_json::Value = serde_json::from_slice(&collateral).unwrap();
    let edit = |key: &str, f: &dyn Fn(&str) -> String| -> Vec<u8> {
        let mut j = json.clone();
        let old = j[key].as_str().unwrap().to_string();
        j[key] = serde_json::Value::String(f(&old));
        serde_json::to_vec(&j).unwrap()
    };
    let col_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "TCB info text (a status)",
            edit("tcb_info", &|t| t.replacen("OutOfDate", "UpToDate", 1)),
            "collateral-signature",
        ),
        (
            "TCB info text (whitespace)",
            edit("tcb_info", &|t| t.replacen(",", ", ", 1)),
            "collateral-signature",
        ),
        (
            "TCB info signature",
            edit("tcb_info_signature", &|t| {
                format!("{}{}", &t[..10], if &t[10..11] == "0" { "1" } else { "0" }) + &t[11..]
            }),
            "collateral-signature",
        ),
        (
            "QE identity text",
            edit("qe_identity", &|t| {
                t.replacen("\"isvprodid\":1", "\"isvprodid\":2", 1)
            }),
            "collateral-signature",
        ),
        ("no PCK CRL", edit("pck_crl", &|_| String::new()), "crl"),
        (
            "no root CRL",
            edit("root_ca_crl", &|_| String::new()),
            "crl",
        ),
        (
            "PCK CRL swapped for the root CRL",
            edit("pck_crl", &|_| {
                json["root_ca_crl"].as_str().unwrap().to_string()
            }),
            "crl",
        ),
        (
            "TCB info chain from the PCK CRL chain",
            edit("tcb_info_issuer_chain", &|_| {
                json["pck_crl_issuer_chain"].as_str().unwrap().to_string()
            }),
            "collateral-signature",
        ),
    ];
    for (what, bytes, check) in col_cases {
        assert_eq!(check_of(run(&v, &quote, &bytes, o)), check, "{what}");
    }
    // --no-crl accepts a collateral set without CRLs, and says so.
    let no_crls = edit("pck_crl", &|_| String::new());
    let r = run(
        &v,
        &quote,
        &no_crls,
        VerifyOptions {
            at: SGX_NOW,
            check_crl: false,
        },
    )
    .unwrap();
    assert_eq!(r.crl, "skipped");
    assert_eq!(r.tcb_status, TcbStatus::ConfigurationAndSWHardeningNeeded);
    assert!(!r.warnings.is_empty());
}

/// Bytes after the quote are counted (and verify), a quote cut short is malformed. (Hex and
/// base64 spellings are the CLI's business: `coffer dcap verify` accepts them.)
fn trailing_bytes_are_counted_and_a_cut_quote_is_malformed() {
    let dir = coffer_testkit::vectors();
    let (quote, collateral) = sgx(&dir);
    let v = verifier();
    let mut padded = quote.clone();
    padded.extend([0u8; 70]);
    let r = run(&v, &padded, &collateral, opts(SGX_NOW)).unwrap();
    assert_eq!(r.quote.trailing_bytes, 70);
    assert_eq!(
        check_of(run(
            &v,
            &quote[..quote.len() - 1],
            &collateral,
            opts(SGX_NOW)
        )),
        "malformed"
    );
    assert_eq!(
        check_of(run(&v, b"hello", &collateral, opts(SGX_NOW))),
        "malformed"
    );
}

fn a_verifier_without_the_intel_root_refuses_intel_chains() {
    let dir = coffer_testkit::vectors();
    let (quote, collateral) = sgx(&dir);
    let v = Verifier::new(Roots::empty());
    assert_eq!(
        check_of(run(&v, &quote, &collateral, opts(SGX_NOW))),
        "unknown-root"
    );
}
