//! `framework.rego`, one test per rule branch (issue #16).
//!
//! Every test starts from a request the fixture policy allows and changes one thing. A denial must
//! give exactly the reason of that one thing (`errors` lists each check that failed, so a change
//! that trips a second check shows up), and must leave the group state as it was.
//!
//! The fixture policy is written here, not generated: each test can then flip one field of the
//! policy as well as of the request. `tests/gen.rs` checks that generated policies allow what the
//! launcher asks for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use coffer_policy::{Decision, EnforcementPoint, Enforcer, PolicyError, ENFORCEMENT_POINTS};
use serde_json::{json, Value};

// ---------------------------------------------------------------- fixture

/// dm-verity root hashes: the fixture container's base and top layer, and one no container has.
const BASE: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const TOP: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const STRANGER: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

const BASE_AT: &str = "/run/layers/0";
const TOP_AT: &str = "/run/layers/1";
const ROOTFS: &str = "/run/c1/rootfs";

const CAPS: [&str; 2] = ["CAP_CHOWN", "CAP_KILL"];
const CAP_KINDS: [&str; 5] = [
    "ambient",
    "bounding",
    "effective",
    "inheritable",
    "permitted",
];

const SWITCHES: [&str; 6] = [
    "allow_properties_access",
    "allow_dump_stacks",
    "allow_runtime_logging",
    "allow_environment_variable_dropping",
    "allow_unencrypted_scratch",
    "allow_capability_dropping",
];

fn data_mount() -> Value {
    json!({"destination": "/data", "options": ["rbind", "rshared", "rw"], "source": "sandbox:///volumes/data", "type": "bind"})
}

/// The one container of the fixture policy.
fn app() -> Value {
    json!({
        "name": "app",
        "id": "app:1",
        "layers": [BASE, TOP],
        "command": ["/bin/app", "--serve"],
        "working_dir": "/srv",
        "env_rules": [
            {"pattern": "PATH=/bin", "strategy": "string", "required": true},
            {"pattern": "MODE=prod", "strategy": "string", "required": false},
            {"pattern": "TOKEN=[0-9a-f]+", "strategy": "re2", "required": false},
        ],
        "user": {
            "user_idname": {"pattern": "1000", "strategy": "id"},
            "group_idnames": [{"pattern": "1000", "strategy": "id"}, {"pattern": "50", "strategy": "id"}],
            "umask": "0022",
        },
        "capabilities": {"ambient": [], "bounding": CAPS, "effective": CAPS, "inheritable": [], "permitted": CAPS},
        "allow_elevated": false,
        "no_new_privileges": false,
        "mounts": [data_mount()],
        "exec_processes": [{"command": ["/bin/app", "--health"], "signals": [10], "allow_stdio_access": true}],
        "signals": [15],
        "allow_stdio_access": true,
        "read_only_root_filesystem": false,
        "resources": {"cpu_millis": 500, "memory_limit": 67_108_864},
        "seccomp_profile_sha256": "",
    })
}

/// A policy shaped like a generated one: containers, external processes, the `allow_*` switches
/// (all off unless turned on) and every point mapped to the framework.
#[derive(Clone)]
struct Policy {
    containers: Vec<Value>,
    external: Vec<Value>,
    switches: BTreeMap<&'static str, bool>,
}

impl Policy {
    fn new() -> Self {
        Policy {
            containers: vec![app()],
            external: Vec::new(),
            switches: SWITCHES.iter().map(|s| (*s, false)).collect(),
        }
    }

    /// Change the fixture container.
    fn with(mut self, change: impl FnOnce(&mut Value)) -> Self {
        change(&mut self.containers[0]);
        self
    }

    /// Add a container after the fixture one.
    fn and(mut self, container: Value) -> Self {
        self.containers.push(container);
        self
    }

    fn external(mut self, process: Value) -> Self {
        self.external.push(process);
        self
    }

    fn on(mut self, switch: &'static str) -> Self {
        self.switches.insert(switch, true);
        self
    }

    /// Leave the switch out of the policy text.
    fn without(mut self, switch: &'static str) -> Self {
        self.switches.remove(switch);
        self
    }

    fn text(&self) -> String {
        let mut out = String::from("package policy\n\napi_version := \"0.10.0\"\n\n");
        out.push_str(&format!("containers := {}\n\n", json!(self.containers)));
        out.push_str(&format!(
            "external_processes := {}\n\n",
            json!(self.external)
        ));
        for (name, on) in &self.switches {
            out.push_str(&format!("{name} := {on}\n"));
        }
        out.push('\n');
        for p in ENFORCEMENT_POINTS {
            out.push_str(&format!("{p} := data.framework.{p}\n"));
        }
        out.push_str("\nreason := {\"errors\": data.framework.errors}\n");
        out
    }

    fn enforcer(&self) -> Enforcer {
        Enforcer::new(&self.text()).unwrap()
    }
}

fn mount(target: &str, hash: &str) -> Value {
    json!({"target": target, "deviceHash": hash})
}

fn overlay(id: &str, layer_paths: &[&str], target: &str) -> Value {
    json!({"containerID": id, "layerPaths": layer_paths, "target": target})
}

/// The fixture container's layers, mounted.
fn layers_mounted(p: &Policy) -> Enforcer {
    let mut e = p.enforcer();
    allow(&mut e, "mount_device", mount(BASE_AT, BASE));
    allow(&mut e, "mount_device", mount(TOP_AT, TOP));
    e
}

/// ... with the overlay of container c1 (top layer first).
fn overlaid(p: &Policy) -> Enforcer {
    let mut e = layers_mounted(p);
    allow(
        &mut e,
        "mount_overlay",
        overlay("c1", &[TOP_AT, BASE_AT], ROOTFS),
    );
    e
}

/// ... and c1 created.
fn created(p: &Policy) -> Enforcer {
    let mut e = overlaid(p);
    allow(&mut e, "create_container", create_input());
    e
}

/// The create_container request the fixture policy allows for c1.
fn create_input() -> Value {
    json!({
        "containerID": "c1",
        "argList": ["/bin/app", "--serve"],
        "envList": ["PATH=/bin", "MODE=prod", "TOKEN=00ff"],
        "workingDir": "/srv",
        "mounts": [data_mount()],
        "privileged": false,
        "noNewPrivileges": false,
        "user": {"id": "1000", "name": "app"},
        "groups": [{"id": "1000", "name": "app"}, {"id": "50", "name": "staff"}],
        "umask": "0022",
        "capabilities": {"ambient": [], "bounding": CAPS, "effective": CAPS, "inheritable": [], "permitted": CAPS},
        "readOnlyRootFilesystem": false,
        "resources": {"cpu_millis": 500, "memory_limit": 67_108_864},
    })
}

/// The exec_in_container request the fixture policy allows in c1.
fn exec_input() -> Value {
    json!({"containerID": "c1", "argList": ["/bin/app", "--health"], "envList": ["PATH=/bin"], "workingDir": "/srv"})
}

fn signal(signal: u32, init: bool, args: &[&str]) -> Value {
    json!({"containerID": "c1", "signal": signal, "isInitProcess": init, "argList": args})
}

fn allow(e: &mut Enforcer, rule: &str, input: Value) -> Decision {
    let d = e.decide_named(rule, &input).unwrap();
    assert!(d.allowed, "{rule} {input} was denied: {:?}", d.reason);
    d
}

fn errors(d: &Decision) -> Vec<String> {
    d.reason
        .as_ref()
        .and_then(|r| r.get("errors"))
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|e| e.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Denied with exactly `reason`, and the state unchanged.
fn deny(e: &mut Enforcer, rule: &str, input: Value, reason: &str) -> Decision {
    let before = e.state();
    let d = e.decide_named(rule, &input).unwrap();
    assert!(!d.allowed, "{rule} {input} was allowed: {}", d.result);
    assert_eq!(errors(&d), [reason], "{rule} {input}");
    assert_eq!(e.state(), before, "a denied {rule} changed the state");
    d
}

/// create_container for c1 (overlay mounted), the fixture request changed by `change`.
fn create(p: &Policy, change: impl FnOnce(&mut Value)) -> (Enforcer, Value) {
    let e = overlaid(p);
    let mut input = create_input();
    change(&mut input);
    (e, input)
}

fn create_allowed(p: &Policy, change: impl FnOnce(&mut Value)) -> Decision {
    let (mut e, input) = create(p, change);
    allow(&mut e, "create_container", input)
}

fn create_denied(p: &Policy, change: impl FnOnce(&mut Value), reason: &str) {
    let (mut e, input) = create(p, change);
    deny(&mut e, "create_container", input, reason);
}

// ---------------------------------------------------------------- mount_device

mod mount_device {
    use super::*;

    #[test]
    fn a_layer_of_a_policy_container_mounts_and_is_recorded() {
        let mut e = Policy::new().enforcer();
        allow(&mut e, "mount_device", mount(BASE_AT, BASE));
        assert_eq!(e.state()["devices"][BASE_AT], BASE);
    }

    #[test]
    fn a_layer_of_any_container_in_the_policy_mounts() {
        let other = json!({"layers": [STRANGER]});
        let mut e = Policy::new().and(other).enforcer();
        allow(&mut e, "mount_device", mount(BASE_AT, STRANGER));
    }

    #[test]
    fn a_hash_no_container_has_is_denied() {
        let mut e = Policy::new().enforcer();
        deny(
            &mut e,
            "mount_device",
            mount(BASE_AT, STRANGER),
            "deviceHash is not a layer of any container in the policy",
        );
    }

    #[test]
    fn a_prefix_of_a_layer_hash_is_denied() {
        let mut e = Policy::new().enforcer();
        deny(
            &mut e,
            "mount_device",
            mount(BASE_AT, &BASE[..32]),
            "deviceHash is not a layer of any container in the policy",
        );
    }

    #[test]
    fn a_second_device_at_a_mounted_target_is_denied() {
        let mut e = layers_mounted(&Policy::new());
        deny(
            &mut e,
            "mount_device",
            mount(BASE_AT, TOP),
            "a device is already mounted at target",
        );
    }

    #[test]
    fn the_same_layer_at_a_second_target_is_allowed() {
        let mut e = layers_mounted(&Policy::new());
        allow(&mut e, "mount_device", mount("/run/layers/2", BASE));
    }

    #[test]
    fn a_target_matching_mount_path_regex_is_allowed() {
        let mut e = Policy::new().enforcer();
        let mut input = mount(BASE_AT, BASE);
        input["mountPathRegex"] = json!("/run/layers/[0-9]+");
        allow(&mut e, "mount_device", input);
    }

    #[test]
    fn a_target_outside_mount_path_regex_is_denied() {
        let mut e = Policy::new().enforcer();
        let mut input = mount("/etc", BASE);
        input["mountPathRegex"] = json!("/run/layers/[0-9]+");
        deny(
            &mut e,
            "mount_device",
            input,
            "target does not match mountPathRegex",
        );
    }

    #[test]
    fn mount_path_regex_is_anchored_so_a_traversing_suffix_is_denied() {
        let mut e = Policy::new().enforcer();
        let mut input = mount("/run/layers/0/../../../etc", BASE);
        input["mountPathRegex"] = json!("/run/layers/[0-9]+");
        deny(
            &mut e,
            "mount_device",
            input,
            "target does not match mountPathRegex",
        );
    }

    #[test]
    fn a_target_forgotten_after_a_failed_mount_can_be_mounted_again() {
        let mut e = layers_mounted(&Policy::new());
        e.forget("devices", BASE_AT);
        assert!(e.state()["devices"].get(BASE_AT).is_none());
        allow(&mut e, "mount_device", mount(BASE_AT, BASE));
    }
}

// ---------------------------------------------------------------- unmount_device

mod unmount_device {
    use super::*;

    #[test]
    fn a_mounted_device_unmounts_and_leaves_the_state() {
        let mut e = layers_mounted(&Policy::new());
        allow(&mut e, "unmount_device", json!({"unmountTarget": BASE_AT}));
        assert!(e.state()["devices"].get(BASE_AT).is_none());
        assert_eq!(e.state()["devices"][TOP_AT], TOP);
    }

    #[test]
    fn a_target_never_mounted_is_denied() {
        let mut e = layers_mounted(&Policy::new());
        deny(
            &mut e,
            "unmount_device",
            json!({"unmountTarget": "/run/layers/9"}),
            "no device is mounted at unmountTarget",
        );
    }

    #[test]
    fn a_second_unmount_is_denied() {
        let mut e = layers_mounted(&Policy::new());
        allow(&mut e, "unmount_device", json!({"unmountTarget": BASE_AT}));
        deny(
            &mut e,
            "unmount_device",
            json!({"unmountTarget": BASE_AT}),
            "no device is mounted at unmountTarget",
        );
    }

    #[test]
    fn an_unmounted_target_can_be_mounted_again() {
        let mut e = layers_mounted(&Policy::new());
        allow(&mut e, "unmount_device", json!({"unmountTarget": BASE_AT}));
        allow(&mut e, "mount_device", mount(BASE_AT, TOP));
        assert_eq!(e.state()["devices"][BASE_AT], TOP);
    }
}

// ---------------------------------------------------------------- mount_overlay

mod mount_overlay {
    use super::*;

    #[test]
    fn the_layers_top_first_mount_and_record_the_candidates() {
        let e = overlaid(&Policy::new());
        let state = e.state();
        assert_eq!(state["matches"]["c1"], json!([app()]));
        assert_eq!(state["overlayTargets"][ROOTFS], "c1");
    }

    #[test]
    fn the_layers_base_first_are_denied() {
        let mut e = layers_mounted(&Policy::new());
        deny(
            &mut e,
            "mount_overlay",
            overlay("c1", &[BASE_AT, TOP_AT], ROOTFS),
            "no container in the policy has these layers in this order",
        );
    }

    #[test]
    fn a_missing_layer_is_denied() {
        let mut e = layers_mounted(&Policy::new());
        deny(
            &mut e,
            "mount_overlay",
            overlay("c1", &[TOP_AT], ROOTFS),
            "no container in the policy has these layers in this order",
        );
    }

    #[test]
    fn an_extra_layer_is_denied() {
        let mut e = layers_mounted(&Policy::new());
        allow(&mut e, "mount_device", mount("/run/layers/2", BASE));
        deny(
            &mut e,
            "mount_overlay",
            overlay("c1", &["/run/layers/2", TOP_AT, BASE_AT], ROOTFS),
            "no container in the policy has these layers in this order",
        );
    }

    #[test]
    fn a_layer_path_with_no_device_is_denied() {
        let mut e = Policy::new().enforcer();
        allow(&mut e, "mount_device", mount(TOP_AT, TOP));
        deny(
            &mut e,
            "mount_overlay",
            overlay("c1", &[TOP_AT, BASE_AT], ROOTFS),
            "no container in the policy has these layers in this order",
        );
    }

    #[test]
    fn a_layer_unmounted_before_the_overlay_is_denied() {
        let mut e = layers_mounted(&Policy::new());
        allow(&mut e, "unmount_device", json!({"unmountTarget": BASE_AT}));
        deny(
            &mut e,
            "mount_overlay",
            overlay("c1", &[TOP_AT, BASE_AT], ROOTFS),
            "no container in the policy has these layers in this order",
        );
    }

    #[test]
    fn a_device_of_another_layer_at_a_layer_path_is_denied() {
        let p = Policy::new().and(json!({"layers": [STRANGER]}));
        let mut e = p.enforcer();
        allow(&mut e, "mount_device", mount(BASE_AT, STRANGER));
        allow(&mut e, "mount_device", mount(TOP_AT, TOP));
        deny(
            &mut e,
            "mount_overlay",
            overlay("c1", &[TOP_AT, BASE_AT], ROOTFS),
            "no container in the policy has these layers in this order",
        );
    }

    #[test]
    fn a_second_overlay_for_the_same_container_is_denied() {
        let mut e = overlaid(&Policy::new());
        deny(
            &mut e,
            "mount_overlay",
            overlay("c1", &[TOP_AT, BASE_AT], "/run/c1/other"),
            "the container already has an overlay",
        );
    }

    #[test]
    fn a_second_overlay_at_the_same_target_is_denied() {
        let mut e = overlaid(&Policy::new());
        deny(
            &mut e,
            "mount_overlay",
            overlay("c2", &[TOP_AT, BASE_AT], ROOTFS),
            "an overlay is already mounted at target",
        );
    }

    #[test]
    fn a_second_container_on_the_same_layers_at_its_own_target_is_allowed() {
        let mut e = overlaid(&Policy::new());
        allow(
            &mut e,
            "mount_overlay",
            overlay("c2", &[TOP_AT, BASE_AT], "/run/c2/rootfs"),
        );
    }

    #[test]
    fn every_container_with_these_layers_stays_a_candidate() {
        let twin = Policy::new().containers[0].clone();
        let mut twin = twin;
        twin["name"] = json!("twin");
        let e = overlaid(&Policy::new().and(twin));
        assert_eq!(e.state()["matches"]["c1"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn an_overlay_forgotten_after_a_failed_mount_can_be_mounted_again() {
        let mut e = overlaid(&Policy::new());
        e.forget("matches", "c1");
        e.forget("overlayTargets", ROOTFS);
        allow(
            &mut e,
            "mount_overlay",
            overlay("c1", &[TOP_AT, BASE_AT], ROOTFS),
        );
    }
}

// ---------------------------------------------------------------- unmount_overlay

mod unmount_overlay {
    use super::*;

    #[test]
    fn a_mounted_overlay_unmounts_and_leaves_the_state() {
        let mut e = overlaid(&Policy::new());
        allow(&mut e, "unmount_overlay", json!({"unmountTarget": ROOTFS}));
        assert!(e.state()["overlayTargets"].get(ROOTFS).is_none());
    }

    #[test]
    fn a_target_with_no_overlay_is_denied() {
        let mut e = overlaid(&Policy::new());
        deny(
            &mut e,
            "unmount_overlay",
            json!({"unmountTarget": "/run/c9/rootfs"}),
            "no overlay is mounted at unmountTarget",
        );
    }

    #[test]
    fn a_second_unmount_is_denied() {
        let mut e = overlaid(&Policy::new());
        allow(&mut e, "unmount_overlay", json!({"unmountTarget": ROOTFS}));
        deny(
            &mut e,
            "unmount_overlay",
            json!({"unmountTarget": ROOTFS}),
            "no overlay is mounted at unmountTarget",
        );
    }

    #[test]
    fn the_freed_target_takes_another_containers_overlay() {
        let mut e = overlaid(&Policy::new());
        allow(&mut e, "unmount_overlay", json!({"unmountTarget": ROOTFS}));
        allow(
            &mut e,
            "mount_overlay",
            overlay("c2", &[TOP_AT, BASE_AT], ROOTFS),
        );
    }
}

// ---------------------------------------------------------------- create_container

mod create_container {
    use super::*;

    #[test]
    fn the_fixture_request_is_allowed_with_its_environment_capabilities_and_stdio() {
        let d = create_allowed(&Policy::new(), |_| {});
        assert_eq!(
            d.result["env_list"],
            json!(["PATH=/bin", "MODE=prod", "TOKEN=00ff"])
        );
        assert_eq!(d.result["caps_list"], create_input()["capabilities"]);
        assert_eq!(d.result["allow_stdio_access"], true);
    }

    #[test]
    fn the_container_is_recorded_as_started() {
        let e = created(&Policy::new());
        assert_eq!(e.state()["started"]["c1"], true);
        assert_eq!(e.state()["matches"]["c1"], json!([app()]));
    }

    #[test]
    fn stdio_access_follows_the_policy() {
        let p = Policy::new().with(|c| c["allow_stdio_access"] = json!(false));
        let d = create_allowed(&p, |_| {});
        assert_eq!(d.result["allow_stdio_access"], false);
    }

    // -- state

    #[test]
    fn a_container_without_an_overlay_is_denied() {
        let mut e = layers_mounted(&Policy::new());
        deny(
            &mut e,
            "create_container",
            create_input(),
            "the container has no overlay (mount_overlay must come first)",
        );
    }

    #[test]
    fn a_privileged_container_without_an_overlay_is_denied_for_the_overlay_only() {
        let mut e = layers_mounted(&Policy::new());
        let mut input = create_input();
        input["privileged"] = json!(true);
        deny(
            &mut e,
            "create_container",
            input,
            "the container has no overlay (mount_overlay must come first)",
        );
    }

    #[test]
    fn a_container_created_twice_is_denied() {
        let mut e = created(&Policy::new());
        deny(
            &mut e,
            "create_container",
            create_input(),
            "the container was already created",
        );
    }

    #[test]
    fn a_container_shut_down_cannot_be_created_again() {
        let mut e = created(&Policy::new());
        allow(&mut e, "shutdown_container", json!({"containerID": "c1"}));
        deny(
            &mut e,
            "create_container",
            create_input(),
            "the container has no overlay (mount_overlay must come first)",
        );
    }

    #[test]
    fn a_container_forgotten_after_a_failed_start_can_be_created_again() {
        let mut e = created(&Policy::new());
        e.forget("started", "c1");
        allow(&mut e, "create_container", create_input());
    }

    // -- command

    #[test]
    fn another_command_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["argList"] = json!(["/bin/sh", "--serve"]),
            "invalid command",
        );
    }

    #[test]
    fn an_extra_argument_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["argList"] = json!(["/bin/app", "--serve", "--debug"]),
            "invalid command",
        );
    }

    #[test]
    fn a_missing_argument_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["argList"] = json!(["/bin/app"]),
            "invalid command",
        );
    }

    #[test]
    fn the_arguments_in_another_order_are_denied() {
        create_denied(
            &Policy::new(),
            |i| i["argList"] = json!(["--serve", "/bin/app"]),
            "invalid command",
        );
    }

    // -- working directory

    #[test]
    fn another_working_directory_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["workingDir"] = json!("/"),
            "invalid working directory",
        );
    }

    #[test]
    fn a_working_directory_with_a_trailing_slash_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["workingDir"] = json!("/srv/"),
            "invalid working directory",
        );
    }

    // -- privileges

    #[test]
    fn a_privileged_request_is_denied_without_allow_elevated() {
        create_denied(
            &Policy::new(),
            |i| i["privileged"] = json!(true),
            "privileged (elevated) containers are not allowed",
        );
    }

    #[test]
    fn a_privileged_request_is_allowed_with_allow_elevated() {
        let p = Policy::new().with(|c| c["allow_elevated"] = json!(true));
        create_allowed(&p, |i| i["privileged"] = json!(true));
    }

    #[test]
    fn allow_elevated_does_not_force_a_privileged_container() {
        let p = Policy::new().with(|c| c["allow_elevated"] = json!(true));
        create_allowed(&p, |_| {});
    }

    #[test]
    fn no_new_privileges_required_by_the_policy_and_not_asked_for_is_denied() {
        let p = Policy::new().with(|c| c["no_new_privileges"] = json!(true));
        create_denied(&p, |_| {}, "no_new_privileges is required");
    }

    #[test]
    fn no_new_privileges_required_by_the_policy_and_asked_for_is_allowed() {
        let p = Policy::new().with(|c| c["no_new_privileges"] = json!(true));
        create_allowed(&p, |i| i["noNewPrivileges"] = json!(true));
    }

    #[test]
    fn no_new_privileges_the_policy_does_not_require_may_still_be_asked_for() {
        create_allowed(&Policy::new(), |i| i["noNewPrivileges"] = json!(true));
    }

    // -- user, groups, umask

    #[test]
    fn another_user_id_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["user"] = json!({"id": "0", "name": "app"}),
            "invalid user or groups",
        );
    }

    #[test]
    fn a_user_pinned_by_id_ignores_the_name() {
        create_allowed(&Policy::new(), |i| {
            i["user"] = json!({"id": "1000", "name": "root"});
        });
    }

    #[test]
    fn a_user_pinned_by_name_is_allowed_under_that_name() {
        let p = Policy::new()
            .with(|c| c["user"]["user_idname"] = json!({"pattern": "app", "strategy": "name"}));
        create_allowed(&p, |i| i["user"] = json!({"id": "4242", "name": "app"}));
    }

    #[test]
    fn a_user_pinned_by_name_is_denied_under_another_name() {
        let p = Policy::new()
            .with(|c| c["user"]["user_idname"] = json!({"pattern": "app", "strategy": "name"}));
        create_denied(
            &p,
            |i| i["user"] = json!({"id": "1000", "name": "root"}),
            "invalid user or groups",
        );
    }

    #[test]
    fn a_user_matching_a_re2_pattern_is_allowed() {
        let p = Policy::new()
            .with(|c| c["user"]["user_idname"] = json!({"pattern": "app[0-9]", "strategy": "re2"}));
        create_allowed(&p, |i| i["user"] = json!({"id": "1000", "name": "app7"}));
    }

    #[test]
    fn a_user_re2_pattern_is_anchored() {
        let p = Policy::new()
            .with(|c| c["user"]["user_idname"] = json!({"pattern": "app[0-9]", "strategy": "re2"}));
        create_denied(
            &p,
            |i| i["user"] = json!({"id": "1000", "name": "app7-root"}),
            "invalid user or groups",
        );
    }

    #[test]
    fn a_user_rule_of_strategy_any_allows_any_user() {
        let p = Policy::new()
            .with(|c| c["user"]["user_idname"] = json!({"pattern": "", "strategy": "any"}));
        create_allowed(&p, |i| i["user"] = json!({"id": "0", "name": "root"}));
    }

    #[test]
    fn an_unknown_user_strategy_is_denied() {
        let p = Policy::new()
            .with(|c| c["user"]["user_idname"] = json!({"pattern": "1000", "strategy": "glob"}));
        create_denied(&p, |_| {}, "invalid user or groups");
    }

    #[test]
    fn an_extra_group_is_denied() {
        create_denied(
            &Policy::new(),
            |i| {
                i["groups"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"id": "0", "name": "root"}));
            },
            "invalid user or groups",
        );
    }

    #[test]
    fn a_missing_pinned_group_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["groups"] = json!([{"id": "1000", "name": "app"}]),
            "invalid user or groups",
        );
    }

    #[test]
    fn a_supplementary_group_as_the_primary_one_is_denied() {
        create_denied(
            &Policy::new(),
            |i| {
                i["groups"] = json!([{"id": "50", "name": "staff"}, {"id": "1000", "name": "app"}]);
            },
            "invalid user or groups",
        );
    }

    #[test]
    fn a_group_twice_is_denied() {
        create_denied(
            &Policy::new(),
            |i| {
                i["groups"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"id": "1000", "name": "app"}));
            },
            "invalid user or groups",
        );
    }

    #[test]
    fn groups_pinned_by_name_are_matched_by_name() {
        let p = Policy::new().with(|c| {
            c["user"]["group_idnames"] = json!([{"pattern": "app", "strategy": "name"}, {"pattern": "staff", "strategy": "name"}]);
        });
        create_allowed(&p, |_| {});
        create_denied(
            &p,
            |i| i["groups"][1]["name"] = json!("wheel"),
            "invalid user or groups",
        );
    }

    #[test]
    fn groups_not_pinned_by_id_may_be_left_out() {
        let p = Policy::new().with(|c| {
            c["user"]["group_idnames"] = json!([{"pattern": "", "strategy": "any"}]);
        });
        create_allowed(&p, |i| i["groups"] = json!([]));
    }

    #[test]
    fn another_umask_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["umask"] = json!("0000"),
            "invalid user or groups",
        );
    }

    // -- root file system

    #[test]
    fn a_read_only_root_the_policy_does_not_pin_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["readOnlyRootFilesystem"] = json!(true),
            "invalid read-only root file system (the policy pins readOnlyRootFilesystem)",
        );
    }

    #[test]
    fn a_writable_root_when_the_policy_pins_it_read_only_is_denied() {
        let p = Policy::new().with(|c| c["read_only_root_filesystem"] = json!(true));
        create_denied(
            &p,
            |_| {},
            "invalid read-only root file system (the policy pins readOnlyRootFilesystem)",
        );
    }

    #[test]
    fn a_read_only_root_the_policy_pins_is_allowed() {
        let p = Policy::new().with(|c| c["read_only_root_filesystem"] = json!(true));
        create_allowed(&p, |i| i["readOnlyRootFilesystem"] = json!(true));
    }

    #[test]
    fn a_policy_without_the_field_means_a_writable_root() {
        let p = Policy::new().with(|c| {
            c.as_object_mut()
                .unwrap()
                .remove("read_only_root_filesystem");
        });
        create_allowed(&p, |_| {});
        create_denied(
            &p,
            |i| i["readOnlyRootFilesystem"] = json!(true),
            "invalid read-only root file system (the policy pins readOnlyRootFilesystem)",
        );
    }

    // -- resources

    #[test]
    fn another_memory_limit_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["resources"]["memory_limit"] = json!(1_u64 << 40),
            "invalid resources (memory and CPU limits differ from the policy's)",
        );
    }

    #[test]
    fn no_cpu_limit_is_denied_when_the_policy_pins_one() {
        create_denied(
            &Policy::new(),
            |i| i["resources"]["cpu_millis"] = json!(null),
            "invalid resources (memory and CPU limits differ from the policy's)",
        );
    }

    #[test]
    fn a_policy_without_resources_allows_any() {
        let p = Policy::new().with(|c| {
            c.as_object_mut().unwrap().remove("resources");
        });
        create_allowed(&p, |i| i["resources"] = json!({"memory_limit": 1}));
    }

    // -- mounts

    #[test]
    fn no_mounts_are_allowed() {
        create_allowed(&Policy::new(), |i| i["mounts"] = json!([]));
    }

    #[test]
    fn mount_options_in_another_order_are_allowed() {
        create_allowed(&Policy::new(), |i| {
            i["mounts"][0]["options"] = json!(["rw", "rbind", "rshared"]);
        });
    }

    #[test]
    fn a_mount_at_another_destination_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["mounts"][0]["destination"] = json!("/etc"),
            "mount not allowed: /etc",
        );
    }

    #[test]
    fn a_mount_of_another_source_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["mounts"][0]["source"] = json!("/dev/sda"),
            "mount not allowed: /data",
        );
    }

    #[test]
    fn a_mount_source_is_matched_whole_so_a_longer_volume_name_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["mounts"][0]["source"] = json!("sandbox:///volumes/data2"),
            "mount not allowed: /data",
        );
    }

    #[test]
    fn a_mount_source_is_matched_whole_so_a_traversing_suffix_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["mounts"][0]["source"] = json!("sandbox:///volumes/data/../../etc"),
            "mount not allowed: /data",
        );
    }

    #[test]
    fn a_mount_source_pattern_in_the_policy_is_a_regular_expression() {
        let p = Policy::new().with(|c| {
            c["mounts"][0]["source"] = json!("sandbox:///volumes/data-[0-9]+");
        });
        create_allowed(&p, |i| {
            i["mounts"][0]["source"] = json!("sandbox:///volumes/data-42");
        });
    }

    #[test]
    fn a_mount_of_another_type_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["mounts"][0]["type"] = json!("tmpfs"),
            "mount not allowed: /data",
        );
    }

    #[test]
    fn a_writable_mount_of_a_read_only_volume_is_denied() {
        let p = Policy::new().with(|c| {
            c["mounts"][0]["options"] = json!(["rbind", "rshared", "ro"]);
        });
        create_denied(&p, |_| {}, "mount not allowed: /data");
    }

    #[test]
    fn a_mount_with_an_extra_option_is_denied() {
        create_denied(
            &Policy::new(),
            |i| {
                i["mounts"][0]["options"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("exec"));
            },
            "mount not allowed: /data",
        );
    }

    #[test]
    fn a_mount_with_a_missing_option_is_denied() {
        create_denied(
            &Policy::new(),
            |i| i["mounts"][0]["options"] = json!(["rbind", "rw"]),
            "mount not allowed: /data",
        );
    }

    #[test]
    fn a_second_mount_the_policy_lacks_is_denied() {
        create_denied(
            &Policy::new(),
            |i| {
                let mut other = data_mount();
                other["destination"] = json!("/host");
                i["mounts"].as_array_mut().unwrap().push(other);
            },
            "mount not allowed: /host",
        );
    }
}

// ---------------------------------------------------------------- capabilities (create_container)

mod capabilities {
    use super::*;

    macro_rules! one_set {
        ($($extra:ident, $dropped:ident: $kind:literal;)*) => {$(
            /// A capability beyond the policy's in this one set is denied.
            #[test]
            fn $extra() {
                create_denied(
                    &Policy::new(),
                    |i| {
                        i["capabilities"][$kind]
                            .as_array_mut()
                            .unwrap()
                            .push(json!("CAP_SYS_ADMIN"));
                    },
                    "capabilities not allowed",
                );
            }

            /// With capability dropping, the capability beyond the policy's is dropped from this
            /// set and the other sets are as asked.
            #[test]
            fn $dropped() {
                let p = Policy::new().on("allow_capability_dropping");
                let d = create_allowed(&p, |i| {
                    i["capabilities"][$kind]
                        .as_array_mut()
                        .unwrap()
                        .push(json!("CAP_SYS_ADMIN"));
                });
                assert_eq!(d.result["caps_list"], create_input()["capabilities"]);
            }
        )*};
    }

    one_set! {
        an_extra_ambient_capability_is_denied, an_extra_ambient_capability_is_dropped: "ambient";
        an_extra_bounding_capability_is_denied, an_extra_bounding_capability_is_dropped: "bounding";
        an_extra_effective_capability_is_denied, an_extra_effective_capability_is_dropped: "effective";
        an_extra_inheritable_capability_is_denied, an_extra_inheritable_capability_is_dropped: "inheritable";
        an_extra_permitted_capability_is_denied, an_extra_permitted_capability_is_dropped: "permitted";
    }

    #[test]
    fn fewer_capabilities_than_the_policys_are_allowed_as_asked() {
        let d = create_allowed(&Policy::new(), |i| {
            i["capabilities"]["effective"] = json!(["CAP_KILL"]);
        });
        assert_eq!(d.result["caps_list"]["effective"], json!(["CAP_KILL"]));
    }

    #[test]
    fn no_capabilities_at_all_are_allowed() {
        let d = create_allowed(&Policy::new(), |i| {
            i.as_object_mut().unwrap().remove("capabilities");
        });
        assert_eq!(d.result["caps_list"], json!({}));
    }

    #[test]
    fn a_capability_is_matched_by_its_whole_name() {
        create_denied(
            &Policy::new(),
            |i| i["capabilities"]["bounding"] = json!(["CAP_CHOWN", "CAP_KILL", "CAP_KILL2"]),
            "capabilities not allowed",
        );
    }

    #[test]
    fn dropping_keeps_only_what_each_set_of_the_policy_allows_sorted() {
        let p = Policy::new().on("allow_capability_dropping");
        let d = create_allowed(&p, |i| {
            for kind in CAP_KINDS {
                i["capabilities"][kind] = json!(["CAP_SYS_ADMIN", "CAP_KILL", "CAP_CHOWN"]);
            }
        });
        assert_eq!(
            d.result["caps_list"],
            json!({"ambient": [], "bounding": CAPS, "effective": CAPS, "inheritable": [], "permitted": CAPS})
        );
    }

    #[test]
    fn a_privileged_container_gets_only_the_capabilities_its_policy_lists() {
        let p = Policy::new().with(|c| c["allow_elevated"] = json!(true));
        create_denied(
            &p,
            |i| {
                i["privileged"] = json!(true);
                i["capabilities"]["bounding"] = json!(["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN"]);
            },
            "capabilities not allowed",
        );
    }
}

// ---------------------------------------------------------------- environment (create_container)

mod environment {
    use super::*;

    fn env(list: &[&str]) -> impl FnOnce(&mut Value) {
        let list = json!(list);
        move |i: &mut Value| i["envList"] = list
    }

    #[test]
    fn a_variable_outside_the_rules_is_denied_without_dropping() {
        create_denied(
            &Policy::new(),
            env(&["PATH=/bin", "LD_PRELOAD=/x.so"]),
            "environment variable not allowed: LD_PRELOAD",
        );
    }

    #[test]
    fn a_variable_outside_the_rules_is_dropped_with_dropping() {
        let p = Policy::new().on("allow_environment_variable_dropping");
        let d = create_allowed(&p, env(&["LD_PRELOAD=/x.so", "PATH=/bin", "MODE=prod"]));
        assert_eq!(d.result["env_list"], json!(["PATH=/bin", "MODE=prod"]));
    }

    #[test]
    fn the_environment_keeps_the_requests_order() {
        let d = create_allowed(&Policy::new(), env(&["TOKEN=1", "MODE=prod", "PATH=/bin"]));
        assert_eq!(
            d.result["env_list"],
            json!(["TOKEN=1", "MODE=prod", "PATH=/bin"])
        );
    }

    #[test]
    fn a_string_rule_does_not_match_a_longer_value() {
        create_denied(
            &Policy::new(),
            env(&["PATH=/bin", "MODE=prodx"]),
            "environment variable not allowed: MODE",
        );
    }

    #[test]
    fn a_string_rule_does_not_match_a_shorter_value() {
        create_denied(
            &Policy::new(),
            env(&["PATH=/bin", "MODE=pro"]),
            "environment variable not allowed: MODE",
        );
    }

    #[test]
    fn a_string_rule_is_not_a_regular_expression() {
        let p = Policy::new().with(|c| {
            c["env_rules"][1] =
                json!({"pattern": "MODE=p.od", "strategy": "string", "required": false});
        });
        create_denied(
            &p,
            env(&["PATH=/bin", "MODE=prod"]),
            "environment variable not allowed: MODE",
        );
        create_allowed(&p, env(&["PATH=/bin", "MODE=p.od"]));
    }

    #[test]
    fn a_re2_rule_allows_what_it_matches() {
        create_allowed(&Policy::new(), env(&["PATH=/bin", "TOKEN=deadbeef"]));
    }

    #[test]
    fn a_re2_rule_is_anchored_at_the_end() {
        create_denied(
            &Policy::new(),
            env(&["PATH=/bin", "TOKEN=00ff;rm"]),
            "environment variable not allowed: TOKEN",
        );
    }

    #[test]
    fn a_re2_rule_is_anchored_at_the_start() {
        create_denied(
            &Policy::new(),
            env(&["PATH=/bin", "XTOKEN=00ff"]),
            "environment variable not allowed: XTOKEN",
        );
    }

    #[test]
    fn a_re2_rule_with_alternatives_is_anchored_as_a_whole() {
        // Without the group around the pattern, `^A=1|B=2$` would match `A=1x`.
        let p = Policy::new().with(|c| {
            c["env_rules"][2] = json!({"pattern": "A=1|B=2", "strategy": "re2", "required": false});
        });
        create_allowed(&p, env(&["PATH=/bin", "A=1", "B=2"]));
        create_denied(
            &p,
            env(&["PATH=/bin", "A=1x"]),
            "environment variable not allowed: A",
        );
    }

    #[test]
    fn a_re2_rule_does_not_match_an_empty_value_it_excludes() {
        create_denied(
            &Policy::new(),
            env(&["PATH=/bin", "TOKEN="]),
            "environment variable not allowed: TOKEN",
        );
    }

    #[test]
    fn a_re2_rule_that_does_not_compile_denies() {
        let p = Policy::new().with(|c| c["env_rules"][2]["pattern"] = json!("TOKEN=(["));
        let (mut e, input) = create(&p, |_| {});
        let before = e.state();
        let d = e.decide_named("create_container", &input).unwrap();
        assert!(!d.allowed, "{}", d.result);
        assert_eq!(e.state(), before);
    }

    #[test]
    fn a_required_variable_missing_is_denied() {
        create_denied(
            &Policy::new(),
            env(&["MODE=prod"]),
            "required environment variable missing: PATH=/bin",
        );
    }

    #[test]
    fn a_required_variable_with_another_value_is_denied_even_with_dropping() {
        let p = Policy::new().on("allow_environment_variable_dropping");
        create_denied(
            &p,
            env(&["PATH=/tmp"]),
            "required environment variable missing: PATH=/bin",
        );
    }

    #[test]
    fn an_optional_variable_may_be_missing() {
        create_allowed(&Policy::new(), env(&["PATH=/bin"]));
    }

    #[test]
    fn a_required_re2_rule_needs_a_matching_variable() {
        let p = Policy::new().with(|c| c["env_rules"][2]["required"] = json!(true));
        create_denied(
            &p,
            env(&["PATH=/bin"]),
            "required environment variable missing: TOKEN=[0-9a-f]+",
        );
        create_allowed(&p, env(&["PATH=/bin", "TOKEN=1"]));
    }

    #[test]
    fn no_environment_at_all_is_denied_when_a_variable_is_required() {
        create_denied(
            &Policy::new(),
            |i| {
                i.as_object_mut().unwrap().remove("envList");
            },
            "required environment variable missing: PATH=/bin",
        );
    }
}

// ---------------------------------------------------------------- several candidates

mod candidates {
    use super::*;

    /// A second container on the fixture's layers with another command.
    fn sibling() -> Value {
        let mut c = app();
        c["name"] = json!("worker");
        c["command"] = json!(["/bin/app", "--work"]);
        c["exec_processes"] = json!([{"command": ["/bin/app", "--drain"], "signals": [1], "allow_stdio_access": false}]);
        c["signals"] = json!([2]);
        c
    }

    #[test]
    fn create_narrows_the_candidates_to_those_that_allow_the_request() {
        let p = Policy::new().and(sibling());
        let mut e = overlaid(&p);
        assert_eq!(e.state()["matches"]["c1"].as_array().unwrap().len(), 2);
        let mut input = create_input();
        input["argList"] = json!(["/bin/app", "--work"]);
        allow(&mut e, "create_container", input);
        assert_eq!(e.state()["matches"]["c1"], json!([sibling()]));
    }

    #[test]
    fn after_narrowing_only_the_chosen_containers_exec_processes_are_allowed() {
        let p = Policy::new().and(sibling());
        let mut e = overlaid(&p);
        let mut input = create_input();
        input["argList"] = json!(["/bin/app", "--work"]);
        allow(&mut e, "create_container", input);
        deny(
            &mut e,
            "exec_in_container",
            exec_input(),
            "process not in the container's exec_processes",
        );
        let mut drain = exec_input();
        drain["argList"] = json!(["/bin/app", "--drain"]);
        allow(&mut e, "exec_in_container", drain);
    }

    #[test]
    fn after_narrowing_only_the_chosen_containers_signals_are_allowed() {
        let p = Policy::new().and(sibling());
        let mut e = overlaid(&p);
        let mut input = create_input();
        input["argList"] = json!(["/bin/app", "--work"]);
        allow(&mut e, "create_container", input);
        deny(
            &mut e,
            "signal_container_process",
            signal(15, true, &[]),
            "signal 15 not allowed for this process",
        );
        allow(&mut e, "signal_container_process", signal(2, true, &[]));
    }

    #[test]
    fn candidates_that_disagree_on_stdio_access_are_denied() {
        let mut twin = app();
        twin["allow_stdio_access"] = json!(false);
        create_denied(
            &Policy::new().and(twin),
            |_| {},
            "candidate containers disagree (environment or stdio access)",
        );
    }

    #[test]
    fn candidates_that_disagree_on_the_environment_are_denied() {
        let mut twin = app();
        twin["env_rules"] =
            json!([{"pattern": "PATH=/bin", "strategy": "string", "required": true}]);
        let p = Policy::new()
            .and(twin)
            .on("allow_environment_variable_dropping");
        create_denied(
            &p,
            |_| {},
            "candidate containers disagree (environment or stdio access)",
        );
    }

    #[test]
    fn candidates_that_agree_are_allowed_and_all_kept() {
        let mut twin = app();
        twin["name"] = json!("twin");
        let mut e = overlaid(&Policy::new().and(twin));
        allow(&mut e, "create_container", create_input());
        assert_eq!(e.state()["matches"]["c1"].as_array().unwrap().len(), 2);
    }
}

// ---------------------------------------------------------------- exec_in_container

mod exec_in_container {
    use super::*;

    #[test]
    fn a_listed_process_is_allowed_with_its_environment_and_stdio() {
        let mut e = created(&Policy::new());
        let d = allow(&mut e, "exec_in_container", exec_input());
        assert_eq!(d.result["env_list"], json!(["PATH=/bin"]));
        assert_eq!(d.result["allow_stdio_access"], true);
    }

    #[test]
    fn an_exec_changes_no_state() {
        let mut e = created(&Policy::new());
        let before = e.state();
        allow(&mut e, "exec_in_container", exec_input());
        assert_eq!(e.state(), before);
    }

    #[test]
    fn stdio_access_follows_the_container() {
        let p = Policy::new().with(|c| c["allow_stdio_access"] = json!(false));
        let mut e = created(&p);
        let d = allow(&mut e, "exec_in_container", exec_input());
        assert_eq!(d.result["allow_stdio_access"], false);
    }

    #[test]
    fn a_container_with_only_an_overlay_is_denied() {
        let mut e = overlaid(&Policy::new());
        deny(
            &mut e,
            "exec_in_container",
            exec_input(),
            "the container is not running",
        );
    }

    #[test]
    fn a_container_never_heard_of_is_denied() {
        let mut e = created(&Policy::new());
        let mut input = exec_input();
        input["containerID"] = json!("c9");
        deny(
            &mut e,
            "exec_in_container",
            input,
            "the container is not running",
        );
    }

    #[test]
    fn a_container_shut_down_is_denied() {
        let mut e = created(&Policy::new());
        allow(&mut e, "shutdown_container", json!({"containerID": "c1"}));
        deny(
            &mut e,
            "exec_in_container",
            exec_input(),
            "the container is not running",
        );
    }

    #[test]
    fn a_process_not_listed_is_denied() {
        let mut e = created(&Policy::new());
        let mut input = exec_input();
        input["argList"] = json!(["/bin/sh"]);
        deny(
            &mut e,
            "exec_in_container",
            input,
            "process not in the container's exec_processes",
        );
    }

    #[test]
    fn the_containers_own_command_is_not_an_exec_process() {
        let mut e = created(&Policy::new());
        let mut input = exec_input();
        input["argList"] = json!(["/bin/app", "--serve"]);
        deny(
            &mut e,
            "exec_in_container",
            input,
            "process not in the container's exec_processes",
        );
    }

    #[test]
    fn a_listed_process_with_an_extra_argument_is_denied() {
        let mut e = created(&Policy::new());
        let mut input = exec_input();
        input["argList"] = json!(["/bin/app", "--health", "--verbose"]);
        deny(
            &mut e,
            "exec_in_container",
            input,
            "process not in the container's exec_processes",
        );
    }

    #[test]
    fn another_working_directory_is_denied() {
        let mut e = created(&Policy::new());
        let mut input = exec_input();
        input["workingDir"] = json!("/");
        deny(
            &mut e,
            "exec_in_container",
            input,
            "invalid working directory",
        );
    }

    #[test]
    fn a_variable_outside_the_rules_is_denied_without_dropping() {
        let mut e = created(&Policy::new());
        let mut input = exec_input();
        input["envList"] = json!(["PATH=/bin", "LD_PRELOAD=/x.so"]);
        deny(
            &mut e,
            "exec_in_container",
            input,
            "environment variable not allowed: LD_PRELOAD",
        );
    }

    #[test]
    fn a_variable_outside_the_rules_is_dropped_with_dropping() {
        let mut e = created(&Policy::new().on("allow_environment_variable_dropping"));
        let mut input = exec_input();
        input["envList"] = json!(["LD_PRELOAD=/x.so", "PATH=/bin"]);
        let d = allow(&mut e, "exec_in_container", input);
        assert_eq!(d.result["env_list"], json!(["PATH=/bin"]));
    }

    #[test]
    fn an_exec_need_not_repeat_the_required_variables() {
        let mut e = created(&Policy::new());
        let mut input = exec_input();
        input["envList"] = json!([]);
        let d = allow(&mut e, "exec_in_container", input);
        assert_eq!(d.result["env_list"], json!([]));
    }

    #[test]
    fn a_denied_exec_does_not_blame_a_required_variable_exec_does_not_require() {
        // The only thing wrong is the process: the reason says so and nothing else.
        let mut e = created(&Policy::new());
        let mut input = exec_input();
        input["argList"] = json!(["/bin/sh"]);
        input["envList"] = json!([]);
        deny(
            &mut e,
            "exec_in_container",
            input,
            "process not in the container's exec_processes",
        );
    }
}

// ---------------------------------------------------------------- exec_external

mod exec_external {
    use super::*;

    fn shell() -> Value {
        json!({
            "command": ["bash"],
            "working_dir": "/",
            "env_rules": [
                {"pattern": "PATH=/usr/bin:/bin", "strategy": "string", "required": true},
                {"pattern": "TERM=.+", "strategy": "re2", "required": false},
            ],
            "allow_stdio_access": true,
        })
    }

    fn input() -> Value {
        json!({"argList": ["bash"], "envList": ["PATH=/usr/bin:/bin", "TERM=xterm"], "workingDir": "/"})
    }

    #[test]
    fn a_listed_process_is_allowed_with_its_environment_and_stdio() {
        let mut e = Policy::new().external(shell()).enforcer();
        let d = allow(&mut e, "exec_external", input());
        assert_eq!(d.result["env_list"], input()["envList"]);
        assert_eq!(d.result["allow_stdio_access"], true);
    }

    #[test]
    fn stdio_access_defaults_to_off() {
        let mut p = shell();
        p.as_object_mut().unwrap().remove("allow_stdio_access");
        let mut e = Policy::new().external(p).enforcer();
        let d = allow(&mut e, "exec_external", input());
        assert_eq!(d.result["allow_stdio_access"], false);
    }

    #[test]
    fn a_policy_without_external_processes_denies_every_one() {
        let mut e = Policy::new().enforcer();
        deny(
            &mut e,
            "exec_external",
            input(),
            "process not in external_processes",
        );
    }

    #[test]
    fn a_process_not_listed_is_denied() {
        let mut e = Policy::new().external(shell()).enforcer();
        let mut i = input();
        i["argList"] = json!(["sh"]);
        deny(
            &mut e,
            "exec_external",
            i,
            "process not in external_processes",
        );
    }

    #[test]
    fn a_listed_process_with_an_extra_argument_is_denied() {
        let mut e = Policy::new().external(shell()).enforcer();
        let mut i = input();
        i["argList"] = json!(["bash", "-c", "id"]);
        deny(
            &mut e,
            "exec_external",
            i,
            "process not in external_processes",
        );
    }

    #[test]
    fn another_working_directory_is_denied() {
        let mut e = Policy::new().external(shell()).enforcer();
        let mut i = input();
        i["workingDir"] = json!("/tmp");
        deny(&mut e, "exec_external", i, "invalid working directory");
    }

    #[test]
    fn a_process_without_a_working_directory_runs_in_any() {
        let mut p = shell();
        p.as_object_mut().unwrap().remove("working_dir");
        let mut e = Policy::new().external(p).enforcer();
        let mut i = input();
        i["workingDir"] = json!("/tmp");
        allow(&mut e, "exec_external", i);
    }

    /// Issue #16: the framework ignored an external process's `env_rules` (hcsshim checks them):
    /// any environment, e.g. LD_PRELOAD, was passed on.
    #[test]
    fn a_variable_outside_the_processs_rules_is_denied_without_dropping() {
        let mut e = Policy::new().external(shell()).enforcer();
        let mut i = input();
        i["envList"] = json!(["PATH=/usr/bin:/bin", "LD_PRELOAD=/x.so"]);
        deny(
            &mut e,
            "exec_external",
            i,
            "environment variable not allowed: LD_PRELOAD",
        );
    }

    #[test]
    fn a_variable_outside_the_processs_rules_is_dropped_with_dropping() {
        let p = Policy::new()
            .external(shell())
            .on("allow_environment_variable_dropping");
        let mut e = p.enforcer();
        let mut i = input();
        i["envList"] = json!(["LD_PRELOAD=/x.so", "PATH=/usr/bin:/bin"]);
        let d = allow(&mut e, "exec_external", i);
        assert_eq!(d.result["env_list"], json!(["PATH=/usr/bin:/bin"]));
    }

    #[test]
    fn a_required_variable_missing_is_denied() {
        let mut e = Policy::new().external(shell()).enforcer();
        let mut i = input();
        i["envList"] = json!(["TERM=xterm"]);
        deny(
            &mut e,
            "exec_external",
            i,
            "required environment variable missing: PATH=/usr/bin:/bin",
        );
    }

    #[test]
    fn a_re2_rule_of_a_process_is_anchored() {
        let mut e = Policy::new().external(shell()).enforcer();
        let mut i = input();
        i["envList"] = json!(["PATH=/usr/bin:/bin", "XTERM=xterm"]);
        deny(
            &mut e,
            "exec_external",
            i,
            "environment variable not allowed: XTERM",
        );
    }

    #[test]
    fn a_process_without_env_rules_gets_no_environment() {
        let mut p = shell();
        p.as_object_mut().unwrap().remove("env_rules");
        let mut e = Policy::new().external(p).enforcer();
        let mut i = input();
        i["envList"] = json!([]);
        allow(&mut e, "exec_external", i);
        let mut i = input();
        i["envList"] = json!(["PATH=/usr/bin:/bin"]);
        deny(
            &mut e,
            "exec_external",
            i,
            "environment variable not allowed: PATH",
        );
    }

    #[test]
    fn the_container_rules_do_not_apply_to_external_processes() {
        // The fixture container allows MODE=prod; the external process does not.
        let mut e = Policy::new().external(shell()).enforcer();
        let mut i = input();
        i["envList"] = json!(["PATH=/usr/bin:/bin", "MODE=prod"]);
        deny(
            &mut e,
            "exec_external",
            i,
            "environment variable not allowed: MODE",
        );
    }

    #[test]
    fn an_external_process_changes_no_state() {
        let mut e = created(&Policy::new().external(shell()));
        let before = e.state();
        allow(&mut e, "exec_external", input());
        assert_eq!(e.state(), before);
    }
}

// ---------------------------------------------------------------- shutdown_container

mod shutdown_container {
    use super::*;

    #[test]
    fn a_started_container_shuts_down_and_leaves_the_state() {
        let mut e = created(&Policy::new());
        allow(&mut e, "shutdown_container", json!({"containerID": "c1"}));
        let state = e.state();
        assert!(state["started"].get("c1").is_none());
        assert!(state["matches"].get("c1").is_none());
    }

    #[test]
    fn a_container_never_created_is_denied() {
        let mut e = overlaid(&Policy::new());
        deny(
            &mut e,
            "shutdown_container",
            json!({"containerID": "c1"}),
            "the container is not running",
        );
    }

    #[test]
    fn a_second_shutdown_is_denied() {
        let mut e = created(&Policy::new());
        allow(&mut e, "shutdown_container", json!({"containerID": "c1"}));
        deny(
            &mut e,
            "shutdown_container",
            json!({"containerID": "c1"}),
            "the container is not running",
        );
    }

    #[test]
    fn the_overlay_outlives_the_container_until_unmounted() {
        let mut e = created(&Policy::new());
        allow(&mut e, "shutdown_container", json!({"containerID": "c1"}));
        deny(
            &mut e,
            "mount_overlay",
            overlay("c1", &[TOP_AT, BASE_AT], ROOTFS),
            "an overlay is already mounted at target",
        );
        allow(&mut e, "unmount_overlay", json!({"unmountTarget": ROOTFS}));
        allow(
            &mut e,
            "mount_overlay",
            overlay("c1", &[TOP_AT, BASE_AT], ROOTFS),
        );
        allow(&mut e, "create_container", create_input());
    }
}

// ---------------------------------------------------------------- signal_container_process

mod signal_container_process {
    use super::*;

    #[test]
    fn the_containers_stop_signal_to_its_init_process_is_allowed() {
        let mut e = created(&Policy::new());
        allow(&mut e, "signal_container_process", signal(15, true, &[]));
    }

    #[test]
    fn another_signal_to_the_init_process_is_denied() {
        let mut e = created(&Policy::new());
        deny(
            &mut e,
            "signal_container_process",
            signal(9, true, &[]),
            "signal 9 not allowed for this process",
        );
    }

    #[test]
    fn an_exec_processs_signal_to_the_init_process_is_denied() {
        let mut e = created(&Policy::new());
        deny(
            &mut e,
            "signal_container_process",
            signal(10, true, &[]),
            "signal 10 not allowed for this process",
        );
    }

    #[test]
    fn a_container_not_started_is_denied() {
        let mut e = overlaid(&Policy::new());
        deny(
            &mut e,
            "signal_container_process",
            signal(15, true, &[]),
            "the container is not running",
        );
    }

    #[test]
    fn an_exec_processs_own_signal_is_allowed() {
        let mut e = created(&Policy::new());
        allow(
            &mut e,
            "signal_container_process",
            signal(10, false, &["/bin/app", "--health"]),
        );
    }

    #[test]
    fn the_containers_signal_to_an_exec_process_is_denied() {
        let mut e = created(&Policy::new());
        deny(
            &mut e,
            "signal_container_process",
            signal(15, false, &["/bin/app", "--health"]),
            "signal 15 not allowed for this process",
        );
    }

    #[test]
    fn a_signal_to_a_process_not_listed_is_denied() {
        let mut e = created(&Policy::new());
        deny(
            &mut e,
            "signal_container_process",
            signal(10, false, &["/bin/sh"]),
            "signal 10 not allowed for this process",
        );
    }

    #[test]
    fn without_is_init_process_the_process_is_an_exec_process() {
        let mut e = created(&Policy::new());
        let mut input = signal(15, true, &[]);
        input.as_object_mut().unwrap().remove("isInitProcess");
        deny(
            &mut e,
            "signal_container_process",
            input,
            "signal 15 not allowed for this process",
        );
    }

    #[test]
    fn a_signal_changes_no_state() {
        let mut e = created(&Policy::new());
        let before = e.state();
        allow(&mut e, "signal_container_process", signal(15, true, &[]));
        assert_eq!(e.state(), before);
    }
}

// ---------------------------------------------------------------- switches

mod switches {
    use super::*;

    macro_rules! switch {
        ($($on:ident, $off:ident, $absent:ident: $point:literal, $switch:literal, $reason:literal;)*) => {$(
            #[test]
            fn $on() {
                let mut e = Policy::new().on($switch).enforcer();
                allow(&mut e, $point, json!({}));
            }

            #[test]
            fn $off() {
                let mut e = Policy::new().enforcer();
                deny(&mut e, $point, json!({}), $reason);
            }

            /// A policy that does not set the switch is denied, as if it were off.
            #[test]
            fn $absent() {
                let mut e = Policy::new().without($switch).enforcer();
                deny(&mut e, $point, json!({}), $reason);
            }
        )*};
    }

    switch! {
        get_properties_is_allowed_when_on, get_properties_is_denied_when_off,
        get_properties_is_denied_when_unset:
            "get_properties", "allow_properties_access",
            "properties access not allowed (allow_properties_access)";
        dump_stacks_is_allowed_when_on, dump_stacks_is_denied_when_off,
        dump_stacks_is_denied_when_unset:
            "dump_stacks", "allow_dump_stacks", "dumping stacks not allowed (allow_dump_stacks)";
        runtime_logging_is_allowed_when_on, runtime_logging_is_denied_when_off,
        runtime_logging_is_denied_when_unset:
            "runtime_logging", "allow_runtime_logging",
            "runtime logging not allowed (allow_runtime_logging)";
    }

    #[test]
    fn each_switch_controls_only_its_own_point() {
        let mut e = Policy::new().on("allow_dump_stacks").enforcer();
        allow(&mut e, "dump_stacks", json!({}));
        deny(
            &mut e,
            "runtime_logging",
            json!({}),
            "runtime logging not allowed (allow_runtime_logging)",
        );
        deny(
            &mut e,
            "get_properties",
            json!({}),
            "properties access not allowed (allow_properties_access)",
        );
    }
}

// ---------------------------------------------------------------- scratch_mount, scratch_unmount

mod scratch {
    use super::*;

    fn scratch(target: &str, encrypted: bool) -> Value {
        json!({"target": target, "encrypted": encrypted})
    }

    #[test]
    fn encrypted_scratch_mounts_and_is_recorded() {
        let mut e = Policy::new().enforcer();
        allow(&mut e, "scratch_mount", scratch("/s", true));
        assert_eq!(e.state()["scratch"]["/s"], true);
    }

    #[test]
    fn unencrypted_scratch_is_denied_without_the_switch() {
        let mut e = Policy::new().enforcer();
        deny(
            &mut e,
            "scratch_mount",
            scratch("/s", false),
            "unencrypted scratch not allowed (allow_unencrypted_scratch)",
        );
    }

    #[test]
    fn scratch_not_said_to_be_encrypted_is_unencrypted() {
        let mut e = Policy::new().enforcer();
        deny(
            &mut e,
            "scratch_mount",
            json!({"target": "/s"}),
            "unencrypted scratch not allowed (allow_unencrypted_scratch)",
        );
    }

    #[test]
    fn unencrypted_scratch_is_allowed_with_the_switch() {
        let mut e = Policy::new().on("allow_unencrypted_scratch").enforcer();
        allow(&mut e, "scratch_mount", scratch("/s", false));
    }

    #[test]
    fn a_second_scratch_at_the_same_target_is_denied() {
        let mut e = Policy::new().enforcer();
        allow(&mut e, "scratch_mount", scratch("/s", true));
        deny(
            &mut e,
            "scratch_mount",
            scratch("/s", true),
            "scratch already mounted at target",
        );
    }

    #[test]
    fn a_mounted_scratch_unmounts_and_can_be_mounted_again() {
        let mut e = Policy::new().enforcer();
        allow(&mut e, "scratch_mount", scratch("/s", true));
        allow(&mut e, "scratch_unmount", json!({"unmountTarget": "/s"}));
        assert!(e.state()["scratch"].get("/s").is_none());
        allow(&mut e, "scratch_mount", scratch("/s", true));
    }

    #[test]
    fn unmounting_scratch_never_mounted_is_denied() {
        let mut e = Policy::new().enforcer();
        deny(
            &mut e,
            "scratch_unmount",
            json!({"unmountTarget": "/s"}),
            "no scratch mounted at unmountTarget",
        );
    }

    #[test]
    fn a_second_scratch_unmount_is_denied() {
        let mut e = Policy::new().enforcer();
        allow(&mut e, "scratch_mount", scratch("/s", true));
        allow(&mut e, "scratch_unmount", json!({"unmountTarget": "/s"}));
        deny(
            &mut e,
            "scratch_unmount",
            json!({"unmountTarget": "/s"}),
            "no scratch mounted at unmountTarget",
        );
    }
}

// ---------------------------------------------------------------- fragments and plan9

mod unsupported {
    use super::*;

    #[test]
    fn load_fragment_is_denied_and_adds_no_module() {
        let mut e = Policy::new().enforcer();
        let d = deny(
            &mut e,
            "load_fragment",
            json!({"issuer": "did:web:example.com", "feed": "f", "namespace": "fragment", "local_path": "/f.rego"}),
            "policy fragments are not supported",
        );
        assert_eq!(d.result["add_module"], false);
    }

    #[test]
    fn plan9_mount_is_denied() {
        let mut e = Policy::new().enforcer();
        deny(
            &mut e,
            "plan9_mount",
            json!({"target": "/run/gcs/c/share"}),
            "plan9 shares are not supported",
        );
    }

    #[test]
    fn plan9_unmount_is_denied() {
        let mut e = Policy::new().enforcer();
        deny(
            &mut e,
            "plan9_unmount",
            json!({"unmountTarget": "/run/gcs/c/share"}),
            "plan9 shares are not supported",
        );
    }
}

// ---------------------------------------------------------------- the fixture itself

#[test]
fn every_enforcement_point_is_covered_by_a_module_here() {
    // A point added to the engine without tests here fails this list.
    assert_eq!(
        ENFORCEMENT_POINTS,
        [
            "mount_device",
            "unmount_device",
            "mount_overlay",
            "unmount_overlay",
            "create_container",
            "exec_in_container",
            "exec_external",
            "shutdown_container",
            "signal_container_process",
            "get_properties",
            "dump_stacks",
            "runtime_logging",
            "scratch_mount",
            "scratch_unmount",
            "load_fragment",
            "plan9_mount",
            "plan9_unmount",
        ]
    );
}

#[test]
fn a_request_may_not_carry_its_own_state() {
    let mut e = Policy::new().enforcer();
    let err = e
        .decide_named(
            "mount_device",
            &json!({"target": BASE_AT, "deviceHash": BASE, "metadata": {"devices": {}}}),
        )
        .unwrap_err();
    assert!(err.to_string().contains("metadata"), "{err}");
}

#[test]
fn each_enforcement_point_is_named_as_the_policy_names_it_and_parses_back() {
    let names: Vec<&str> = EnforcementPoint::ALL.iter().map(|p| p.name()).collect();
    assert_eq!(names, ENFORCEMENT_POINTS);
    for p in EnforcementPoint::ALL {
        assert_eq!(p.name().parse::<EnforcementPoint>().unwrap(), p);
        assert_eq!(p.to_string(), p.name());
    }
    assert!(matches!(
        "mount_devices".parse::<EnforcementPoint>(),
        Err(PolicyError::UnknownRule(n)) if n == "mount_devices"
    ));
}
