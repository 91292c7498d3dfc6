//! The launch digests of sev-snp-measure's own tests (shared vectors, `snp-measure/`): each fixture
//! (the last 4 KiB of an OVMF build) is the whole firmware, mapped to end at 4 GiB, exactly as those
//! tests pass it; "empty" kernel/initrd are empty files (`/dev/null` upstream).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_snp_measure::{launch_digest, KernelHashes, LaunchInputs, VcpuType};
use coffer_testkit::Need;
use serde_json::Value;

fn str_field<'a>(case: &'a Value, key: &str) -> Option<&'a str> {
    case.get(key).and_then(Value::as_str)
}

fn inputs(dir: &std::path::Path, case: &Value) -> LaunchInputs {
    let name = str_field(case, "name").unwrap();
    let ovmf = coffer_testkit::read(
        dir,
        &format!("snp-measure/{}", str_field(case, "ovmf").unwrap()),
    );
    let blob = |key: &str| match case.get(key) {
        Some(Value::Null) | None => None,
        Some(Value::String(s)) if s == "empty" => Some(Vec::new()),
        Some(other) => panic!("{name}: unexpected {key} {other}"),
    };
    let kernel = blob("kernel");
    let initrd = blob("initrd");
    let append = str_field(case, "append");
    assert!(
        kernel.is_some() || (initrd.is_none() && append.is_none()),
        "{name}: initrd/append without kernel"
    );
    let features = str_field(case, "guest_features").unwrap();
    let guest_features = u64::from_str_radix(features.trim_start_matches("0x"), 16).unwrap();
    let vcpus = u32::try_from(case["vcpus"].as_u64().unwrap()).unwrap();
    // The README and "inputs" note: every case uses EPYC-v4 (signature 0x800f12).
    let vcpu_type = str_field(case, "vcpu_type")
        .unwrap_or("EPYC-v4")
        .parse::<VcpuType>()
        .unwrap();
    LaunchInputs {
        kernel: kernel.map(|k| KernelHashes::new(&k, initrd.as_deref(), append)),
        guest_features,
        ..LaunchInputs::new(ovmf, vcpus, vcpu_type)
    }
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        sev_snp_measure_vectors: Need::Vectors;
    ])
}

fn sev_snp_measure_vectors() {
    let dir = coffer_testkit::vectors();
    let expected: Value =
        serde_json::from_slice(&coffer_testkit::read(&dir, "snp-measure/expected.json")).unwrap();
    let cases = expected["cases"].as_array().unwrap();
    assert!(
        cases.len() >= 9,
        "expected.json lists {} cases",
        cases.len()
    );
    for case in cases {
        let name = str_field(case, "name").unwrap();
        let result = launch_digest(&inputs(&dir, case));
        match (
            str_field(case, "expected"),
            str_field(case, "expected_error"),
        ) {
            (Some(digest), None) => {
                let got = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(hex::encode(got), digest, "{name}");
            }
            (None, Some(message)) => {
                let err = result.expect_err(name);
                assert_eq!(err.to_string(), message, "{name}");
            }
            _ => panic!("{name}: needs exactly one of expected, expected_error"),
        }
    }
}
