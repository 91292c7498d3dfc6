//! Groups over time, as a user drives them: `coffer run --detach`, `ps`, `logs`, `stop`, `rm`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::coffer;

use std::path::Path;

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn setup(t: &str, script: &str) -> Option<tempfile::TempDir> {
    for tool in ["runc", "unshare", "umoci"] {
        if !coffer_testkit::tool(tool, t) {
            return None;
        }
    }
    let home = tempfile::tempdir().unwrap();
    common::import_example(home.path(), t);
    std::fs::write(
        home.path().join("pod.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: ticker}}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: tick\n    image: hello:latest\n    command: [\"/bin/sh\", \"-c\", {script:?}]\n"
        ),
    )
    .unwrap();
    Some(home)
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

#[test]
fn a_detached_group_runs_logs_stops_through_the_policy_and_is_removed() {
    let _serial = one_at_a_time();
    let script = "trap 'echo got TERM; exit 3' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done";
    let Some(home) = setup("a_detached_group_runs", script) else {
        return;
    };
    let h = home.path();
    let _cleanup = Cleanup(h);
    let pod = h.join("pod.yaml");
    assert_eq!(
        out(h, &["run", "--detach", pod.to_str().unwrap()]).trim(),
        "ticker"
    );
    // The command that started it has returned; the group goes on.
    assert!(row(h).unwrap().contains("\trunning\t"), "{:?}", row(h));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(out(h, &["logs", "ticker"]).contains("tick 1"));
    out(h, &["stop", "ticker"]);
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

#[test]
fn stop_kills_what_ignores_sigterm_after_the_grace_period() {
    let _serial = one_at_a_time();
    let script = "trap '' TERM; while true; do sleep 0.1; done";
    let Some(home) = setup("stop_kills_what_ignores_sigterm", script) else {
        return;
    };
    let h = home.path();
    let _cleanup = Cleanup(h);
    out(h, &["run", "-d", h.join("pod.yaml").to_str().unwrap()]);
    let started = std::time::Instant::now();
    out(h, &["stop", "ticker"]);
    // Two seconds of grace (the Pod's terminationGracePeriodSeconds), then SIGKILL.
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert!(row(h).unwrap().contains("\t137\t"), "{:?}", row(h));
}

#[test]
fn a_running_group_is_not_removed_or_started_twice() {
    let _serial = one_at_a_time();
    let Some(home) = setup(
        "a_running_group_is_not_removed",
        "while true; do sleep 0.1; done",
    ) else {
        return;
    };
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
