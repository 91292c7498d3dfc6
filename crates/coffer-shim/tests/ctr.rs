//! The shim under a real containerd (started here, with a private root, state, socket and
//! config, no systemd): `ctr run` of the hello image through `containerd-shim-coffer-v2`, and a
//! one-line policy change denied with nothing left behind.
//!
//! Needs root, `containerd` and `ctr` (scripts/setup.sh), `umoci`, and the `coffer` and
//! `coffer-agent` binaries next to the shim (`cargo test --workspace` builds them; alone:
//! `cargo build -p coffer-cli -p coffer-agent`). Without root, containerd, ctr or umoci the test is
//! reported as ignored, and so it is, with the reason, when containerd cannot start here (both
//! failures under `COFFER_REQUIRE_VECTORS=1`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use coffer_testkit::Need;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-coffer-v2");

fn sibling(name: &str) -> PathBuf {
    let p = Path::new(SHIM).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p coffer-cli -p coffer-agent` (cargo test --workspace builds it)",
        p.display()
    );
    p
}

/// A containerd of the test's own, stopped by pid when dropped.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Containerd {
    /// Start it; when it cannot start here, the test ends as unable to run ([`coffer_testkit::skip`]).
    fn start(home: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n",
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                sock = socket.display(),
            ),
        )
        .expect("write config");
        let bin_dir = Path::new(SHIM).parent().expect("shim dir");
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("COFFER_HOME", home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd { child, dir, socket };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if c.ctr(&["version"]).status.success() {
                return c;
            }
            if let Ok(Some(status)) = c.child.try_wait() {
                let log = std::fs::read_to_string(c.dir.path().join("containerd.log"))
                    .unwrap_or_default();
                coffer_testkit::skip(format!(
                    "containerd cannot start here ({status}):\n{}",
                    log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        coffer_testkit::skip("containerd did not serve within 30 s")
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "default"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn coffer(home: &Path, args: &[&str]) -> Output {
    let out = Command::new(sibling("coffer"))
        .args(args)
        .env("COFFER_HOME", home)
        .output()
        .expect("run coffer");
    assert!(
        out.status.success(),
        "coffer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: hello
spec:
  restartPolicy: Never
  containers:
    - name: hello
      image: hello:latest
      env:
        - name: GREETING
          value: bonjour
";

/// What is left of a group whose container was `id`: processes naming the test's home, mounts
/// under it, the container's cgroups, the group's run directory.
fn leftovers(home: &Path, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let home_s = home.display().to_string();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&home_s) {
                out.push(format!(
                    "process {}: {cmd}",
                    p.file_name().to_string_lossy()
                ));
            }
            if cmd.contains("containerd-shim-coffer-v2") && cmd.contains(&format!("-id {id} ")) {
                out.push(format!("shim {}: {cmd}", p.file_name().to_string_lossy()));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    out.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&home_s))
            .map(|l| format!("mount: {l}")),
    );
    for g in coffer_testkit::container_cgroups() {
        if g.to_string_lossy().ends_with(&format!("-{id}")) {
            out.push(format!("cgroup {}", g.display()));
        }
    }
    for g in std::fs::read_dir(home.join("run"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if g.file_name().to_string_lossy().starts_with("ctrd-") {
            out.push(format!("run directory {}", g.path().display()));
        }
    }
    out
}

/// Wait (up to 10 s) until nothing is left.
fn assert_nothing_left(home: &Path, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = leftovers(home, id);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind:\n{}",
            left.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        ctr_run_through_the_shim_runs_the_policy_and_denies_a_changed_one:
            Need::Root,
            Need::Tool("containerd"),
            Need::Tool("ctr"),
            coffer_testkit::EXAMPLE_IMAGE;
        a_group_left_by_a_killed_shim_is_ended_by_containerds_cleanup:
            Need::Root,
            Need::Tool("containerd"),
            Need::Tool("ctr"),
            coffer_testkit::EXAMPLE_IMAGE;
    ])
}

/// A home, a containerd of the test's own, and the example image in both stores.
fn setup() -> (tempfile::TempDir, PathBuf, Containerd) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("mkdir");
    let ctrd = Containerd::start(&home);
    sibling("coffer-agent");
    // The example image, into coffer's store (for the policy) and containerd's (to run).
    let oci = tmp.path().join("hello");
    coffer_testkit::build_example_image(&oci);
    coffer(
        &home,
        &[
            "image",
            "import",
            &format!("oci:{}:latest", oci.display()),
            "--name",
            "hello:latest",
        ],
    );
    let archive = tmp.path().join("hello.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&oci)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .expect("tar");
    assert!(tar.success());
    let imported = ctrd.ctr(&[
        "image",
        "import",
        "--base-name",
        "hello",
        &archive.display().to_string(),
    ]);
    assert!(
        imported.status.success(),
        "ctr import: {}",
        String::from_utf8_lossy(&imported.stderr)
    );

    (tmp, home, ctrd)
}

fn ctr_run_through_the_shim_runs_the_policy_and_denies_a_changed_one() {
    let (tmp, home, ctrd) = setup();
    // The policy, as the Pod's annotation.
    let pod = tmp.path().join("pod.yaml");
    std::fs::write(&pod, POD).expect("write pod");
    let annotated = coffer(
        &home,
        &["policy", "gen", "--annotate", &pod.display().to_string()],
    );
    let doc: serde_yaml::Value =
        serde_yaml::from_slice(&annotated.stdout).expect("annotated pod is YAML");
    let value = doc["metadata"]["annotations"]["coffer.dev/policy"]
        .as_str()
        .expect("the annotation")
        .to_string();
    assert_eq!(doc["spec"]["containers"][0]["name"].as_str(), Some("hello"));
    let policy = coffer_host::annotation::decode(Some(&value)).expect("decodes");
    let host_data = String::from_utf8_lossy(&annotated.stderr).to_string();
    assert!(
        host_data.contains(&hex::encode(coffer_policy::digest(&policy))),
        "policy gen prints the HOST_DATA of the annotation's policy: {host_data}"
    );

    let run = |id: &str, annotation: &str| {
        let started = Instant::now();
        let out = ctrd.ctr(&[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.coffer.v2",
            "--env",
            "GREETING=bonjour",
            "--annotation",
            &format!("coffer.dev/policy={annotation}"),
            "hello:latest",
            id,
        ]);
        (out, started.elapsed())
    };

    // The policy's group: its output, its exit status, and nothing left once it is gone.
    let id = format!("shimtest-{}-ok", std::process::id());
    let (out, took) = run(&id, &value);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ctr run: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "hello from a confidential container\nGREETING=bonjour\n"
    );
    eprintln!(
        "ctr_run_through_the_shim: ctr run through the shim took {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    assert_nothing_left(&home, &id);

    // No annotation: refused, clearly.
    let id = format!("shimtest-{}-none", std::process::id());
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.coffer.v2",
        "hello:latest",
        &id,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("coffer.dev/policy is missing"), "{err}");
    assert_nothing_left(&home, &id);
    let _ = ctrd.ctr(&["container", "rm", &id]);

    // One changed line (the command the policy allows): denied, nothing runs or stays.
    let text = String::from_utf8(policy).expect("policy text");
    let changed = text.replacen("/app/hello.sh", "/app/other.sh", 1);
    assert_ne!(changed, text, "the policy names the command");
    let id = format!("shimtest-{}-deny", std::process::id());
    let (out, _) = run(
        &id,
        &coffer_host::annotation::encode(changed.as_bytes(), true),
    );
    assert!(
        !out.status.success(),
        "a changed policy ran: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hello from"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("denied by policy"), "{err}");
    assert_nothing_left(&home, &id);

    // Exec through the policy's exec_processes, in a container that keeps running.
    let value = sleeper_annotation(tmp.path(), &home, true);
    assert!(value.starts_with("gzip:"));
    let id = format!("shimtest-{}-exec", std::process::id());
    run_sleeper(&ctrd, &id, &value);
    let exec = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "/bin/echo",
        "probe-ok",
    ]);
    assert!(
        exec.status.success(),
        "exec: {}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "probe-ok\n");
    let exec = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        &id,
        "/bin/echo",
        "not-allowed",
    ]);
    assert!(!exec.status.success(), "an exec the policy lacks ran");
    assert!(!String::from_utf8_lossy(&exec.stdout).contains("not-allowed"));
    let ps = ctrd.ctr(&["task", "ls"]);
    assert!(
        String::from_utf8_lossy(&ps.stdout).contains("RUNNING"),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );
    // SIGKILL is not the container's stop signal: the shim ends the one-container group.
    let kill = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    assert!(
        kill.status.success(),
        "kill: {}",
        String::from_utf8_lossy(&kill.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&ctrd.ctr(&["task", "ls"]).stdout).contains("STOPPED") {
        assert!(Instant::now() < deadline, "the task did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    let del = ctrd.ctr(&["task", "delete", &id]);
    assert!(
        del.status.success(),
        "task delete: {}",
        String::from_utf8_lossy(&del.stderr)
    );
    let _ = ctrd.ctr(&["container", "rm", &id]);
    assert_nothing_left(&home, &id);
}

/// containerd runs the shim's `delete` after a shim dies: the group that shim left (its sandbox,
/// run directory, cgroups) is ended then.
fn a_group_left_by_a_killed_shim_is_ended_by_containerds_cleanup() {
    let (tmp, home, ctrd) = setup();
    let value = sleeper_annotation(tmp.path(), &home, false);
    let id = format!("shimtest-{}-orphan", std::process::id());
    run_sleeper(&ctrd, &id, &value);
    // The group's sandbox, by the pid its run directory records.
    let group = std::fs::read_dir(home.join("run"))
        .expect("run directory")
        .flatten()
        .find(|g| g.file_name().to_string_lossy().starts_with("ctrd-"))
        .expect("the group's run directory")
        .path();
    let sandbox = std::fs::read_to_string(group.join("pid")).expect("pid file");
    assert!(coffer_host::process_alive(&sandbox), "the sandbox runs");
    let shim: Vec<i32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|p| {
            let cmd = std::fs::read(p.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains("containerd-shim-coffer-v2") && cmd.contains(&format!("-id {id} ")))
                .then(|| p.file_name().to_string_lossy().parse().ok())
                .flatten()
        })
        .collect();
    assert_eq!(shim.len(), 1, "one shim for the task: {shim:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");
    let deadline = Instant::now() + Duration::from_secs(20);
    while coffer_host::process_alive(&sandbox) || group.exists() {
        assert!(
            Instant::now() < deadline,
            "the killed shim's group is still there: sandbox alive {}, run directory {}",
            coffer_host::process_alive(&sandbox),
            group.exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = ctrd.ctr(&["task", "delete", &id]);
    let _ = ctrd.ctr(&["container", "rm", &id]);
    assert_nothing_left(&home, &id);
}

/// The `coffer.dev/policy` annotation `coffer policy gen --annotate` writes for [`SLEEPER`]
/// (`--gzip` with `gzip`).
fn sleeper_annotation(dir: &Path, home: &Path, gzip: bool) -> String {
    let pod = dir.join("sleeper.yaml");
    std::fs::write(&pod, SLEEPER).expect("write pod");
    let pod = pod.display().to_string();
    let mut args = vec!["policy", "gen", "--annotate"];
    if gzip {
        args.push("--gzip");
    }
    args.push(&pod);
    let annotated = coffer(home, &args);
    let doc: serde_yaml::Value = serde_yaml::from_slice(&annotated.stdout).expect("YAML");
    doc["metadata"]["annotations"]["coffer.dev/policy"]
        .as_str()
        .expect("annotation")
        .to_string()
}

/// `ctr run -d` of [`SLEEPER`]'s container as `id` through the shim, with the annotation `value`.
fn run_sleeper(ctrd: &Containerd, id: &str, value: &str) {
    let out = ctrd.ctr(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.coffer.v2",
        "--annotation",
        &format!("coffer.dev/policy={value}"),
        "hello:latest",
        id,
        "/bin/sleep",
        "300",
    ]);
    assert!(
        out.status.success(),
        "ctr run -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const SLEEPER: &str = "apiVersion: v1
kind: Pod
metadata:
  name: sleeper
spec:
  containers:
    - name: sleeper
      image: hello:latest
      command: [\"/bin/sleep\", \"300\"]
      livenessProbe:
        exec:
          command: [\"/bin/echo\", \"probe-ok\"]
";
