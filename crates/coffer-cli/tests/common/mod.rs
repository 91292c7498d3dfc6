//! Shared by the CLI integration tests: run the real `coffer` binary in a given $COFFER_HOME.

#![allow(dead_code)] // each test binary uses part of it

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// Run `coffer ARGS` with `COFFER_HOME=home`.
/// The agent binary `cargo test --workspace` built next to `coffer` (`coffer-agent`'s own tests
/// make cargo build it).
pub(crate) fn agent_exe() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_coffer")).with_file_name("coffer-agent");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p coffer-agent` (cargo test --workspace builds it)",
        p.display()
    );
    p
}

pub(crate) fn coffer(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(args)
        .env("COFFER_HOME", home)
        .output()
        .expect("run coffer")
}

/// A `coffer serve` process on a free loopback port, killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn serve(home: &Path, args: &[&str]) -> Server {
    serve_on(home, "127.0.0.1:0", args)
}

/// [`serve`] on the address `listen`.
pub(crate) fn serve_on(home: &Path, listen: &str, args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["serve", "--listen", listen])
        .args(args)
        .env("COFFER_HOME", home)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines.next().expect("serve exited").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, url }
}

/// The admin token of the server whose state is under `home`.
pub(crate) fn admin(home: &Path) -> String {
    std::fs::read_to_string(home.join("serve/admin-token"))
        .unwrap()
        .trim()
        .to_string()
}

/// An HTTP client.
pub(crate) fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

/// Build the example image and import it into `home` as hello:latest.
pub(crate) fn import_example(home: &Path) {
    let oci = home.join("hello");
    coffer_testkit::build_example_image(&oci);
    let out = coffer(
        home,
        &[
            "image",
            "import",
            &format!("oci:{}:latest", oci.display()),
            "--name",
            "hello:latest",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `coffer policy gen POD -o HOME/<pod stem>.rego`; the policy's text.
pub(crate) fn policy_gen(home: &Path, pod: &Path) -> String {
    let out = home.join(format!(
        "{}.rego",
        pod.file_stem().unwrap().to_string_lossy()
    ));
    let o = coffer(
        home,
        &[
            "policy",
            "gen",
            pod.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out).unwrap()
}

/// What the group whose host directory is `group_dir` left of its network: iptables rules
/// naming its CNI id, its address lease, its saved CNI state.
pub(crate) fn network_leftovers(group_dir: &Path) -> Vec<String> {
    let name = group_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = coffer_host::net::network_id(group_dir, &name);
    let mut left: Vec<String> = Command::new("iptables-save")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&id))
        .map(|l| format!("iptables: {l}"))
        .collect();
    let leases = Path::new(coffer_host::net::STATE_DIR)
        .join("ipam")
        .join(coffer_host::net::NETWORK);
    if let Ok(d) = std::fs::read_dir(&leases) {
        for e in d.flatten() {
            if std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .contains(&id)
            {
                left.push(format!("lease: {}", e.path().display()));
            }
        }
    }
    let saved = Path::new(coffer_host::net::STATE_DIR)
        .join("groups")
        .join(format!("{id}.json"));
    if saved.exists() {
        left.push(format!("state: {}", saved.display()));
    }
    left
}

/// Everything of the group `name` under `home` still on the host after it stopped: its directory,
/// processes started with this `COFFER_HOME` (the group's owner, its sandbox or VM), processes in
/// and directories of Coffer's container cgroups (cgroup v1 hierarchies, as on this machine),
/// host mounts under `home` (the group's own mounts are in its sandbox's mount namespace and go
/// with it), loop devices backed by a group's layer images, veths on the groups' bridge, and
/// [`network_leftovers`]. Only meaningful with no other group running on the machine.
pub(crate) fn group_leftovers(home: &Path, name: &str) -> Vec<String> {
    let dir = coffer_host::launch::group_dir(home, name);
    let mut left = network_leftovers(&dir);
    if dir.exists() {
        left.push(format!("directory: {}", dir.display()));
    }
    let home_s = home.to_string_lossy().into_owned();
    let marker = format!("COFFER_HOME={home_s}");
    let me = std::process::id().to_string();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let environ = std::fs::read(p.path().join("environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            left.push(format!("process {pid}: {cmd}"));
        }
    }
    for g in coffer_testkit::container_cgroups() {
        let procs = std::fs::read_to_string(g.join("cgroup.procs")).unwrap_or_default();
        left.push(format!(
            "cgroup: {} (processes: {})",
            g.display(),
            procs.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&home_s))
            .map(|l| format!("mount: {l}")),
    );
    for l in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let backing =
            std::fs::read_to_string(l.path().join("loop/backing_file")).unwrap_or_default();
        // The agent opens layer images in its own mount namespace, where they are under the
        // I/O directory.
        if backing.contains(&home_s) || backing.starts_with(coffer_proto::IO_DIR) {
            left.push(format!(
                "loop: {} on {}",
                l.path().display(),
                backing.trim()
            ));
        }
    }
    for v in std::fs::read_dir(format!("/sys/class/net/{}/brif", coffer_host::net::BRIDGE))
        .into_iter()
        .flatten()
        .flatten()
    {
        left.push(format!("veth: {}", v.file_name().to_string_lossy()));
    }
    left
}
