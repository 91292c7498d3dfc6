//! Encrypted volumes and the SKR API in a running group, with `coffer serve` as the broker:
//! what reaches the container, and what the host cannot substitute.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{admin, coffer, http, serve, Server};

use base64::Engine as _;
use coffer_testkit::Need;
use serde_json::{json, Value};

/// One group at a time (each runs a whole group; see run.rs).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

struct Setup {
    home: tempfile::TempDir,
    server: Server,
    broker_key: String,
    image: std::path::PathBuf,
    /// dm-verity root of the volume's plaintext, as `coffer encfs create` printed it.
    plaintext_root: String,
}

/// What a group with an encrypted volume needs: root, runc, unshare, umoci, mkfs.ext4.
const GROUP: &[Need] = &[
    Need::Root,
    Need::Tool("runc"),
    Need::Tool("unshare"),
    Need::Tool("umoci"),
    Need::Tool("mkfs.ext4"),
];

/// In a VM, also QEMU and the kernel package (kept with the VM tests', see `main`).
const VM: &[Need] = &[
    Need::Tool("qemu-system-x86_64"),
    Need::Check("the kernel package", kernel_package),
];

fn kernel_package() -> Result<(), String> {
    let home = tempfile::tempdir().map_err(|e| e.to_string())?;
    coffer_host::image::kernel_deb(home.path(), None)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn setup() -> Setup {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    common::import_example(h);
    let server = serve(h, &["--allow-emulated"]);
    let bk: Value = http()
        .get(format!("{}/broker-key", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    // A volume holding a secret and a setuid-root file.
    let content = h.join("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("secret.txt"), "the-secret\n").unwrap();
    std::fs::write(content.join("suid"), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        content.join("suid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let key = [0x42u8; 32];
    std::fs::write(h.join("key"), key).unwrap();
    let image = h.join("secret.img");
    let out = coffer(
        h,
        &[
            "encfs",
            "create",
            "--from",
            content.to_str().unwrap(),
            "--key-file",
            h.join("key").to_str().unwrap(),
            "-o",
            image.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plaintext_root = stdout
        .split("plaintext dm-verity root: ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    Setup {
        broker_key: bk["thumbprint"].as_str().unwrap().to_string(),
        home,
        server,
        image,
        plaintext_root,
    }
}

fn pod(s: &Setup, script: &str, pinned_root: Option<&str>) -> String {
    let url = &s.server.url;
    let pin = pinned_root
        .map(|r| format!("\n          verityRootHash: \"{r}\""))
        .unwrap_or_default();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: vol
  annotations:
    coffer.dev/skr-port: "8080"
    coffer.dev/skr-attestation-endpoint: "{url}"
    coffer.dev/skr-key-broker-endpoint: "{url}"
    coffer.dev/skr-key-broker-key: "{key}"
spec:
  restartPolicy: Never
  containers:
    - name: app
      image: hello:latest
      command: ["/bin/sh", "-c", {script:?}]
      volumeMounts:
        - name: secret
          mountPath: /secret
          readOnly: true
  volumes:
    - name: secret
      csi:
        driver: encfs.coffer.dev
        readOnly: true
        volumeAttributes:
          source: "{img}"
          keyName: vol-key
          attestationEndpoint: "{url}"
          keyBrokerEndpoint: "{url}"
          keyBrokerKey: "{key}"{pin}
"#,
        key = s.broker_key,
        img = s.image.display(),
    )
}

/// Generate the policy, give the key to exactly that policy's groups, run the group.
fn run(s: &Setup, pod_yaml: &str) -> (bool, String, String) {
    run_with(s, pod_yaml, &[])
}

/// [`run`] with more `coffer run` arguments.
fn run_with(s: &Setup, pod_yaml: &str, extra: &[&str]) -> (bool, String, String) {
    let h = s.home.path();
    std::fs::write(h.join("pod.yaml"), pod_yaml).unwrap();
    let out = coffer(
        h,
        &[
            "policy",
            "gen",
            h.join("pod.yaml").to_str().unwrap(),
            "-o",
            h.join("p.rego").to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policy = std::fs::read(h.join("p.rego")).unwrap();
    let host_data = hex::encode(coffer_policy::digest(&policy));
    let release = json!({"version": "1.0.0", "anyOf": [{"authority": s.server.url, "allOf": [
        {"claim": "x-ms-sevsnpvm-hostdata", "equals": host_data}]}]});
    let _ = http()
        .delete(format!("{}/keys/vol-key", s.server.url))
        .bearer_auth(admin(h))
        .send();
    let r = http()
        .post(format!("{}/keys", s.server.url))
        .bearer_auth(admin(h))
        .json(&json!({"name": "vol-key", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0x42u8; 32]), "release_policy": release}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let out = coffer(
        h,
        &[
            "run",
            h.join("pod.yaml").to_str().unwrap(),
            "--policy",
            h.join("p.rego").to_str().unwrap(),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn main() -> std::process::ExitCode {
    // The kernel package, shared with the VM tests, kept across runs.
    std::env::set_var(
        "COFFER_UVM_KERNELS",
        std::env::temp_dir().join("coffer-uvm-kernels"),
    );
    coffer_testkit::run(coffer_testkit::tests![
        an_encrypted_volume_is_mounted_nosuid_and_nodev: GROUP;
        a_volume_with_the_pinned_plaintext_opens: GROUP;
        a_volume_whose_plaintext_is_not_the_pinned_one_stays_closed: GROUP;
        the_skr_api_refuses_endpoints_outside_the_policy: GROUP;
        an_encrypted_volume_opens_through_dm_crypt_in_a_vm: GROUP, VM;
    ])
}

fn an_encrypted_volume_is_mounted_nosuid_and_nodev() {
    let _serial = one_at_a_time();
    let s = setup();
    let (ok, out, err) = run(
        &s,
        &pod(
            &s,
            "cat /secret/secret.txt; grep ' /secret ' /proc/self/mountinfo",
            None,
        ),
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("[app] the-secret"), "{out}");
    let line = out.lines().find(|l| l.contains(" /secret ")).unwrap();
    let line = line.strip_prefix("[app] ").unwrap();
    let opts = line.split_whitespace().nth(5).unwrap();
    assert!(opts.split(',').any(|o| o == "nosuid"), "{line}");
    assert!(opts.split(',').any(|o| o == "nodev"), "{line}");
}

fn a_volume_with_the_pinned_plaintext_opens() {
    let _serial = one_at_a_time();
    let s = setup();
    let (ok, out, err) = run(
        &s,
        &pod(&s, "cat /secret/secret.txt", Some(&s.plaintext_root)),
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("[app] the-secret"), "{out}");
}

fn a_volume_whose_plaintext_is_not_the_pinned_one_stays_closed() {
    let _serial = one_at_a_time();
    let s = setup();
    // The right key, another file system: what a host that holds an old image could offer.
    let other = "ab".repeat(32);
    let (ok, out, err) = run(&s, &pod(&s, "cat /secret/secret.txt", Some(&other)));
    assert!(!ok, "{out}");
    assert!(!out.contains("the-secret"), "{out}");
    assert!(err.contains("is not the one the policy pins"), "{err}");
}

/// The SKR API sends the group's evidence and key requests only to the policy's endpoints.
fn the_skr_api_refuses_endpoints_outside_the_policy() {
    let _serial = one_at_a_time();
    let s = setup();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    other.set_nonblocking(true).unwrap();
    let port = other.local_addr().unwrap().port();
    let post = |body: &str| {
        format!(
            "r=$(wget -q -O - --header 'Content-Type: application/json' --post-data '{body}' http://127.0.0.1:8080/key/release 2>&1); echo \"result: $r exit=$?\""
        )
    };
    let url = &s.server.url;
    let script = [
        post(&format!(
            r#"{{"maa_endpoint":"http://127.0.0.1:{port}","akv_endpoint":"{url}","kid":"vol-key"}}"#
        )),
        post(&format!(
            r#"{{"maa_endpoint":"{url}","akv_endpoint":"http://127.0.0.1:{port}","kid":"vol-key"}}"#
        )),
        post(&format!(
            r#"{{"maa_endpoint":"{url}\r\nX: y","akv_endpoint":"{url}","kid":"vol-key"}}"#
        )),
        post(&format!(
            r#"{{"maa_endpoint":"{url}","akv_endpoint":"{url}","kid":"vol-key"}}"#
        )),
    ]
    .join("; ");
    let (ok, out, err) = run(&s, &pod(&s, &script, None));
    assert!(ok, "{out}\n{err}");
    let results: Vec<&str> = out.lines().filter(|l| l.contains("result: ")).collect();
    assert_eq!(results.len(), 4, "{out}");
    assert!(results[0].contains("403"), "{out}");
    assert!(results[1].contains("403"), "{out}");
    assert!(results[2].contains("400"), "{out}");
    assert!(
        results[3].contains("exit=0") && results[3].contains("kty"),
        "{out}"
    );
    assert!(
        matches!(other.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the other loopback port received a connection"
    );
}

fn an_encrypted_volume_opens_through_dm_crypt_in_a_vm() {
    let _serial = one_at_a_time();
    let s = setup();
    let (ok, out, err) = run_with(
        &s,
        &pod(
            &s,
            "cat /secret/secret.txt; grep ' /secret ' /proc/self/mountinfo",
            Some(&s.plaintext_root),
        ),
        &["--isolation", "vm"],
    );
    assert!(ok, "{out}\n{err}");
    assert!(err.contains("isolation vm"), "{err}");
    assert!(out.contains("[app] the-secret"), "{out}\n{err}");
    let line = out.lines().find(|l| l.contains(" /secret ")).unwrap();
    let line = line.strip_prefix("[app] ").unwrap();
    // The guest kernel's dm-crypt, not the FUSE block file of the namespace backend.
    assert!(line.contains(" - ext4 /dev/dm-"), "{line}");
    let opts = line.split_whitespace().nth(5).unwrap();
    for o in ["ro", "nosuid", "nodev"] {
        assert!(opts.split(',').any(|x| x == o), "{o}: {line}");
    }
}
