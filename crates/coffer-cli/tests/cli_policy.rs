//! Round trip on coffer's own example image: build (umoci), import, generate, enforce.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::coffer;

use std::path::Path;
use std::process::Output;

use coffer_policy::Enforcer;
use serde_json::{json, Value};

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        generated_policy_round_trip_on_the_example_image: coffer_testkit::EXAMPLE_IMAGE;
        arm_format_is_the_base64_of_the_policy_host_data_binds;
        policy_gen_names_the_launch_measurement_a_release_policy_needs;
        policy_gen_layer_hashes_are_what_hcsshim_computes:
            coffer_testkit::EXAMPLE_IMAGE,
            coffer_testkit::TAR2EXT4;
    ])
}

fn generated_policy_round_trip_on_the_example_image() {
    let tmp = tempfile::tempdir().unwrap();
    let oci = tmp.path().join("hello");
    coffer_testkit::build_example_image(&oci);
    let home = tmp.path().join("home");
    ok(coffer(
        &home,
        &[
            "image",
            "import",
            &format!("oci:{}:latest", oci.display()),
            "--name",
            "hello:latest",
        ],
    ));
    let measured = ok(coffer(&home, &["image", "measure", "hello:latest"]));
    let roots: Vec<String> = measured
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(roots.len(), 2);
    let pod = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/pod.yaml");
    let policy_path = tmp.path().join("p.rego");
    let out = ok(coffer(
        &home,
        &[
            "policy",
            "gen",
            pod.to_str().unwrap(),
            "-o",
            policy_path.to_str().unwrap(),
        ],
    ));
    let policy = std::fs::read_to_string(&policy_path).unwrap();
    let digest = ok(coffer(
        &home,
        &["policy", "digest", policy_path.to_str().unwrap()],
    ));
    assert_eq!(out.trim(), format!("host_data: {}", digest.trim()));
    assert_eq!(
        digest.trim(),
        hex::encode(openssl::sha::sha256(policy.as_bytes()))
    );

    let mut e = Enforcer::new(&policy).unwrap();
    let mut paths = vec![];
    for (i, r) in roots.iter().enumerate() {
        let t = format!("/run/layers/{i}");
        assert!(
            e.decide_named("mount_device", &json!({"target": t, "deviceHash": r}))
                .unwrap()
                .allowed
        );
        paths.push(t);
    }
    assert!(
        !e.decide_named(
            "mount_device",
            &json!({"target": "/run/layers/9", "deviceHash": "ab".repeat(32)})
        )
        .unwrap()
        .allowed
    );
    assert!(
        !e.clone()
            .decide_named(
                "mount_overlay",
                &json!({"containerID": "hello", "layerPaths": paths, "target": "/r"})
            )
            .unwrap()
            .allowed
    );
    let top_first: Vec<_> = paths.iter().rev().collect();
    assert!(
        e.decide_named(
            "mount_overlay",
            &json!({"containerID": "hello", "layerPaths": top_first, "target": "/r"})
        )
        .unwrap()
        .allowed
    );
    let line = policy
        .lines()
        .find(|l| l.starts_with("containers := "))
        .unwrap();
    let c: Value = serde_json::from_str::<Vec<Value>>(&line[14..])
        .unwrap()
        .remove(0);
    let create = |argv: Value, env: Value| {
        json!({"containerID": "hello", "argList": argv, "envList": env, "workingDir": "/app",
        "mounts": [{"destination": "/scratch", "options": ["rbind", "rshared", "rw"], "source": "sandbox:///tmp/atlas/emptydir/scratch", "type": "bind"}],
        "privileged": false, "noNewPrivileges": false, "user": {"id": "0", "name": "root"}, "groups": [{"id": "0", "name": "root"}],
        "umask": "0022", "capabilities": c["capabilities"].clone(),
        "resources": {"memory_limit": null, "cpu_millis": null}})
    };
    let d = e
        .clone()
        .decide_named(
            "create_container",
            &create(
                json!(["/bin/sh", "-c", "cat /etc/shadow"]),
                json!(["PATH=/bin"]),
            ),
        )
        .unwrap();
    assert!(!d.allowed);
    let d = e
        .decide_named(
            "create_container",
            &create(
                json!(["/bin/sh", "/app/hello.sh"]),
                json!(["PATH=/bin", "GREETING=bonjour", "LD_PRELOAD=/evil.so"]),
            ),
        )
        .unwrap();
    assert!(d.allowed, "{:?}", d.reason);
    assert_eq!(
        d.result["env_list"],
        json!(["PATH=/bin", "GREETING=bonjour"])
    );
    assert!(e.decide_named("exec_in_container", &json!({"containerID": "hello", "argList": ["/bin/true"], "envList": [], "workingDir": "/app"})).unwrap().allowed);
    assert!(!e.decide_named("exec_in_container", &json!({"containerID": "hello", "argList": ["/bin/sh"], "envList": [], "workingDir": "/app"})).unwrap().allowed);
    assert!(
        e.decide_named(
            "signal_container_process",
            &json!({"containerID": "hello", "signal": 15, "isInitProcess": true, "argList": []})
        )
        .unwrap()
        .allowed
    );
    assert!(
        !e.decide_named(
            "signal_container_process",
            &json!({"containerID": "hello", "signal": 9, "isInitProcess": true, "argList": []})
        )
        .unwrap()
        .allowed
    );

    // policy eval through the CLI, carrying state between calls.
    let input = tmp.path().join("in.json");
    std::fs::write(
        &input,
        json!({"target": "/l0", "deviceHash": roots[0]}).to_string(),
    )
    .unwrap();
    let out = coffer(
        &home,
        &[
            "policy",
            "eval",
            "--policy",
            policy_path.to_str().unwrap(),
            "--rule",
            "mount_device",
            "--input",
            input.to_str().unwrap(),
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(v["allowed"], true);
    assert_eq!(v["state"]["devices"]["/l0"], roots[0]);
    let state = tmp.path().join("state.json");
    std::fs::write(&state, v["state"].to_string()).unwrap();
    let out = coffer(
        &home,
        &[
            "policy",
            "eval",
            "--policy",
            policy_path.to_str().unwrap(),
            "--rule",
            "mount_device",
            "--input",
            input.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["allowed"], false);
    assert!(
        v["reason"].to_string().contains("already mounted"),
        "{}",
        v["reason"]
    );

    // --allow-all says so loudly.
    let out = coffer(
        &home,
        &[
            "policy",
            "gen",
            pod.to_str().unwrap(),
            "--allow-all",
            "-o",
            tmp.path().join("a.rego").to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("allows EVERYTHING"));
}

fn arm_format_is_the_base64_of_the_policy_host_data_binds() {
    let home = tempfile::tempdir().unwrap();
    let pod = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/pod.yaml");
    let rego = coffer(
        home.path(),
        &["policy", "gen", "--allow-all", pod.to_str().unwrap()],
    );
    let arm = coffer(
        home.path(),
        &[
            "policy",
            "gen",
            "--allow-all",
            "--format",
            "arm",
            pod.to_str().unwrap(),
        ],
    );
    assert!(rego.status.success() && arm.status.success());
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&arm.stdout).trim())
        .unwrap();
    assert_eq!(decoded, rego.stdout);
    let host_data = String::from_utf8_lossy(&arm.stderr).to_string();
    assert!(
        host_data.contains(&hex::encode(coffer_policy::digest(&decoded))),
        "{host_data}"
    );
}

/// Next to host_data, `policy gen` names the launch measurement that groups launched with this
/// agent report, the other value a release policy should require.
fn policy_gen_names_the_launch_measurement_a_release_policy_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let pod = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/pod.yaml");
    let out = coffer(
        tmp.path(),
        &["policy", "gen", "--allow-all", pod.to_str().unwrap()],
    );
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("launch measurement: "))
        .unwrap_or_else(|| panic!("{err}"));
    let want = coffer_host::launch::expected_measurement(tmp.path(), &common::agent_exe()).unwrap();
    assert_eq!(
        line.split_whitespace().nth(2),
        Some(hex::encode(want).as_str()),
        "{line}"
    );
}

/// The layers `coffer policy gen` writes are the roots hcsshim's own `tar2ext4` code (Azure's
/// policy tooling) computes for the same layer tars, in the same order.
fn policy_gen_layer_hashes_are_what_hcsshim_computes() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    common::import_example(home);
    let pod = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/pod.yaml");
    let policy = common::policy_gen(home, &pod);
    let line = policy
        .lines()
        .find(|l| l.starts_with("containers := "))
        .unwrap();
    let containers: Value = serde_json::from_str(&line["containers := ".len()..]).unwrap();
    let ours: Vec<String> = containers[0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let store = coffer_image::Store::open(home).unwrap();
    let img = store
        .resolve(&coffer_image::ImageRef::Stored("hello:latest".into()))
        .unwrap();
    let reference = coffer_testkit::tar2ext4_reference();
    let theirs: Vec<String> = img
        .image
        .layers
        .iter()
        .map(|l| {
            let tar = tmp.path().join(format!("{}.tar", l.digest.hex()));
            let gz = std::fs::File::open(store.layout().blob_path(&l.digest)).unwrap();
            let out = std::process::Command::new("gzip")
                .arg("-dc")
                .stdin(gz)
                .stdout(std::fs::File::create(&tar).unwrap())
                .status()
                .unwrap();
            assert!(out.success());
            let out = std::process::Command::new(&reference)
                .arg(&tar)
                .output()
                .unwrap();
            assert!(out.status.success());
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect();
    assert_eq!(ours.len(), 2);
    assert_eq!(ours, theirs);
}
