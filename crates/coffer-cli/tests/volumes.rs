//! Encrypted volumes and the SKR API in a running group, with `coffer serve` as the broker:
//! what reaches the container, and what the host cannot substitute.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{admin, coffer, http, serve, serve_on, Server};

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

fn kernel_package() -> Result<(), coffer_testkit::Unmet> {
    let home = tempfile::tempdir().map_err(|e| e.to_string())?;
    coffer_host::image::kernel_deb(home.path(), None)
        .map(drop)
        .map_err(|e| e.to_string().into())
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
    std::fs::write(content.join("other.bin"), other_bin()).unwrap();
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

/// A 1 MiB file whose 4096-byte blocks say which they are (`COFFER-BLOCK-000123` first), so
/// a test can find one in the volume's plaintext.
fn other_bin() -> Vec<u8> {
    (0..256)
        .flat_map(|i| {
            let mut b = format!("COFFER-BLOCK-{i:06}").into_bytes();
            b.resize(4096, b'x');
            b
        })
        .collect()
}

/// [`run`] with more `coffer run` arguments.
fn run_with(s: &Setup, pod_yaml: &str, extra: &[&str]) -> (bool, String, String) {
    run_watching(s, pod_yaml, extra, |_| {})
}

/// [`run_with`], handing each line of the group's output to `on_line` as it comes.
fn run_watching(
    s: &Setup,
    pod_yaml: &str,
    extra: &[&str],
    on_line: impl FnMut(&str),
) -> (bool, String, String) {
    prepare(s, pod_yaml);
    run_prepared(s, extra, on_line)
}

/// Write the Pod, generate its policy, give the key to exactly that policy's groups.
fn prepare(s: &Setup, pod_yaml: &str) {
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
}

/// Run the group [`prepare`] made ready.
fn run_prepared(
    s: &Setup,
    extra: &[&str],
    mut on_line: impl FnMut(&str),
) -> (bool, String, String) {
    let h = s.home.path();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["run", h.join("pod.yaml").to_str().unwrap(), "--policy"])
        .arg(h.join("p.rego"))
        .args(extra)
        .env("COFFER_HOME", h)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut e = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut e);
        e
    });
    let mut out = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap())) {
        let line = line.unwrap();
        on_line(&line);
        out.push_str(&line);
        out.push('\n');
    }
    let ok = child.wait().unwrap().success();
    (ok, out, err.join().unwrap())
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
        a_block_the_host_changes_after_the_pin_check_reads_as_an_error: GROUP;
        a_volume_is_not_opened_with_a_key_the_host_answers_itself: GROUP;
        the_skr_api_does_not_hand_out_a_key_the_host_answers_itself: GROUP;
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

/// Run a group that reads the pinned volume, has the host rewrite one ciphertext byte of
/// block 128 of `other.bin` once the volume is open, then reads the whole file again.
fn change_a_block_while_the_group_runs(s: &Setup, extra: &[&str]) -> (bool, String, String) {
    // Where that block lies in the image: the plaintext, found by its marker, is the LUKS2 data
    // segment (16 MiB on, 4096-byte sectors).
    let vol = coffer_encfs::block::Volume::open(&s.image, &[0x42; 32], false).unwrap();
    let plain = vol.read_at(0, vol.size() as usize).unwrap();
    let at = plain
        .windows(19)
        .position(|w| w == b"COFFER-BLOCK-000128")
        .unwrap();
    assert_eq!(at % 4096, 0);
    drop(vol);
    let script = "cat /secret/secret.txt; grep ' /secret ' /proc/self/mountinfo; \
        head -c 19 /secret/other.bin; echo; echo ready; sleep 8; \
        cat /secret/other.bin > /dev/null 2> /tmp/e; echo \"read exit $?: $(cat /tmp/e)\"; \
        head -c 19 /secret/other.bin; echo";
    let image = s.image.clone();
    run_watching(s, &pod(s, script, Some(&s.plaintext_root)), extra, |line| {
        if line.ends_with("] ready") {
            use std::os::unix::fs::FileExt as _;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&image)
                .unwrap();
            f.write_at(&[0x5a], (16 << 20) + at as u64 + 100).unwrap();
            f.sync_all().unwrap();
        }
    })
}

/// What a reader sees after [`change_a_block_while_the_group_runs`]: an I/O error for the file
/// with the changed block, the unchanged blocks still readable.
fn assert_the_changed_block_is_an_error(out: &str) {
    let read = out.lines().find(|l| l.contains("read exit")).unwrap();
    assert!(!read.contains("read exit 0"), "{read}");
    assert!(read.contains("Input/output error"), "{read}");
    assert_eq!(
        out.matches("[app] COFFER-BLOCK-000000").count(),
        2,
        "the unchanged blocks still read: {out}"
    );
}

/// The namespace backend: the FUSE block file checks each block it reads against the hashes
/// measured when the volume opened.
fn a_block_the_host_changes_after_the_pin_check_reads_as_an_error() {
    let _serial = one_at_a_time();
    let s = setup();
    let (ok, out, err) = change_a_block_while_the_group_runs(&s, &[]);
    assert!(ok, "{out}\n{err}");
    assert_the_changed_block_is_an_error(&out);
}

/// In a VM the volume is the guest kernel's dm-crypt, and with a pinned plaintext dm-verity
/// over it checks every later read: a block the host changes after the volume opened reads as
/// an I/O error, while the rest of the volume still reads.
fn an_encrypted_volume_opens_through_dm_crypt_in_a_vm() {
    let _serial = one_at_a_time();
    let s = setup();
    let (ok, out, err) = change_a_block_while_the_group_runs(&s, &["--isolation", "vm"]);
    assert!(ok, "{out}\n{err}");
    assert!(err.contains("isolation vm"), "{err}");
    assert!(out.contains("[app] the-secret"), "{out}\n{err}");
    let line = out.lines().find(|l| l.contains(" /secret ")).unwrap();
    let line = line.strip_prefix("[app] ").unwrap();
    // The guest kernel's dm-crypt (under dm-verity), not the FUSE block file of the namespace
    // backend.
    assert!(line.contains(" - ext4 /dev/dm-"), "{line}");
    let opts = line.split_whitespace().nth(5).unwrap();
    for o in ["ro", "nosuid", "nodev"] {
        assert!(opts.split(',').any(|x| x == o), "{o}: {line}");
    }
    assert_the_changed_block_is_an_error(&out);
}

/// The host answers the group's attestation and release calls itself, as its egress relay
/// could: the broker the policy names stops, and on its address the host runs a `coffer serve`
/// of its own that releases the host's key (`0x66` bytes) to the group's policy, signed with
/// the host's own broker key; the volume image is replaced by one the host's key opens.
fn the_host_answers_itself(s: &mut Setup) -> (tempfile::TempDir, Server) {
    let _ = s.server.child.kill();
    let _ = s.server.child.wait();
    let listen = s.server.url.trim_start_matches("http://").to_string();
    let home = tempfile::tempdir().unwrap();
    // The host's broker trusts the host's own emulated secure processor (the group's).
    let emu = coffer_snp_emu::EmulatedSp::state_dir(s.home.path());
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&emu)
        .arg(coffer_snp_emu::EmulatedSp::state_dir(home.path()))
        .status()
        .unwrap();
    assert!(copied.success());
    let hostile = serve_on(home.path(), &listen, &["--allow-emulated"]);
    // And the volume image is the host's own, which the host's key opens.
    std::fs::write(home.path().join("key"), [0x66u8; 32]).unwrap();
    std::fs::remove_file(&s.image).unwrap();
    let out = coffer(
        home.path(),
        &[
            "encfs",
            "create",
            "--from",
            s.home.path().join("content").to_str().unwrap(),
            "--key-file",
            home.path().join("key").to_str().unwrap(),
            "-o",
            s.image.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policy = std::fs::read(s.home.path().join("p.rego")).unwrap();
    let host_data = hex::encode(coffer_policy::digest(&policy));
    let release = json!({"version": "1.0.0", "anyOf": [{"authority": hostile.url, "allOf": [
        {"claim": "x-ms-sevsnpvm-hostdata", "equals": host_data}]}]});
    let r = http()
        .post(format!("{}/keys", hostile.url))
        .bearer_auth(admin(home.path()))
        .json(&json!({"name": "vol-key", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0x66u8; 32]), "release_policy": release}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    (home, hostile)
}

fn a_volume_is_not_opened_with_a_key_the_host_answers_itself() {
    let _serial = one_at_a_time();
    let mut s = setup();
    prepare(&s, &pod(&s, "cat /secret/secret.txt; echo started", None));
    let _host = the_host_answers_itself(&mut s);
    let (ok, out, err) = run_prepared(&s, &[], |_| {});
    assert!(!ok, "{out}");
    assert!(!out.contains("started"), "{out}");
    assert!(
        err.contains("not by the key broker the policy names"),
        "{err}"
    );
    let home = s.home.path().display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&home), "left mounted: {mounts}");
}

fn the_skr_api_does_not_hand_out_a_key_the_host_answers_itself() {
    let _serial = one_at_a_time();
    let mut s = setup();
    let url = s.server.url.clone();
    let pod_yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: skr
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
"#,
        key = s.broker_key,
        script = format!(
            "r=$(wget -q -O - --header 'Content-Type: application/json' --post-data '{{\"maa_endpoint\":\"{url}\",\"akv_endpoint\":\"{url}\",\"kid\":\"vol-key\"}}' http://127.0.0.1:8080/key/release 2>&1); echo \"result: $r exit=$?\""
        ),
    );
    prepare(&s, &pod_yaml);
    let _host = the_host_answers_itself(&mut s);
    let (ok, out, err) = run_prepared(&s, &[], |_| {});
    assert!(ok, "{out}\n{err}");
    let result = out.lines().find(|l| l.contains("result: ")).unwrap();
    assert!(result.contains("502"), "{result}");
    assert!(!result.contains("exit=0"), "{result}");
    // Neither the host's key nor any key reaches the application.
    assert!(
        !result.contains("ZmZm") && !result.contains("kty"),
        "{result}"
    );
}
