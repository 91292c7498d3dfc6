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

use crate::cmd::policy::image_facts;
use crate::home::coffer_home;

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Pod manifest.
    pod: PathBuf,
    /// Use this policy instead of generating one (its SHA-256 becomes HOST_DATA).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Host address for the ports the policy publishes without a hostIP of their own.
    #[arg(long, default_value = "127.0.0.1")]
    publish_address: std::net::Ipv4Addr,
    /// `bridge`: a veth to the host bridge coffer0 with outbound NAT and published ports;
    /// `none`: loopback only.
    #[arg(long, default_value = "bridge", value_parser = ["bridge", "none"])]
    network: String,
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
    #[arg(long)]
    io: PathBuf,
}

/// Inside the sandbox: build the root, check the launch data, serve.
pub(crate) fn agent(a: AgentArgs) -> Result<ExitCode> {
    coffer_runtime::sandbox::enter(&a.io).context("building the sandbox")?;
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
    let group = host::launch(LaunchSpec {
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
    if let Some(net) = group.network() {
        let published: Vec<String> = net.published().iter().map(|p| p.to_string()).collect();
        eprintln!(
            "coffer: group '{}' at {}{}",
            group.name,
            net.info().address,
            if published.is_empty() {
                String::new()
            } else {
                format!(", published {}", published.join(", "))
            }
        );
    }
    timing.mark("sandbox up, agent verified HOST_DATA and serves, network wired");
    match drive(&group, &pod, &store, &facts, &timing) {
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

fn drive(
    group: &host::Group,
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
        for layer in &img.image.layers {
            let key = layer.digest.to_string();
            if !mounted.contains_key(&key) {
                let target = format!("/run/coffer/layers/l{}", mounted.len());
                client
                    .mount_layer(&target, img.layout.open_layer(layer)?)
                    .with_context(|| format!("container '{}': layer {}", c.name, layer.digest))?;
                mounted.insert(key.clone(), target);
            }
            paths.push(mounted[&key].clone());
        }
        timing.mark(&format!(
            "{}: layers streamed, measured by the agent, unpacked",
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
