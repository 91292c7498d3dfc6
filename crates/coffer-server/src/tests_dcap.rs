//! `attest/SgxEnclave` and `attest/TdxVm` through the router: every Intel DCAP vector gives its
//! documented result, tampered quotes fail, collateral outside its window is `expired`, the
//! collateral directory is re-read when it changes, reference values and release policies apply to
//! the SGX/TDX claims.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use axum::body::Body as HttpBody;
use axum::http::Method;
use base64::Engine as _;
use openssl::ec::{EcGroup, EcKey, PointConversionForm};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use tower::ServiceExt as _;

use super::*;

const SGX_DIR: &str = "intel-dcap/dcap-qvl-sgx-v3";
/// The SGX vector's verification time (its README): the end of the collateral's window - 1 s.
const SGX_NOW: u64 = 1752919277;
const WINDOW_START: u64 = 1750330571;
const WINDOW_END: u64 = 1752919278;
const MRENCLAVE: &str = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb";
const MRSIGNER: &str = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6";

/// The vectors without collateral: (file, route, FMSPC).
const SIGNATURE_ONLY: [(&str, &str, &str); 5] = [
    ("trustee_tdx_v4_quote.bin", "TdxVm", "50806f000000"),
    ("trustee_tdx_v5_quote.bin", "TdxVm", "90c06f000000"),
    (
        "trustee_occlum_sgx_v3_quote.bin",
        "SgxEnclave",
        "00606a000000",
    ),
    ("trustee_azure_tdx_v4_quote.bin", "TdxVm", "00806f050000"),
    ("dcapqvl_tdx_v4_quote.hex", "TdxVm", "b0c06f000000"),
];

fn b64u(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn claims(token: &str) -> Value {
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&coffer_attest::decode_b64(p).unwrap()).unwrap()
}

struct Dcap {
    _home: tempfile::TempDir,
    collateral: tempfile::TempDir,
    router: Router,
    issuer: String,
    admin: String,
}

/// A server at `now` with the collateral directory holding `sets` (file name, bytes), PCK chains
/// to Intel's root and to `extra_root`.
fn dcap_server(
    now: u64,
    sets: &[(&str, &[u8])],
    reference: Option<ReferenceValues>,
    extra_root: Option<&openssl::x509::X509>,
) -> Dcap {
    let home = tempfile::tempdir().unwrap();
    let collateral = tempfile::tempdir().unwrap();
    for (name, bytes) in sets {
        std::fs::write(collateral.path().join(name), bytes).unwrap();
    }
    let mut roots = coffer_dcap::Roots::intel().unwrap();
    if let Some(r) = extra_root {
        let cert = coffer_dcap::Certificate::from_der(&r.to_der().unwrap(), "test root").unwrap();
        roots = roots.with_root(cert).unwrap();
    }
    let mut cfg = super::tests::config(home.path(), Limits::default(), reference);
    cfg.now = Some(now);
    cfg.dcap = Some(dcap::DcapConfig {
        collateral: collateral.path().to_path_buf(),
        roots,
        refresh: Duration::ZERO,
    });
    let issuer = "http://coffer.test";
    let state = build_state(&cfg, issuer).unwrap();
    let admin = std::fs::read_to_string(admin_token_path(&home.path().join("serve")))
        .unwrap()
        .trim()
        .to_string();
    Dcap {
        router: app(state, Duration::from_secs(30)),
        _home: home,
        collateral,
        issuer: issuer.into(),
        admin,
    }
}

impl Dcap {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Value,
        bearer: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(HttpBody::from(body.to_string())).unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// POST attest/{route} with the quote (and runtime data); (status, token or error code).
    async fn attest(
        &self,
        route: &str,
        quote: &[u8],
        runtime: Option<&[u8]>,
    ) -> (StatusCode, Value) {
        let mut body = json!({"quote": b64u(quote), "nonce": "n-1"});
        if let Some(rt) = runtime {
            body["runtimeData"] = json!({"data": b64u(rt), "dataType": "JSON"});
        }
        self.call(Method::POST, &format!("/attest/{route}"), body, None)
            .await
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn sgx_vector(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        coffer_testkit::read(dir, &format!("{SGX_DIR}/quote.bin")),
        coffer_testkit::read(dir, &format!("{SGX_DIR}/collateral.json")),
    )
}

#[tokio::test]
#[cfg_attr(
    coffer_no_vectors,
    ignore = "needs the test vectors (set COFFER_VECTORS)"
)]
async fn sgx_vector_gets_a_token_with_azure_claims() {
    let dir = coffer_testkit::vectors();
    let (quote, collateral) = sgx_vector(&dir);
    let s = dcap_server(SGX_NOW, &[("sgx.json", &collateral)], None, None);
    let (st, v) = s.attest("SgxEnclave", &quote, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let c = claims(v["token"].as_str().unwrap());
    assert_eq!(c["x-ms-attestation-type"], "sgx");
    assert_eq!(c["x-ms-sgx-mrenclave"], MRENCLAVE);
    assert_eq!(c["x-ms-sgx-mrsigner"], MRSIGNER);
    assert_eq!(c["x-ms-sgx-product-id"], 0);
    assert_eq!(c["x-ms-sgx-svn"], 0);
    assert_eq!(c["x-ms-sgx-is-debuggable"], false);
    assert_eq!(c["x-coffer-tee"], "sgx");
    assert_eq!(
        c["x-coffer-tcb-status"],
        "ConfigurationAndSWHardeningNeeded"
    );
    assert_eq!(
        c["x-coffer-advisory-ids"],
        json!(["INTEL-SA-00289", "INTEL-SA-00615"])
    );
    assert_eq!(c["x-coffer-fmspc"], "00a067110000");
    assert_eq!(c["nonce"], "n-1");
    assert_eq!(c["iat"], SGX_NOW);
    assert!(c.get("x-ms-sgx-ehd").is_none(), "no runtime data was sent");
}

#[tokio::test]
#[cfg_attr(
    coffer_no_vectors,
    ignore = "needs the test vectors (set COFFER_VECTORS)"
)]
async fn sgx_vector_does_not_bind_other_runtime_data() {
    let dir = coffer_testkit::vectors();
    let (quote, collateral) = sgx_vector(&dir);
    let s = dcap_server(SGX_NOW, &[("sgx.json", &collateral)], None, None);
    // REPORT_DATA is "Hello, world!" and zeros: the SHA-256 of no runtime data.
    let (st, v) = s.attest("SgxEnclave", &quote, Some(b"{}")).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, "runtime-data-binding"),
        "{v}"
    );
}

#[tokio::test]
#[cfg_attr(
    coffer_no_vectors,
    ignore = "needs the test vectors (set COFFER_VECTORS)"
)]
async fn collateral_outside_its_window_is_expired() {
    let dir = coffer_testkit::vectors();
    let (quote, collateral) = sgx_vector(&dir);
    for (now, want) in [
        (WINDOW_START - 1, "expired"),
        (WINDOW_START, ""),
        (WINDOW_END, ""),
        (WINDOW_END + 1, "expired"),
    ] {
        let s = dcap_server(now, &[("sgx.json", &collateral)], None, None);
        let (_, v) = s.attest("SgxEnclave", &quote, None).await;
        assert_eq!(code(&v), want, "at {now}: {v}");
    }
}

#[tokio::test]
#[cfg_attr(
    coffer_no_vectors,
    ignore = "needs the test vectors (set COFFER_VECTORS)"
)]
async fn quotes_without_collateral_are_genuine_but_refused_with_no_collateral() {
    let dir = coffer_testkit::vectors();
    let (_, collateral) = sgx_vector(&dir);
    let s = dcap_server(SGX_NOW, &[("sgx.json", &collateral)], None, None);
    for (file, route, fmspc) in SIGNATURE_ONLY {
        let quote = coffer_testkit::read_bytes(&dir, &format!("intel-dcap/signature-only/{file}"));
        let (st, v) = s.attest(route, &quote, None).await;
        // The evidence is checked before collateral is looked for: no-collateral says the
        // signatures, the QE binding and the PCK chain to Intel's root all hold.
        assert_eq!(
            (st, code(&v)),
            (StatusCode::BAD_REQUEST, "no-collateral"),
            "{file}: {v}"
        );
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(fmspc), "{file}: {msg}");
    }
}

#[tokio::test]
#[cfg_attr(
    coffer_no_vectors,
    ignore = "needs the test vectors (set COFFER_VECTORS)"
)]
async fn flipped_bytes_fail() {
    let dir = coffer_testkit::vectors();
    let (sgx, collateral) = sgx_vector(&dir);
    let s = dcap_server(SGX_NOW, &[("sgx.json", &collateral)], None, None);
    let mut quotes = vec![("quote.bin".to_string(), "SgxEnclave", sgx)];
    for (file, route, _) in SIGNATURE_ONLY {
        let raw = coffer_testkit::read_bytes(&dir, &format!("intel-dcap/signature-only/{file}"));
        quotes.push((file.to_string(), route, raw));
    }
    for (file, route, quote) in quotes {
        let q = coffer_dcap::Quote::from_bytes(quote.clone()).unwrap();
        // One bit of every byte of the signed region and of the QE report (the bit moves with the
        // offset); every bit of every byte is the library's test (coffer-dcap/tests/vectors.rs).
        let offsets = q.signed_range().chain(q.qe_report_range());
        let mut tried = 0;
        for i in offsets {
            let mut bad = quote.clone();
            bad[i] ^= 1 << (i % 8);
            let (st, v) = s.attest(route, &bad, None).await;
            assert_ne!(
                st,
                StatusCode::OK,
                "{file}: flipping byte {i} still attests"
            );
            assert!(
                !matches!(code(&v), "no-collateral" | "runtime-data-binding"),
                "{file}: byte {i} flipped got past the evidence checks: {v}"
            );
            tried += 1;
        }
        assert!(tried > 800, "{file}: {tried}");
    }
}

#[tokio::test]
#[cfg_attr(
    coffer_no_vectors,
    ignore = "needs the test vectors (set COFFER_VECTORS)"
)]
async fn quote_sent_to_the_other_route_is_refused() {
    let dir = coffer_testkit::vectors();
    let (sgx, collateral) = sgx_vector(&dir);
    let s = dcap_server(SGX_NOW, &[("sgx.json", &collateral)], None, None);
    let (st, v) = s.attest("TdxVm", &sgx, None).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, "bad-request"),
        "{v}"
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("SgxEnclave"));
    let (_, v) = s
        .call(
            Method::POST,
            "/attest/SgxEnclave",
            json!({"quote": b64u(&sgx), "draftPolicyForAttestation": "version=1.0;"}),
            None,
        )
        .await;
    assert_eq!(code(&v), "bad-request", "{v}");
    let (_, v) = s
        .call(
            Method::POST,
            "/attest/SgxEnclave",
            json!({"quote": "@@@"}),
            None,
        )
        .await;
    assert_eq!(code(&v), "bad-request", "{v}");
    let (_, v) = s
        .call(
            Method::POST,
            "/attest/SgxEnclave",
            json!({"quote": b64u(b"short")}),
            None,
        )
        .await;
    assert_eq!(code(&v), "malformed", "{v}");
}

#[tokio::test]
async fn without_collateral_the_routes_answer_not_configured() {
    let f = super::tests::fixture();
    for route in ["/attest/SgxEnclave", "/attest/TdxVm"] {
        let (st, _, v) = f
            .call(
                Method::POST,
                route,
                json!({"quote": b64u(&[3u8; 600])}).to_string(),
                None,
            )
            .await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::NOT_IMPLEMENTED, "not-configured"),
            "{v}"
        );
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--dcap-collateral"));
    }
}

#[tokio::test]
#[cfg_attr(
    coffer_no_vectors,
    ignore = "needs the test vectors (set COFFER_VECTORS)"
)]
async fn collateral_directory_is_reread_when_it_changes() {
    let dir = coffer_testkit::vectors();
    let (quote, collateral) = sgx_vector(&dir);
    let s = dcap_server(SGX_NOW, &[], None, None);
    let (_, v) = s.attest("SgxEnclave", &quote, None).await;
    assert_eq!(code(&v), "no-collateral", "{v}");
    let file = s.collateral.path().join("sgx.json");
    std::fs::write(&file, &collateral).unwrap();
    let (st, v) = s.attest("SgxEnclave", &quote, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // Broken in place: refused (never the stale copy), and told why.
    std::fs::write(&file, b"{\"not\": \"collateral\"}").unwrap();
    let (_, v) = s.attest("SgxEnclave", &quote, None).await;
    assert_eq!(code(&v), "no-collateral", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("sgx.json"),
        "{v}"
    );
    std::fs::write(&file, &collateral).unwrap();
    let (st, v) = s.attest("SgxEnclave", &quote, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

#[tokio::test]
#[cfg_attr(
    coffer_no_vectors,
    ignore = "needs the test vectors (set COFFER_VECTORS)"
)]
async fn sgx_reference_values_pin_mrenclave_mrsigner_product_and_svn() {
    let dir = coffer_testkit::vectors();
    let (quote, collateral) = sgx_vector(&dir);
    let other = "11".repeat(32);
    let cases = [
        (
            json!({"mrenclave": [MRENCLAVE], "mrsigner": [MRSIGNER], "product_id": [0]}),
            "",
        ),
        (json!({"mrenclave": [MRENCLAVE.to_uppercase()]}), ""),
        (json!({"mrenclave": [other]}), "appraisal"),
        (json!({"mrsigner": [other]}), "appraisal"),
        (json!({"product_id": [1, 2]}), "appraisal"),
        (json!({"min_svn": 1}), "appraisal"),
    ];
    for (sgx, want) in cases {
        let rv = ReferenceValues::from_json(json!({ "sgx": sgx }).to_string().as_bytes()).unwrap();
        let s = dcap_server(SGX_NOW, &[("sgx.json", &collateral)], Some(rv), None);
        let (_, v) = s.attest("SgxEnclave", &quote, None).await;
        assert_eq!(code(&v), want, "{sgx}: {v}");
    }
}

// ---- A test PKI beside Intel's, to make an SGX quote that binds a wrapping key. ----

fn p256() -> EcKey<Private> {
    EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap()
}

struct Issued {
    cert: openssl::x509::X509,
    key: PKey<Private>,
}

fn issue(cn: &str, serial: u32, issuer: Option<&Issued>, ca: bool, ext: Option<&[u8]>) -> Issued {
    use openssl::asn1::{Asn1Integer, Asn1Object, Asn1OctetString, Asn1Time};
    use openssl::x509::{X509Builder, X509Extension, X509NameBuilder};
    let key = PKey::from_ec_key(p256()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = openssl::bn::BigNum::from_u32(serial).unwrap();
    b.set_serial_number(&Asn1Integer::from_bn(&serial).unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&*name, |i| i.cert.subject_name()))
        .unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(1_577_836_800).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(2_208_988_800).unwrap())
        .unwrap();
    if ca {
        let bc = openssl::x509::extension::BasicConstraints::new()
            .critical()
            .ca()
            .build();
        b.append_extension(bc.unwrap()).unwrap();
    }
    if let Some(ext) = ext {
        let oid = Asn1Object::from_str("1.2.840.113741.1.13.1").unwrap();
        let value = Asn1OctetString::new_from_bytes(ext).unwrap();
        b.append_extension(X509Extension::new_from_der(&oid, false, &value).unwrap())
            .unwrap();
    }
    b.sign(
        issuer.map_or(&key, |i| &i.key),
        openssl::hash::MessageDigest::sha256(),
    )
    .unwrap();
    Issued {
        cert: b.build(),
        key,
    }
}

fn sign_raw(key: &EcKey<Private>, data: &[u8]) -> [u8; 64] {
    let sig = openssl::ecdsa::EcdsaSig::sign(&openssl::sha::sha256(data), key).unwrap();
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&sig.r().to_vec_padded(32).unwrap());
    out[32..].copy_from_slice(&sig.s().to_vec_padded(32).unwrap());
    out
}

fn pem(certs: &[&openssl::x509::X509]) -> String {
    certs
        .iter()
        .map(|c| String::from_utf8(c.to_pem().unwrap()).unwrap())
        .collect()
}

/// A CRL by `issuer` revoking nothing, valid 2020..2040.
fn crl(issuer: &Issued) -> Vec<u8> {
    use der::{Decode as _, Encode as _};
    use x509_cert::crl::{CertificateList, TbsCertList};
    let ecdsa = x509_cert::spki::AlgorithmIdentifierOwned {
        oid: der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
        parameters: None,
    };
    let time = |t: u64| {
        x509_cert::time::Time::try_from(std::time::UNIX_EPOCH + Duration::from_secs(t)).unwrap()
    };
    let issuer_cert = x509_cert::Certificate::from_der(&issuer.cert.to_der().unwrap()).unwrap();
    let tbs = TbsCertList {
        version: x509_cert::Version::V2,
        signature: ecdsa.clone(),
        issuer: issuer_cert.tbs_certificate.subject,
        this_update: time(1_577_836_800),
        next_update: Some(time(2_208_988_800)),
        revoked_certificates: None,
        crl_extensions: None,
    };
    let digest = openssl::sha::sha256(&tbs.to_der().unwrap());
    let key = issuer.key.ec_key().unwrap();
    let sig = openssl::ecdsa::EcdsaSig::sign(&digest, &key)
        .unwrap()
        .to_der()
        .unwrap();
    CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: ecdsa,
        signature: der::asn1::BitString::from_bytes(&sig).unwrap(),
    }
    .to_der()
    .unwrap()
}

/// The real SGX quote with REPORT_DATA = SHA-256(`runtime`) ‖ 0³², a new attestation key, the QE
/// report re-bound to it and certified by a test PCK certificate (carrying the real PCK's SGX
/// extension), and the real TCB info and QE identity re-signed under the same test root.
/// Returns (quote, collateral JSON, root).
fn synthetic_sgx(dir: &Path, runtime: &[u8]) -> (Vec<u8>, Vec<u8>, openssl::x509::X509) {
    use der::Decode as _;
    let (real, collateral) = sgx_vector(dir);
    let q = coffer_dcap::Quote::from_bytes(real.clone()).unwrap();
    let leaf = &coffer_dcap::Certificate::pem_chain(q.pck_chain_pem(), "real").unwrap()[0];
    let ext = x509_cert::Certificate::from_der(leaf.der())
        .unwrap()
        .tbs_certificate
        .extensions
        .unwrap()
        .into_iter()
        .find(|e| e.extn_id.to_string() == "1.2.840.113741.1.13.1")
        .unwrap()
        .extn_value
        .into_bytes();
    let root = issue("Test SGX Root CA", 1, None, true, None);
    let pck_ca = issue("Test SGX PCK Processor CA", 2, Some(&root), true, None);
    let pck = issue(
        "Test SGX PCK Certificate",
        3,
        Some(&pck_ca),
        false,
        Some(&ext),
    );
    let signing = issue("Test SGX TCB Signing", 4, Some(&root), false, None);

    let mut b = real.clone();
    let signed = q.signed_range();
    let qe = q.qe_report_range();
    // v3: body at 48, REPORT_DATA at body + 320; signature data: sig, attestation key, QE report.
    b[48 + 320..48 + 352].copy_from_slice(&openssl::sha::sha256(runtime));
    b[48 + 352..48 + 384].fill(0);
    let att = p256();
    let mut ctx = openssl::bn::BigNumContext::new().unwrap();
    let point = att
        .public_key()
        .to_bytes(att.group(), PointConversionForm::UNCOMPRESSED, &mut ctx)
        .unwrap();
    let sig_at = signed.end + 4;
    b[sig_at + 64..sig_at + 128].copy_from_slice(&point[1..]);
    let mut h = openssl::sha::Sha256::new();
    h.update(&point[1..]);
    h.update(q.qe_auth_data());
    b[qe.start + 320..qe.start + 352].copy_from_slice(&h.finish());
    let qe_sig = sign_raw(&pck.key.ec_key().unwrap(), &b[qe.clone()]);
    b[qe.end..qe.end + 64].copy_from_slice(&qe_sig);
    // The PCK chain replaces the real one (u32 length before it, and the signature data length).
    let pem_start = q.pck_chain_pem().as_ptr() as usize - q.bytes().as_ptr() as usize;
    let chain = pem(&[&pck.cert, &pck_ca.cert, &root.cert]);
    b.truncate(pem_start - 4);
    b.extend((chain.len() as u32).to_le_bytes());
    b.extend(chain.as_bytes());
    let sig_len = (b.len() - signed.end - 4) as u32;
    b[signed.end..signed.end + 4].copy_from_slice(&sig_len.to_le_bytes());
    let quote_sig = sign_raw(&att, &b[signed.clone()]);
    b[sig_at..sig_at + 64].copy_from_slice(&quote_sig);

    let real: Value = serde_json::from_slice(&collateral).unwrap();
    let text = |k: &str| real[k].as_str().unwrap().to_string();
    let signing_key = signing.key.ec_key().unwrap();
    let signing_chain = pem(&[&signing.cert, &root.cert]);
    let collateral = json!({
        "pck_crl_issuer_chain": pem(&[&pck_ca.cert, &root.cert]),
        "root_ca_crl": hex::encode(crl(&root)),
        "pck_crl": hex::encode(crl(&pck_ca)),
        "tcb_info_issuer_chain": signing_chain,
        "tcb_info": text("tcb_info"),
        "tcb_info_signature": hex::encode(sign_raw(&signing_key, text("tcb_info").as_bytes())),
        "qe_identity_issuer_chain": signing_chain,
        "qe_identity": text("qe_identity"),
        "qe_identity_signature": hex::encode(sign_raw(&signing_key, text("qe_identity").as_bytes())),
    });
    (b, collateral.to_string().into_bytes(), root.cert)
}

/// A runtime data document holding a fresh RSA wrapping key, as an SKR client sends it.
fn runtime_with_wrapping_key() -> Vec<u8> {
    use josekit::jwk::KeyPair as _;
    let pair = josekit::jwk::alg::rsa::RsaKeyPair::generate(2048).unwrap();
    let mut public = pair.to_jwk_public_key();
    public.set_key_operations(vec!["encrypt"]);
    json!({"keys": [Value::Object(public.as_ref().clone())]})
        .to_string()
        .into_bytes()
}

#[tokio::test]
#[cfg_attr(
    coffer_no_vectors,
    ignore = "needs the test vectors (set COFFER_VECTORS)"
)]
async fn release_policy_on_sgx_mrenclave_grants_and_denies() {
    let dir = coffer_testkit::vectors();
    let runtime = runtime_with_wrapping_key();
    let (quote, collateral, root) = synthetic_sgx(&dir, &runtime);
    let s = dcap_server(
        SGX_NOW,
        &[("test-pki.json", &collateral)],
        None,
        Some(&root),
    );
    let (st, v) = s.attest("SgxEnclave", &quote, Some(&runtime)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let c = claims(&token);
    assert_eq!(c["x-ms-sgx-mrenclave"], MRENCLAVE);
    assert_eq!(c["x-ms-sgx-ehd"], b64u(&runtime));
    assert!(c["x-ms-runtime"]["keys"].is_array(), "{c}");

    let policy = |mrenclave: &str| {
        json!({"version": "1.0.0", "anyOf": [{"authority": s.issuer,
            "allOf": [{"claim": "x-ms-sgx-mrenclave", "equals": mrenclave},
                      {"claim": "x-ms-attestation-type", "equals": "sgx"}]}]})
    };
    for (name, mrenclave) in [
        ("this-enclave", MRENCLAVE.to_string()),
        ("other-enclave", "00".repeat(32)),
    ] {
        let (st, v) = s
            .call(
                Method::POST,
                "/keys",
                json!({"name": name, "release_policy": policy(&mrenclave)}),
                Some(&s.admin),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
    let release = |name: &str| {
        let uri = format!("/keys/{name}/release");
        let body = json!({"target": &token, "nonce": "r-1"});
        let s = &s;
        async move { s.call(Method::POST, &uri, body, None).await }
    };
    let (st, v) = release("this-enclave").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(
        v["value"]
            .as_str()
            .is_some_and(|jws| jws.split('.').count() == 3),
        "{v}"
    );
    let (st, v) = release("other-enclave").await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "policy"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-ms-sgx-mrenclave"),
        "{v}"
    );
}

#[tokio::test]
#[cfg_attr(
    coffer_no_vectors,
    ignore = "needs the test vectors (set COFFER_VECTORS)"
)]
async fn synthetic_quote_with_other_runtime_data_is_not_bound() {
    let dir = coffer_testkit::vectors();
    let runtime = runtime_with_wrapping_key();
    let (quote, collateral, root) = synthetic_sgx(&dir, &runtime);
    let s = dcap_server(SGX_NOW, &[("test-pki.json", &collateral)], None, None);
    // Without the test root, the chain ends at a root that is not pinned.
    let (_, v) = s.attest("SgxEnclave", &quote, Some(&runtime)).await;
    assert_eq!(code(&v), "unknown-root", "{v}");
    let s = dcap_server(
        SGX_NOW,
        &[("test-pki.json", &collateral)],
        None,
        Some(&root),
    );
    let (_, v) = s
        .attest("SgxEnclave", &quote, Some(&runtime_with_wrapping_key()))
        .await;
    assert_eq!(code(&v), "runtime-data-binding", "{v}");
}
