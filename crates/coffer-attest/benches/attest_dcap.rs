//! `attest/SgxEnclave`'s work per request, without HTTP and without signing the token: base64url
//! and quote decoding, the collateral set's lookup by TEE and FMSPC, verification with cached
//! PCK chain and collateral, claims and appraisal (`AttestationService::dcap_claims`), against the
//! crypto backend's (OpenSSL's) raw ECDSA P-256 verification, in one run. The goal is 0.45x raw.
//! A closing line prints the measured ratio, and the cost of signing the token (RS256) apart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use coffer_attest::{AttestationService, CollateralSet, QuoteRequest, TokenSigner};
use coffer_dcap::{Collateral, Quote, Tee};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;

/// The SGX vector's verification time (its README).
const AT: u64 = 1752919277;

fn bench(c: &mut Criterion) {
    let Some(dir) = coffer_testkit::vectors_dir() else {
        eprintln!("bench attest dcap: skipped, no test vectors (set COFFER_VECTORS)");
        return;
    };
    let quote_bytes = coffer_testkit::read(&dir, "intel-dcap/dcap-qvl-sgx-v3/quote.bin");
    let collateral = Collateral::from_qvl_json(&coffer_testkit::read(
        &dir,
        "intel-dcap/dcap-qvl-sgx-v3/collateral.json",
    ))
    .unwrap();
    let mut set = CollateralSet::new();
    set.insert("sgx.json", collateral).unwrap();
    let signer =
        TokenSigner::from_pem(&TokenSigner::generate_pem().unwrap(), "http://bench", 3600).unwrap();
    let snp = coffer_snp::Verifier::new(coffer_snp::Roots::amd().unwrap(), false);
    let service = AttestationService::new(snp, None, signer)
        .with_dcap(coffer_dcap::Verifier::intel().unwrap(), Arc::new(set));
    let body = serde_json::json!({
        "quote": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&quote_bytes),
        "nonce": "bench",
    })
    .to_string();
    let attest = || {
        let req: QuoteRequest = serde_json::from_str(&body).unwrap();
        service.dcap_claims(Tee::Sgx, &req, AT).unwrap()
    };
    attest();

    let q = Quote::from_bytes(quote_bytes.clone()).unwrap();
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let mut sec1 = vec![4u8];
    sec1.extend(q.attestation_key);
    let mut ctx = openssl::bn::BigNumContext::new().unwrap();
    let point = EcPoint::from_bytes(&group, &sec1, &mut ctx).unwrap();
    let key = EcKey::from_public_key(&group, &point).unwrap();
    let digest = openssl::sha::sha256(q.signed_bytes());
    let raw = || {
        let sig = EcdsaSig::from_private_components(
            BigNum::from_slice(&q.signature[..32]).unwrap(),
            BigNum::from_slice(&q.signature[32..]).unwrap(),
        )
        .unwrap();
        assert!(sig.verify(&digest, &key).unwrap());
    };

    let mut g = c.benchmark_group("attest_dcap");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sgx_quote_cached_collateral", |b| b.iter(attest));
    g.bench_function("raw_p256_ecdsa_verify", |b| b.iter(raw));
    g.finish();

    // The ratio, measured in this run (interleaved rounds, best of each).
    let rate = |f: &dyn Fn()| {
        let n = 2000;
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        f64::from(n) / t.elapsed().as_secs_f64()
    };
    let (mut best_q, mut best_raw) = (0f64, 0f64);
    for _ in 0..5 {
        best_q = best_q.max(rate(&|| {
            attest();
        }));
        best_raw = best_raw.max(rate(&raw));
    }
    let claims = attest();
    let t = Instant::now();
    for _ in 0..200 {
        service.signer().sign(claims.clone(), AT).unwrap();
    }
    let sign_rate = 200.0 / t.elapsed().as_secs_f64();
    println!(
        "attest/SgxEnclave: {best_q:.0} quote verifications/s (cached collateral, no token signing), \
         {best_raw:.0} raw P-256 verifications/s: {:.3}x raw (goal >= 0.45x); RS256 token signing \
         alone: {sign_rate:.0}/s",
        best_q / best_raw
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
