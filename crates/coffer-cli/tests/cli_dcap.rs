//! The `coffer dcap` CLI contract, run as a real binary: every Intel DCAP vector gives its
//! documented result, and tampering gives the documented `check`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use coffer_testkit::Need;
use common::coffer;

use std::path::{Path, PathBuf};
use std::process::Output;

const AT: &str = "2025-07-19T10:01:17Z";
const SGX: &str = "intel-dcap/dcap-qvl-sgx-v3";

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

struct Env {
    home: tempfile::TempDir,
    vectors: PathBuf,
}

fn env() -> Env {
    Env {
        home: tempfile::tempdir().unwrap(),
        vectors: coffer_testkit::vectors(),
    }
}

impl Env {
    fn path(&self, rel: &str) -> String {
        self.vectors.join(rel).to_str().unwrap().to_string()
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.home.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn verify(
        &self,
        quote: &str,
        collateral: &str,
        extra: &[&str],
    ) -> (Option<i32>, serde_json::Value) {
        let mut args = vec!["dcap", "verify", quote, "--collateral", collateral];
        args.extend(extra);
        let out = coffer(self.home.path(), &args);
        (out.status.code(), json(&out))
    }

    /// Expect exit 1 with `check`.
    fn fails(&self, quote: &str, collateral: &str, extra: &[&str], check: &str, what: &str) {
        let (code, j) = self.verify(quote, collateral, extra);
        assert_eq!(code, Some(1), "{what}: {j}");
        assert_eq!(j["valid"], false, "{what}");
        assert_eq!(j["check"], check, "{what}: {j}");
        assert!(j["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}");
    }

    /// The SGX collateral as a directory of PCS responses.
    fn pcs_dir(&self, edit: impl Fn(&mut serde_json::Value)) -> String {
        let mut c: serde_json::Value = serde_json::from_slice(&coffer_testkit::read(
            &self.vectors,
            &format!("{SGX}/collateral.json"),
        ))
        .unwrap();
        edit(&mut c);
        let dir = tempfile::tempdir_in(self.home.path()).unwrap().keep();
        let s = |k: &str| c[k].as_str().unwrap().to_string();
        // As PCS serves them: the signed object's text verbatim inside the response.
        let tcb = format!(
            "{{\"tcbInfo\":{},\"signature\":\"{}\"}}",
            s("tcb_info"),
            s("tcb_info_signature")
        );
        let qe = format!(
            "{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}",
            s("qe_identity"),
            s("qe_identity_signature")
        );
        std::fs::write(dir.join("tcbInfo.json"), tcb).unwrap();
        std::fs::write(dir.join("enclaveIdentity.json"), qe).unwrap();
        std::fs::write(
            dir.join("tcb_info_issuer_chain.pem"),
            s("tcb_info_issuer_chain"),
        )
        .unwrap();
        std::fs::write(
            dir.join("qe_identity_issuer_chain.pem"),
            s("qe_identity_issuer_chain"),
        )
        .unwrap();
        std::fs::write(
            dir.join("pck_crl_issuer_chain.pem"),
            s("pck_crl_issuer_chain"),
        )
        .unwrap();
        std::fs::write(dir.join("pck_crl.der"), hex::decode(s("pck_crl")).unwrap()).unwrap();
        std::fs::write(
            dir.join("root_ca_crl.der"),
            hex::decode(s("root_ca_crl")).unwrap(),
        )
        .unwrap();
        dir.to_str().unwrap().to_string()
    }
}

fn check_sgx_result(j: &serde_json::Value) {
    assert_eq!(j["valid"], true);
    assert_eq!(j["tee"], "sgx");
    assert_eq!(j["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    assert_eq!(
        j["advisory_ids"],
        serde_json::json!(["INTEL-SA-00289", "INTEL-SA-00615"])
    );
    assert_eq!(j["crl"], "checked");
    assert_eq!(
        j["quote"]["body"]["mr_enclave"],
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    );
    assert_eq!(
        j["quote"]["body"]["mr_signer"],
        "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    );
    assert_eq!(j["quote"]["body"]["isv_prod_id"], 0);
    assert_eq!(j["quote"]["body"]["isv_svn"], 0);
    assert_eq!(j["quote"]["header"]["version"], 3);
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        sgx_vector_is_valid_from_qvl_json_and_from_a_pcs_directory: Need::Vectors;
        signature_only_vectors_verify_up_to_the_collateral: Need::Vectors;
        tampering_gives_the_documented_check: Need::Vectors;
        a_chain_ending_at_another_root_is_unknown_root: Need::Vectors;
    ])
}

fn sgx_vector_is_valid_from_qvl_json_and_from_a_pcs_directory() {
    let e = env();
    let quote = e.path(&format!("{SGX}/quote.bin"));
    let (code, j) = e.verify(
        &quote,
        &e.path(&format!("{SGX}/collateral.json")),
        &["--at", AT],
    );
    assert_eq!(code, Some(0), "{j}");
    check_sgx_result(&j);
    let dir = e.pcs_dir(|_| {});
    let (code, j) = e.verify(&quote, &dir, &["--at", AT]);
    assert_eq!(code, Some(0), "{j}");
    check_sgx_result(&j);
    // Hex (with 0x) and base64 quotes.
    let raw = coffer_testkit::read(&e.vectors, &format!("{SGX}/quote.bin"));
    use base64::Engine as _;
    for (name, text) in [
        ("q.hex", format!("0x{}\n", hex::encode(&raw))),
        (
            "q.b64",
            base64::engine::general_purpose::STANDARD.encode(&raw),
        ),
    ] {
        let p = e.write(name, text.as_bytes());
        let (code, j) = e.verify(&p, &dir, &["--at", AT]);
        assert_eq!(code, Some(0), "{name}: {j}");
        check_sgx_result(&j);
    }
}

fn signature_only_vectors_verify_up_to_the_collateral() {
    let e = env();
    let col = e.path(&format!("{SGX}/collateral.json"));
    // Their quote signature, QE report, binding and PCK chain verify; the SGX collateral is not
    // for their platform (another FMSPC, or TDX).
    for f in [
        "trustee_tdx_v4_quote.bin",
        "trustee_tdx_v5_quote.bin",
        "trustee_occlum_sgx_v3_quote.bin",
        "trustee_azure_tdx_v4_quote.bin",
        "dcapqvl_tdx_v4_quote.hex",
    ] {
        let q = e.path(&format!("intel-dcap/signature-only/{f}"));
        e.fails(&q, &col, &["--at", AT, "--no-crl"], "tcb-not-supported", f);
        let out = coffer(e.home.path(), &["dcap", "show", &q]);
        assert!(out.status.success(), "{f}");
        let j = json(&out);
        let tee = if f.contains("sgx") {
            "sgx"
        } else {
            if f.contains("v5") {
                "td15"
            } else {
                "td10"
            }
        };
        assert_eq!(j["body"]["type"], tee, "{f}");
    }
    let out = coffer(
        e.home.path(),
        &[
            "dcap",
            "show",
            &e.path("intel-dcap/signature-only/trustee_tdx_v4_quote.bin"),
        ],
    );
    assert_eq!(
        json(&out)["body"]["mr_td"],
        "705ee9381b8633a9fbe532b52345e8433343d2868959f57889d84ca377c395b689cac1599ccea1b7d420483a9ce5f031"
    );
}

fn tampering_gives_the_documented_check() {
    let e = env();
    let raw = coffer_testkit::read(&e.vectors, &format!("{SGX}/quote.bin"));
    let col = e.path(&format!("{SGX}/collateral.json"));
    let flip = |at: usize| {
        let mut b = raw.clone();
        b[at] ^= 0x10;
        b
    };
    // v3 offsets: body 48..432, sig_data_len 432..436, signature 436..500, key 500..564,
    // QE report 564..948, QE report signature 948..1012, auth length 1012, auth data 1014...
    for (what, bytes, check) in [
        ("body (MRENCLAVE)", flip(48 + 64), "signature"),
        ("quote signature", flip(440), "signature"),
        ("QE report", flip(564 + 200), "signature"),
        ("QE report signature", flip(960), "signature"),
        ("QE auth data", flip(1014), "qe-binding"),
    ] {
        let p = e.write("t.bin", &bytes);
        e.fails(&p, &col, &["--at", AT], check, what);
    }
    let quote = e.path(&format!("{SGX}/quote.bin"));
    // TCB info text, in both collateral forms.
    let edit_tcb = |c: &mut serde_json::Value| {
        let t = c["tcb_info"].as_str().unwrap().replacen(
            "\"tcbEvaluationDataNumber\":17",
            "\"tcbEvaluationDataNumber\":18",
            1,
        );
        c["tcb_info"] = t.into();
    };
    let mut c: serde_json::Value = serde_json::from_slice(&coffer_testkit::read(
        &e.vectors,
        &format!("{SGX}/collateral.json"),
    ))
    .unwrap();
    edit_tcb(&mut c);
    let p = e.write("c.json", &serde_json::to_vec(&c).unwrap());
    e.fails(
        &quote,
        &p,
        &["--at", AT],
        "collateral-signature",
        "TCB info text (JSON)",
    );
    e.fails(
        &quote,
        &e.pcs_dir(edit_tcb),
        &["--at", AT],
        "collateral-signature",
        "TCB info text (PCS)",
    );
    // Outside the collateral window.
    for at in [
        "2025-07-19T10:01:19Z",
        "2025-06-19T10:56:10Z",
        "2024-01-01T00:00:00Z",
    ] {
        e.fails(&quote, &col, &["--at", at], "expired", at);
    }
    // Without CRLs: refused, unless --no-crl, which the output reports.
    let dir = e.pcs_dir(|_| {});
    std::fs::remove_file(Path::new(&dir).join("pck_crl.der")).unwrap();
    std::fs::remove_file(Path::new(&dir).join("root_ca_crl.der")).unwrap();
    e.fails(&quote, &dir, &["--at", AT], "crl", "no CRLs");
    let (code, j) = e.verify(&quote, &dir, &["--at", AT, "--no-crl"]);
    assert_eq!(code, Some(0), "{j}");
    assert_eq!(j["crl"], "skipped");
    assert_eq!(j["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    // The PCK CRL in place of the root CA CRL: not signed by the root.
    let dir = e.pcs_dir(|c| c["root_ca_crl"] = c["pck_crl"].clone());
    e.fails(&quote, &dir, &["--at", AT], "crl", "swapped CRL");
    // Not a quote at all.
    let p = e.write("junk.bin", b"not a quote");
    e.fails(&p, &col, &["--at", AT], "malformed", "junk");
}

/// The SGX quote re-certified by a generated root (with its PCK CA and PCK certificate, the QE
/// report re-signed): its chain ends at a root that is not pinned.
fn a_chain_ending_at_another_root_is_unknown_root() {
    use openssl::asn1::{Asn1Integer, Asn1Time};
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::{X509Builder, X509NameBuilder, X509};

    let e = env();
    let raw = coffer_testkit::read(&e.vectors, &format!("{SGX}/quote.bin"));
    let issue = |cn: &str, issuer: Option<(&X509, &PKey<Private>)>| -> (X509, PKey<Private>) {
        let key = PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&Asn1Integer::from_bn(&BigNum::from_u32(7).unwrap()).unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(issuer.map(|i| i.0.subject_name()).unwrap_or(&name))
            .unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(1_577_836_800).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(2_208_988_800).unwrap())
            .unwrap();
        b.sign(issuer.map(|i| i.1).unwrap_or(&key), MessageDigest::sha256())
            .unwrap();
        (b.build(), key)
    };
    let root = issue("Intel SGX Root CA", None); // same name, another key
    let ca = issue("Intel SGX PCK Processor CA", Some((&root.0, &root.1)));
    let leaf = issue("Intel SGX PCK Certificate", Some((&ca.0, &ca.1)));
    let mut chain = Vec::new();
    for c in [&leaf.0, &ca.0, &root.0] {
        chain.extend(c.to_pem().unwrap());
    }
    // v3: QE report 564..948, its signature 948..1012, auth 1012.., then type, size, PEM.
    let auth_len = u16::from_le_bytes([raw[1012], raw[1013]]) as usize;
    let pem_size_at = 1014 + auth_len + 2;
    let mut q = raw[..pem_size_at].to_vec();
    let sig = openssl::ecdsa::EcdsaSig::sign(
        &openssl::sha::sha256(&raw[564..948]),
        &leaf.1.ec_key().unwrap(),
    )
    .unwrap();
    q[948..980].copy_from_slice(&sig.r().to_vec_padded(32).unwrap());
    q[980..1012].copy_from_slice(&sig.s().to_vec_padded(32).unwrap());
    q.extend((chain.len() as u32).to_le_bytes());
    q.extend(&chain);
    let sig_len = (q.len() - 436) as u32;
    q[432..436].copy_from_slice(&sig_len.to_le_bytes());
    let p = e.write("other-root.bin", &q);
    e.fails(
        &p,
        &e.path(&format!("{SGX}/collateral.json")),
        &["--at", AT],
        "unknown-root",
        "other root",
    );
}
