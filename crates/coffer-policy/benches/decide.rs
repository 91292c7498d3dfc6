//! Decision latency with a warm engine: create_container on a generated-style policy, plus
//! mount_device, each from the same prepared state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_policy::Enforcer;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::{json, Value};

fn bench(c: &mut Criterion) {
    let Some(dir) = coffer_testkit::vectors_dir() else {
        eprintln!("bench decide: skipped, no test vectors (set COFFER_VECTORS)");
        return;
    };
    let text = String::from_utf8(coffer_testkit::read(
        &dir,
        "policies/aci-attestation-example.rego",
    ))
    .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("containers := "))
        .unwrap();
    let cs: Vec<Value> = serde_json::from_str(&line[14..]).unwrap();
    let primary = cs
        .iter()
        .find(|c| c["name"] == "attestation-primary")
        .unwrap()
        .clone();
    let mut e = Enforcer::new(&text).unwrap();
    let mut paths = vec![];
    for (i, l) in primary["layers"].as_array().unwrap().iter().enumerate() {
        let t = format!("/l/{i}");
        assert!(
            e.decide_named("mount_device", &json!({"target": t, "deviceHash": l}))
                .unwrap()
                .allowed
        );
        paths.push(t);
    }
    paths.reverse();
    assert!(
        e.decide_named(
            "mount_overlay",
            &json!({"containerID": "c", "layerPaths": paths, "target": "/r"})
        )
        .unwrap()
        .allowed
    );
    let env: Vec<String> = primary["env_rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["strategy"] == "string")
        .map(|r| r["pattern"].as_str().unwrap().to_string())
        .collect();
    let input = json!({"containerID": "c", "argList": ["python3", "primary.py"], "envList": env, "workingDir": "/usr/src/app",
        "mounts": [], "privileged": false, "noNewPrivileges": false, "user": {"id": "0", "name": "root"}, "groups": [], "umask": "0022",
        "capabilities": primary["capabilities"].clone()});
    // Warm up once.
    assert!(
        e.clone()
            .decide_named("create_container", &input)
            .unwrap()
            .allowed
    );
    c.bench_function("create_container_warm", |b| {
        b.iter_batched(
            || e.clone(),
            |mut en| assert!(en.decide_named("create_container", &input).unwrap().allowed),
            BatchSize::SmallInput,
        )
    });
    let layer = primary["layers"][0].clone();
    c.bench_function("mount_device_warm", |b| {
        b.iter_batched(
            || e.clone(),
            |mut en| {
                assert!(
                    en.decide_named(
                        "mount_device",
                        &json!({"target": "/x", "deviceHash": layer})
                    )
                    .unwrap()
                    .allowed
                )
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
