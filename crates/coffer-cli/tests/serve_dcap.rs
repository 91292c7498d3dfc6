//! `coffer serve --dcap-collateral` as a real process: the SGX vector attested at the time its
//! README gives (fixed with `--now`), a TDX quote without collateral refused as such, the routes
//! without collateral, and a collateral directory that does not exist.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use base64::Engine as _;
use coffer_testkit::Need;
use serde_json::{json, Value};

mod common;
use common::{http, serve};

/// The SGX vector's verification time: its collateral window's end - 1 s (unix 1752919277).
const SGX_NOW: &str = "2025-07-19T10:01:17Z";

fn b64u(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = http().post(url).json(body).send().unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        sgx_vector_attests_through_coffer_serve: Need::Vectors;
        dcap_routes_without_collateral_answer_not_configured;
        missing_collateral_directory_stops_the_start;
    ])
}

fn sgx_vector_attests_through_coffer_serve() {
    let dir = coffer_testkit::vectors();
    let home = tempfile::tempdir().unwrap();
    let collateral = home.path().join("collateral");
    // A PCS-style subdirectory would do as well; here the dcap-qvl JSON file.
    std::fs::create_dir_all(&collateral).unwrap();
    std::fs::write(
        collateral.join("sgx-00a067110000.json"),
        coffer_testkit::read(&dir, "intel-dcap/dcap-qvl-sgx-v3/collateral.json"),
    )
    .unwrap();
    let s = serve(
        home.path(),
        &[
            "--dcap-collateral",
            collateral.to_str().unwrap(),
            "--now",
            SGX_NOW,
        ],
    );
    let quote = coffer_testkit::read(&dir, "intel-dcap/dcap-qvl-sgx-v3/quote.bin");
    let (st, v) = post(
        &format!("{}/attest/SgxEnclave?api-version=2022-08-01", s.url),
        &json!({"quote": b64u(&quote), "nonce": "abc"}),
    );
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap();
    let c: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(c["x-ms-attestation-type"], "sgx");
    assert_eq!(
        c["x-ms-sgx-mrenclave"],
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    );
    assert_eq!(
        c["x-coffer-tcb-status"],
        "ConfigurationAndSWHardeningNeeded"
    );
    assert_eq!(c["nonce"], "abc");

    let tdx = coffer_testkit::read(&dir, "intel-dcap/signature-only/trustee_tdx_v4_quote.bin");
    let (st, v) = post(
        &format!("{}/attest/TdxVm", s.url),
        &json!({"quote": b64u(&tdx)}),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("no-collateral")),
        "{v}"
    );
}

fn dcap_routes_without_collateral_answer_not_configured() {
    let home = tempfile::tempdir().unwrap();
    let s = serve(home.path(), &[]);
    let (st, v) = post(
        &format!("{}/attest/TdxVm", s.url),
        &json!({"quote": b64u(&[4u8; 1000])}),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (501, Some("not-configured")),
        "{v}"
    );
}

fn missing_collateral_directory_stops_the_start() {
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("no-such-dir");
    let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["serve", "--listen", "127.0.0.1:0", "--dcap-collateral"])
        .arg(&missing)
        .env("COFFER_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--dcap-collateral") && stderr.contains("no-such-dir"),
        "{stderr}"
    );
}
