//! The host side: launching a group's sandbox and driving its agent.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::json;

use crate::emu::EmulatedService;
use crate::HostError;
use coffer_proto::reply;
use coffer_proto::{
    read_frame, write_frame, AttachFrame, Failure, ProcessSpec, Request, Response, VolumeSpec,
    VERSION,
};

/// A connection to an agent.
pub struct AgentClient {
    stream: UnixStream,
}

impl From<Failure> for HostError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Denied { rule, reasons } => HostError::Denied {
                rule,
                reason: reasons.join("; "),
            },
            Failure::Failed { message } => HostError::Agent(message),
        }
    }
}

impl AgentClient {
    /// Connect and check the protocol version.
    pub fn connect(socket: &Path) -> Result<Self, HostError> {
        let stream = UnixStream::connect(socket).map_err(crate::io(format!(
            "connecting to the agent at {}",
            socket.display()
        )))?;
        let mut c = AgentClient { stream };
        c.hello()?;
        Ok(c)
    }

    /// Send a request and read its typed reply; a denial or failure is the error. The typed
    /// methods below are the client's API; this is for requests built elsewhere (tests).
    pub fn call<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, HostError> {
        write_frame(&mut self.stream, req)?;
        let v = read_frame(&mut self.stream)?
            .ok_or_else(|| HostError::Protocol("the agent closed the connection".into()))?;
        let r: Response<T> = serde_json::from_value(v)
            .map_err(|e| HostError::Protocol(format!("the agent's reply: {e}")))?;
        Ok(Result::from(r)?)
    }

    /// `hello`: the protocol version and the agent's launch data.
    pub fn hello(&mut self) -> Result<reply::Hello, HostError> {
        self.call(&Request::Hello { version: VERSION })
    }

    /// Mount the layer image `image` (a name from [`Group::stage_layer`]) at `target`.
    pub fn mount_layer(
        &mut self,
        target: &str,
        image: &str,
    ) -> Result<reply::LayerMounted, HostError> {
        self.call(&Request::MountLayer {
            target: target.into(),
            image: image.into(),
        })
    }

    /// Overlay mounted layers (top first) as a container's root.
    pub fn mount_overlay(
        &mut self,
        container_id: &str,
        layer_paths: Vec<String>,
    ) -> Result<reply::Done, HostError> {
        self.call(&Request::MountOverlay {
            container_id: container_id.into(),
            layer_paths,
        })
    }

    /// Create and start a container.
    pub fn create_container(
        &mut self,
        container_id: &str,
        process: ProcessSpec,
        volumes: Vec<VolumeSpec>,
    ) -> Result<reply::Created, HostError> {
        self.call(&Request::CreateContainer {
            container_id: container_id.into(),
            process,
            volumes,
        })
    }

    /// Run a process in a container.
    pub fn exec(
        &mut self,
        container_id: &str,
        process: ProcessSpec,
    ) -> Result<reply::Executed, HostError> {
        self.call(&Request::Exec {
            container_id: container_id.into(),
            process,
        })
    }

    /// Signal a container's init process.
    pub fn signal(&mut self, container_id: &str, signal: i32) -> Result<reply::Done, HostError> {
        self.call(&Request::Signal {
            container_id: container_id.into(),
            signal,
        })
    }

    /// Remove an exited container (its root and scratch), for a restart.
    pub fn remove_container(&mut self, container_id: &str) -> Result<reply::Done, HostError> {
        self.call(&Request::RemoveContainer {
            container_id: container_id.into(),
        })
    }

    /// The containers and the launch data.
    pub fn properties(&mut self) -> Result<reply::Properties, HostError> {
        self.call(&Request::GetProperties)
    }

    /// Stop every container and end the group.
    pub fn shutdown(&mut self) -> Result<reply::ShutDown, HostError> {
        self.call(&Request::Shutdown)
    }

    /// Follow a container's output until it exits; returns the exit status.
    pub fn attach(
        mut self,
        container_id: &str,
        mut on_line: impl FnMut(&str, &str),
    ) -> Result<i32, HostError> {
        write_frame(
            &mut self.stream,
            &Request::Attach {
                container_id: container_id.into(),
            },
        )?;
        loop {
            let v = read_frame(&mut self.stream)?
                .ok_or_else(|| HostError::Protocol("the agent closed the connection".into()))?;
            let frame: AttachFrame = serde_json::from_value(v)
                .map_err(|e| HostError::Protocol(format!("an attach frame: {e}")))?;
            match frame {
                AttachFrame::Output { stream, data } => on_line(&stream, &data),
                // Stdio not allowed: keep waiting for the exit status only.
                AttachFrame::NoStdio { reason } => on_line("coffer", &reason),
                AttachFrame::Exit { code } => return Ok(code),
                AttachFrame::Failed(f) => return Err(f.into()),
            }
        }
    }
}

/// What to launch.
pub struct LaunchSpec {
    /// `$COFFER_HOME`.
    pub home: PathBuf,
    /// Group name (from the Pod).
    pub name: String,
    /// The policy text given to the agent.
    pub policy: Vec<u8>,
    /// HOST_DATA fixed at launch (normally SHA-256 of `policy`).
    pub host_data: [u8; 32],
    /// The agent executable (`coffer-agent`, see [`agent_exe`]).
    pub agent_exe: PathBuf,
    /// Encrypted volume images to hand to the group: (volume name, LUKS2 image on the host).
    pub volumes: Vec<(String, PathBuf)>,
    /// How the group is wired ([`crate::net`]).
    pub network: crate::net::NetworkMode,
}

/// A running group.
pub struct Group {
    /// Name.
    pub name: String,
    /// Host directory of the group (`$COFFER_HOME/run/<name>`).
    pub dir: PathBuf,
    /// The sandbox process (`unshare` with the agent as PID 1 of its namespaces).
    pub sandbox: Child,
    _sp: EmulatedService,
    _egress: Egress,
    /// MEASUREMENT of the launch.
    pub measurement: [u8; 48],
    net: Option<crate::net::Network>,
}

/// MEASUREMENT = SHA-384(agent binary ‖ launch configuration), cached by the binary's identity
/// (device, inode, size, mtime) and the configuration, as the binary is tens of megabytes.
pub fn launch_measurement_cached(
    cache_dir: &Path,
    agent_exe: &Path,
    launch_config: &[u8],
) -> Result<[u8; 48], HostError> {
    use std::os::unix::fs::MetadataExt as _;
    let md = std::fs::metadata(agent_exe)
        .map_err(crate::io(format!("reading {}", agent_exe.display())))?;
    let id = format!(
        "{}:{}:{}:{}.{}:{}",
        md.dev(),
        md.ino(),
        md.size(),
        md.mtime(),
        md.mtime_nsec(),
        hex::encode(launch_config)
    );
    let path = cache_dir.join(format!(
        "measurement-{}",
        hex::encode(openssl::sha::sha256(id.as_bytes()))
    ));
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut m = [0u8; 48];
        if hex::decode_to_slice(text.trim(), &mut m).is_ok() {
            return Ok(m);
        }
    }
    let m = launch_measurement(agent_exe, launch_config)?;
    let _ = std::fs::create_dir_all(cache_dir);
    let _ = std::fs::write(&path, hex::encode(m));
    Ok(m)
}

/// MEASUREMENT = SHA-384(agent binary ‖ launch configuration).
pub fn launch_measurement(agent_exe: &Path, launch_config: &[u8]) -> Result<[u8; 48], HostError> {
    let mut h = openssl::sha::Sha384::new();
    let mut f = std::fs::File::open(agent_exe)
        .map_err(crate::io(format!("reading {}", agent_exe.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(crate::io("reading the agent binary"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.update(launch_config);
    Ok(h.finish())
}

/// The MEASUREMENT every group launched with `agent_exe` gets: what a release policy pins
/// (`x-ms-sevsnpvm-launchmeasurement`) so that only this agent, not merely the right HOST_DATA,
/// obtains a key.
pub fn expected_measurement(home: &Path, agent_exe: &Path) -> Result<[u8; 48], HostError> {
    let launch_config = serde_json::to_vec(
        &json!({"version": VERSION, "io": coffer_proto::IO_DIR, "agent": "coffer-agent"}),
    )
    .map_err(|e| HostError::Protocol(e.to_string()))?;
    launch_measurement_cached(&home.join("run/.cache"), agent_exe, &launch_config)
}

/// The agent binary: `$COFFER_AGENT`, else `coffer-agent` next to the running executable (where
/// `cargo build` and an install put it).
pub fn agent_exe() -> Result<PathBuf, HostError> {
    if let Some(p) = std::env::var_os("COFFER_AGENT") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(HostError::Agent(format!(
                "COFFER_AGENT names {}, which is not a file",
                p.display()
            )))
        };
    }
    let exe = std::env::current_exe().map_err(crate::io("locating the running executable"))?;
    let p = exe.with_file_name("coffer-agent");
    if p.is_file() {
        Ok(p)
    } else {
        Err(HostError::Agent(format!(
            "the agent binary {} is missing: build it with `cargo build --release -p coffer-agent` \
             (or set COFFER_AGENT)",
            p.display()
        )))
    }
}

/// The run directory of a group.
pub fn group_dir(home: &Path, name: &str) -> PathBuf {
    home.join("run").join(name)
}

/// Start the sandbox and wait until the agent serves (or refuses).
pub fn launch(spec: LaunchSpec) -> Result<Group, HostError> {
    let dir = group_dir(&spec.home, &spec.name);
    if dir.join("io/agent.sock").exists() && dir.join("pid").exists() {
        let pid = std::fs::read_to_string(dir.join("pid")).unwrap_or_default();
        if crate::process_alive(&pid) {
            return Err(HostError::Agent(format!(
                "a group named '{}' is already running (pid {})",
                spec.name,
                pid.trim()
            )));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let io_dir = dir.join("io");
    std::fs::create_dir_all(&io_dir).map_err(crate::io(format!("mkdir {}", io_dir.display())))?;
    std::fs::write(io_dir.join("policy.rego"), &spec.policy)
        .map_err(crate::io("writing the policy"))?;
    if !spec.volumes.is_empty() {
        let vdir = io_dir.join("volumes");
        std::fs::create_dir_all(&vdir).map_err(crate::io("mkdir volumes"))?;
        for (name, src) in &spec.volumes {
            let dst = vdir.join(format!("{name}.img"));
            let text = src.to_string_lossy();
            if text.starts_with("http://") || text.starts_with("https://") {
                std::fs::write(dst.with_extension("url"), src.to_string_lossy().as_bytes())
                    .map_err(crate::io("writing the volume URL"))?;
                continue;
            }
            if std::fs::hard_link(src, &dst).is_err() {
                std::fs::copy(src, &dst).map_err(crate::io(format!(
                    "encrypted volume {name}: {}",
                    src.display()
                )))?;
            }
        }
    }
    let measurement = expected_measurement(&spec.home, &spec.agent_exe)?;
    let emu = coffer_snp_emu::EmulatedSp::open_or_create(&spec.home)
        .map_err(|e| HostError::SecureProcessor(e.to_string()))?;
    let sp = EmulatedService::start(&io_dir.join("sp.sock"), emu, spec.host_data, measurement)?;
    let mut unshare = Command::new("unshare");
    crate::die_with_launcher(&mut unshare);
    let mut sandbox = unshare
        .args([
            "--fork",
            "--kill-child",
            "--pid",
            "--mount",
            "--net",
            "--uts",
            "--ipc",
            "--propagation",
            "private",
        ])
        .arg(&spec.agent_exe)
        .arg("--io")
        .arg(&io_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join("agent.log"))
                .map_err(crate::io("creating agent.log"))?,
        )
        .spawn()
        .map_err(crate::io("starting the sandbox (unshare)"))?;
    // The host's own part is read from the policy while the agent starts (reading a policy
    // takes milliseconds): a port conflict ends the group before any container runs.
    let host_part = std::fs::write(dir.join("pid"), sandbox.id().to_string())
        .map_err(crate::io("writing the pid file"))
        .and_then(|()| egress_and_ports(&spec, &io_dir));
    let (egress, published) = match host_part {
        Ok(x) => x,
        Err(e) => {
            let _ = sandbox.kill();
            let _ = sandbox.wait();
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let mut group = Group {
        name: spec.name,
        dir,
        sandbox,
        _sp: sp,
        _egress: egress,
        measurement,
        net: None,
    };
    // The network is wired while the agent starts: both take tens of milliseconds, and the
    // agent reads the network's description only when it creates the first container.
    let wiring = match spec.network {
        crate::net::NetworkMode::None => None,
        crate::net::NetworkMode::Bridge { .. } => {
            let (name, dir, pid) = (group.name.clone(), group.dir.clone(), group.sandbox.id());
            match own_netns(&mut group.sandbox) {
                Ok(true) => Some(std::thread::spawn(move || {
                    crate::net::Network::connect(&name, &dir, pid, published)
                })),
                // The sandbox ended already: the wait below reports why, from the agent's log.
                Ok(false) => None,
                Err(e) => return Err(group.abandon(None, e)),
            }
        }
    };
    let socket = io_dir.join("agent.sock");
    let started = Instant::now();
    let served = loop {
        if socket.exists() && UnixStream::connect(&socket).is_ok() {
            break Ok(());
        }
        if let Ok(Some(status)) = group.sandbox.try_wait() {
            let log = std::fs::read_to_string(group.dir.join("agent.log")).unwrap_or_default();
            break Err(HostError::Agent(format!(
                "the agent exited ({status}): {}",
                log.trim()
            )));
        }
        if started.elapsed() > Duration::from_secs(30) {
            break Err(HostError::Agent(
                "the agent did not start within 30 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wired = match wiring {
        None => Ok(None),
        Some(t) => t
            .join()
            .unwrap_or_else(|_| Err(crate::net::net_err("the network set-up panicked")))
            .map(Some),
    };
    match (served, wired) {
        (Ok(()), Ok(net)) => group.tell_network(net),
        (Err(e), Ok(net)) => Err(group.abandon(net, e)),
        (_, Err(e)) => Err(group.abandon(None, e)),
    }
}

/// The egress relay, open only to where the policy sends the group (its attestation services
/// and key brokers) and to the remote volume images the host itself serves; and the ports the
/// policy publishes, held.
fn egress_and_ports(
    spec: &LaunchSpec,
    io_dir: &Path,
) -> Result<(Egress, Vec<crate::net::Published>), HostError> {
    let text = std::str::from_utf8(&spec.policy)
        .map_err(|_| HostError::Agent("the policy is not UTF-8".into()))?;
    let settings = coffer_policy::Settings::of(&mut coffer_policy::Enforcer::new(text)?)?;
    let mut allowed = settings.egress_destinations();
    for (name, src) in &spec.volumes {
        let text = src.to_string_lossy();
        if text.starts_with("http://") || text.starts_with("https://") {
            allowed.push(
                coffer_encfs::source::url_host_port(&text)
                    .map_err(|e| HostError::Agent(format!("encrypted volume {name}: {e}")))?,
            );
        }
    }
    let egress = Egress::start(&io_dir.join("egress.sock"), allowed)?;
    let published = crate::net::reserve(&spec.network, &settings.ports)?;
    Ok((egress, published))
}

/// Wait until `unshare` has made the sandbox's network namespace (a moment after it starts),
/// so that the network is not wired into the host's own: true once it has, false when the
/// sandbox ended first.
fn own_netns(sandbox: &mut Child) -> Result<bool, HostError> {
    use std::os::unix::fs::MetadataExt as _;
    let own = std::fs::metadata("/proc/self/ns/net").map_err(crate::io("/proc/self/ns/net"))?;
    let path = format!("/proc/{}/ns/net", sandbox.id());
    let started = Instant::now();
    loop {
        if let Ok(m) = std::fs::metadata(&path) {
            if (m.dev(), m.ino()) != (own.dev(), own.ino()) {
                return Ok(true);
            }
        }
        if let Ok(Some(_)) = sandbox.try_wait() {
            return Ok(false);
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(HostError::Agent(
                "the sandbox made no network namespace within 10 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

impl Group {
    /// Put a layer image where the agent reads it (`io/layers/`: a hard link, or a copy across
    /// file systems); returns its name there, for [`AgentClient::mount_layer`].
    pub fn stage_layer(&self, image: &Path) -> Result<String, HostError> {
        let name = image
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| HostError::Agent(format!("{}: no file name", image.display())))?
            .to_string();
        let dir = self.dir.join("io/layers");
        std::fs::create_dir_all(&dir).map_err(crate::io(format!("mkdir {}", dir.display())))?;
        let dst = dir.join(&name);
        if !dst.exists() && std::fs::hard_link(image, &dst).is_err() {
            std::fs::copy(image, &dst)
                .map_err(crate::io(format!("copying {}", image.display())))?;
        }
        Ok(name)
    }

    /// Wire the running sandbox ([`crate::net`]) and tell the agent its address; on failure the
    /// group is ended and nothing stays behind.
    /// Tell the agent about its network (the group file); on failure the group goes.
    fn tell_network(mut self, net: Option<crate::net::Network>) -> Result<Group, HostError> {
        let file = crate::net::GroupNet {
            name: self.name.clone(),
            address: net.as_ref().map(|n| n.info().address),
            resolv_conf: crate::net::host_resolv_conf(),
        };
        self.net = net;
        match crate::net::write_group_file(&self.dir.join("io"), &file) {
            Ok(()) => Ok(self),
            Err(e) => {
                let net = self.net.take();
                Err(self.abandon(net, e))
            }
        }
    }

    /// End a group that failed to start: its sandbox, its network, its directory. Returns `e`.
    fn abandon(mut self, net: Option<crate::net::Network>, e: HostError) -> HostError {
        let _ = self.sandbox.kill();
        let _ = self.sandbox.wait();
        if let Some(n) = net {
            let _ = n.teardown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        e
    }

    /// The group's network (none with [`crate::net::NetworkMode::None`]).
    pub fn network(&self) -> Option<&crate::net::Network> {
        self.net.as_ref()
    }

    /// The agent's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("io/agent.sock")
    }

    /// A new client connection.
    pub fn client(&self) -> Result<AgentClient, HostError> {
        AgentClient::connect(&self.socket())
    }

    /// Ask the agent to shut down and wait for the sandbox to exit.
    pub fn shutdown(mut self) -> Result<coffer_proto::reply::ShutDown, HostError> {
        let answer = self.client().and_then(|mut c| c.shutdown());
        // An agent that refused (its policy keeps a container running) does not exit: the host
        // ends the group itself, as it always can.
        let deadline = Instant::now()
            + if answer.is_ok() {
                Duration::from_secs(10)
            } else {
                Duration::ZERO
            };
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.sandbox.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.sandbox.kill();
        let _ = self.sandbox.wait();
        if answer.is_err() {
            sweep_cgroups();
        }
        if let Some(net) = self.net.take() {
            if let Err(e) = net.teardown() {
                eprintln!("coffer: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        answer
    }
}

/// A group dropped without [`Group::shutdown`] (an error or a panic on the way) does not outlive
/// its handle: its sandbox is killed, its cgroups swept, its network and directory removed.
impl Drop for Group {
    fn drop(&mut self) {
        if matches!(self.sandbox.try_wait(), Ok(None)) {
            let _ = self.sandbox.kill();
            let _ = self.sandbox.wait();
            sweep_cgroups();
        }
        if let Some(net) = self.net.take() {
            let _ = net.teardown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Remove the container cgroups (`/coffer/...` under every controller) that no process uses any
/// more: what an agent that did not stop its containers itself leaves behind. Cgroups still in
/// use (other groups') cannot be removed and are not.
pub fn sweep_cgroups() {
    // A killed container's processes take a moment to leave their cgroup.
    std::thread::sleep(Duration::from_millis(100));
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for c in controllers.flatten() {
        let parent = c.path().join("coffer");
        if let Ok(groups) = std::fs::read_dir(&parent) {
            for g in groups.flatten().filter(|g| g.path().is_dir()) {
                let _ = std::fs::remove_dir(g.path());
            }
        }
        let _ = std::fs::remove_dir(&parent);
    }
}

/// Volume and process specs for a resolved container.
pub fn process_for(r: &coffer_policy::ResolvedContainer) -> (ProcessSpec, Vec<VolumeSpec>) {
    let mut env = r.env.clone();
    // valueFrom variables take their value from the launcher's environment when set.
    for n in &r.env_from {
        if let Ok(v) = std::env::var(n) {
            if !v.is_empty() {
                env.push(format!("{n}={v}"));
            }
        }
    }
    let process = ProcessSpec {
        args: r.args.clone(),
        env,
        cwd: r.working_dir.clone(),
        uid: r.user.parse().unwrap_or(0),
        gid: r.group.parse().unwrap_or(0),
        additional_gids: r.supplemental_groups.clone(),
        read_only_rootfs: r.read_only_root_filesystem,
        capabilities: r.capabilities.clone(),
        no_new_privileges: r.no_new_privileges,
        memory_limit: r.memory_limit,
        cpu_millis: r.cpu_millis,
    };
    let volumes = r
        .mounts
        .iter()
        .map(|(name, dest, ro)| VolumeSpec {
            name: name.clone(),
            destination: dest.clone(),
            read_only: *ro,
        })
        .collect();
    (process, volumes)
}

/// The group's way out: `CONNECT host:port` on a Unix socket in the I/O directory, then bytes
/// both ways. Only the destinations it was started with, and only on loopback.
pub struct Egress {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Egress {
    /// Serve on `socket`.
    pub fn start(socket: &Path, allowed: Vec<String>) -> Result<Self, HostError> {
        let allowed = std::sync::Arc::new(allowed);
        use std::sync::atomic::Ordering;
        let _ = std::fs::remove_file(socket);
        let listener = std::os::unix::net::UnixListener::bind(socket)
            .map_err(crate::io(format!("binding {}", socket.display())))?;
        listener
            .set_nonblocking(true)
            .map_err(crate::io("egress socket"))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let allowed = allowed.clone();
                        std::thread::spawn(move || Self::relay(conn, &allowed));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => {}
                }
            }
        });
        Ok(Egress { stop })
    }

    fn relay(conn: UnixStream, allowed: &[String]) {
        use std::io::BufRead as _;
        if conn.set_nonblocking(false).is_err() {
            return;
        }
        let mut reader = std::io::BufReader::new(conn);
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let Some(target) = line.trim().strip_prefix("CONNECT ") else {
            return;
        };
        if !allowed.iter().any(|a| a == target) {
            eprintln!(
                "coffer: egress to '{}' refused: not a destination of the policy",
                target.escape_debug()
            );
            return;
        }
        let addrs: Vec<std::net::SocketAddr> =
            match std::net::ToSocketAddrs::to_socket_addrs(target) {
                Ok(a) => a.filter(|a| a.ip().is_loopback()).collect(),
                Err(_) => return,
            };
        let Some(tcp) = addrs
            .first()
            .and_then(|a| std::net::TcpStream::connect(a).ok())
        else {
            return;
        };
        let buffered = reader.buffer().to_vec();
        let conn = reader.into_inner();
        let (Ok(mut tcp_w), Ok(mut conn_r)) = (tcp.try_clone(), conn.try_clone()) else {
            return;
        };
        let mut tcp_r = tcp;
        let mut conn_w = conn;
        let up = std::thread::spawn(move || {
            let _ = tcp_w.write_all(&buffered);
            let _ = std::io::copy(&mut conn_r, &mut tcp_w);
            let _ = tcp_w.shutdown(std::net::Shutdown::Write);
        });
        let _ = std::io::copy(&mut tcp_r, &mut conn_w);
        let _ = conn_w.shutdown(std::net::Shutdown::Write);
        let _ = up.join();
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
