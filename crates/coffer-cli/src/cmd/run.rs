//! `coffer run` and `coffer exec` (the in-TEE side is the separate `coffer-agent` binary).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use coffer_host::launch::{self as host, AgentClient, LaunchSpec};
use coffer_host::{Backend, NamespaceBackend, QemuBackend, RunningGroup};
use coffer_image::{ImageRef, Store};
use coffer_policy::GenOptions;
use coffer_proto::ProcessSpec;

use crate::cmd::lifecycle::{self, Logs, State, Status};
use crate::cmd::policy::image_facts;
use crate::home::coffer_home;

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Pod manifest.
    pod: PathBuf,
    /// Use this policy instead of generating one (its SHA-256 becomes HOST_DATA).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Start the group in the background: returns once every container started and prints the
    /// group's name (then: coffer ps, logs, stop, rm).
    #[arg(short, long)]
    detach: bool,
    /// The detached group's owner (started by --detach).
    #[arg(long, hide = true)]
    monitor: bool,
    /// Host address for the ports the policy publishes without a hostIP of their own.
    #[arg(long, default_value = "127.0.0.1")]
    publish_address: std::net::Ipv4Addr,
    /// `bridge`: a veth to the host bridge coffer0 with outbound NAT and published ports;
    /// `none`: loopback only.
    #[arg(long, default_value = "bridge", value_parser = ["bridge", "none"])]
    network: String,
    /// How the group is isolated: `vm` (a QEMU VM per group: SEV-SNP where the host has it, else
    /// KVM, else TCG emulation), `namespace` (namespaces on this kernel: fast, but the host kernel
    /// is trusted), or `auto`: the strongest that starts in seconds here (`vm` with KVM or SNP,
    /// else `namespace`, since a TCG VM takes 5-15 s to its first output).
    #[arg(long, value_enum, default_value = "auto", env = "COFFER_ISOLATION")]
    isolation: IsolationArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IsolationArg {
    Auto,
    Namespace,
    Vm,
}

impl IsolationArg {
    /// `auto` resolved for this machine.
    fn resolve(self) -> Self {
        match self {
            IsolationArg::Auto if coffer_host::qemu::kvm_usable() => IsolationArg::Vm,
            IsolationArg::Auto => IsolationArg::Namespace,
            other => other,
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct ExecArgs {
    /// Group name (coffer ps).
    group: String,
    /// Container name.
    container: String,
    /// Command and arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
    /// Working directory (default /).
    #[arg(long, default_value = "/")]
    cwd: String,
}

/// Phase timings on stderr when COFFER_TIMING is set (for the start-up benchmark).
struct Timing(Option<std::time::Instant>);

impl Timing {
    fn new() -> Self {
        Timing(std::env::var_os("COFFER_TIMING").map(|_| std::time::Instant::now()))
    }
    fn mark(&self, what: &str) {
        if let Some(t) = self.0 {
            eprintln!(
                "coffer-timing: {:>8.1} ms  {what}",
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
}

pub(crate) fn run(a: RunArgs) -> Result<ExitCode> {
    let home = coffer_home()?;
    let yaml = std::fs::read_to_string(&a.pod)
        .with_context(|| format!("cannot read {}", a.pod.display()))?;
    let pod = coffer_policy::parse_pod(&yaml).with_context(|| a.pod.display().to_string())?;
    if let Ok(st) = Status::read(&home, &pod.metadata.name) {
        if st.alive() && st.pid != std::process::id() {
            bail!(
                "a group named '{}' is running (coffer stop {0})",
                pod.metadata.name
            );
        }
    }
    if a.detach {
        return detach(&a, &home, &pod);
    }
    let mut status = Status::new(&pod);
    status.write(&home)?;
    let result = run_group(&a, &home, &pod, &mut status);
    match &result {
        Ok(code) => {
            status.state = State::Exited;
            status.exit = Some(*code);
        }
        Err(e) => {
            status.state = State::Failed;
            status.error = Some(format!("{e:#}"));
        }
    }
    status.write(&home)?;
    let code = result?;
    Ok(ExitCode::from(
        u8::try_from(code.clamp(0, 255)).unwrap_or(1),
    ))
}

/// Start `coffer run --monitor` in its own session and wait until the group runs (or failed).
fn detach(a: &RunArgs, home: &std::path::Path, pod: &coffer_policy::Pod) -> Result<ExitCode> {
    let dir = lifecycle::group_dir(home, &pod.metadata.name);
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(dir.join("status.json"));
    let log = dir.join("coffer-run.log");
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("run")
        .arg(std::fs::canonicalize(&a.pod)?)
        .arg("--monitor");
    if let Some(p) = &a.policy {
        cmd.arg("--policy").arg(std::fs::canonicalize(p)?);
    }
    cmd.arg("--publish-address")
        .arg(a.publish_address.to_string())
        .arg("--network")
        .arg(&a.network);
    cmd.args([
        "--isolation",
        match a.isolation.resolve() {
            IsolationArg::Vm => "vm",
            _ => "namespace",
        },
    ]);
    cmd.env("COFFER_HOME", home)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(&log)?);
    new_session(&mut cmd);
    let mut child = cmd.spawn().context("starting the group's coffer run")?;
    loop {
        if let Ok(st) = Status::read(home, &pod.metadata.name) {
            match st.state {
                State::Running => {
                    println!("{}", pod.metadata.name);
                    return Ok(ExitCode::SUCCESS);
                }
                State::Exited if st.exit == Some(0) => {
                    println!("{}", pod.metadata.name);
                    return Ok(ExitCode::SUCCESS);
                }
                State::Exited | State::Failed => {
                    let why = st
                        .error
                        .unwrap_or_else(|| format!("exited with {:?}", st.exit));
                    bail!("group '{}' did not start: {why}", pod.metadata.name)
                }
                State::Starting => {}
            }
        }
        if let Ok(Some(s)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "coffer run exited ({s}) before the group ran: {}",
                text.trim()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A layer the Pod's containers use: its digest, its layer image, and what to call it in errors.
struct PodLayer {
    digest: String,
    image: std::path::PathBuf,
    what: String,
}

/// Every layer the Pod's containers use, once each, in order of first use.
fn pod_layers(store: &Store, pod: &coffer_policy::Pod) -> Result<Vec<PodLayer>> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for c in &pod.spec.containers {
        let img = store.resolve(&ImageRef::parse(&c.image)?)?;
        for (i, layer) in img.image.layers.iter().enumerate() {
            if seen.insert(layer.digest.to_string()) {
                let what = format!("container '{}': layer {}", c.name, layer.digest);
                out.push(PodLayer {
                    digest: layer.digest.to_string(),
                    image: store.layer_image(&img, i).context(what.clone())?,
                    what,
                });
            }
        }
    }
    Ok(out)
}

/// Every layer image the Pod's containers use, once each, in order (a VM attaches them as disks
/// at launch).
fn layer_images(store: &Store, pod: &coffer_policy::Pod) -> Result<Vec<std::path::PathBuf>> {
    Ok(pod_layers(store, pod)?
        .into_iter()
        .map(|l| l.image)
        .collect())
}

fn run_group(
    a: &RunArgs,
    home: &std::path::Path,
    pod: &coffer_policy::Pod,
    status: &mut Status,
) -> Result<i32> {
    let timing = Timing::new();
    let home = home.to_path_buf();
    let store = Store::open(&home)?;
    let facts = image_facts(&store, pod)?;
    let policy = match &a.policy {
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
        None => coffer_policy::generate(pod, &facts, &GenOptions::default())?.into_bytes(),
    };
    let host_data = coffer_policy::digest(&policy);
    timing.mark("policy generated (images resolved, layers measured or cached)");
    eprintln!(
        "coffer: group '{}', policy host_data {}",
        pod.metadata.name,
        hex::encode(host_data)
    );
    let (backend, isolation): (Box<dyn Backend>, String) = match a.isolation.resolve() {
        IsolationArg::Namespace | IsolationArg::Auto => (
            Box::new(NamespaceBackend),
            if a.isolation == IsolationArg::Auto {
                "namespace (shares this host's kernel; auto: no KVM here, a TCG VM is slow to \
                 start: --isolation vm to use one)"
                    .into()
            } else {
                "namespace (shares this host's kernel)".into()
            },
        ),
        IsolationArg::Vm => {
            let mut image = coffer_host::image::build(&coffer_host::image::BuildOptions {
                home: home.clone(),
                agent: coffer_host::launch::agent_exe()?,
                kernel_deb: None,
            })
            .context("the guest image (coffer uvm build)")?;
            timing.mark("guest image built or found in the cache");
            let (memory_mib, vcpus) = vm_size(pod, &facts)?;
            let snp = coffer_host::snp::detect();
            // With an AmdSev OVMF configured, the emulated secure processor reports the launch
            // digest real hardware would compute for this image, so reference values are the
            // same in development and on SNP hosts.
            if let Some(ovmf) = std::env::var_os("COFFER_OVMF") {
                let cfg = coffer_host::snp::SnpConfig::new(ovmf.into());
                image.measurement = coffer_host::snp::launch_digest(&cfg, &image, vcpus)
                    .context("the launch digest of the guest image (COFFER_OVMF)")?;
            }
            let isolation = match &snp {
                Ok(_) => "vm (QEMU, SEV-SNP)".to_string(),
                Err(why) if coffer_host::qemu::kvm_usable() => {
                    format!("vm (QEMU, KVM, emulated secure processor: no SNP: {why})")
                }
                Err(_) => {
                    "vm (QEMU, TCG emulation: slow to boot; emulated secure processor)".to_string()
                }
            };
            (
                Box::new(QemuBackend(coffer_host::qemu::VmConfig {
                    image,
                    memory_mib,
                    vcpus,
                    snp: snp.ok(),
                    disks: layer_images(&store, pod)?,
                })),
                isolation,
            )
        }
    };
    eprintln!("coffer: isolation {isolation}");
    crate::cmd::snp::ensure_development_root(&home)?;
    let group = backend.launch(LaunchSpec {
        home: home.clone(),
        name: pod.metadata.name.clone(),
        policy,
        host_data,
        agent_exe: coffer_host::launch::agent_exe()?,
        volumes: pod
            .spec
            .volumes
            .iter()
            .filter_map(|v| {
                v.csi
                    .as_ref()
                    .and_then(|c| c.volume_attributes.get("source"))
                    .map(|s| (v.name.clone(), PathBuf::from(s)))
            })
            .collect(),
        network: match a.network.as_str() {
            "none" => coffer_host::net::NetworkMode::None,
            _ => coffer_host::net::NetworkMode::Bridge {
                publish_address: a.publish_address,
            },
        },
    })?;
    status.isolation = Some(
        match group.isolation() {
            coffer_host::Isolation::Namespace => "namespace",
            coffer_host::Isolation::Vm if isolation.contains("SEV-SNP") => "vm+snp",
            coffer_host::Isolation::Vm => "vm",
        }
        .into(),
    );
    status.network = group.network_summary();
    status.write(&home)?;
    if let Some(net) = group.network_summary() {
        eprintln!("coffer: group '{}' at {net}", pod.metadata.name);
    }
    timing.mark("sandbox up, agent verified HOST_DATA and serves, network wired");
    let out = Output {
        logs: Logs::new(&home, &pod.metadata.name),
        print: !a.monitor,
    };
    let result = drive(
        group.as_ref(),
        pod,
        &store,
        &facts,
        &timing,
        &out,
        &home,
        status,
        Restart::of(pod, a.monitor),
    );
    let _ = group.shutdown();
    result
}

/// Ask the agent to signal every container (each through the policy).
fn signal_all(socket: &std::path::Path, names: &[String], signal: i32) {
    if let Ok(mut c) = AgentClient::connect(socket) {
        for n in names {
            if let Err(e) = c.signal(n, signal) {
                eprintln!("coffer: signalling {n}: {e}");
            }
        }
    }
}

/// Where container output goes: the group's log files, and stdout in the foreground.
struct Output {
    logs: Logs,
    print: bool,
}

/// The fewest vCPUs a group's VM gets (see [`vm_size`]).
const MIN_VCPUS: u32 = 2;

/// VM memory from the Pod's limits (their sum plus 256 MiB for the guest; at least 512 MiB), and
/// vCPUs from its CPU limits, at least [`MIN_VCPUS`].
///
/// Why at least two: the guest's own work (the agent, runc, the kernel's) runs in parallel, and
/// runc, a Go program, starts a container in half the time with a second vCPU (measured under
/// TCG, where each vCPU is a host thread: `runc run` 2.1 s with one, 1.0 s with two; the first
/// output line after 6.2 s against 4.8 s). vCPUs are not the containers' CPU limit: the agent
/// enforces limits with cgroups inside the guest. The count is part of SNP's launch digest (one
/// VMSA per vCPU): `coffer uvm measure --guest --vcpus 2` for a Pod without CPU limits.
fn vm_size(
    pod: &coffer_policy::Pod,
    facts: &BTreeMap<String, coffer_policy::ImageFacts>,
) -> Result<(u64, u32)> {
    let (mut mem, mut cpu) = (0u64, 0u64);
    for (i, c) in pod.spec.containers.iter().enumerate() {
        let f = facts.get(&c.image).context("image facts")?;
        let r = coffer_policy::resolve_container(pod, i, f)?;
        mem += r.memory_limit.unwrap_or(0);
        cpu += r.cpu_millis.unwrap_or(0);
    }
    let memory_mib = (mem.div_ceil(1 << 20) + 256).max(512);
    let vcpus =
        u32::try_from(cpu.div_ceil(1000).clamp(u64::from(MIN_VCPUS), 8)).unwrap_or(MIN_VCPUS);
    Ok((memory_mib, vcpus))
}

/// What a container is started with, and started with again on a restart: the same layers and
/// process, each time through the agent and so through the policy.
#[derive(Clone, Debug)]
struct Launch {
    name: String,
    layer_paths: Vec<String>,
    process: ProcessSpec,
    volumes: Vec<coffer_proto::VolumeSpec>,
}

impl Launch {
    fn start(&self, client: &mut AgentClient) -> Result<()> {
        client
            .mount_overlay(&self.name, self.layer_paths.clone())
            .with_context(|| format!("container '{}'", self.name))?;
        client
            .create_container(&self.name, self.process.clone(), self.volumes.clone())
            .with_context(|| format!("container '{}'", self.name))?;
        Ok(())
    }
}

/// The Pod's `restartPolicy` as a group follows it. A detached group is a service: the Pod's
/// policy, `Always` when it names none (Kubernetes' default). A group in the foreground runs
/// once, as `docker run` without `--restart` does (Ctrl-C ends it; --detach for a service).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Restart {
    Never,
    OnFailure,
    Always,
}

impl Restart {
    pub(crate) fn of(pod: &coffer_policy::Pod, detached: bool) -> Self {
        match (detached, pod.spec.restart_policy.as_deref()) {
            (false, _) | (true, Some("Never")) => Restart::Never,
            (true, Some("OnFailure")) => Restart::OnFailure,
            (true, _) => Restart::Always,
        }
    }

    /// Whether a container that exited with `code` is started again.
    pub(crate) fn again(self, code: i32) -> bool {
        match self {
            Restart::Never => false,
            Restart::OnFailure => code != 0,
            Restart::Always => true,
        }
    }
}

/// Delay before a restart: 0.5 s, doubled after each restart up to 60 s, back to 0.5 s once a
/// container ran 10 s (Kubernetes' CrashLoopBackOff, with docker's shorter first steps).
pub(crate) struct Backoff {
    next: std::time::Duration,
}

impl Backoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(500);
    const MAX: std::time::Duration = std::time::Duration::from_secs(60);
    const RESET_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

    pub(crate) fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The delay before restarting a container that ran for `ran`.
    pub(crate) fn delay(&mut self, ran: std::time::Duration) -> std::time::Duration {
        if ran >= Self::RESET_AFTER {
            self.next = Self::FIRST;
        }
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

/// Shared by a group's container supervisors.
struct Supervision {
    socket: PathBuf,
    restart: Restart,
    /// Set once the group is ending (stop, Ctrl-C, the main container's end): no more restarts.
    ending: Arc<AtomicBool>,
    status: Arc<std::sync::Mutex<Status>>,
    home: PathBuf,
}

impl Supervision {
    /// Follow a container's output until it exits; restart it as the policy says, with a
    /// backoff; its last exit status once it is not restarted.
    fn supervise(&self, launch: &Launch, mut on_line: impl FnMut(&str)) -> Result<i32> {
        let mut backoff = Backoff::new();
        loop {
            let started = std::time::Instant::now();
            let code =
                AgentClient::connect(&self.socket)?.attach(&launch.name, |_, l| on_line(l))?;
            if self.ending.load(Ordering::Relaxed) || !self.restart.again(code) {
                return Ok(code);
            }
            let delay = backoff.delay(started.elapsed());
            eprintln!(
                "coffer: container '{}' exited with {code}; restarting in {:.1} s (restartPolicy {:?})",
                launch.name,
                delay.as_secs_f64(),
                self.restart
            );
            let until = std::time::Instant::now() + delay;
            while std::time::Instant::now() < until {
                if self.ending.load(Ordering::Relaxed) {
                    return Ok(code);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let mut c = AgentClient::connect(&self.socket)?;
            c.remove_container(&launch.name)
                .with_context(|| format!("removing container '{}' to restart it", launch.name))?;
            launch.start(&mut c)?;
            if self.ending.load(Ordering::Relaxed) {
                // Stopped meanwhile: the stop's SIGTERM went to the container that had exited.
                signal_all(&self.socket, std::slice::from_ref(&launch.name), 15);
            }
            let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            *st.restarts.entry(launch.name.clone()).or_default() += 1;
            if let Err(e) = st.write(&self.home) {
                eprintln!("coffer: {e:#}");
            }
        }
    }
}

/// Mount every layer the Pod's containers use, once each (`l0`, `l1`, ... in order of first
/// use), all at once on their own connections: measuring a layer is the agent's longest step per
/// layer, and it serves each connection on a thread of its own. Layer digest -> mount target.
fn mount_layers(
    group: &dyn RunningGroup,
    pod: &coffer_policy::Pod,
    store: &Store,
) -> Result<BTreeMap<String, String>> {
    let mut mounted = BTreeMap::new();
    let mut work = Vec::new();
    for (i, layer) in pod_layers(store, pod)?.into_iter().enumerate() {
        let target = format!("/run/coffer/layers/l{i}");
        let name = group
            .stage_layer(&layer.image)
            .context(layer.what.clone())?;
        work.push((group.client()?, target.clone(), name, layer.what));
        mounted.insert(layer.digest, target);
    }
    std::thread::scope(|s| {
        let mounts: Vec<_> = work
            .into_iter()
            .map(|(mut client, target, name, what)| {
                s.spawn(move || client.mount_layer(&target, &name).context(what))
            })
            .collect();
        // Every mount is waited for; the first failure is the answer.
        let mut first = Ok(());
        for m in mounts {
            let r = m
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("mounting a layer panicked")));
            if let (Err(e), Ok(())) = (r, &first) {
                first = Err(e);
            }
        }
        first
    })?;
    Ok(mounted)
}

#[allow(clippy::too_many_arguments)]
fn drive(
    group: &dyn RunningGroup,
    pod: &coffer_policy::Pod,
    store: &Store,
    facts: &BTreeMap<String, coffer_policy::ImageFacts>,
    timing: &Timing,
    out: &Output,
    home: &std::path::Path,
    status: &mut Status,
    restart: Restart,
) -> Result<i32> {
    let mut client = group.client()?;
    // Ctrl-C or `coffer stop` (SIGTERM): SIGTERM through the policy, SIGKILL after the grace
    // period; the group is torn down when the main container exits (and is not restarted).
    // Installed before any container starts: a container runs (and can be seen running) a
    // moment before its create reply arrives, and a Ctrl-C then must stop the group, not kill
    // this process.
    let interrupted = Arc::new(AtomicBool::new(false));
    let ending = Arc::new(AtomicBool::new(false));
    {
        let socket = group.socket();
        let names: Vec<String> = pod.spec.containers.iter().map(|c| c.name.clone()).collect();
        let flag = interrupted.clone();
        let ending = ending.clone();
        let grace_file = lifecycle::group_dir(home, &pod.metadata.name).join("grace");
        let default_grace = status.grace_seconds;
        let _ = ctrlc::set_handler(move || {
            ending.store(true, Ordering::Relaxed);
            if flag.swap(true, Ordering::Relaxed) {
                return;
            }
            signal_all(&socket, &names, 15);
            let grace = std::fs::read_to_string(&grace_file)
                .ok()
                .and_then(|g| g.trim().parse().ok())
                .unwrap_or(default_grace);
            let socket = socket.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(grace));
                // Policies allow a container its stop signal, not SIGKILL: the hard stop is
                // shutdown_container, which ends every container and the agent.
                if let Ok(mut c) = AgentClient::connect(&socket) {
                    if let Err(e) = c.shutdown() {
                        eprintln!("coffer: shutting the group down: {e}");
                    }
                }
            });
        });
    }
    let mounted = mount_layers(group, pod, store)?;
    timing.mark("layer images measured by the agent and mounted");
    let mut launches = Vec::new();
    for (i, c) in pod.spec.containers.iter().enumerate() {
        // Interrupted while starting: no further container starts (those started get SIGTERM).
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        let img = store.resolve(&ImageRef::parse(&c.image)?)?;
        let mut paths: Vec<String> = img
            .image
            .layers
            .iter()
            .filter_map(|l| mounted.get(&l.digest.to_string()).cloned())
            .collect();
        paths.reverse();
        let img_facts = facts.get(&c.image).context("image facts")?;
        let resolved = coffer_policy::resolve_container(pod, i, img_facts)?;
        let (process, volumes) = host::process_for(&resolved);
        let launch = Launch {
            name: c.name.clone(),
            layer_paths: paths,
            process,
            volumes,
        };
        launch.start(&mut client)?;
        launches.push(launch);
        timing.mark(&format!(
            "{}: overlay mounted, container created and started (runc)",
            c.name
        ));
    }
    status.state = State::Running;
    status.write(home)?;
    let sup = Arc::new(Supervision {
        socket: group.socket(),
        restart,
        ending: ending.clone(),
        status: Arc::new(std::sync::Mutex::new(status.clone())),
        home: home.to_path_buf(),
    });
    let mut followers = Vec::new();
    for launch in launches.iter().skip(1) {
        let launch = launch.clone();
        let mut log = out.logs.open(&launch.name)?;
        let print = out.print;
        let sup = sup.clone();
        followers.push(std::thread::spawn(move || {
            let name = launch.name.clone();
            if let Err(e) = sup.supervise(&launch, |line| {
                lifecycle::append_line(&mut log, line);
                if print {
                    println!("[{name}] {line}");
                }
            }) {
                if !sup.ending.load(Ordering::Relaxed) {
                    eprintln!("coffer: container '{name}': {e:#}");
                }
            }
        }));
    }
    if launches.is_empty() && interrupted.load(Ordering::Relaxed) {
        eprintln!("coffer: interrupted before any container started; group stopped");
        return Ok(130);
    }
    let main = launches.first().context("the Pod has no container")?;
    let mut first = true;
    let mut log = out.logs.open(&main.name)?;
    let attached = sup.supervise(main, |line| {
        if first {
            timing.mark("first output line");
            first = false;
        }
        lifecycle::append_line(&mut log, line);
        if out.print {
            println!("[{}] {line}", main.name);
        }
    });
    // The group ends with its main container: the others are not restarted any more.
    ending.store(true, Ordering::Relaxed);
    *status = sup.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let code = match attached {
        Ok(code) => code,
        // Ended by the hard stop: the agent is gone with its containers, as after SIGKILL.
        Err(_) if interrupted.load(Ordering::Relaxed) => 137,
        Err(e) => return Err(e),
    };
    if interrupted.load(Ordering::Relaxed) {
        eprintln!("coffer: interrupted; group stopped");
    }
    Ok(code)
}

pub(crate) fn exec(a: ExecArgs) -> Result<ExitCode> {
    let home = coffer_home()?;
    let socket = host::group_dir(&home, &a.group).join("io/agent.sock");
    if !socket.exists() {
        bail!("no running group '{}' (coffer ps lists them)", a.group);
    }
    let mut c = AgentClient::connect(&socket)?;
    let process = ProcessSpec {
        args: a.command,
        cwd: a.cwd,
        ..Default::default()
    };
    let r = c.exec(&a.container, process)?;
    print!("{}", r.stdout);
    eprint!("{}", r.stderr);
    Ok(ExitCode::from(
        u8::try_from(r.exit.clamp(0, 255)).unwrap_or(1),
    ))
}

/// The detached owner leads a session of its own: the caller's Ctrl-C, exit or terminal hangup
/// does not reach it.
#[allow(unsafe_code)]
fn new_session(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the child between fork and exec and only calls setsid(2),
    // which is async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pod(restart: Option<&str>) -> coffer_policy::Pod {
        let policy = restart.map_or(String::new(), |r| format!("  restartPolicy: {r}\n"));
        coffer_policy::parse_pod(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{policy}  containers:\n  - {{name: a, image: x}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn detached_groups_follow_the_restart_policy_and_default_to_always() {
        assert_eq!(Restart::of(&pod(None), true), Restart::Always);
        assert_eq!(
            Restart::of(&pod(Some("OnFailure")), true),
            Restart::OnFailure
        );
        assert_eq!(Restart::of(&pod(Some("Never")), true), Restart::Never);
        // In the foreground a group runs once, whatever the Pod says.
        assert_eq!(Restart::of(&pod(Some("Always")), false), Restart::Never);
        assert!(Restart::Always.again(0) && Restart::Always.again(1));
        assert!(Restart::OnFailure.again(1) && !Restart::OnFailure.again(0));
        assert!(!Restart::Never.again(1));
    }

    #[test]
    fn the_backoff_doubles_to_a_minute_and_resets_after_a_good_run() {
        let mut b = Backoff::new();
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..10).map(|_| b.delay(short).as_millis() as u64).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
        );
        assert_eq!(b.delay(Duration::from_secs(10)), Duration::from_millis(500));
    }
}
