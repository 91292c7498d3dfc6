//! `coffer run`, `coffer exec`, and the hidden `coffer agent` (the in-TEE side).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use coffer_image::{ImageRef, Store};
use coffer_policy::GenOptions;
use coffer_runtime::host::{self, AgentClient, LaunchSpec};
use coffer_runtime::protocol::{ProcessSpec, Request};
use coffer_uvm::{Backend, NamespaceBackend, QemuBackend, RunningGroup};

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
    /// How the group is isolated: `namespace` (namespaces on this kernel, the default while a
    /// VM boots in seconds under TCG) or `vm` (a QEMU VM per group; `coffer uvm build` first).
    #[arg(long, value_enum, default_value = "namespace")]
    isolation: IsolationArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IsolationArg {
    Namespace,
    Vm,
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

#[derive(Args, Debug)]
pub(crate) struct AgentArgs {
    /// The host-shared I/O directory.
    #[arg(long, required_unless_present = "vm")]
    io: Option<PathBuf>,
    /// Run as the init of a group's VM (the channel is the virtio-serial port).
    #[arg(long)]
    vm: bool,
}

/// Inside the sandbox: build the root, check the launch data, serve.
pub(crate) fn agent(a: AgentArgs) -> Result<ExitCode> {
    let Some(io_host) = a.io.filter(|_| !a.vm) else {
        coffer_guest::main()
    };
    coffer_runtime::sandbox::enter(&io_host).context("building the sandbox")?;
    let io = PathBuf::from(coffer_runtime::sandbox::IO_DIR);
    let policy = std::fs::read(io.join("policy.rego")).context("reading the policy")?;
    let sp = std::sync::Arc::new(coffer_runtime::sp::EmulatedClient::new(&io.join("sp.sock")));
    let agent = coffer_runtime::agent::start(&policy, sp)?;
    agent.serve(&io.join("agent.sock"))?;
    Ok(ExitCode::SUCCESS)
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
    use std::os::unix::process::CommandExt as _;
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
    if a.isolation == IsolationArg::Vm {
        cmd.args(["--isolation", "vm"]);
    }
    let mut child = cmd
        .env("COFFER_HOME", home)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(&log)?)
        // Its own process group: the caller's Ctrl-C or exit does not reach it.
        .process_group(0)
        .spawn()
        .context("starting the group's coffer run")?;
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
    let backend: Box<dyn Backend> = match a.isolation {
        IsolationArg::Namespace => Box::new(NamespaceBackend),
        IsolationArg::Vm => {
            let image = coffer_uvm::image::build(&coffer_uvm::image::BuildOptions {
                home: home.clone(),
                agent: std::env::current_exe()?,
                kernel_deb: None,
            })
            .context("the guest image (coffer uvm build)")?;
            timing.mark("guest image built or found in the cache");
            let (memory_mib, vcpus) = vm_size(pod, &facts)?;
            Box::new(QemuBackend(coffer_uvm::qemu::VmConfig {
                image,
                memory_mib,
                vcpus,
            }))
        }
    };
    eprintln!(
        "coffer: isolation {}",
        match a.isolation {
            IsolationArg::Namespace => "namespace (shares this host's kernel)",
            IsolationArg::Vm if coffer_uvm::qemu::kvm_usable() => "vm (QEMU, KVM)",
            IsolationArg::Vm => "vm (QEMU, TCG emulation: slow to boot)",
        }
    );
    let group = backend.launch(LaunchSpec {
        home: home.clone(),
        name: pod.metadata.name.clone(),
        policy,
        host_data,
        agent_exe: std::env::current_exe()?,
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
            "none" => coffer_runtime::net::NetworkMode::None,
            _ => coffer_runtime::net::NetworkMode::Bridge {
                publish_address: a.publish_address,
            },
        },
    })?;
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
    );
    let _ = group.shutdown();
    result
}

/// Ask the agent to signal every container (each through the policy).
fn signal_all(socket: &std::path::Path, names: &[String], signal: i32) {
    if let Ok(mut c) = AgentClient::connect(socket) {
        for n in names {
            if let Err(e) = c.call(&Request::Signal {
                container_id: n.clone(),
                signal,
            }) {
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

/// VM memory from the Pod's limits (their sum plus 256 MiB for the guest; at least 512 MiB), and
/// vCPUs from its CPU limits (at least 1).
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
    let vcpus = u32::try_from(cpu.div_ceil(1000).clamp(1, 8)).unwrap_or(1);
    Ok((memory_mib, vcpus))
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
) -> Result<i32> {
    let mut client = group.client()?;
    let mut mounted: BTreeMap<String, String> = BTreeMap::new();
    for (i, c) in pod.spec.containers.iter().enumerate() {
        let img = store.resolve(&ImageRef::parse(&c.image)?)?;
        let mut paths = Vec::new();
        for (li, layer) in img.image.layers.iter().enumerate() {
            let key = layer.digest.to_string();
            if !mounted.contains_key(&key) {
                let target = format!("/run/coffer/layers/l{}", mounted.len());
                let what = || format!("container '{}': layer {}", c.name, layer.digest);
                let image = store.layer_image(&img, li).with_context(what)?;
                let name = group.stage_layer(&image).with_context(what)?;
                client.mount_layer(&target, &name).with_context(what)?;
                mounted.insert(key.clone(), target);
            }
            paths.push(mounted[&key].clone());
        }
        timing.mark(&format!(
            "{}: layer images measured by the agent and mounted",
            c.name
        ));
        paths.reverse();
        client
            .call(&Request::MountOverlay {
                container_id: c.name.clone(),
                layer_paths: paths,
            })
            .with_context(|| format!("container '{}'", c.name))?;
        let img_facts = facts.get(&c.image).context("image facts")?;
        let resolved = coffer_policy::resolve_container(pod, i, img_facts)?;
        let (process, volumes) = host::process_for(&resolved);
        client
            .call(&Request::CreateContainer {
                container_id: c.name.clone(),
                process,
                volumes,
            })
            .with_context(|| format!("container '{}'", c.name))?;
        timing.mark(&format!(
            "{}: overlay mounted, container created and started (runc)",
            c.name
        ));
    }
    status.state = State::Running;
    status.write(home)?;
    // Ctrl-C or `coffer stop` (SIGTERM): SIGTERM through the policy, SIGKILL after the grace
    // period; the group is torn down when the main container exits.
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let socket = group.socket();
        let names: Vec<String> = pod.spec.containers.iter().map(|c| c.name.clone()).collect();
        let flag = interrupted.clone();
        let grace_file = lifecycle::group_dir(home, &pod.metadata.name).join("grace");
        let default_grace = status.grace_seconds;
        let _ = ctrlc::set_handler(move || {
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
                    if let Err(e) = c.call(&Request::Shutdown) {
                        eprintln!("coffer: shutting the group down: {e}");
                    }
                }
            });
        });
    }
    let mut followers = Vec::new();
    for c in pod.spec.containers.iter().skip(1) {
        let client = group.client()?;
        let name = c.name.clone();
        let mut log = out.logs.open(&name)?;
        let print = out.print;
        followers.push(std::thread::spawn(move || {
            let _ = client.attach(&name.clone(), |_, line| {
                lifecycle::append_line(&mut log, line);
                if print {
                    println!("[{name}] {line}");
                }
            });
        }));
    }
    let main = &pod.spec.containers[0].name;
    let mut first = true;
    let mut log = out.logs.open(main)?;
    let attached = group.client()?.attach(main, |_, line| {
        if first {
            timing.mark("first output line");
            first = false;
        }
        lifecycle::append_line(&mut log, line);
        if out.print {
            println!("[{main}] {line}");
        }
    });
    let code = match attached {
        Ok(code) => code,
        // Ended by the hard stop: the agent is gone with its containers, as after SIGKILL.
        Err(_) if interrupted.load(Ordering::Relaxed) => 137,
        Err(e) => return Err(e.into()),
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
    let v = c.call(&Request::Exec {
        container_id: a.container,
        process,
    })?;
    print!("{}", v["stdout"].as_str().unwrap_or(""));
    eprint!("{}", v["stderr"].as_str().unwrap_or(""));
    Ok(ExitCode::from(
        u8::try_from(v["exit"].as_i64().unwrap_or(1).clamp(0, 255)).unwrap_or(1),
    ))
}
