//! Generation from Pod manifests: merging with the image config, errors, byte stability.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use coffer_policy::{
    generate, parse_pod, Enforcer, GenOptions, ImageFacts, PolicyError, FRAMEWORK_REGO,
    FRAMEWORK_VERSION,
};
use serde_json::Value;

fn facts() -> BTreeMap<String, ImageFacts> {
    let mut m = BTreeMap::new();
    m.insert(
        "app:1".to_string(),
        ImageFacts {
            entrypoint: vec!["/bin/app".into()],
            cmd: vec!["--serve".into()],
            env: vec!["PATH=/bin".into(), "MODE=prod".into()],
            working_dir: "/srv".into(),
            user: "1000:1000".into(),
            stop_signal: Some("SIGINT".into()),
            layers: vec!["aa".repeat(32), "bb".repeat(32)],
            passwd: "root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\napp:x:1000:1001::/srv:/bin/sh\n".into(),
            group: "root:x:0:\nwww-data:x:33:\nstaff:x:50:app\n".into(),
        },
    );
    m
}

fn containers(policy: &str) -> Vec<Value> {
    let line = policy
        .lines()
        .find(|l| l.starts_with("containers := "))
        .unwrap();
    serde_json::from_str(&line["containers := ".len()..]).unwrap()
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: g}
spec:
  containers:
    - name: a
      image: app:1
      args: ["--once"]
      env:
        - {name: MODE, value: test}
        - name: SECRET
          valueFrom: {secretKeyRef: {name: s, key: k}}
      securityContext:
        allowPrivilegeEscalation: false
        capabilities: {drop: [NET_RAW], add: [NET_ADMIN]}
      lifecycle:
        preStop: {exec: {command: [/bin/app, --drain]}}
    - name: b
      image: app:1
      command: [/bin/other]
      workingDir: /tmp
      resources: {limits: {memory: 64Mi, cpu: 500m}}
      securityContext: {privileged: true, runAsUser: 5}
"#;

#[test]
fn merges_like_kubernetes_and_is_byte_stable() {
    let pod = parse_pod(POD).unwrap();
    let text = generate(&pod, &facts(), &GenOptions::default()).unwrap();
    assert_eq!(
        text,
        generate(&parse_pod(POD).unwrap(), &facts(), &GenOptions::default()).unwrap()
    );
    let cs = containers(&text);
    let a = &cs[0];
    assert_eq!(a["command"], serde_json::json!(["/bin/app", "--once"]));
    assert_eq!(a["working_dir"], "/srv");
    let env: Vec<String> = a["env_rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}|{}",
                r["pattern"].as_str().unwrap(),
                r["strategy"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        env,
        ["PATH=/bin|string", "MODE=test|string", "SECRET=.+|re2"]
    );
    assert_eq!(a["no_new_privileges"], true);
    let bounding: Vec<&str> = a["capabilities"]["bounding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(bounding.contains(&"CAP_NET_ADMIN") && !bounding.contains(&"CAP_NET_RAW"));
    assert_eq!(
        a["exec_processes"][0]["command"],
        serde_json::json!(["/bin/app", "--drain"])
    );
    assert_eq!(a["signals"], serde_json::json!([2]));
    assert_eq!(a["user"]["user_idname"]["pattern"], "1000");
    assert_eq!(a["layers"].as_array().unwrap().len(), 2);
    let b = &cs[1];
    assert_eq!(b["command"], serde_json::json!(["/bin/other"]));
    assert_eq!(b["working_dir"], "/tmp");
    assert_eq!(b["allow_elevated"], true);
    assert_eq!(b["capabilities"]["bounding"].as_array().unwrap().len(), 41);
    assert_eq!(b["user"]["user_idname"]["pattern"], "5");
    assert_eq!(b["user"]["group_idnames"][0]["pattern"], "1000");
    let r = coffer_policy::resolve_container(&pod, 1, &facts()["app:1"]).unwrap();
    assert_eq!((r.memory_limit, r.cpu_millis), (Some(64 << 20), Some(500)));
    let gpu = POD.replace(
        "resources: {limits: {memory: 64Mi, cpu: 500m}}",
        "resources: {limits: {nvidia.com/gpu: 1}}",
    );
    assert!(parse_pod(&gpu)
        .unwrap_err()
        .to_string()
        .contains("nvidia.com/gpu"));
    let no_stdio = generate(
        &pod,
        &facts(),
        &GenOptions {
            allow_stdio_access: false,
        },
    )
    .unwrap();
    assert_eq!(containers(&no_stdio)[0]["allow_stdio_access"], false);
}

#[test]
fn unsupported_fields_are_named() {
    let with_stdin = POD.replace(
        "      args: [\"--once\"]",
        "      args: [\"--once\"]\n      stdin: true",
    );
    match parse_pod(&with_stdin).unwrap_err() {
        PolicyError::Unsupported { field, .. } => assert_eq!(field, "spec.containers[0].stdin"),
        other => panic!("{other}"),
    }
    let http_probe = POD.replace(
        "      lifecycle:",
        "      livenessProbe: {httpGet: {path: /, port: 80}}\n      lifecycle:",
    );
    let err = parse_pod(&http_probe).unwrap_err().to_string();
    assert!(err.contains("httpGet"), "{err}");
    let host_path = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers: [{name: a, image: i}]\n  volumes: [{name: v, hostPath: {path: /}}]\n";
    assert!(parse_pod(host_path)
        .unwrap_err()
        .to_string()
        .contains("spec.volumes[0].hostPath"));
    assert!(parse_pod("apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\nspec: {containers: [{name: a, image: i}]}\n").unwrap_err().to_string().contains("kind: Pod"));
    assert!(parse_pod("::: not yaml").is_err());
    let missing_volume = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers: [{name: a, image: i, volumeMounts: [{name: v, mountPath: /v}]}]\n";
    assert!(parse_pod(missing_volume)
        .unwrap_err()
        .to_string()
        .contains("volume 'v'"));
    let pod = parse_pod("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a, image: nope}]}\n").unwrap();
    assert!(matches!(
        generate(&pod, &facts(), &GenOptions::default()),
        Err(PolicyError::MissingImage(_))
    ));
}

#[test]
fn an_unknown_capability_name_is_an_error_naming_it() {
    let gen = |y: &str| generate(&parse_pod(y)?, &facts(), &GenOptions::default());
    let err = gen(&POD.replace("add: [NET_ADMIN]", "add: [NET_ADMN]"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("securityContext.capabilities.add") && err.contains("'NET_ADMN'"),
        "{err}"
    );
    let err = gen(&POD.replace("drop: [NET_RAW]", "drop: [CAP_CAP_NET_RAW]"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown capability"), "{err}");
    // Both spellings Kubernetes users write are taken.
    let ok = gen(&POD.replace("add: [NET_ADMIN]", "add: [CAP_NET_ADMIN]")).unwrap();
    assert!(ok.contains("\"CAP_NET_ADMIN\""), "{ok}");
}

#[test]
fn pod_names_must_be_rfc1123_labels() {
    let pod = |name: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name:?}}}\nspec:\n  containers: [{{name: a, image: i}}]\n")
    };
    assert!(parse_pod(&pod("web-1")).is_ok());
    for bad in [
        "../../../../tmp/x",
        "a\nb := 1",
        "UPPER",
        "-x",
        "x-",
        "",
        &"a".repeat(64),
    ] {
        let err = parse_pod(&pod(bad)).unwrap_err().to_string();
        assert!(err.contains("metadata.name"), "{bad:?}: {err}");
    }
}

#[test]
fn an_encrypted_volume_needs_a_well_formed_broker_key_and_endpoints() {
    let pod = |endpoint: &str, key: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\nspec:\n  containers: [{{name: a, image: app:1}}]\n  volumes:\n  - name: v\n    csi:\n      driver: encfs.coffer.dev\n      volumeAttributes: {{source: /x.img, keyName: k, attestationEndpoint: {endpoint:?}, keyBrokerEndpoint: {endpoint:?}, keyBrokerKey: {key:?}}}\n"
        )
    };
    let key = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
    let gen = |y: &str| generate(&parse_pod(y)?, &facts(), &GenOptions::default());
    let ok = gen(&pod("http://127.0.0.1:7070", key)).unwrap();
    assert!(ok.contains(&format!("\"broker_key\":\"{key}\"")), "{ok}");
    let err = gen(&pod("http://127.0.0.1:7070\r\nX: y", key))
        .unwrap_err()
        .to_string();
    assert!(err.contains("endpoint"), "{err}");
    let err = gen(&pod("http://127.0.0.1:7070", "not-a-key"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("thumbprint"), "{err}");
}

#[test]
fn a_plaintext_pin_must_be_a_root_on_a_read_only_volume() {
    let pod = |read_only: bool, root: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\nspec:\n  containers: [{{name: a, image: app:1}}]\n  volumes:\n  - name: v\n    csi:\n      driver: encfs.coffer.dev\n      readOnly: {read_only}\n      volumeAttributes: {{source: /x.img, keyName: k, attestationEndpoint: \"http://127.0.0.1:7070\", keyBrokerEndpoint: \"http://127.0.0.1:7070\", keyBrokerKey: NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs, verityRootHash: {root:?}}}\n"
        )
    };
    let gen = |y: &str| generate(&parse_pod(y)?, &facts(), &GenOptions::default());
    let root = "ab".repeat(32);
    let ok = gen(&pod(true, &root)).unwrap();
    assert!(ok.contains(&format!("\"verity_root\":\"{root}\"")), "{ok}");
    let err = gen(&pod(false, &root)).unwrap_err().to_string();
    assert!(err.contains("readOnly: false"), "{err}");
    for bad in ["ab", "zz".repeat(32).as_str(), &"ab".repeat(33)] {
        let err = gen(&pod(true, bad)).unwrap_err().to_string();
        assert!(err.contains("is not 64 hex digits"), "{bad}: {err}");
    }
}

mod missing_rules {
    use coffer_policy::Enforcer;
    use serde_json::json;

    fn decide(policy: &str) -> coffer_policy::Decision {
        let mut e = Enforcer::new(policy).unwrap();
        e.decide_named(
            "exec_in_container",
            &json!({"containerID": "c", "argList": ["/bin/sh"]}),
        )
        .unwrap()
    }

    const BASE: &str = "package policy\n\nmount_device := {\"allowed\": false}\n";

    #[test]
    fn a_point_missing_from_a_current_policy_is_denied_with_the_reason() {
        let d = decide(&format!("{BASE}api_version := \"0.10.0\"\n"));
        assert!(!d.allowed);
        assert!(d
            .reason
            .unwrap()
            .to_string()
            .contains("rule for exec_in_container is missing from policy"));
    }

    #[test]
    fn a_point_missing_from_a_policy_older_than_it_gets_azures_default() {
        // exec_in_container came with API 0.2.0; a 0.1.0 policy could not name it.
        assert!(decide(&format!("{BASE}api_version := \"0.1.0\"\n")).allowed);
    }

    #[test]
    fn a_policy_without_a_version_is_read_as_current() {
        assert!(!decide(BASE).allowed);
    }

    #[test]
    fn a_declared_point_without_a_result_is_denied() {
        let p = format!("{BASE}api_version := \"0.10.0\"\nexec_in_container := {{\"allowed\": true}} if {{ false }}\n");
        assert!(!decide(&p).allowed);
    }

    #[test]
    fn a_malformed_api_version_does_not_load() {
        assert!(Enforcer::new(&format!("{BASE}api_version := \"ten\"\n")).is_err());
    }
}

mod users {
    use super::*;

    fn ids(image_user: &str, sc: &str) -> Result<(String, String), PolicyError> {
        let mut f = facts();
        f.get_mut("app:1").unwrap().user = image_user.into();
        let pod = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\nspec:\n  containers:\n  - name: a\n    image: app:1\n    securityContext: {{{sc}}}\n");
        let pod = parse_pod(&pod).unwrap();
        let r = coffer_policy::resolve_container(&pod, 0, &f["app:1"])?;
        Ok((r.user, r.group))
    }

    #[test]
    fn names_resolve_through_the_images_own_account_files() {
        assert_eq!(ids("www-data", "").unwrap(), ("33".into(), "33".into()));
        assert_eq!(ids("app:staff", "").unwrap(), ("1000".into(), "50".into()));
    }

    #[test]
    fn a_numeric_user_without_a_group_gets_its_primary_group_from_the_image() {
        assert_eq!(ids("1000", "").unwrap(), ("1000".into(), "1001".into()));
        // Not in /etc/passwd: group 0, as container runtimes do.
        assert_eq!(ids("4242", "").unwrap(), ("4242".into(), "0".into()));
        assert_eq!(ids("", "").unwrap(), ("0".into(), "0".into()));
    }

    #[test]
    fn run_as_user_and_group_override_the_image() {
        assert_eq!(
            ids("www-data", "runAsUser: 1000").unwrap(),
            ("1000".into(), "1001".into())
        );
        assert_eq!(
            ids("www-data", "runAsUser: 7, runAsGroup: 8").unwrap(),
            ("7".into(), "8".into())
        );
    }

    #[test]
    fn a_user_or_group_the_image_lacks_is_an_error() {
        let e = ids("nobody", "").unwrap_err().to_string();
        assert!(
            e.contains("user 'nobody' is not in the image's /etc/passwd"),
            "{e}"
        );
        let e = ids("app:wheel", "").unwrap_err().to_string();
        assert!(e.contains("group 'wheel'"), "{e}");
    }

    #[test]
    fn the_policy_pins_numeric_ids() {
        let pod = parse_pod(POD).unwrap();
        let p = generate(&pod, &facts(), &GenOptions::default()).unwrap();
        let c = &containers(&p)[0];
        assert_eq!(c["user"]["user_idname"]["strategy"], "id");
        assert_eq!(c["user"]["group_idnames"][0]["strategy"], "id");
    }
}

mod pinned_by_the_policy {
    use super::*;
    use coffer_policy::{Decision, Enforcer};
    use serde_json::json;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n  - name: a\n    image: app:1\n    env: [{name: AUTH_ENABLED, value: \"true\"}]\n    resources: {limits: {memory: 64Mi, cpu: 500m}}\n";

    fn create(change: impl FnOnce(&mut Value)) -> Decision {
        create_for(POD, change)
    }

    /// create_container for the first container of `pod`, as the launcher asks for it, changed
    /// by `change`.
    fn create_for(pod: &str, change: impl FnOnce(&mut Value)) -> Decision {
        let pod = parse_pod(pod).unwrap();
        let policy = generate(&pod, &facts(), &GenOptions::default()).unwrap();
        let c = containers(&policy)[0].clone();
        let r = coffer_policy::resolve_container(&pod, 0, &facts()["app:1"]).unwrap();
        let groups: Vec<Value> = std::iter::once(r.group.clone())
            .chain(r.supplemental_groups.iter().map(|g| g.to_string()))
            .map(|g| json!({"id": g, "name": ""}))
            .collect();
        let mut input = json!({
            "containerID": "c", "argList": r.args, "envList": r.env, "workingDir": r.working_dir,
            "mounts": [], "privileged": false, "noNewPrivileges": false,
            "readOnlyRootFilesystem": r.read_only_root_filesystem,
            "user": {"id": r.user, "name": ""}, "groups": groups, "umask": "0022",
            "capabilities": {"bounding": r.capabilities, "effective": r.capabilities, "permitted": r.capabilities, "inheritable": [], "ambient": []},
            "resources": {"memory_limit": r.memory_limit, "cpu_millis": r.cpu_millis},
        });
        change(&mut input);
        let mut e = Enforcer::new(&policy).unwrap();
        e.set_state(json!({"matches": {"c": [c]}})).unwrap();
        e.decide_named("create_container", &input).unwrap()
    }

    const SECURE: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  securityContext: {supplementalGroups: [7], fsGroup: 2000}\n  containers:\n  - name: a\n    image: app:1\n    securityContext: {readOnlyRootFilesystem: true}\n";

    #[test]
    fn the_pinned_read_only_root_and_groups_are_allowed() {
        let d = create_for(SECURE, |i| {
            assert_eq!(i["readOnlyRootFilesystem"], true);
            // Primary 1000, then the image's membership (staff, 50), supplementalGroups, fsGroup.
            let ids: Vec<&str> = i["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, ["1000", "7", "50", "2000"]);
        });
        assert!(d.allowed, "{:?}", d.reason);
    }

    #[test]
    fn a_writable_root_is_denied_when_the_policy_pins_it_read_only() {
        let d = create_for(SECURE, |i| i["readOnlyRootFilesystem"] = json!(false));
        assert!(!d.allowed);
        assert!(
            format!("{:?}", d.reason).contains("read-only root file system"),
            "{:?}",
            d.reason
        );
        // And a read-only root the policy does not ask for (the container would fail).
        let d = create(|i| i["readOnlyRootFilesystem"] = json!(true));
        assert!(!d.allowed);
    }

    #[test]
    fn groups_other_than_the_pinned_ones_are_denied() {
        fn set(ids: &[&str]) -> impl FnOnce(&mut Value) {
            let groups: Vec<Value> = ids.iter().map(|g| json!({"id": g, "name": ""})).collect();
            move |i: &mut Value| i["groups"] = json!(groups)
        }
        for (what, ids) in [
            ("an extra group", &["1000", "7", "50", "2000", "0"][..]),
            ("without the fsGroup", &["1000", "7", "50"][..]),
            ("another primary group", &["2000", "7", "50", "1000"][..]),
            ("no groups", &[][..]),
            (
                "the primary group twice",
                &["1000", "7", "50", "2000", "1000"][..],
            ),
        ] {
            let d = create_for(SECURE, set(ids));
            assert!(!d.allowed, "{what}");
            assert!(
                format!("{:?}", d.reason).contains("invalid user or groups"),
                "{what}: {:?}",
                d.reason
            );
        }
        // Without a Pod security context the image's membership is still pinned.
        assert!(!create(set(&["1000"])).allowed);
        assert!(create(set(&["1000", "50"])).allowed);
    }

    #[test]
    fn the_pods_own_request_is_allowed() {
        let d = create(|_| {});
        assert!(d.allowed, "{:?}", d.reason);
    }

    #[test]
    fn other_limits_than_the_pods_are_denied() {
        assert!(!create(|i| i["resources"]["memory_limit"] = json!(1u64 << 40)).allowed);
        assert!(!create(|i| i["resources"]["cpu_millis"] = json!(null)).allowed);
    }

    #[test]
    fn a_literal_variable_of_the_pod_cannot_be_dropped() {
        // Dropping is allowed in generated policies, but not of what the Pod itself sets.
        let d = create(|i| {
            let env: Vec<Value> = i["envList"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| !e.as_str().unwrap().starts_with("AUTH_ENABLED="))
                .cloned()
                .collect();
            i["envList"] = json!(env);
        });
        assert!(!d.allowed);
        // The image's own variables may still be dropped.
        let d = create(|i| {
            let env: Vec<Value> = i["envList"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| !e.as_str().unwrap().starts_with("MODE="))
                .cloned()
                .collect();
            i["envList"] = json!(env);
        });
        assert!(d.allowed, "{:?}", d.reason);
    }
}

fn with_ports(ports: &str) -> String {
    POD.replace(
        "      args: [\"--once\"]",
        &format!("      args: [\"--once\"]\n      ports: {ports}"),
    )
}

#[test]
fn published_ports_and_the_host_name_are_in_the_policy() {
    let pod = parse_pod(&with_ports(
        "[{containerPort: 8080, hostPort: 18080, name: http}, {containerPort: 53, hostPort: 5353, protocol: UDP, hostIP: 0.0.0.0}, {containerPort: 9090}]",
    ))
    .unwrap();
    let text = generate(&pod, &facts(), &GenOptions::default()).unwrap();
    assert!(text.contains("\ncoffer_hostname := \"g\"\n"), "{text}");
    assert!(text.contains(r#"coffer_ports := [{"container":"a","container_port":8080,"host_port":18080,"protocol":"TCP","name":"http"},{"container":"a","container_port":53,"host_port":5353,"protocol":"UDP","host_ip":"0.0.0.0"}]"#), "{text}");
    let settings =
        coffer_policy::Settings::of(&mut coffer_policy::Enforcer::new(&text).unwrap()).unwrap();
    assert_eq!(settings.hostname.as_deref(), Some("g"));
    assert_eq!(
        settings.ports.len(),
        2,
        "only ports with a hostPort are published"
    );
    assert_eq!(settings.ports[1].protocol, "UDP");
    // Without ports: the host name only.
    let plain = generate(&parse_pod(POD).unwrap(), &facts(), &GenOptions::default()).unwrap();
    assert!(!plain.contains("coffer_ports"));
    // A policy naming a host name that is no label, or a port twice, does not load as settings.
    for bad in [
        text.replace("coffer_hostname := \"g\"", "coffer_hostname := \"../x\""),
        text.replace("\"host_port\":5353", "\"host_port\":18080")
            .replace("\"protocol\":\"UDP\"", "\"protocol\":\"TCP\"")
            .replace(",\"host_ip\":\"0.0.0.0\"", ""),
        text.replace("\"protocol\":\"UDP\"", "\"protocol\":\"SCTP\""),
    ] {
        let err = coffer_policy::Settings::of(&mut coffer_policy::Enforcer::new(&bad).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("coffer_"), "{err}");
    }
}

#[test]
fn ports_are_checked() {
    let err = |ports: &str| parse_pod(&with_ports(ports)).unwrap_err().to_string();
    assert!(
        err("[{containerPort: 80, hostPort: 8080}, {containerPort: 81, hostPort: 8080}]")
            .contains("hostPort 8080/TCP is already published by spec.containers[0].ports[0]")
    );
    // Different protocols, or different host addresses, do not clash.
    parse_pod(&with_ports(
        "[{containerPort: 80, hostPort: 8080}, {containerPort: 80, hostPort: 8080, protocol: UDP}]",
    ))
    .unwrap();
    parse_pod(&with_ports("[{containerPort: 80, hostPort: 8080, hostIP: 127.0.0.1}, {containerPort: 81, hostPort: 8080, hostIP: 127.0.0.2}]")).unwrap();
    assert!(err("[{containerPort: 80, hostPort: 8080, hostIP: 127.0.0.1}, {containerPort: 81, hostPort: 8080, hostIP: 0.0.0.0}]").contains("already published"));
    assert!(err("[{containerPort: 0}]").contains("containerPort 0"));
    assert!(err("[{containerPort: 80, hostPort: 70000}]").contains("hostPort 70000"));
    assert!(err("[{containerPort: 80, protocol: SCTP}]").contains("ports[0].protocol"));
    assert!(err("[{containerPort: 80, protocol: ICMP}]").contains("not TCP or UDP"));
    assert!(err("[{containerPort: 80, hostPort: 80, hostIP: \"::1\"}]").contains("IPv4"));
    assert!(
        err("[{containerPort: 80, hostPort: 80, hostIP: nowhere}]").contains("not an IPv4 address")
    );
    assert!(err("[{containerPort: 80, name: Not_A_Name}]").contains("service name"));
    assert!(err("[{containerPort: 80, hostPort: 80, hostPath: x}]").contains("ports[0].hostPath"));
}

mod security_context {
    use super::*;

    fn resolve(
        yaml_sc: &str,
        container_sc: &str,
    ) -> Result<coffer_policy::ResolvedContainer, PolicyError> {
        let pod = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\nspec:\n  securityContext: {{{yaml_sc}}}\n  containers:\n  - name: a\n    image: app:1\n    securityContext: {{{container_sc}}}\n");
        let pod = parse_pod(&pod)?;
        coffer_policy::resolve_container(&pod, 0, &facts()["app:1"])
    }

    #[test]
    fn the_pods_run_as_user_and_group_apply_and_the_containers_own_win() {
        let r = resolve("runAsUser: 33, runAsGroup: 44", "").unwrap();
        assert_eq!((r.user.as_str(), r.group.as_str()), ("33", "44"));
        let r = resolve("runAsUser: 33, runAsGroup: 44", "runAsUser: 7").unwrap();
        assert_eq!((r.user.as_str(), r.group.as_str()), ("7", "44"));
    }

    #[test]
    fn run_as_non_root_refuses_a_container_that_would_run_as_root() {
        let e = resolve("runAsNonRoot: true", "runAsUser: 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("runAsNonRoot") && e.contains("uid 0"), "{e}");
        // The image's user 1000 is not root.
        assert_eq!(resolve("runAsNonRoot: true", "").unwrap().user, "1000");
        // The container's own runAsNonRoot: false overrides the Pod's.
        assert_eq!(
            resolve("runAsNonRoot: true", "runAsNonRoot: false, runAsUser: 0")
                .unwrap()
                .user,
            "0"
        );
    }

    #[test]
    fn supplementary_groups_are_the_images_memberships_the_pods_groups_and_fs_group() {
        // The image's user `app` (1000) is a member of staff (50).
        assert_eq!(resolve("", "").unwrap().supplemental_groups, [50]);
        let r = resolve("supplementalGroups: [9, 7, 9], fsGroup: 2000", "").unwrap();
        assert_eq!(r.supplemental_groups, [7, 9, 50, 2000]);
        // The primary group is not repeated; a user with no memberships has none from the image.
        // (www-data, 33, is a member of nothing; the image's USER 1000:1000 names group 1000.)
        let r = resolve("supplementalGroups: [1000, 5]", "runAsUser: 33").unwrap();
        assert_eq!(
            (r.group.as_str(), &r.supplemental_groups[..]),
            ("1000", &[5][..])
        );
        let r = resolve("supplementalGroups: [44]", "runAsUser: 33, runAsGroup: 44").unwrap();
        assert!(r.supplemental_groups.is_empty(), "{r:?}");
    }

    #[test]
    fn the_policy_pins_groups_read_only_root_and_fs_group() {
        let pod = parse_pod("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  securityContext: {fsGroup: 2000}\n  containers:\n  - name: a\n    image: app:1\n    securityContext: {readOnlyRootFilesystem: true}\n  - name: b\n    image: app:1\n").unwrap();
        let text = generate(&pod, &facts(), &GenOptions::default()).unwrap();
        let cs = containers(&text);
        assert_eq!(cs[0]["read_only_root_filesystem"], true);
        assert_eq!(cs[1]["read_only_root_filesystem"], false);
        let groups: Vec<(&str, &str)> = cs[1]["user"]["group_idnames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["pattern"].as_str().unwrap(),
                    g["strategy"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(groups, [("1000", "id"), ("50", "id"), ("2000", "id")]);
        assert!(text.contains("\ncoffer_fs_group := 2000\n"), "{text}");
        let settings =
            coffer_policy::Settings::of(&mut coffer_policy::Enforcer::new(&text).unwrap()).unwrap();
        assert_eq!(settings.fs_group, Some(2000));
        // Without fsGroup: no setting.
        let plain = generate(&parse_pod(POD).unwrap(), &facts(), &GenOptions::default()).unwrap();
        assert!(!plain.contains("coffer_fs_group"));
        let bad = text.replace("coffer_fs_group := 2000", "coffer_fs_group := \"wheel\"");
        assert!(
            coffer_policy::Settings::of(&mut coffer_policy::Enforcer::new(&bad).unwrap()).is_err()
        );
    }

    #[test]
    fn pod_security_context_fields_coffer_lacks_are_refused_by_name() {
        let e = resolve("fsGroupChangePolicy: Always", "").unwrap_err();
        assert!(
            matches!(&e, PolicyError::Unsupported { field, .. } if field.contains("fsGroupChangePolicy")),
            "{e}"
        );
    }
}

/// Issue #16: `framework.rego` and generated policies declared different framework versions
/// (0.1.0 and 0.2.3). Both now declare Azure's 0.2.3, from one constant.
#[test]
fn generated_policies_and_the_framework_declare_one_framework_version() {
    assert_eq!(FRAMEWORK_VERSION, "0.2.3");
    let declared = |text: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("framework_version := "))
            .map(|v| v.trim_matches('"').to_string())
    };
    assert_eq!(declared(FRAMEWORK_REGO).as_deref(), Some(FRAMEWORK_VERSION));
    let policy = generate(&parse_pod(POD).unwrap(), &facts(), &GenOptions::default()).unwrap();
    assert_eq!(declared(&policy).as_deref(), Some(FRAMEWORK_VERSION));
    // As the engine reads it from the loaded policy.
    let mut enforcer = Enforcer::new(&policy).unwrap();
    assert_eq!(
        enforcer.policy_value("framework_version").unwrap(),
        Some(Value::String(FRAMEWORK_VERSION.into()))
    );
}
