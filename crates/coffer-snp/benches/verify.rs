//! Verifications per second: (a) cold (chain + report, OpenSSL's ECDSA), (b) cached chain (the
//! report signature through the VCEK's comb table), and the crypto backend's raw P-384 ECDSA
//! verification, in one run. The figure of merit is (b)/(raw).
//!
//! Uses the real trustee Milan report from the shared vectors, at a fixed verification time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;

use coffer_snp::{Endorsements, Report, Roots, Verifier, VerifyOptions};

fn bench(c: &mut Criterion) {
    let Some(dir) = coffer_testkit::vectors_dir() else {
        eprintln!("bench verify: skipped, no test vectors (set COFFER_VECTORS)");
        return;
    };
    let report_bytes = coffer_testkit::read(&dir, "sev-snp/trustee-milan-v2/report.bin");
    let vcek = coffer_testkit::read(&dir, "sev-snp/trustee-milan-v2/vcek.der");
    let endorsements = Endorsements::from_vek(&vcek, "vcek").expect("vcek");
    let opts = VerifyOptions {
        at: coffer_snp::time::parse_rfc3339("2024-06-01T00:00:00Z").expect("time"),
        product: None,
    };
    let roots = Roots::amd().expect("roots");

    let mut g = c.benchmark_group("snp_verify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cold_chain_and_report", |b| {
        b.iter(|| {
            let v = Verifier::new(roots.clone(), false);
            let r = Report::from_bytes(&report_bytes).expect("report");
            v.verify(&r, &endorsements, &opts).expect("valid")
        })
    });
    let warm = Verifier::new(roots.clone(), false);
    g.bench_function("cached_chain", |b| {
        b.iter(|| {
            let r = Report::from_bytes(&report_bytes).expect("report");
            warm.verify(&r, &endorsements, &opts).expect("valid")
        })
    });

    let report = Report::from_bytes(&report_bytes).expect("report");
    let key = endorsements
        .vek
        .public_key()
        .expect("key")
        .ec_key()
        .expect("ec");
    let (r, s) = report.fields().signature.to_be();
    let digest = openssl::sha::sha384(report.signed_bytes());
    g.bench_function("raw_p384_ecdsa_verify", |b| {
        b.iter(|| {
            let sig = EcdsaSig::from_private_components(
                BigNum::from_slice(&r).expect("r"),
                BigNum::from_slice(&s).expect("s"),
            )
            .expect("sig");
            assert!(sig.verify(&digest, &key).expect("verify"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
