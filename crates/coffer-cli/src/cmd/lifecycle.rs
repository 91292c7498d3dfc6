//! Groups over time: state and logs kept under `$COFFER_HOME/groups/<name>/`, and `coffer ps`,
//! `logs`, `stop`, `rm`. A group runs under one `coffer run` process (in the foreground, or
//! detached: a monitor in its own session); the state file says where it is.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::home::coffer_home;

/// Where a group's state and logs live.
pub(crate) fn group_dir(home: &Path, name: &str) -> PathBuf {
    home.join("groups").join(name)
}

/// A group's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    Starting,
    Running,
    Exited,
    Failed,
}

/// `status.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) name: String,
    pub(crate) state: State,
    /// The `coffer run` process that owns the group.
    pub(crate) pid: u32,
    /// Unix seconds.
    pub(crate) started: u64,
    #[serde(default)]
    pub(crate) exit: Option<i32>,
    #[serde(default)]
    pub(crate) error: Option<String>,
    pub(crate) containers: Vec<String>,
    /// Seconds between SIGTERM and SIGKILL on stop.
    pub(crate) grace_seconds: u64,
    /// Restarts so far, by container (`restartPolicy`, detached groups).
    #[serde(default)]
    pub(crate) restarts: std::collections::BTreeMap<String, u32>,
    /// How the group is isolated (`namespace`, `vm`, `vm+snp`), once launched.
    #[serde(default)]
    pub(crate) isolation: Option<String>,
    /// The group's address and published ports, once wired.
    #[serde(default)]
    pub(crate) network: Option<String>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Status {
    pub(crate) fn new(pod: &coffer_policy::Pod) -> Self {
        Status {
            name: pod.metadata.name.clone(),
            state: State::Starting,
            pid: std::process::id(),
            started: now(),
            exit: None,
            error: None,
            containers: pod.spec.containers.iter().map(|c| c.name.clone()).collect(),
            grace_seconds: pod.spec.termination_grace_period_seconds.unwrap_or(30),
            restarts: Default::default(),
            isolation: None,
            network: None,
        }
    }

    pub(crate) fn read(home: &Path, name: &str) -> Result<Self> {
        let path = group_dir(home, name).join("status.json");
        let bytes = std::fs::read(&path)
            .with_context(|| format!("no group '{name}' (coffer ps lists them)"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{}", path.display()))
    }

    /// Write atomically (readers never see half a file).
    pub(crate) fn write(&self, home: &Path) -> Result<()> {
        let dir = group_dir(home, &self.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let tmp = dir.join("status.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, dir.join("status.json"))?;
        Ok(())
    }

    /// Whether the owning process still runs.
    pub(crate) fn alive(&self) -> bool {
        matches!(self.state, State::Starting | State::Running)
            && coffer_host::process_alive(&self.pid.to_string())
    }

    /// The state as seen now: a group whose owner died is `failed`.
    fn effective_state(&self) -> State {
        match self.state {
            State::Starting | State::Running if !self.alive() => State::Failed,
            s => s,
        }
    }
}

/// Appends a container's output lines to its log file.
pub(crate) struct Logs {
    dir: PathBuf,
}

impl Logs {
    pub(crate) fn new(home: &Path, name: &str) -> Self {
        Logs {
            dir: group_dir(home, name),
        }
    }

    pub(crate) fn path(&self, container: &str) -> PathBuf {
        self.dir.join(format!("{container}.log"))
    }

    /// Start a container's log afresh.
    pub(crate) fn open(&self, container: &str) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::File::create(self.path(container))
            .with_context(|| format!("{}", self.path(container).display()))
    }
}

pub(crate) fn append_line(f: &mut std::fs::File, line: &str) {
    // Logs are best effort: a full disk must not stop the group.
    let _ = writeln!(f, "{line}");
}

#[derive(Args, Debug)]
pub(crate) struct LogsArgs {
    /// Group name.
    group: String,
    /// Container (default: every container, prefixed by its name).
    container: Option<String>,
    /// Keep printing new lines until the group ends.
    #[arg(short, long)]
    follow: bool,
}

#[derive(Args, Debug)]
pub(crate) struct StopArgs {
    /// Group name.
    group: String,
    /// Seconds between SIGTERM and SIGKILL (default: the Pod's terminationGracePeriodSeconds).
    #[arg(long)]
    timeout: Option<u64>,
}

#[derive(Args, Debug)]
pub(crate) struct RmArgs {
    /// Group name.
    group: String,
    /// Stop it first if it runs.
    #[arg(short, long)]
    force: bool,
}

pub(crate) fn logs(a: LogsArgs) -> Result<ExitCode> {
    let home = coffer_home()?;
    let st = Status::read(&home, &a.group)?;
    let logs = Logs::new(&home, &a.group);
    let names: Vec<String> = match &a.container {
        Some(c) if st.containers.contains(c) => vec![c.clone()],
        Some(c) => bail!("group '{}' has no container '{c}'", a.group),
        None => st.containers.clone(),
    };
    let prefix = names.len() > 1;
    let mut readers: Vec<(String, Option<std::io::BufReader<std::fs::File>>)> =
        names.into_iter().map(|n| (n, None)).collect();
    let mut out = std::io::stdout().lock();
    loop {
        // Read whether the group runs before draining, so what it wrote before it ended is
        // printed before `-f` returns.
        let more = a.follow && Status::read(&home, &a.group)?.alive();
        for (name, reader) in readers.iter_mut() {
            if reader.is_none() {
                *reader = std::fs::File::open(logs.path(name))
                    .ok()
                    .map(std::io::BufReader::new);
            }
            let Some(r) = reader else { continue };
            let mut line = String::new();
            while r.read_line(&mut line)? > 0 {
                if !line.ends_with('\n') {
                    // A line still being written: read it whole next time.
                    let back = i64::try_from(line.len()).unwrap_or(0);
                    r.seek_relative(-back)?;
                    break;
                }
                if prefix {
                    write!(out, "[{name}] {line}")?;
                } else {
                    write!(out, "{line}")?;
                }
                line.clear();
            }
        }
        out.flush()?;
        if !more {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn stop(a: StopArgs) -> Result<ExitCode> {
    let home = coffer_home()?;
    let st = Status::read(&home, &a.group)?;
    if !st.alive() {
        eprintln!("coffer: group '{}' is not running", a.group);
        return Ok(ExitCode::SUCCESS);
    }
    let grace = a.timeout.unwrap_or(st.grace_seconds);
    // The owner asks the agent for SIGTERM through the policy, then SIGKILL after the grace
    // period, and tears the group down when its main container exits.
    std::fs::write(group_dir(&home, &a.group).join("grace"), grace.to_string())?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(st.pid).context("pid")?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .with_context(|| format!("signalling coffer run (pid {})", st.pid))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(grace + 20);
    while Status::read(&home, &a.group)?.alive() {
        if std::time::Instant::now() > deadline {
            bail!("group '{}' did not stop within {} s", a.group, grace + 20);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("coffer: group '{}' stopped", a.group);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn rm(a: RmArgs) -> Result<ExitCode> {
    let home = coffer_home()?;
    let st = Status::read(&home, &a.group)?;
    if st.alive() {
        if !a.force {
            bail!(
                "group '{}' is running: coffer stop it first, or rm --force",
                a.group
            );
        }
        stop(StopArgs {
            group: a.group.clone(),
            timeout: None,
        })?;
    }
    std::fs::remove_dir_all(group_dir(&home, &a.group))?;
    Ok(ExitCode::SUCCESS)
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

pub(crate) fn ps() -> Result<ExitCode> {
    let home = coffer_home()?;
    let mut rows = Vec::new();
    if let Ok(entries) = std::fs::read_dir(home.join("groups")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(st) = Status::read(&home, &name) {
                rows.push(st);
            }
        }
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    // Groups launched without `coffer run` (e.g. through the library) have no state file: list
    // those whose sandbox still runs.
    let mut unmanaged = Vec::new();
    if let Ok(entries) = std::fs::read_dir(home.join("run")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = std::fs::read_to_string(e.path().join("pid")).unwrap_or_default();
            let alive = coffer_host::process_alive(&pid);
            if alive && !rows.iter().any(|r| r.name == name) {
                unmanaged.push(name);
            }
        }
    }
    unmanaged.sort();
    println!("NAME\tSTATE\tISOLATION\tUPTIME\tEXIT\tRESTARTS\tCONTAINERS\tNETWORK");
    for st in rows {
        let state = st.effective_state();
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            st.name,
            serde_json::to_value(state)?.as_str().unwrap_or("?"),
            st.isolation.as_deref().unwrap_or("-"),
            if st.alive() {
                uptime(now().saturating_sub(st.started))
            } else {
                "-".into()
            },
            st.exit.map_or("-".into(), |c| c.to_string()),
            st.restarts.values().sum::<u32>(),
            st.containers.join(","),
            st.network.as_deref().unwrap_or("-"),
        );
    }
    for name in unmanaged {
        println!("{name}\trunning\t-\t-\t-\t-\t?\t-");
    }
    Ok(ExitCode::SUCCESS)
}
