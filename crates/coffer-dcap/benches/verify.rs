//! Verifications per second of the real SGX quote with its collateral: (a) cold (PCK chain and
//! collateral verified anew), (b) cached (PCK chain, collateral and the platform's QE report
//! verified once; per quote: the quote signature, QE binding, revocation, windows and TCB
//! levels), and the crypto backend's raw ECDSA P-256 verification, in one run. A fresh quote needs
//! two ECDSA checks (0.5x raw at best); with the QE report remembered per PCK certificate, a
//! platform's later quotes need one. The goal is 0.45x. A closing line prints the measured ratio.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;

use coffer_dcap::{Collateral, Quote, Roots, Verifier, VerifyOptions};

const AT: u64 = 1752919277;

fn bench(c: &mut Criterion) {
    let Some(dir) = coffer_testkit::vectors_dir() else {
        eprintln!("bench dcap verify: skipped, no test vectors (set COFFER_VECTORS)");
        return;
    };
    let quote_bytes = coffer_testkit::read(&dir, "intel-dcap/dcap-qvl-sgx-v3/quote.bin");
    let collateral = Collateral::from_qvl_json(&coffer_testkit::read(
        &dir,
        "intel-dcap/dcap-qvl-sgx-v3/collateral.json",
    ))
    .unwrap();
    let opts = VerifyOptions {
        at: AT,
        check_crl: true,
    };
    let roots = Roots::intel().unwrap();

    let mut g = c.benchmark_group("dcap_verify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cold_chain_and_collateral", |b| {
        b.iter(|| {
            let v = Verifier::new(roots.clone());
            let q = Quote::from_bytes(quote_bytes.clone()).unwrap();
            v.verify(&q, &collateral, &opts).unwrap()
        })
    });
    let warm = Verifier::new(roots.clone());
    let cached = || {
        let q = Quote::from_bytes(quote_bytes.clone()).unwrap();
        warm.verify(&q, &collateral, &opts).unwrap()
    };
    g.bench_function("cached_collateral", |b| b.iter(cached));

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
            cached();
        }));
        best_raw = best_raw.max(rate(&raw));
    }
    println!(
        "dcap: {best_q:.0} cached quote verifications/s, {best_raw:.0} raw P-256 verifications/s: {:.3}x raw (goal >= 0.45x)",
        best_q / best_raw
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
