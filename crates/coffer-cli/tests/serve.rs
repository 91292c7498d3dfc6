//! `coffer serve` as a real process: attestation of real and emulated evidence, external
//! authorities, release decisions, durability.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use coffer_testkit::Need;
use serde_json::{json, Value};

mod common;
use common::{admin, http, serve, Server};

fn b64u(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(b)
}

fn claims(token: &str) -> Value {
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

fn attest_body(report: &[u8], chain: &[u8], runtime: &[u8]) -> Value {
    let evidence = json!({"SnpReport": b64u(report), "VcekCertChain": b64u(chain)});
    json!({"report": b64u(evidence.to_string().as_bytes()), "runtimeData": {"data": b64u(runtime), "dataType": "JSON"}, "nonce": 42})
}

fn create_key(s: &Server, home: &Path, name: &str, policy: Value) -> reqwest::blocking::Response {
    http()
        .post(format!("{}/keys", s.url))
        .bearer_auth(admin(home))
        .json(&json!({"name": name, "release_policy": policy}))
        .send()
        .unwrap()
}

fn release(s: &Server, name: &str, token: &str) -> (u16, Value) {
    let r = http()
        .post(format!("{}/keys/{name}/release", s.url))
        .json(&json!({"target": token}))
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

/// The payload of a signed release response, unchecked.
fn release_payload(v: &Value) -> Value {
    let jws = v["value"].as_str().unwrap();
    let part = jws.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// The JWE of a release response, once its signature (by the server's broker key) and its
/// binding to the request (key name, token jti, wrapping key) are checked as the TEE checks them.
fn released_jwe(
    s: &Server,
    name: &str,
    token: &str,
    wrapping: &josekit::jwk::Jwk,
    v: &Value,
) -> String {
    let broker: Value = http()
        .get(format!("{}/broker-key", s.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let wrapping_key = coffer_release::thumbprint(wrapping.as_ref()).unwrap();
    coffer_release::verify(
        v["value"].as_str().unwrap(),
        broker["thumbprint"].as_str().unwrap(),
        &coffer_release::Expected {
            key: name,
            nonce: "",
            jti: claims["jti"].as_str().unwrap_or_default(),
            wrapping_key: &wrapping_key,
        },
    )
    .unwrap()
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        real_aci_report_gets_a_token_with_azure_claims: Need::Vectors;
        azure_token_from_a_pinned_external_authority_drives_release: Need::Vectors;
        emulated_group_gets_its_key_and_others_do_not;
        acknowledged_keys_survive_kill_9;
        python_pyjwt_and_jwcrypto_interoperate: Need::Python(&["jwt", "jwcrypto"]);
        debug_guest_is_refused_unless_allowed;
        vmpl_above_0_is_refused_unless_allowed;
        empty_admin_token_file_is_refused_at_start;
        start_without_reference_measurements_warns;
    ])
}

fn real_aci_report_gets_a_token_with_azure_claims() {
    let dir = coffer_testkit::vectors();
    let home = tempfile::tempdir().unwrap();
    let s = serve(home.path(), &["--now", "2024-06-01T00:00:00Z"]);
    let aci = "sev-snp/aci-milan-v2";
    let report = coffer_testkit::read(&dir, &format!("{aci}/report.bin"));
    let thim = coffer_testkit::read(&dir, &format!("{aci}/thim_certificate_response.json"));
    let runtime = coffer_testkit::read(&dir, &format!("{aci}/runtime_data.json"));
    let r = http()
        .post(format!("{}/attest/SevSnpVM?api-version=2020-10-01", s.url))
        .json(&attest_body(&report, &thim, &runtime))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<Value>().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let c = claims(&token);
    assert_eq!(
        c["x-ms-sevsnpvm-hostdata"],
        "cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c"
    );
    assert_eq!(c["x-ms-sevsnpvm-launchmeasurement"], "51068107cdc7ee3d89c7821b05bca6147eb77b2005ae759050fc049b65a1b0beabc65a9d857acecf23225f5ec76849f5");
    assert_eq!(
        c["x-ms-sevsnpvm-reportdata"],
        format!(
            "ee986ff2bd7e3f22e29f640918627816cf8e23b9d9c312767168eab68c861c71{}",
            "0".repeat(64)
        )
    );
    assert_eq!(c["x-ms-sevsnpvm-guestsvn"], 2);
    assert_eq!(c["x-ms-sevsnpvm-vmpl"], 0);
    assert_eq!(c["x-ms-sevsnpvm-is-debuggable"], false);
    assert_eq!(c["x-ms-sevsnpvm-bootloader-svn"], 3);
    assert_eq!(c["x-ms-sevsnpvm-microcode-svn"], 115);
    assert_eq!(
        c["x-ms-sevsnpvm-familyId"],
        "01000000000000000000000000000000"
    );
    assert_eq!(c["x-ms-attestation-type"], "sevsnpvm");
    assert_eq!(c["x-coffer-tee"], "sevsnp");
    assert_eq!(
        c["x-ms-runtime"],
        serde_json::from_slice::<Value>(&runtime).unwrap()
    );
    assert_eq!(c["nonce"], "42");
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        8 * 3600
    );
    // The token verifies against the published JWKS.
    let jwks: Value = http()
        .get(format!("{}/certs", s.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let oidc: Value = http()
        .get(format!("{}/.well-known/openid-configuration", s.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(oidc["jwks_uri"], format!("{}/certs", s.url));
    let trust = coffer_kbs::Trust::new(vec![
        coffer_kbs::Authority::from_jwks(&s.url, &jwks).unwrap()
    ]);
    trust
        .verify(&token, c["iat"].as_u64().unwrap() + 1)
        .unwrap();
    // Runtime data that REPORT_DATA does not bind.
    let r = http()
        .post(format!("{}/attest/SevSnpVM", s.url))
        .json(&attest_body(&report, &thim, b"{\"other\":1}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "runtime-data-binding"
    );
    // Verification time outside the VCEK's validity.
    drop(s);
    let s = serve(home.path(), &["--now", "2031-01-01T00:00:00Z"]);
    let r = http()
        .post(format!("{}/attest/SevSnpVM", s.url))
        .json(&attest_body(&report, &thim, &runtime))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "expired");
}

fn azure_token_from_a_pinned_external_authority_drives_release() {
    let dir = coffer_testkit::vectors();
    let home = tempfile::tempdir().unwrap();
    let jwks = dir.join("maa/azurevm-sharedeus2/jwks_partial.json");
    let iss = "https://sharedeus2.eus2.attest.azure.net";
    let trust = format!("{iss}={}", jwks.display());
    let token =
        String::from_utf8(coffer_testkit::read(&dir, "maa/azurevm-sharedeus2/jwt.txt")).unwrap();
    let s = serve(
        home.path(),
        &["--trust-issuer", &trust, "--now", "2025-12-15T20:00:00Z"],
    );
    let m = "6a063be9dd79f6371c842e480f8dc3b5c725961344e57130e88c5adf49e8f7f6c79b75a5eb77fc769959f4aeb2f9401e";
    let policy = |v: &str| {
        json!({"version": "1.0.0", "anyOf": [{"authority": iss, "allOf": [
        {"claim": "x-ms-isolation-tee.x-ms-sevsnpvm-launchmeasurement", "equals": v},
        {"claim": "x-ms-isolation-tee.x-ms-sevsnpvm-is-debuggable", "equals": "false"}]}]})
    };
    assert_eq!(create_key(&s, home.path(), "good", policy(m)).status(), 201);
    assert_eq!(
        create_key(&s, home.path(), "bad", policy(&"0".repeat(96))).status(),
        201
    );
    let (st, v) = release(&s, "good", &token);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["value"].as_str().unwrap().split('.').count(), 3, "a JWS");
    let payload = release_payload(&v);
    assert_eq!(payload["key"], "good");
    assert_eq!(
        payload["value"].as_str().unwrap().split('.').count(),
        5,
        "a JWE inside"
    );
    let (st, v) = release(&s, "bad", &token);
    assert_eq!(st, 403);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-ms-sevsnpvm-launchmeasurement"),
        "{v}"
    );
    // Tampered payload, alg none, unknown key: refused.
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload = claims(&token);
    payload["x-ms-isolation-tee"]["x-ms-sevsnpvm-launchmeasurement"] = json!("0".repeat(96));
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string()),
        parts[2]
    );
    let (st, v) = release(&s, "bad", &forged);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("token")),
        "{v}"
    );
    let none_header =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let (st, v) = release(&s, "good", &format!("{none_header}.{}.", parts[1]));
    assert_eq!(st, 403);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("'none'"),
        "{v}"
    );
    // After the token's exp.
    drop(s);
    let s = serve(
        home.path(),
        &["--trust-issuer", &trust, "--now", "2025-12-16T04:00:00Z"],
    );
    let (st, v) = release(&s, "good", &token);
    assert_eq!(st, 403);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
    // Without trusting the issuer.
    drop(s);
    let s = serve(home.path(), &["--now", "2025-12-15T20:00:00Z"]);
    let (st, v) = release(&s, "good", &token);
    assert_eq!(st, 403);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a trusted authority"),
        "{v}"
    );
    // The audit log kept every decision, across restarts.
    let audit: Value = http()
        .get(format!("{}/audit", s.url))
        .bearer_auth(admin(home.path()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let releases: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "release")
        .collect();
    assert_eq!(releases.len(), 6);
    assert_eq!(releases.iter().filter(|e| e["allowed"] == true).count(), 1);
    // Admin API needs the token.
    assert_eq!(
        http()
            .get(format!("{}/keys", s.url))
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http()
            .get(format!("{}/keys", s.url))
            .bearer_auth("wrong")
            .send()
            .unwrap()
            .status(),
        401
    );
}

/// An ephemeral RSA key as the SKR sidecar makes it: runtime data `{"keys":[public JWK]}`.
pub fn ephemeral() -> (josekit::jwk::Jwk, Vec<u8>) {
    use josekit::jwk::KeyPair as _;
    let pair = josekit::jwk::alg::rsa::RsaKeyPair::generate(2048).unwrap();
    let mut public = pair.to_jwk_public_key();
    public.set_key_operations(vec!["encrypt"]);
    let runtime = json!({"keys": [Value::Object(public.as_ref().clone())]})
        .to_string()
        .into_bytes();
    (pair.to_jwk_private_key(), runtime)
}

fn emulated_token(s: &Server, home: &Path, host_data: &str, runtime: &[u8]) -> (u16, Value) {
    let rd = hex::encode(openssl::sha::sha256(runtime));
    let (r, c) = (home.join("r.bin"), home.join("c.pem"));
    let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args([
            "snp",
            "emulate",
            "--report-data",
            &rd,
            "--host-data",
            host_data,
            "--out",
            r.to_str().unwrap(),
            "--certs-out",
            c.to_str().unwrap(),
        ])
        .env("COFFER_HOME", home)
        .output()
        .unwrap();
    assert!(out.status.success());
    let body = attest_body(
        &std::fs::read(&r).unwrap(),
        &std::fs::read(&c).unwrap(),
        runtime,
    );
    let resp = http()
        .post(format!("{}/attest/SevSnpVM", s.url))
        .json(&body)
        .send()
        .unwrap();
    (resp.status().as_u16(), resp.json().unwrap())
}

fn emulated_group_gets_its_key_and_others_do_not() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let iss = "http://coffer.test";
    let s = serve(h, &["--allow-emulated", "--issuer", iss]);
    let good = "ab".repeat(32);
    let (private, runtime) = ephemeral();
    let (st, v) = emulated_token(&s, h, &good, &runtime);
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    assert_eq!(claims(&token)["x-coffer-tee"], "emulated-snp");
    let policy = |hd: &str| {
        json!({"version": "1.0.0", "anyOf": [{"authority": iss, "allOf": [
        {"claim": "x-ms-sevsnpvm-hostdata", "equals": hd}, {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"}]}]})
    };
    assert_eq!(create_key(&s, h, "k1", policy(&good)).status(), 201);
    assert_eq!(
        create_key(&s, h, "k2", policy(&"cd".repeat(32))).status(),
        201
    );
    // Malformed policies are refused at upload with the reason.
    let r = create_key(
        &s,
        h,
        "k3",
        json!({"version": "1.0.0", "anyOf": [{"authority": "x", "allOf": [{"claim": "a", "greater": 1}]}]}),
    );
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("greater"));
    let (st, v) = release(&s, "k1", &token);
    assert_eq!(st, 200, "{v}");
    let decrypter = josekit::jwe::RSA_OAEP_256
        .decrypter_from_jwk(&private)
        .unwrap();
    let jwe = released_jwe(&s, "k1", &token, &private, &v);
    let (plain, header) = josekit::jwe::deserialize_compact(&jwe, &decrypter).unwrap();
    assert_eq!(header.content_encryption(), Some("A256GCM"));
    let jwk: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(jwk["kty"], "oct");
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk["k"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    let (st, v) = release(&s, "k2", &token);
    assert_eq!(st, 403);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-ms-sevsnpvm-hostdata"),
        "{v}"
    );
    assert_eq!(release(&s, "missing", &token).0, 404);
    // A token signed by an untrusted key with this server's issuer.
    let pem = coffer_attest::TokenSigner::generate_pem().unwrap();
    let rogue = coffer_attest::TokenSigner::from_pem(&pem, iss, 3600).unwrap();
    let forged = rogue
        .sign(
            claims(&token).as_object().unwrap().clone(),
            coffer_snp::time::now(),
        )
        .unwrap();
    let (st, v) = release(&s, "k1", &forged);
    assert_eq!(st, 403, "{v}");
    // Restart without --allow-emulated: keys survive, emulated evidence and tokens are refused.
    drop(s);
    let s = serve(h, &["--issuer", iss]);
    let listed: Value = http()
        .get(format!("{}/keys", s.url))
        .bearer_auth(admin(h))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2);
    assert!(
        !listed.to_string().contains("\"k\""),
        "the admin API never returns key material"
    );
    let (st, v) = emulated_token(&s, h, &good, &runtime);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("unknown-root")),
        "{v}"
    );
    // The token is still valid and signed by this server's key, but attests emulated evidence.
    let (st, v) = release(&s, "k1", &token);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("emulated")),
        "{v}"
    );
}

fn acknowledged_keys_survive_kill_9() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let mut s = serve(h, &[]);
    let url = s.url.clone();
    let tok = admin(h);
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let a2 = acked.clone();
    let writer = std::thread::spawn(move || {
        let c = http();
        for i in 0..10_000 {
            let name = format!("burst-{i}");
            match c
                .post(format!("{url}/keys"))
                .bearer_auth(&tok)
                .json(&json!({"name": name}))
                .send()
            {
                Ok(r) if r.status() == 201 => a2.lock().unwrap().push(name),
                _ => break,
            }
        }
    });
    while acked.lock().unwrap().len() < 50 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SIGKILL in the middle of the burst.
    s.child.kill().unwrap();
    let _ = s.child.wait();
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    let s = serve(h, &[]);
    let listed: Value = http()
        .get(format!("{}/keys", s.url))
        .bearer_auth(admin(h))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let names: std::collections::BTreeSet<String> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_string())
        .collect();
    for n in &acked {
        assert!(names.contains(n), "acknowledged key {n} lost");
    }
    assert!(names.len() >= acked.len());
}

fn python_pyjwt_and_jwcrypto_interoperate() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let s = serve(h, &["--allow-emulated"]);
    let hd = "ef".repeat(32);
    let (private, runtime) = ephemeral();
    let (st, v) = emulated_token(&s, h, &hd, &runtime);
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let policy = json!({"version": "1.0.0", "anyOf": [{"authority": s.url, "allOf": [{"claim": "x-ms-sevsnpvm-hostdata", "equals": hd}]}]});
    assert_eq!(create_key(&s, h, "py", policy).status(), 201);
    let (st, v) = release(&s, "py", &token);
    assert_eq!(st, 200, "{v}");
    let jwe = released_jwe(&s, "py", &token, &private, &v);
    let files: Vec<std::path::PathBuf> = ["token", "response", "key.json"]
        .iter()
        .map(|f| h.join(f))
        .collect();
    std::fs::write(&files[0], &token).unwrap();
    std::fs::write(&files[1], v["value"].as_str().unwrap()).unwrap();
    std::fs::write(
        &files[2],
        Value::Object(private.as_ref().clone()).to_string(),
    )
    .unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/verify_and_unwrap.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&s.url)
        .arg(&s.url)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(py["claims_hostdata"], hd);
    // The same key material as josekit decrypts.
    let decrypter = josekit::jwe::RSA_OAEP_256
        .decrypter_from_jwk(&private)
        .unwrap();
    let (plain, _) = josekit::jwe::deserialize_compact(&jwe, &decrypter).unwrap();
    let ours: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(py["key"]["k"], ours["k"]);
    assert_eq!(py["key"]["kty"], "oct");
}

/// An emulated report with these extra `coffer snp emulate` arguments, attested by `s`.
fn emulated_attest(s: &Server, home: &Path, extra: &[&str]) -> (u16, Value) {
    let (r, c) = (home.join("r.bin"), home.join("c.pem"));
    let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["snp", "emulate", "--out", r.to_str().unwrap()])
        .args([
            "--report-data",
            &"00".repeat(64),
            "--host-data",
            &"00".repeat(32),
        ])
        .args(["--certs-out", c.to_str().unwrap()])
        .args(extra)
        .env("COFFER_HOME", home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let evidence = json!({"SnpReport": b64u(&std::fs::read(&r).unwrap()), "VcekCertChain": b64u(&std::fs::read(&c).unwrap())});
    let resp = http()
        .post(format!("{}/attest/SevSnpVM", s.url))
        .json(&json!({"report": b64u(evidence.to_string().as_bytes())}))
        .send()
        .unwrap();
    (resp.status().as_u16(), resp.json().unwrap())
}

fn debug_guest_is_refused_unless_allowed() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // POLICY.DEBUG is bit 19.
    let debug = ["--policy", "0xb0000"];
    let s = serve(h, &["--allow-emulated"]);
    let (st, v) = emulated_attest(&s, h, &debug);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("debug-guest")),
        "{v}"
    );
    drop(s);
    let s = serve(h, &["--allow-emulated", "--allow-debug"]);
    let (st, v) = emulated_attest(&s, h, &debug);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        claims(v["token"].as_str().unwrap())["x-ms-sevsnpvm-is-debuggable"],
        true
    );
}

fn vmpl_above_0_is_refused_unless_allowed() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let s = serve(h, &["--allow-emulated"]);
    let (st, v) = emulated_attest(&s, h, &["--vmpl", "1"]);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("vmpl")),
        "{v}"
    );
    drop(s);
    let s = serve(h, &["--allow-emulated", "--allow-vmpl", "1"]);
    let (st, v) = emulated_attest(&s, h, &["--vmpl", "1"]);
    assert_eq!(st, 200, "{v}");
    let (st, v) = emulated_attest(&s, h, &["--vmpl", "2"]);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("vmpl")),
        "{v}"
    );
}

/// `coffer serve` with `args` until it exits (at most 30 s): (success, stderr).
fn serve_until_exit(home: &Path, args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("COFFER_HOME", home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "coffer serve did not exit: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn empty_admin_token_file_is_refused_at_start() {
    let home = tempfile::tempdir().unwrap();
    let token = home.path().join("serve/admin-token");
    std::fs::create_dir_all(token.parent().unwrap()).unwrap();
    std::fs::write(&token, "\n").unwrap();
    let (ok, stderr) = serve_until_exit(home.path(), &[]);
    assert!(!ok);
    assert!(
        stderr.contains(&token.display().to_string()) && stderr.contains("empty"),
        "{stderr}"
    );
}

/// Without reference measurements the operator is told, at start, that any launch measurement
/// is accepted.
fn start_without_reference_measurements_warns() {
    use std::io::{BufRead, BufReader};
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("COFFER_HOME", home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let warned = loop {
        match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(line) if line.contains("WARNING") && line.contains("any launch measurement") => {
                break true
            }
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no warning in: {seen:#?}");
}
