//! Groups over time, as a user drives them: `coffer run --detach`, `ps`, `logs`, `stop`, `rm`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::coffer;

use std::path::Path;

use coffer_testkit::Need;

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a group needs: root (namespaces, mounts), runc, unshare, umoci (the example image).
const GROUP: &[Need] = &[
    Need::Root,
    Need::Tool("runc"),
    Need::Tool("unshare"),
    Need::Tool("umoci"),
];

/// Prints `tick N` every 0.1 s; on SIGTERM `got TERM`, exit 3.
const TICKS_UNTIL_TERM: &str =
    "trap 'echo got TERM; exit 3' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done";

fn setup(script: &str) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    common::import_example(home.path());
    write_pod(home.path(), None, script);
    home
}

/// The group `ticker`: one container `tick` running `script`, with `restartPolicy` if given.
fn write_pod(home: &Path, restart: Option<&str>, script: &str) {
    let restart = restart.map_or(String::new(), |r| format!("  restartPolicy: {r}\n"));
    std::fs::write(
        home.join("pod.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: ticker}}\nspec:\n  terminationGracePeriodSeconds: 2\n{restart}  containers:\n  - name: tick\n    image: hello:latest\n    command: [\"/bin/sh\", \"-c\", {script:?}]\n"
        ),
    )
    .unwrap();
}

/// Whatever a failing test leaves running goes when it ends.
struct Cleanup<'a>(&'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let status = self.0.join("groups/ticker/status.json");
        if let Ok(v) = std::fs::read(&status)
            .map_err(|_| ())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).map_err(|_| ()))
        {
            if let Some(pid) = v["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) {
                if v["state"] == "running" || v["state"] == "starting" {
                    let _ = coffer(self.0, &["rm", "--force", "ticker"]);
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

fn out(home: &Path, args: &[&str]) -> String {
    let o = coffer(home, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn row(home: &Path) -> Option<String> {
    out(home, &["ps"])
        .lines()
        .find(|l| l.starts_with("ticker\t"))
        .map(str::to_string)
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        a_detached_group_runs_logs_stops_through_the_policy_and_is_removed: GROUP;
        stop_kills_what_ignores_sigterm_after_the_grace_period: GROUP;
        logs_follow_prints_new_lines_and_ends_when_the_group_stops: GROUP;
        a_running_group_is_not_removed_or_started_twice: GROUP;
        a_failing_container_is_restarted_with_backoff_and_a_fresh_root_and_ps_counts_it: GROUP;
        the_restart_policy_decides_which_exits_restart: GROUP;
        a_group_in_the_foreground_runs_once_whatever_its_restart_policy: GROUP;
    ])
}

fn a_detached_group_runs_logs_stops_through_the_policy_and_is_removed() {
    let _serial = one_at_a_time();
    let home = setup(TICKS_UNTIL_TERM);
    let h = home.path();
    let _cleanup = Cleanup(h);
    let pod = h.join("pod.yaml");
    assert_eq!(
        out(h, &["run", "--detach", pod.to_str().unwrap()]).trim(),
        "ticker"
    );
    // The command that started it has returned; the group goes on, its owner leading a session
    // of its own (no hangup or Ctrl-C of the caller's terminal reaches it).
    assert!(row(h).unwrap().contains("\trunning\t"), "{:?}", row(h));
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.join("groups/ticker/status.json")).unwrap())
            .unwrap();
    let owner = nix::unistd::Pid::from_raw(i32::try_from(status["pid"].as_i64().unwrap()).unwrap());
    assert_eq!(nix::unistd::getsid(Some(owner)).unwrap(), owner);
    // `coffer ps` says how the group is isolated and how long it has run.
    let r = row(h).unwrap();
    let cols: Vec<&str> = r.split('\t').collect();
    assert_eq!(cols[2], "namespace", "{r}");
    assert!(
        cols[3].ends_with('s') && cols[3][..cols[3].len() - 1].parse::<u64>().is_ok(),
        "uptime: {r}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(out(h, &["logs", "ticker"]).contains("tick 1"));
    // What the check after `stop` looks for is there while the group runs.
    let live = common::group_leftovers(h, "ticker");
    for kind in ["process", "cgroup", "loop", "veth", "directory", "lease"] {
        assert!(live.iter().any(|l| l.starts_with(kind)), "{kind}: {live:?}");
    }
    out(h, &["stop", "ticker"]);
    assert_eq!(common::group_leftovers(h, "ticker"), Vec::<String>::new());
    let r = row(h).unwrap();
    assert!(r.contains("\texited\t") && r.contains("\t3\t"), "{r}");
    assert!(out(h, &["logs", "ticker", "tick"]).contains("got TERM"));
    out(h, &["rm", "ticker"]);
    assert!(row(h).is_none());
    assert!(
        !h.join("run/ticker").exists(),
        "the group's run directory is gone"
    );
}

fn stop_kills_what_ignores_sigterm_after_the_grace_period() {
    let _serial = one_at_a_time();
    let script = "trap '' TERM; while true; do sleep 0.1; done";
    let home = setup(script);
    let h = home.path();
    let _cleanup = Cleanup(h);
    out(h, &["run", "-d", h.join("pod.yaml").to_str().unwrap()]);
    let started = std::time::Instant::now();
    out(h, &["stop", "ticker"]);
    // Two seconds of grace (the Pod's terminationGracePeriodSeconds), then SIGKILL.
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert!(row(h).unwrap().contains("\t137\t"), "{:?}", row(h));
    assert_eq!(common::group_leftovers(h, "ticker"), Vec::<String>::new());
}

fn logs_follow_prints_new_lines_and_ends_when_the_group_stops() {
    use std::io::BufRead as _;
    let _serial = one_at_a_time();
    let home = setup(TICKS_UNTIL_TERM);
    let h = home.path();
    let _cleanup = Cleanup(h);
    out(h, &["run", "-d", h.join("pod.yaml").to_str().unwrap()]);
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["logs", "-f", "ticker"])
        .env("COFFER_HOME", h)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    // Lines written after `logs -f` started reach it: 30 ticks take 3 s.
    let started = std::time::Instant::now();
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l == "tick 30"));
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    out(h, &["stop", "ticker"]);
    // It prints the container's last words, then ends by itself.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(
        rest.last().map(String::as_str),
        Some("got TERM"),
        "{rest:?}"
    );
    assert!(follow.wait().unwrap().success());
}

fn a_running_group_is_not_removed_or_started_twice() {
    let _serial = one_at_a_time();
    let home = setup("while true; do sleep 0.1; done");
    let h = home.path();
    let _cleanup = Cleanup(h);
    let pod = h.join("pod.yaml");
    out(h, &["run", "-d", pod.to_str().unwrap()]);
    let again = coffer(h, &["run", "-d", pod.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is running"));
    let rm = coffer(h, &["rm", "ticker"]);
    assert!(!rm.status.success());
    assert!(String::from_utf8_lossy(&rm.stderr).contains("coffer stop"));
    out(h, &["rm", "--force", "ticker"]);
    assert!(row(h).is_none());
}

/// The RESTARTS column of the group's `coffer ps` row.
fn restarts(home: &Path) -> u32 {
    let r = row(home).unwrap();
    r.split('\t')
        .nth(5)
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{r}"))
}

/// Wait until the group is no longer running; its ps row.
fn wait_ended(home: &Path) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = row(home).unwrap();
        if !r.contains("\trunning\t") || std::time::Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn a_failing_container_is_restarted_with_backoff_and_a_fresh_root_and_ps_counts_it() {
    let _serial = one_at_a_time();
    // A restarted container gets a fresh writable layer, as in Kubernetes: the marker it leaves
    // in its root is gone the next time.
    let script = "[ -e /app/marker ] && echo dirty; echo x > /app/marker; echo run; exit 1";
    let home = setup(script);
    let h = home.path();
    let _cleanup = Cleanup(h);
    write_pod(h, Some("OnFailure"), script);
    let before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let started = std::time::Instant::now();
    out(h, &["run", "-d", h.join("pod.yaml").to_str().unwrap()]);
    // Delays of 0.5, 1 and 2 s: the third restart comes after about 3.5 s, not before.
    // The upper bound only guards against a hang (a loaded 2-core machine is slow to start
    // containers); the lower bound is the backoff under test.
    while restarts(h) < 3 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{:?}",
            row(h)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(3500),
        "{:?}",
        started.elapsed()
    );
    assert!(row(h).unwrap().contains("\trunning\t"), "{:?}", row(h));
    let logs = out(h, &["logs", "ticker"]);
    assert!(logs.matches("run").count() >= 3, "{logs}");
    assert!(!logs.contains("dirty"), "{logs}");
    out(h, &["stop", "ticker"]);
    let r = row(h).unwrap();
    assert!(r.contains("\texited\t"), "{r}");
    assert!(!h.join("run/ticker").exists());
    let after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let home_str = h.display().to_string();
    assert!(
        !after.contains(&home_str) || after == before,
        "mounts left behind"
    );
}

fn the_restart_policy_decides_which_exits_restart() {
    let _serial = one_at_a_time();
    let home = setup("sleep 0.3; exit 0");
    let h = home.path();
    let _cleanup = Cleanup(h);
    let pod = h.join("pod.yaml");
    for (policy, script, restarted) in [
        (Some("OnFailure"), "sleep 0.3; exit 0", false),
        (Some("Never"), "sleep 0.3; exit 1", false),
        // No restartPolicy: Kubernetes' Always, even after a success.
        (None, "sleep 0.3; exit 0", true),
    ] {
        write_pod(h, policy, script);
        // (`run -d` may find the group already ended: only the row matters.)
        let _ = coffer(h, &["run", "-d", pod.to_str().unwrap()]);
        if restarted {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while restarts(h) == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            assert!(restarts(h) >= 1, "{policy:?}: {:?}", row(h));
            out(h, &["stop", "ticker"]);
        } else {
            let r = wait_ended(h);
            assert!(r.contains("\texited\t"), "{policy:?}: {r}");
            assert_eq!(restarts(h), 0, "{policy:?}: {r}");
        }
        out(h, &["rm", "ticker"]);
    }
}

fn a_group_in_the_foreground_runs_once_whatever_its_restart_policy() {
    let _serial = one_at_a_time();
    let home = setup("echo once; exit 1");
    let h = home.path();
    let _cleanup = Cleanup(h);
    write_pod(h, Some("Always"), "echo once; exit 1");
    let o = coffer(h, &["run", h.join("pod.yaml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "[tick] once\n");
    assert_eq!(restarts(h), 0);
}
