//! Load generator: N concurrent clients, each looping attest (emulated evidence) + release, for a
//! fixed duration against a running `coffer serve --allow-emulated`. Prints throughput and
//! p50/p99 latency of the attest+release pair.
//!
//! usage: load URL COFFER_HOME CLIENTS SECONDS
//! (COFFER_HOME: the server's home, for the emulator state and the admin token.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

fn b64u(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(b)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, home, clients, secs) = (
        args[1].clone(),
        std::path::PathBuf::from(&args[2]),
        args[3].parse::<usize>().unwrap(),
        args[4].parse::<u64>().unwrap(),
    );
    let admin = std::fs::read_to_string(home.join("serve/admin-token"))
        .unwrap()
        .trim()
        .to_string();
    // One ephemeral key and report, as a group would hold them.
    let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
    let pem = openssl::pkey::PKey::from_rsa(rsa)
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap();
    let pair = josekit::jwk::alg::rsa::RsaKeyPair::from_pem(&pem).unwrap();
    let mut public = josekit::jwk::KeyPair::to_jwk_public_key(&pair);
    public.set_key_operations(vec!["encrypt"]);
    let runtime = json!({"keys": [Value::Object(public.as_ref().clone())]}).to_string();
    let mut report_data = [0u8; 64];
    report_data[..32].copy_from_slice(&openssl::sha::sha256(runtime.as_bytes()));
    let host_data = [0x5a; 32];
    let sp = coffer_snp_emu::EmulatedSp::open_or_create(&home).unwrap();
    let made = sp
        .report(&coffer_snp_emu::ReportRequest {
            report_data,
            host_data,
            ..Default::default()
        })
        .unwrap();
    let evidence = json!({"SnpReport": b64u(made.report.bytes()), "VcekCertChain": b64u(made.chain_pem.as_bytes())});
    let body = json!({"report": b64u(evidence.to_string().as_bytes()), "runtimeData": {"data": b64u(runtime.as_bytes()), "dataType": "JSON"}});
    let client = reqwest::Client::new();
    let issuer: Value = client
        .get(format!("{url}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let policy = json!({"version": "1.0.0", "anyOf": [{"authority": issuer["issuer"], "allOf": [{"claim": "x-ms-sevsnpvm-hostdata", "equals": hex::encode(host_data)}]}]});
    let name = format!("load-{}", std::process::id());
    let r = client
        .post(format!("{url}/keys"))
        .bearer_auth(&admin)
        .json(&json!({"name": name, "release_policy": policy}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Bodies are serialised once: the figures are the server's, not the generator's JSON.
    let body = axum::body::Bytes::from(body.to_string());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, body, name) = (client.clone(), url.clone(), body.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let tok: Token = client
                    .post(format!("{url}/attest/SevSnpVM"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let attested = t.elapsed();
                let r = client
                    .post(format!("{url}/keys/{name}/release"))
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"target":"{}"}}"#, tok.token))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let released: Released = r.json().await.unwrap();
                // A JWS (signed by the broker) over the JWE.
                assert_eq!(released.value.split('.').count(), 3, "a JWS");
                lat.push((t.elapsed(), attested));
            }
            lat
        }));
    }
    let started = Instant::now();
    let mut pairs = Vec::new();
    for t in tasks {
        pairs.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (mut all, mut attest): (Vec<Duration>, Vec<Duration>) = pairs.into_iter().unzip();
    all.sort();
    attest.sort();
    let pct = |v: &[Duration], p: f64| {
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
    };
    println!(
        "{} attest+release pairs in {:.1}s: {:.0}/s, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} clients; attest alone p50 {:.1} p99 {:.1} ms)",
        all.len(),
        elapsed,
        all.len() as f64 / elapsed,
        pct(&all, 0.50),
        pct(&all, 0.90),
        pct(&all, 0.99),
        pct(&all, 1.0),
        clients,
        pct(&attest, 0.50),
        pct(&attest, 0.99),
    );
}

#[derive(serde::Deserialize)]
struct Token {
    token: String,
}

#[derive(serde::Deserialize)]
struct Released {
    value: String,
}
