//! Confidential groups end to end: `coffer run` on the example, and every denial the agent must
//! make, each leaving nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::coffer;

use std::path::{Path, PathBuf};
use std::process::Command;

use coffer_host::launch::{self as host, LaunchSpec};
use coffer_host::HostError;
use coffer_image::{ImageRef, Store};
use coffer_proto::{reply, ProcessSpec, Request};
use coffer_testkit::Need;
use serde_json::{json, Value};

/// What a group needs: root (namespaces, mounts), runc, unshare, umoci (the example image).
const GROUP: &[Need] = &[
    Need::Root,
    Need::Tool("runc"),
    Need::Tool("unshare"),
    Need::Tool("umoci"),
];

fn pod_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/pod.yaml")
}

/// One group at a time: every test checks that no mount, cgroup or process is left on the host,
/// which another test's live group would make untrue.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A home with the example image imported as hello:latest, and the generated policy.
fn setup() -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    common::import_example(tmp.path());
    let policy = tmp.path().join("p.rego");
    let out = coffer(
        tmp.path(),
        &[
            "policy",
            "gen",
            pod_path().to_str().unwrap(),
            "-o",
            policy.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&policy).unwrap();
    (tmp, text)
}

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

fn coffer_cgroups() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("coffer"))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default()
}

fn launch(home: &Path, name: &str, policy: &str) -> Result<host::Group, HostError> {
    host::launch(LaunchSpec {
        home: home.to_path_buf(),
        name: name.into(),
        policy: policy.as_bytes().to_vec(),
        host_data: coffer_policy::digest(policy.as_bytes()),
        agent_exe: common::agent_exe(),
        volumes: vec![],
        network: Default::default(),
    })
}

/// Mount layer `i` of the example image (its cached layer image) at `target`.
fn mount_layer(
    group: &host::Group,
    c: &mut coffer_host::launch::AgentClient,
    store: &Store,
    i: usize,
    target: &str,
) -> Result<reply::LayerMounted, HostError> {
    let img = store
        .resolve(&ImageRef::Stored("hello:latest".into()))
        .unwrap();
    let name = group
        .stage_layer(&store.layer_image(&img, i).unwrap())
        .unwrap();
    c.mount_layer(target, &name)
}

/// Offer `bytes` to the agent as a layer image named `name`.
fn stage_bytes(group: &host::Group, name: &str, bytes: &[u8]) {
    let dir = group.dir.join("io/layers");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// Mount the example's layers and overlay; returns the client.
fn prepare(group: &host::Group, home: &Path) -> coffer_host::launch::AgentClient {
    let store = Store::open(home).unwrap();
    let img = store
        .resolve(&ImageRef::Stored("hello:latest".into()))
        .unwrap();
    let mut c = group.client().unwrap();
    let mut paths = vec![];
    for i in 0..img.image.layers.len() {
        let t = format!("/run/coffer/layers/l{i}");
        mount_layer(group, &mut c, &store, i, &t).unwrap();
        paths.push(t);
    }
    paths.reverse();
    c.call::<reply::Done>(&Request::MountOverlay {
        container_id: "hello".into(),
        layer_paths: paths,
    })
    .unwrap();
    c
}

fn hello_process() -> ProcessSpec {
    let caps = coffer_policy::DEFAULT_CAPS;
    ProcessSpec {
        args: vec!["/bin/sh".into(), "/app/hello.sh".into()],
        env: vec!["PATH=/bin".into(), "GREETING=bonjour".into()],
        cwd: "/app".into(),
        uid: 0,
        gid: 0,
        capabilities: caps.iter().map(|s| s.to_string()).collect(),
        no_new_privileges: false,
        memory_limit: None,
        cpu_millis: None,
        ..Default::default()
    }
}

fn volumes() -> Vec<coffer_proto::VolumeSpec> {
    vec![coffer_proto::VolumeSpec {
        name: "scratch".into(),
        destination: "/scratch".into(),
        read_only: false,
    }]
}

fn denied<T: std::fmt::Debug>(r: Result<T, HostError>, rule: &str, why: &str) {
    match r {
        Err(HostError::Denied { rule: got, reason }) => {
            assert_eq!(got, rule);
            assert!(
                reason.contains(why),
                "{rule}: reason '{reason}' lacks '{why}'"
            );
        }
        other => panic!("{rule}: expected a denial, got {other:?}"),
    }
}

fn assert_clean(before_mounts: &str, group_dir: &Path) {
    assert_eq!(mountinfo(), before_mounts, "mounts left behind");
    assert!(
        coffer_cgroups().is_empty(),
        "cgroups left behind: {:?}",
        coffer_cgroups()
    );
    assert!(!group_dir.exists(), "group directory left behind");
    let net = common::network_leftovers(group_dir);
    assert!(net.is_empty(), "network left behind: {net:?}");
    let leftover = Command::new("pgrep")
        .args(["-f", &group_dir.display().to_string()])
        .output()
        .unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "processes left behind: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        coffer_run_prints_the_output_and_leaves_nothing_behind: GROUP;
        a_changed_layer_is_not_mounted_and_nothing_is_overlaid_on_it: GROUP;
        a_command_outside_the_policy_is_denied: GROUP;
        an_environment_variable_outside_the_policy_is_denied: GROUP;
        a_working_directory_outside_the_policy_is_denied: GROUP;
        exec_and_signals_outside_the_policy_are_denied: GROUP;
        a_policy_whose_digest_is_not_host_data_is_refused: GROUP;
        exec_in_a_running_group_follows_exec_processes: GROUP;
        exec_sent_right_after_create_finds_the_container: GROUP;
        ctrl_c_stops_the_group_through_the_policy: GROUP;
        stdio_reaches_the_host_only_when_the_policy_allows_it: GROUP;
        a_hash_block_of_an_approved_layer_image_is_not_mounted: GROUP;
        ids_that_look_like_runc_flags_are_refused: GROUP;
        each_capability_set_is_applied_as_the_policy_decided: GROUP;
        the_default_capabilities_reach_the_container: GROUP;
        a_container_the_policy_keeps_running_is_not_stopped_by_the_agent: GROUP;
        whiteouts_and_opaque_directories_work_and_stay_inside_their_layer: GROUP;
        a_read_only_root_file_system_refuses_writes_and_volumes_still_take_them: GROUP;
        supplemental_groups_and_fs_group_reach_the_process_and_fs_group_owns_volumes: GROUP;
        the_host_cannot_ask_for_a_writable_root_or_other_groups_than_the_policy_pins: GROUP;
        allow_privilege_escalation_false_reaches_the_process_as_no_new_privs: GROUP;
        an_emptydir_rule_for_any_name_does_not_admit_an_encrypted_volume: GROUP;
        a_policy_in_the_shape_azures_tooling_writes_governs_a_group: GROUP, Need::Vectors;
        an_azure_shaped_policy_with_another_layer_hash_refuses_the_layer: GROUP, Need::Vectors;
    ])
}

/// `allowPrivilegeEscalation: false` in the Pod: the policy pins it and the process runs with
/// `NoNewPrivs: 1`; without it, 0.
fn allow_privilege_escalation_false_reaches_the_process_as_no_new_privs() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    common::import_example(tmp.path());
    let run = |escalation: &str| {
        let pod = tmp.path().join("nnp.yaml");
        std::fs::write(
            &pod,
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: nnp}}\nspec:\n  containers:\n  - name: c\n    \
                 image: hello:latest\n    command: [/bin/sh, -c, \"grep ^NoNewPrivs /proc/self/status\"]\n{escalation}"
            ),
        )
        .unwrap();
        let out = coffer(tmp.path(), &["run", pod.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pinned = run("    securityContext: {allowPrivilegeEscalation: false}\n");
    assert!(
        pinned.split_whitespace().collect::<Vec<_>>() == ["[c]", "NoNewPrivs:", "1"],
        "{pinned}"
    );
    let default = run("");
    assert!(
        default.split_whitespace().collect::<Vec<_>>() == ["[c]", "NoNewPrivs:", "0"],
        "{default}"
    );
}

/// A container whose mount rule allows any emptyDir (`sandbox:///tmp/atlas/emptydir/.+`, as
/// Azure's tooling writes), in a policy that also has an encrypted volume: the host cannot bind
/// the decrypted volume (or the agent's own files beside it) where the rule means scratch space.
fn an_emptydir_rule_for_any_name_does_not_admit_an_encrypted_volume() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    common::import_example(home);
    let pod = home.join("enc.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: enc}\nspec:\n  containers:\n  - name: hello\n    \
         image: hello:latest\n    env: [{name: GREETING, value: bonjour}]\n    volumeMounts:\n    \
         - {name: scratch, mountPath: /scratch}\n    - {name: secret, mountPath: /secret}\n  volumes:\n  \
         - {name: scratch, emptyDir: {}}\n  - name: secret\n    csi:\n      driver: encfs.coffer.dev\n      \
         volumeAttributes: {source: /nonexistent.img, keyName: k, attestationEndpoint: \"http://127.0.0.1:9\", \
         keyBrokerEndpoint: \"http://127.0.0.1:9\", keyBrokerKey: NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs}\n",
    )
    .unwrap();
    let policy = common::policy_gen(home, &pod);
    // Coffer's own policy names each volume's kind.
    assert!(
        policy.contains(r#""source":"sandbox:///coffer/encrypted/secret""#),
        "{policy}"
    );
    assert!(
        policy.contains(r#""source":"sandbox:///tmp/atlas/emptydir/scratch""#),
        "{policy}"
    );
    let policy = with_container(&policy, |c| {
        c["mounts"] = json!([{"destination": "/scratch", "options": ["rbind", "rshared", "rw"],
                              "source": "sandbox:///tmp/atlas/emptydir/.+", "type": "bind"}]);
    });
    let group = launch(home, "enc", &policy).unwrap();
    let mut c = prepare(&group, home);
    let at_scratch = |name: &str| {
        vec![coffer_proto::VolumeSpec {
            name: name.into(),
            destination: "/scratch".into(),
            read_only: false,
        }]
    };
    let create = |c: &mut coffer_host::launch::AgentClient, name: &str| {
        c.call::<reply::Created>(&Request::CreateContainer {
            container_id: "hello".into(),
            process: hello_process(),
            volumes: at_scratch(name),
        })
    };
    denied(
        create(&mut c, "secret"),
        "create_container",
        "mount not allowed: /scratch",
    );
    for own in [".secret.block", ".secret.verity", "Scratch"] {
        let err = create(&mut c, own).unwrap_err().to_string();
        assert!(err.contains("invalid volume name"), "{own}: {err}");
    }
    // What the rule is for still works.
    create(&mut c, "scratch").unwrap();
    group.shutdown().unwrap();
}

/// The real policy `az confcom acipolicygen` wrote (`policies/aci-attestation-example.rego`), its
/// first container turned into the example group's, as that tool writes one: Azure's field set,
/// user and capability rules, its emptyDir and resolv.conf mounts, its platform variables; the
/// layers are `layers`. The one rule changed is `allow_unencrypted_scratch`: Coffer's scratch is
/// not encrypted (README).
fn azure_shaped_policy(home: &Path, layers: Vec<String>) -> PathBuf {
    let aci = String::from_utf8(coffer_testkit::read(
        &coffer_testkit::vectors(),
        "policies/aci-attestation-example.rego",
    ))
    .unwrap();
    let mut lines: Vec<String> = aci.lines().map(str::to_string).collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("containers := "))
        .unwrap();
    let theirs: Vec<Value> = serde_json::from_str(&lines[at]["containers := ".len()..]).unwrap();
    let mut c = theirs[0].clone();
    c["id"] = json!("hello:latest");
    c["name"] = json!("hello");
    c["layers"] = json!(layers);
    c["command"] = json!(["/bin/sh", "/app/hello.sh"]);
    c["working_dir"] = json!("/app");
    let mut env = vec![
        json!({"pattern": "PATH=/bin", "required": false, "strategy": "string"}),
        json!({"pattern": "GREETING=bonjour", "required": false, "strategy": "string"}),
    ];
    env.extend(c["env_rules"].as_array().unwrap().iter().cloned());
    c["env_rules"] = json!(env);
    let resolv = c["mounts"][1].clone();
    assert_eq!(resolv["destination"], "/etc/resolv.conf");
    c["mounts"] = json!([
        {"destination": "/scratch", "options": ["rbind", "rshared", "rw"],
         "source": "sandbox:///tmp/atlas/emptydir/.+", "type": "bind"},
        resolv
    ]);
    c["exec_processes"] = json!([{"command": ["/bin/true"], "signals": []}]);
    // Theirs and the pause container, as ACI's policy lists it.
    lines[at] = format!("containers := {}", json!([c, theirs[2]]));
    let text = lines.join("\n").replace(
        "allow_unencrypted_scratch := false",
        "allow_unencrypted_scratch := true",
    );
    let path = home.join("aci.rego");
    std::fs::write(&path, text).unwrap();
    path
}

/// Coffer's layer hashes of the example image, base first (`coffer image measure`).
fn measured_layers(home: &Path) -> Vec<String> {
    let measured = coffer(home, &["image", "measure", "hello:latest"]);
    assert!(measured.status.success());
    String::from_utf8_lossy(&measured.stdout)
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect()
}

/// `coffer run --policy POLICY` of the example Pod.
fn run_with_policy(home: &Path, policy: &Path) -> std::process::Output {
    coffer(
        home,
        &[
            "run",
            "--policy",
            policy.to_str().unwrap(),
            pod_path().to_str().unwrap(),
        ],
    )
}

fn a_policy_in_the_shape_azures_tooling_writes_governs_a_group() {
    let _serial = one_at_a_time();
    let (tmp, _) = setup();
    let policy = azure_shaped_policy(tmp.path(), measured_layers(tmp.path()));
    let out = run_with_policy(tmp.path(), &policy);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("[hello] hello from a confidential container"),
        "{stdout}"
    );
    assert!(stdout.contains("[hello] GREETING=bonjour"), "{stdout}");
}

fn an_azure_shaped_policy_with_another_layer_hash_refuses_the_layer() {
    let _serial = one_at_a_time();
    let (tmp, _) = setup();
    // The image's layers, with one digit of the top layer's hash changed.
    let mut layers = measured_layers(tmp.path());
    let top = layers.last_mut().unwrap();
    let flipped = if top.starts_with('0') { "1" } else { "0" };
    top.replace_range(0..1, flipped);
    let policy = azure_shaped_policy(tmp.path(), layers);
    let out = run_with_policy(tmp.path(), &policy);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("denied by policy (mount_device)"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hello from"));
}

fn coffer_run_prints_the_output_and_leaves_nothing_behind() {
    let _serial = one_at_a_time();
    let (tmp, _) = setup();
    let before = mountinfo();
    let out = coffer(tmp.path(), &["run", pod_path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("[hello] hello from a confidential container"),
        "{stdout}"
    );
    assert!(stdout.contains("[hello] GREETING=bonjour"), "{stdout}");
    assert_clean(&before, &host::group_dir(tmp.path(), "hello"));
}

fn a_changed_layer_is_not_mounted_and_nothing_is_overlaid_on_it() {
    let _serial = one_at_a_time();
    let (tmp, policy) = setup();
    let home = tmp.path();
    let before = mountinfo();
    // A layer changed after the policy was generated: its measurement is not in the policy.
    let group = launch(home, "g1", &policy).unwrap();
    let mut c = group.client().unwrap();
    let store = Store::open(home).unwrap();
    let img = store
        .resolve(&ImageRef::Stored("hello:latest".into()))
        .unwrap();
    let mut layer = std::fs::read(store.layer_image(&img, 1).unwrap()).unwrap();
    let pos = layer.windows(5).position(|w| w == b"hello").unwrap();
    layer[pos] = b'j';
    stage_bytes(&group, "changed.img", &layer);
    denied(
        c.mount_layer("/run/coffer/layers/l0", "changed.img"),
        "mount_device",
        "not a layer",
    );
    // Nothing was mounted: an overlay of it is refused too.
    denied(
        c.call::<reply::Done>(&Request::MountOverlay {
            container_id: "hello".into(),
            layer_paths: vec!["/run/coffer/layers/l0".into()],
        }),
        "mount_overlay",
        "layers",
    );
    group.shutdown().unwrap();
    assert_clean(&before, &host::group_dir(home, "g1"));
}

/// Create the example container with `change` made to its process, under `policy` with
/// environment dropping off: the policy must deny it with `reason`, and nothing runs.
fn create_is_denied(name: &str, change: impl FnOnce(&mut ProcessSpec), reason: &str) {
    let _serial = one_at_a_time();
    let (tmp, policy) = setup();
    let home = tmp.path();
    let before = mountinfo();
    let strict = policy.replace(
        "allow_environment_variable_dropping := true",
        "allow_environment_variable_dropping := false",
    );
    let group = launch(home, name, &strict).unwrap();
    let mut c = prepare(&group, home);
    let mut p = hello_process();
    change(&mut p);
    denied(
        c.call::<reply::Created>(&Request::CreateContainer {
            container_id: "hello".into(),
            process: p,
            volumes: volumes(),
        }),
        "create_container",
        reason,
    );
    assert_eq!(
        c.properties().unwrap().containers.len(),
        0,
        "no container ran"
    );
    group.shutdown().unwrap();
    assert_clean(&before, &host::group_dir(home, name));
}

fn a_command_outside_the_policy_is_denied() {
    create_is_denied(
        "g2",
        |p| p.args = vec!["/bin/sh".into(), "-c".into(), "echo pwned".into()],
        "invalid command",
    );
}

fn an_environment_variable_outside_the_policy_is_denied() {
    create_is_denied(
        "g3",
        |p| p.env.push("LD_PRELOAD=/tmp/x.so".into()),
        "LD_PRELOAD",
    );
}

fn a_working_directory_outside_the_policy_is_denied() {
    create_is_denied("g4", |p| p.cwd = "/".into(), "working directory");
}

fn exec_and_signals_outside_the_policy_are_denied() {
    let _serial = one_at_a_time();
    let (tmp, policy) = setup();
    let home = tmp.path();
    let before = mountinfo();
    let group = launch(home, "g5", &policy).unwrap();
    let mut c = prepare(&group, home);
    // The allowed container runs; exec and signal are checked against the policy.
    c.call::<reply::Created>(&Request::CreateContainer {
        container_id: "hello".into(),
        process: hello_process(),
        volumes: volumes(),
    })
    .unwrap();
    let status = group.client().unwrap().attach("hello", |_, _| {}).unwrap();
    assert_eq!(status, 0);
    denied(
        c.call::<reply::Executed>(&Request::Exec {
            container_id: "hello".into(),
            process: ProcessSpec {
                args: vec!["/bin/sh".into()],
                cwd: "/app".into(),
                ..Default::default()
            },
        }),
        "exec_in_container",
        "exec_processes",
    );
    denied(
        c.call::<reply::Done>(&Request::Signal {
            container_id: "hello".into(),
            signal: 9,
        }),
        "signal_container_process",
        "signal 9",
    );
    let answer = group.shutdown().unwrap();
    assert!(answer.problems.is_empty(), "{answer:?}");
    assert_clean(&before, &host::group_dir(home, "g5"));
}

fn a_policy_whose_digest_is_not_host_data_is_refused() {
    let _serial = one_at_a_time();
    let (tmp, policy) = setup();
    let home = tmp.path();
    let before = mountinfo();
    let err = host::launch(LaunchSpec {
        home: home.to_path_buf(),
        name: "g6".into(),
        policy: policy.as_bytes().to_vec(),
        host_data: coffer_policy::digest(b"another policy"),
        agent_exe: common::agent_exe(),
        volumes: vec![],
        network: Default::default(),
    })
    .err()
    .expect("the agent must refuse");
    assert!(err.to_string().contains("differs from HOST_DATA"), "{err}");
    let _ = std::fs::remove_dir_all(host::group_dir(home, "g6"));
    assert_eq!(mountinfo(), before);
}

fn exec_in_a_running_group_follows_exec_processes() {
    let _serial = one_at_a_time();
    let (tmp, policy) = setup();
    let home = tmp.path();
    // A long-running main process, with /bin/true as an allowed exec (the Pod's liveness probe).
    let main = [
        "/bin/sh",
        "-c",
        "trap 'exit 7' TERM; while true; do sleep 0.05; done; : exec-test-main",
    ];
    let policy = policy.replace(
        r#""command":["/bin/sh","/app/hello.sh"]"#,
        &format!(r#""command":{}"#, serde_json::json!(main)),
    );
    // The memory limit is the policy's (the host cannot choose another).
    let policy = with_container(&policy, |c| {
        c["resources"]["memory_limit"] = serde_json::json!(64u64 << 20)
    });
    let group = launch(home, "hello", &policy).unwrap();
    let mut c = prepare(&group, home);
    let mut p = hello_process();
    p.args = main.iter().map(|s| s.to_string()).collect();
    p.memory_limit = Some(64 << 20);
    c.call::<reply::Created>(&Request::CreateContainer {
        container_id: "hello".into(),
        process: p,
        volumes: volumes(),
    })
    .unwrap();
    let ok = coffer(
        home,
        &["exec", "hello", "hello", "--cwd", "/app", "--", "/bin/true"],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let no = coffer(
        home,
        &[
            "exec",
            "hello",
            "hello",
            "--cwd",
            "/app",
            "--",
            "/bin/cat",
            "/etc/passwd",
        ],
    );
    assert!(!no.status.success());
    assert!(
        String::from_utf8_lossy(&no.stderr).contains("exec_processes"),
        "{}",
        String::from_utf8_lossy(&no.stderr)
    );
    // The memory limit reached the container's cgroup (found through its main process: other
    // tests' groups may run meanwhile).
    let pgrep = Command::new("pgrep")
        .args(["-f", ": exec-test-main"])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&pgrep.stdout)
        .lines()
        .next()
        .expect("the main process runs")
        .to_string();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory = cgroups
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, path)| path.to_string()))
        .expect("a memory cgroup");
    assert!(memory.starts_with("/coffer/"), "{memory}");
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{memory}/memory.limit_in_bytes"
    ))
    .unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    let ps = coffer(home, &["ps"]);
    assert!(
        String::from_utf8_lossy(&ps.stdout).contains("hello"),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );
    // SIGTERM is the image's stop signal: allowed.
    c.call::<reply::Done>(&Request::Signal {
        container_id: "hello".into(),
        signal: 15,
    })
    .unwrap();
    let status = group.client().unwrap().attach("hello", |_, _| {}).unwrap();
    assert_eq!(status, 7, "the container's TERM handler ran");
    group.shutdown().unwrap();
}

/// The create reply means the container exists: an exec sent at once finds it (the shim's
/// `ctr run -d` then `ctr task exec` raced runc's start before).
fn exec_sent_right_after_create_finds_the_container() {
    let _serial = one_at_a_time();
    let (tmp, policy) = setup();
    let home = tmp.path();
    let main = ["/bin/sh", "-c", "while true; do sleep 0.05; done"];
    let policy = policy.replace(
        r#""command":["/bin/sh","/app/hello.sh"]"#,
        &format!(r#""command":{}"#, serde_json::json!(main)),
    );
    let group = launch(home, "hello", &policy).unwrap();
    let mut c = prepare(&group, home);
    let mut p = hello_process();
    p.args = main.iter().map(|s| s.to_string()).collect();
    c.create_container("hello", p, volumes()).unwrap();
    let mut probe = hello_process();
    probe.args = vec!["/bin/true".into()];
    let done = c.exec("hello", probe);
    if done.is_ok() {
        group.shutdown().unwrap();
    } else {
        // An agent that lost the race may not stop what it never saw start: fail, do not hang.
        let mut group = group;
        let _ = group.sandbox.kill();
    }
    assert_eq!(done.map(|r| r.exit).map_err(|e| e.to_string()), Ok(0));
}

fn ctrl_c_stops_the_group_through_the_policy() {
    let _serial = one_at_a_time();
    use std::io::BufRead as _;
    let (tmp, _) = setup();
    let home = tmp.path();
    let pod = home.join("long.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: long}\nspec:\n  containers:\n    - name: main\n      image: hello:latest\n      \
         command: [\"/bin/sh\", \"-c\", \"trap 'echo stopping; exit 7' TERM; echo ready; while true; do sleep 0.05; done\"]\n",
    )
    .unwrap();
    let before = mountinfo();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["run", pod.to_str().unwrap()])
        .env("COFFER_HOME", home)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "[main] ready");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(rest, vec!["[main] stopping".to_string()]);
    assert_eq!(status.code(), Some(7), "exit status of the main container");
    assert_clean(&before, &host::group_dir(home, "long"));
}

fn stdio_reaches_the_host_only_when_the_policy_allows_it() {
    let _serial = one_at_a_time();
    let (tmp, _) = setup();
    let home = tmp.path();
    let quiet = home.join("quiet.rego");
    let out = coffer(
        home,
        &[
            "policy",
            "gen",
            pod_path().to_str().unwrap(),
            "--disable-stdio",
            "-o",
            quiet.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let out = coffer(
        home,
        &[
            "run",
            pod_path().to_str().unwrap(),
            "--policy",
            quiet.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("hello from a confidential container"),
        "{stdout}"
    );
    assert!(stdout.contains("stdio access is not allowed"), "{stdout}");
}

/// The top block of a stream's dm-verity tree: a 4096-byte stream with the stream's own root.
fn top_hash_block(data: &[u8]) -> Vec<u8> {
    let mut level = data.to_vec();
    level.resize(level.len().div_ceil(4096) * 4096, 0);
    loop {
        let mut next: Vec<u8> = level
            .chunks(4096)
            .flat_map(|b| {
                let mut h = openssl::sha::Sha256::new();
                h.update(&[0u8; 32]);
                h.update(b);
                h.finish()
            })
            .collect();
        next.resize(next.len().div_ceil(4096) * 4096, 0);
        if next.len() == 4096 {
            return next;
        }
        level = next;
    }
}

fn a_hash_block_of_an_approved_layer_image_is_not_mounted() {
    let _serial = one_at_a_time();
    let (tmp, policy) = setup();
    let home = tmp.path();
    let group = launch(home, "g5", &policy).unwrap();
    let mut c = group.client().unwrap();
    let store = Store::open(home).unwrap();
    let img = store
        .resolve(&ImageRef::Stored("hello:latest".into()))
        .unwrap();
    let image = std::fs::read(store.layer_image(&img, 0).unwrap()).unwrap();
    // The image's file system alone (the cached file also carries its verity tree).
    let fs_len = {
        let sb = &image[1024..2048];
        u64::from(u32::from_le_bytes(sb[4..8].try_into().unwrap()))
            * (1024u64 << u32::from_le_bytes(sb[0x18..0x1c].try_into().unwrap()))
    };
    // Same dm-verity root as the approved layer: only the length tells them apart.
    let forged = top_hash_block(&image[..fs_len as usize]);
    stage_bytes(&group, "forged.img", &forged);
    let err = c
        .mount_layer("/run/coffer/layers/l0", "forged.img")
        .unwrap_err();
    assert!(err.to_string().contains("not an ext4 image"), "{err}");
    mount_layer(&group, &mut c, &store, 1, "/run/coffer/layers/l1").unwrap();
    let overlay = || Request::MountOverlay {
        container_id: "hello".into(),
        layer_paths: vec![
            "/run/coffer/layers/l1".into(),
            "/run/coffer/layers/l0".into(),
        ],
    };
    denied(c.call::<reply::Done>(&overlay()), "mount_overlay", "layers");
    // Nothing was recorded for l0: the real layer mounts there.
    mount_layer(&group, &mut c, &store, 0, "/run/coffer/layers/l0").unwrap();
    c.call::<reply::Done>(&overlay()).unwrap();
    group.shutdown().unwrap();
}

fn ids_that_look_like_runc_flags_are_refused() {
    let _serial = one_at_a_time();
    let (tmp, policy) = setup();
    let group = launch(tmp.path(), "g6", &policy).unwrap();
    let mut c = group.client().unwrap();
    // `runc exec --process=FILE` would run a process spec the host wrote.
    let flag = "--process=/run/coffer/io/p.json".to_string();
    for req in [
        Request::Exec {
            container_id: flag.clone(),
            process: ProcessSpec {
                args: vec!["/bin/true".into()],
                cwd: "/".into(),
                ..Default::default()
            },
        },
        Request::Signal {
            container_id: flag.clone(),
            signal: 9,
        },
        Request::CreateContainer {
            container_id: flag.clone(),
            process: hello_process(),
            volumes: vec![],
        },
    ] {
        let err = c
            .call::<serde::de::IgnoredAny>(&req)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid container id"), "{err}");
    }
    group.shutdown().unwrap();
}

/// The policy with its (one) container changed by `f`.
fn with_container(policy: &str, f: impl FnOnce(&mut serde_json::Value)) -> String {
    let line = policy
        .lines()
        .find(|l| l.starts_with("containers := "))
        .unwrap();
    let mut containers: serde_json::Value =
        serde_json::from_str(line.trim_start_matches("containers := ")).unwrap();
    f(&mut containers[0]);
    policy.replace(line, &format!("containers := {containers}"))
}

/// Run `script` as the container's process under `policy`; its output lines.
fn run_script(home: &Path, name: &str, policy: &str, script: &str) -> Vec<String> {
    let group = launch(home, name, policy).unwrap();
    let c = prepare(&group, home);
    let mut c = c;
    let mut p = hello_process();
    p.args = vec!["/bin/sh".into(), "-c".into(), script.into()];
    c.call::<reply::Created>(&Request::CreateContainer {
        container_id: "hello".into(),
        process: p,
        volumes: volumes(),
    })
    .unwrap();
    let mut lines = Vec::new();
    group
        .client()
        .unwrap()
        .attach("hello", |_, l| lines.push(l.to_string()))
        .unwrap();
    group.shutdown().unwrap();
    lines
}

fn cap_mask(lines: &[String], field: &str) -> u64 {
    let l = lines
        .iter()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {lines:?}"));
    u64::from_str_radix(l.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

fn each_capability_set_is_applied_as_the_policy_decided() {
    let _serial = one_at_a_time();
    let (tmp, policy) = setup();
    let script =
        "grep ^Cap /proc/self/status; touch /scratch/f && chown 1234 /scratch/f && echo chowned";
    // The policy narrows every set; the host asks for the default set and gets the part the
    // policy allows (capability dropping is on). For a root process Linux recomputes effective
    // and permitted from the bounding set at execve, so the bounding set is what binds it.
    let policy = with_container(&policy, |c| {
        c["command"] = serde_json::json!(["/bin/sh", "-c", script]);
        for kind in ["bounding", "effective", "permitted"] {
            c["capabilities"][kind] = serde_json::json!(["CAP_CHOWN", "CAP_KILL"]);
        }
    });
    let lines = run_script(tmp.path(), "g7", &policy, script);
    const CHOWN_KILL: u64 = (1 << 0) | (1 << 5);
    for field in ["CapBnd:", "CapEff:", "CapPrm:"] {
        assert_eq!(cap_mask(&lines, field), CHOWN_KILL, "{field} {lines:?}");
    }
    assert_eq!(cap_mask(&lines, "CapAmb:"), 0, "{lines:?}");
    assert!(lines.iter().any(|l| l == "chowned"), "{lines:?}");
}

fn the_default_capabilities_reach_the_container() {
    let _serial = one_at_a_time();
    let (tmp, policy) = setup();
    let script = "grep ^Cap /proc/self/status";
    let policy = with_container(&policy, |c| {
        c["command"] = serde_json::json!(["/bin/sh", "-c", script]);
    });
    let lines = run_script(tmp.path(), "g9", &policy, script);
    // Before: every name failed to parse and was dropped, so containers had none at all.
    assert_eq!(
        cap_mask(&lines, "CapEff:").count_ones() as usize,
        coffer_policy::DEFAULT_CAPS.len(),
        "{lines:?}"
    );
}

fn a_container_the_policy_keeps_running_is_not_stopped_by_the_agent() {
    let _serial = one_at_a_time();
    let (tmp, policy) = setup();
    let home = tmp.path();
    let before = mountinfo();
    let policy = policy.replace(
        "shutdown_container := data.framework.shutdown_container",
        "shutdown_container := {\"allowed\": false}",
    );
    let group = launch(home, "g8", &policy).unwrap();
    let mut c = prepare(&group, home);
    c.call::<reply::Created>(&Request::CreateContainer {
        container_id: "hello".into(),
        process: hello_process(),
        volumes: volumes(),
    })
    .unwrap();
    denied(
        c.call::<reply::ShutDown>(&Request::Shutdown),
        "shutdown_container",
        "",
    );
    // The agent still serves: it did not exit.
    c.call::<reply::Properties>(&Request::GetProperties)
        .unwrap();
    drop(c);
    // The host ends the group itself; nothing is left behind.
    let dir = group.dir.clone();
    assert!(group.shutdown().is_err());
    assert_clean(&before, &dir);
}

/// A tar with raw entry names (`..` included, which the tar crate's builder refuses).
fn raw_tar(entries: &[(&str, u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let mode = if *kind == b'5' { "0000755" } else { "0000644" };
        h[100..107].copy_from_slice(mode.as_bytes());
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = *kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// The example image with two more layers appended (uncompressed), as a new `latest`.
fn append_layers(oci: &Path, layers: &[Vec<u8>]) {
    use serde_json::{json, Value};
    let blob = |d: &str| {
        oci.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let put = |bytes: &[u8]| -> String {
        let d = hex::encode(openssl::sha::sha256(bytes));
        std::fs::write(oci.join("blobs/sha256").join(&d), bytes).unwrap();
        format!("sha256:{d}")
    };
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(blob(&md)).unwrap()).unwrap();
    let cd = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config: Value = serde_json::from_slice(&std::fs::read(blob(&cd)).unwrap()).unwrap();
    for l in layers {
        let d = put(l);
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(json!(d));
        manifest["layers"].as_array_mut().unwrap().push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": l.len()}));
    }
    let config = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = json!(put(&config));
    manifest["config"]["size"] = json!(config.len());
    let manifest = serde_json::to_vec(&manifest).unwrap();
    index["manifests"][0]["digest"] = json!(put(&manifest));
    index["manifests"][0]["size"] = json!(manifest.len());
    std::fs::write(oci.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn whiteouts_and_opaque_directories_work_and_stay_inside_their_layer() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let oci = home.join("wh");
    coffer_testkit::build_example_image(&oci);
    let lower = raw_tar(&[
        ("d/", b'5', b""),
        ("d/a", b'0', b"a"),
        ("x", b'0', b"x"),
        ("l9/etc/", b'5', b""),
        ("l9/etc/keep", b'0', b"k"),
    ]);
    // Opaque d/, x deleted; and two whiteouts that try to climb out of the layer.
    let upper = raw_tar(&[
        ("d/.wh..wh..opq", b'0', b""),
        ("d/b", b'0', b"b"),
        (".wh.x", b'0', b""),
        ("../l9/etc/.wh..wh..opq", b'0', b""),
        ("../../io/.wh.y", b'0', b""),
    ]);
    append_layers(&oci, &[lower, upper]);
    let out = coffer(
        home,
        &[
            "image",
            "import",
            &format!("oci:{}:latest", oci.display()),
            "--name",
            "wh:latest",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod = home.join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: wh}\nspec:\n  containers:\n  - name: c\n    image: wh:latest\n    command: [\"/bin/sh\", \"-c\", \"echo d: $(ls /d); ls /x 2>/dev/null || echo no x; echo etc: $(ls /l9/etc); echo io: $(ls /y /io/y 2>&1 | grep -c 'No such')\"]\n",
    )
    .unwrap();
    let before = mountinfo();
    let out = coffer(home, &["run", pod.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("[c] d: b\n"),
        "opaque d/ hides the lower a: {stdout}"
    );
    assert!(stdout.contains("[c] no x"), "x is whited out: {stdout}");
    // `../l9/etc` resolves inside the layer (to /l9/etc), as tar2ext4 cleans paths.
    assert!(
        stdout.contains("[c] etc: \n") || stdout.contains("[c] etc:\n"),
        "{stdout}"
    );
    assert!(stdout.contains("[c] io: 2"), "{stdout}");
    assert_clean(&before, &host::group_dir(home, "wh"));
}

/// Write `pod.yaml` into `home` (one container `main` from hello:latest running `script`, an
/// emptyDir at /data) with the Pod's and the container's security contexts; run it with
/// `coffer run`; the container's output lines.
fn run_secure_pod(home: &Path, pod_sc: &str, container_sc: &str, script: &str) -> Vec<String> {
    let pod = home.join("secure.yaml");
    std::fs::write(
        &pod,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: secure}}\nspec:\n  securityContext: {{{pod_sc}}}\n  containers:\n  - name: main\n    image: hello:latest\n    command: [\"/bin/sh\", \"-c\", {script:?}]\n    securityContext: {{{container_sc}}}\n    volumeMounts: [{{name: data, mountPath: /data}}]\n  volumes: [{{name: data, emptyDir: {{}}}}]\n"
        ),
    )
    .unwrap();
    let out = coffer(home, &["run", pod.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("[main] "))
        .map(str::to_string)
        .collect()
}

fn a_read_only_root_file_system_refuses_writes_and_volumes_still_take_them() {
    let _serial = one_at_a_time();
    let (tmp, _) = setup();
    let before = mountinfo();
    // Root could write anywhere in a writable root: only the read-only mount stops it.
    let script =
        "{ echo x > /app/new; } 2>/dev/null && echo root-writable || echo root-read-only; \
                  echo x > /data/f && echo volume-writable";
    let lines = run_secure_pod(tmp.path(), "", "readOnlyRootFilesystem: true", script);
    assert_eq!(lines, ["root-read-only", "volume-writable"]);
    let lines = run_secure_pod(tmp.path(), "", "readOnlyRootFilesystem: false", script);
    assert_eq!(lines, ["root-writable", "volume-writable"]);
    assert_clean(&before, &host::group_dir(tmp.path(), "secure"));
}

fn supplemental_groups_and_fs_group_reach_the_process_and_fs_group_owns_volumes() {
    let _serial = one_at_a_time();
    let (tmp, _) = setup();
    let before = mountinfo();
    let script = "cat /proc/self/status; echo x > /data/f && echo volume-writable; ls -ln /data/f";
    let status = |lines: &[String], field: &str| -> Vec<String> {
        lines
            .iter()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in {lines:?}"))
            .split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect()
    };
    let lines = run_secure_pod(
        tmp.path(),
        "runAsUser: 1000, runAsGroup: 1000, supplementalGroups: [7], fsGroup: 2000",
        "",
        script,
    );
    assert_eq!(status(&lines, "Uid:"), ["1000"; 4]);
    assert_eq!(status(&lines, "Gid:"), ["1000"; 4]);
    assert_eq!(status(&lines, "Groups:"), ["7", "2000"]);
    // uid 1000 writes into the volume through the fsGroup; the setgid directory gives the file
    // that group.
    assert!(lines.iter().any(|l| l == "volume-writable"), "{lines:?}");
    let f = lines.last().unwrap();
    let owner: Vec<&str> = f.split_whitespace().skip(2).take(2).collect();
    assert_eq!(owner, ["1000", "2000"], "{f}");
    // Without them: no supplementary groups, and the volume is root's (not writable by 1000).
    let lines = run_secure_pod(
        tmp.path(),
        "runAsUser: 1000, runAsGroup: 1000",
        "",
        "cat /proc/self/status; { echo x > /data/f; } 2>/dev/null && echo volume-writable || echo volume-refused",
    );
    assert!(status(&lines, "Groups:").is_empty(), "{lines:?}");
    assert_eq!(lines.last().unwrap(), "volume-refused");
    assert_clean(&before, &host::group_dir(tmp.path(), "secure"));
}

/// The process the generated policy describes for its first container, as the launcher asks for it.
fn process_from_policy(policy: &str) -> ProcessSpec {
    let line = policy
        .lines()
        .find(|l| l.starts_with("containers := "))
        .unwrap();
    let cs: serde_json::Value =
        serde_json::from_str(line.trim_start_matches("containers := ")).unwrap();
    let c = &cs[0];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let groups: Vec<u32> = c["user"]["group_idnames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["pattern"].as_str().unwrap().parse().unwrap())
        .collect();
    ProcessSpec {
        args: strings(&c["command"]),
        env: c["env_rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["strategy"] == "string")
            .map(|r| r["pattern"].as_str().unwrap().to_string())
            .collect(),
        cwd: c["working_dir"].as_str().unwrap().to_string(),
        uid: c["user"]["user_idname"]["pattern"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
        gid: groups[0],
        additional_gids: groups[1..].to_vec(),
        read_only_rootfs: c["read_only_root_filesystem"].as_bool().unwrap(),
        capabilities: strings(&c["capabilities"]["bounding"]),
        ..Default::default()
    }
}

fn the_host_cannot_ask_for_a_writable_root_or_other_groups_than_the_policy_pins() {
    let _serial = one_at_a_time();
    let (tmp, _) = setup();
    let home = tmp.path();
    let before = mountinfo();
    let pod = home.join("pinned.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: pinned}\nspec:\n  securityContext: {runAsUser: 1000, supplementalGroups: [7], fsGroup: 2000}\n  containers:\n  - name: main\n    image: hello:latest\n    command: [/bin/sh, -c, 'cat /proc/self/status']\n    securityContext: {readOnlyRootFilesystem: true}\n",
    )
    .unwrap();
    let policy = home.join("pinned.rego");
    let out = coffer(
        home,
        &[
            "policy",
            "gen",
            pod.to_str().unwrap(),
            "-o",
            policy.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policy = std::fs::read_to_string(&policy).unwrap();
    let pinned = process_from_policy(&policy);
    assert!(pinned.read_only_rootfs);
    assert_eq!(
        (pinned.gid, &pinned.additional_gids[..]),
        (0, &[7, 2000][..])
    );
    let group = launch(home, "pinned", &policy).unwrap();
    let mut c = prepare(&group, home);
    let create = |c: &mut coffer_host::launch::AgentClient, p: ProcessSpec| {
        c.call::<reply::Created>(&Request::CreateContainer {
            container_id: "hello".into(),
            process: p,
            volumes: vec![],
        })
    };
    let writable = ProcessSpec {
        read_only_rootfs: false,
        ..pinned.clone()
    };
    denied(
        create(&mut c, writable),
        "create_container",
        "read-only root file system",
    );
    for additional_gids in [vec![7], vec![7, 2000, 0], vec![]] {
        let other = ProcessSpec {
            additional_gids,
            ..pinned.clone()
        };
        denied(
            create(&mut c, other),
            "create_container",
            "invalid user or groups",
        );
    }
    let swapped = ProcessSpec {
        gid: 7,
        additional_gids: vec![0, 2000],
        ..pinned.clone()
    };
    denied(
        create(&mut c, swapped),
        "create_container",
        "invalid user or groups",
    );
    // What the policy pins runs, with exactly those groups.
    create(&mut c, pinned).unwrap();
    let mut lines = Vec::new();
    group
        .client()
        .unwrap()
        .attach("hello", |_, l| lines.push(l.to_string()))
        .unwrap();
    let groups = lines.iter().find(|l| l.starts_with("Groups:")).unwrap();
    assert_eq!(
        groups.split_whitespace().collect::<Vec<_>>(),
        ["Groups:", "7", "2000"]
    );
    let dir = group.dir.clone();
    group.shutdown().unwrap();
    assert_clean(&before, &dir);
}
