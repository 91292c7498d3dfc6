//! `coffer run`, `coffer exec`, `coffer ps`, and the hidden `coffer agent` (the in-TEE side).

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

use crate::cmd::policy::image_facts;
use crate::home::coffer_home;

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Pod manifest.
    pod: PathBuf,
    /// Use this policy instead of generating one (its SHA-256 becomes HOST_DATA).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// How the group is isolated: `namespace` (namespaces on this kernel, the default while a
    /// VM boots in seconds under TCG) or `vm` (a QEMU VM per group; `coffer uvm build` first).
    #[arg(long, value_enum, default_value = "namespace")]
    isolation: IsolationArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
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
    let timing = Timing::new();
    let home = coffer_home()?;
    let yaml = std::fs::read_to_string(&a.pod)
        .with_context(|| format!("cannot read {}", a.pod.display()))?;
    let pod = coffer_policy::parse_pod(&yaml).with_context(|| a.pod.display().to_string())?;
    let store = Store::open(&home)?;
    let facts = image_facts(&store, &pod)?;
    let policy = match &a.policy {
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
        None => coffer_policy::generate(&pod, &facts, &GenOptions::default())?.into_bytes(),
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
            let (memory_mib, vcpus) = vm_size(&pod, &facts)?;
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
    })?;
    timing.mark("sandbox up, agent verified HOST_DATA and serves");
    match drive(group.as_ref(), &pod, &store, &facts, &timing) {
        Ok(code) => {
            let _ = group.shutdown();
            Ok(ExitCode::from(
                u8::try_from(code.clamp(0, 255)).unwrap_or(1),
            ))
        }
        Err(e) => {
            let _ = group.shutdown();
            Err(e)
        }
    }
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
        let r = coffer_policy::resolve_container(i, c, f)?;
        mem += r.memory_limit.unwrap_or(0);
        cpu += r.cpu_millis.unwrap_or(0);
    }
    let memory_mib = (mem.div_ceil(1 << 20) + 256).max(512);
    let vcpus = u32::try_from(cpu.div_ceil(1000).clamp(1, 8)).unwrap_or(1);
    Ok((memory_mib, vcpus))
}

fn drive(
    group: &dyn RunningGroup,
    pod: &coffer_policy::Pod,
    store: &Store,
    facts: &BTreeMap<String, coffer_policy::ImageFacts>,
    timing: &Timing,
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
        let resolved = coffer_policy::resolve_container(i, c, img_facts)?;
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
    // Ctrl-C: ask for SIGTERM through the policy; the group is torn down when the main exits.
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let socket = group.socket();
        let names: Vec<String> = pod.spec.containers.iter().map(|c| c.name.clone()).collect();
        let flag = interrupted.clone();
        let _ = ctrlc::set_handler(move || {
            flag.store(true, Ordering::Relaxed);
            if let Ok(mut c) = AgentClient::connect(&socket) {
                for n in &names {
                    if let Err(e) = c.call(&Request::Signal {
                        container_id: n.clone(),
                        signal: 15,
                    }) {
                        eprintln!("coffer: stopping {n}: {e}");
                    }
                }
            }
        });
    }
    let mut followers = Vec::new();
    for c in pod.spec.containers.iter().skip(1) {
        let client = group.client()?;
        let name = c.name.clone();
        followers.push(std::thread::spawn(move || {
            let _ = client.attach(&name.clone(), |_, line| println!("[{name}] {line}"));
        }));
    }
    let main = &pod.spec.containers[0].name;
    let mut first = true;
    let code = group.client()?.attach(main, |_, line| {
        if first {
            timing.mark("first output line");
            first = false;
        }
        println!("[{main}] {line}")
    })?;
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

pub(crate) fn ps() -> Result<ExitCode> {
    let home = coffer_home()?;
    let run = home.join("run");
    let mut any = false;
    if let Ok(entries) = std::fs::read_dir(&run) {
        for e in entries.flatten() {
            let pid = std::fs::read_to_string(e.path().join("pid")).unwrap_or_default();
            let alive = !pid.trim().is_empty()
                && std::path::Path::new(&format!("/proc/{}", pid.trim())).exists();
            if !alive {
                continue;
            }
            let props = AgentClient::connect(&e.path().join("io/agent.sock"))
                .and_then(|mut c| c.call(&Request::GetProperties));
            let containers = props
                .as_ref()
                .ok()
                .and_then(|v| v["containers"].as_array().cloned())
                .map(|cs| {
                    cs.iter()
                        .filter_map(|c| c["id"].as_str().map(str::to_string))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "?".into());
            println!(
                "{}\tpid {}\tcontainers {}",
                e.file_name().to_string_lossy(),
                pid.trim(),
                containers
            );
            any = true;
        }
    }
    if !any {
        eprintln!("no running groups");
    }
    Ok(ExitCode::SUCCESS)
}
