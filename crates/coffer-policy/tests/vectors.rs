//! Real Azure policies under Coffer's framework.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_policy::Enforcer;
use coffer_testkit::Need;
use serde_json::{json, Value};

fn containers(policy: &str) -> Vec<Value> {
    let line = policy
        .lines()
        .find(|l| l.starts_with("containers := "))
        .unwrap();
    serde_json::from_str(&line["containers := ".len()..]).unwrap()
}

fn errors(d: &coffer_policy::Decision) -> String {
    d.reason.as_ref().map(|r| r.to_string()).unwrap_or_default()
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        aci_attestation_example_enforces_layers_overlay_command_env: Need::Vectors;
        env_outside_rules_is_denied_without_dropping: Need::Vectors;
        allow_all_allows_every_point_and_has_the_known_digest: Need::Vectors;
        unknown_rules_and_bad_policies_are_errors;
        policy_values_are_optional;
    ])
}

fn aci_attestation_example_enforces_layers_overlay_command_env() {
    let dir = coffer_testkit::vectors();
    let text = String::from_utf8(coffer_testkit::read(
        &dir,
        "policies/aci-attestation-example.rego",
    ))
    .unwrap();
    let cs = containers(&text);
    let primary = cs
        .iter()
        .find(|c| c["name"] == "attestation-primary")
        .unwrap()
        .clone();
    let layers: Vec<String> = primary["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let mut e = Enforcer::new(&text).unwrap();

    // Every listed layer mounts; an unlisted hash does not.
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let target = format!("/run/layers/p{i}");
        let d = e
            .decide_named("mount_device", &json!({"target": target, "deviceHash": l}))
            .unwrap();
        assert!(d.allowed, "layer {i}: {}", errors(&d));
        paths.push(target);
    }
    let d = e
        .decide_named(
            "mount_device",
            &json!({"target": "/run/layers/x", "deviceHash": "00".repeat(32)}),
        )
        .unwrap();
    assert!(!d.allowed);
    assert!(errors(&d).contains("not a layer"), "{}", errors(&d));
    // The same target twice is refused.
    let d = e
        .decide_named(
            "mount_device",
            &json!({"target": "/run/layers/p0", "deviceHash": layers[0]}),
        )
        .unwrap();
    assert!(!d.allowed);

    // Overlay: top layer first. Out of order is denied and changes nothing.
    let mut wrong: Vec<String> = paths.clone();
    wrong.swap(0, 1);
    let before = e.state();
    let d = e
        .decide_named(
            "mount_overlay",
            &json!({"containerID": "c1", "layerPaths": wrong, "target": "/run/c1/rootfs"}),
        )
        .unwrap();
    assert!(!d.allowed);
    assert!(errors(&d).contains("in this order"), "{}", errors(&d));
    assert_eq!(e.state(), before);
    let top_first: Vec<String> = paths.iter().rev().cloned().collect();
    let d = e
        .decide_named(
            "mount_overlay",
            &json!({"containerID": "c1", "layerPaths": top_first, "target": "/run/c1/rootfs"}),
        )
        .unwrap();
    assert!(d.allowed, "{}", errors(&d));

    let allowed_env: Vec<String> = primary["env_rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["strategy"] == "string")
        .map(|r| r["pattern"].as_str().unwrap().to_string())
        .collect();
    let create = |argv: Vec<&str>, env: Vec<String>, wd: &str| {
        json!({
            "containerID": "c1", "argList": argv, "envList": env, "workingDir": wd,
            "mounts": [], "privileged": false, "noNewPrivileges": false,
            "user": {"id": "0", "name": "root"}, "groups": [{"id": "0", "name": "root"}], "umask": "0022",
            "capabilities": primary["capabilities"].clone(),
        })
    };
    let d = e
        .clone()
        .decide_named(
            "create_container",
            &create(
                vec!["python3", "evil.py"],
                allowed_env.clone(),
                "/usr/src/app",
            ),
        )
        .unwrap();
    assert!(!d.allowed);
    assert!(errors(&d).contains("invalid command"), "{}", errors(&d));
    let d = e
        .clone()
        .decide_named(
            "create_container",
            &create(vec!["python3", "primary.py"], allowed_env.clone(), "/tmp"),
        )
        .unwrap();
    assert!(!d.allowed);
    assert!(errors(&d).contains("working directory"), "{}", errors(&d));

    // An env var outside the rules: this policy allows dropping, so it is dropped from env_list.
    let mut env = allowed_env.clone();
    env.push("EVIL=1".into());
    let d = e
        .decide_named(
            "create_container",
            &create(vec!["python3", "primary.py"], env, "/usr/src/app"),
        )
        .unwrap();
    assert!(d.allowed, "{}", errors(&d));
    let list: Vec<String> = serde_json::from_value(d.result["env_list"].clone()).unwrap();
    assert_eq!(list, allowed_env);
    assert_eq!(d.result["allow_stdio_access"], true);
    // Created once only.
    let d = e
        .decide_named(
            "create_container",
            &create(
                vec!["python3", "primary.py"],
                allowed_env.clone(),
                "/usr/src/app",
            ),
        )
        .unwrap();
    assert!(!d.allowed);
    // exec_processes is empty: any exec is denied. Signals list is empty: SIGTERM denied.
    let d = e.decide_named("exec_in_container", &json!({"containerID": "c1", "argList": ["/bin/sh"], "envList": [], "workingDir": "/usr/src/app"})).unwrap();
    assert!(!d.allowed);
    let d = e
        .decide_named(
            "signal_container_process",
            &json!({"containerID": "c1", "signal": 15, "isInitProcess": true, "argList": []}),
        )
        .unwrap();
    assert!(!d.allowed);
    assert!(errors(&d).contains("signal 15"), "{}", errors(&d));
    assert!(
        e.decide_named("shutdown_container", &json!({"containerID": "c1"}))
            .unwrap()
            .allowed
    );
    // Switches.
    assert!(
        e.decide_named("get_properties", &json!({}))
            .unwrap()
            .allowed
    );
    assert!(!e.decide_named("dump_stacks", &json!({})).unwrap().allowed);
    assert!(
        !e.decide_named(
            "scratch_mount",
            &json!({"target": "/s", "encrypted": false})
        )
        .unwrap()
        .allowed
    );
    assert!(
        e.decide_named("scratch_mount", &json!({"target": "/s", "encrypted": true}))
            .unwrap()
            .allowed
    );
}

fn env_outside_rules_is_denied_without_dropping() {
    let dir = coffer_testkit::vectors();
    let text = String::from_utf8(coffer_testkit::read(
        &dir,
        "policies/aci-attestation-example.rego",
    ))
    .unwrap()
    .replace(
        "allow_environment_variable_dropping := true",
        "allow_environment_variable_dropping := false",
    );
    let cs = containers(&text);
    let pause = cs
        .iter()
        .find(|c| c["command"] == json!(["/pause"]))
        .unwrap()
        .clone();
    let mut e = Enforcer::new(&text).unwrap();
    let l = pause["layers"][0].as_str().unwrap();
    assert_eq!(
        l,
        "16b514057a06ad665f92c02863aca074fd5976c755d26bff16365299169e8415"
    );
    assert!(
        e.decide_named("mount_device", &json!({"target": "/l0", "deviceHash": l}))
            .unwrap()
            .allowed
    );
    assert!(
        e.decide_named(
            "mount_overlay",
            &json!({"containerID": "p", "layerPaths": ["/l0"], "target": "/r"})
        )
        .unwrap()
        .allowed
    );
    let input = |env: Vec<&str>| {
        json!({"containerID": "p", "argList": ["/pause"], "envList": env, "workingDir": "/",
        "mounts": [], "privileged": false, "noNewPrivileges": false, "user": {"id": "0", "name": "root"}, "groups": [], "umask": "0022",
        "capabilities": pause["capabilities"].clone()})
    };
    let path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let d = e
        .clone()
        .decide_named("create_container", &input(vec![path, "EVIL=1"]))
        .unwrap();
    assert!(!d.allowed);
    assert!(
        errors(&d).contains("environment variable not allowed: EVIL"),
        "{}",
        errors(&d)
    );
    // PATH is required by this container.
    let d = e
        .clone()
        .decide_named("create_container", &input(vec!["TERM=xterm"]))
        .unwrap();
    assert!(!d.allowed);
    assert!(
        errors(&d).contains("required environment variable missing"),
        "{}",
        errors(&d)
    );
    assert!(
        e.decide_named("create_container", &input(vec![path, "TERM=xterm"]))
            .unwrap()
            .allowed
    );
}

fn allow_all_allows_every_point_and_has_the_known_digest() {
    let dir = coffer_testkit::vectors();
    let bytes = coffer_testkit::read(&dir, "policies/aci-allow_all.rego");
    assert_eq!(
        hex::encode(coffer_policy::digest(&bytes)),
        "b3452a0ed30f1010bd32740dd1610bc63296ceb0f882f2cac3a3152d651fe7e4"
    );
    let mut e = Enforcer::new(std::str::from_utf8(&bytes).unwrap()).unwrap();
    for p in coffer_policy::ENFORCEMENT_POINTS {
        let d = e
            .decide_named(
                p,
                &json!({"containerID": "x", "target": "/t", "deviceHash": "ab"}),
            )
            .unwrap();
        assert!(d.allowed, "{p}");
    }
    // The strict example loads too.
    let strict = coffer_testkit::read(&dir, "policies/aci-strict.rego");
    Enforcer::new(std::str::from_utf8(&strict).unwrap()).unwrap();
}

fn unknown_rules_and_bad_policies_are_errors() {
    assert!(Enforcer::new("package other\nx := 1\n")
        .unwrap_err()
        .to_string()
        .contains("package policy"));
    assert!(Enforcer::new("package policy\nx := \n").is_err());
    let mut e = Enforcer::new(&coffer_policy::allow_all_policy()).unwrap();
    assert!(e
        .decide_named("format_disk", &json!({}))
        .unwrap_err()
        .to_string()
        .contains("unknown enforcement point"));
}

fn policy_values_are_optional() {
    let mut e = Enforcer::new(&format!(
        "{}\ncoffer_skr_port := 8080\n",
        coffer_policy::allow_all_policy()
    ))
    .unwrap();
    assert_eq!(
        e.policy_value("coffer_skr_port").unwrap(),
        Some(json!(8080))
    );
    assert_eq!(e.policy_value("coffer_encrypted_volumes").unwrap(), None);
    assert!(e.policy_value("a.b").is_err());
}
