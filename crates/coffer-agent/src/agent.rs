//! The in-TEE agent: checks its launch data, then serves the host, asking the policy before
//! every action.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};

use coffer_policy::input::{self, Input};
use coffer_policy::{EnforcementPoint as Point, Enforcer};
use serde_json::{json, Value};

use crate::AgentError;
use coffer_proto::reply;
use coffer_proto::WORK_DIR;
use coffer_proto::{
    read_frame, write_frame, AttachFrame, Failure, ProcessSpec, Request, Response, VolumeSpec,
    VERSION,
};
use coffer_sp::SecureProcessor;

/// Output of a container, kept for attach, and its exit status. Bounded: the oldest lines go
/// first when a container writes more than the agent keeps.
#[derive(Default)]
struct Output {
    lines: std::collections::VecDeque<(String, String)>,
    /// Number of lines dropped from the front so far (the index of `lines[0]`).
    first: usize,
    bytes: usize,
    exit: Option<i32>,
}

/// Most output kept per container, and the longest line (longer ones are split).
const MAX_OUTPUT_BYTES: usize = 4 << 20;
const MAX_OUTPUT_LINES: usize = 65_536;
const MAX_LINE: u64 = 64 << 10;

impl Output {
    fn end(&self) -> usize {
        self.first + self.lines.len()
    }

    fn push(&mut self, stream: &str, line: String) {
        self.bytes += line.len();
        self.lines.push_back((stream.to_string(), line));
        while self.bytes > MAX_OUTPUT_BYTES || self.lines.len() > MAX_OUTPUT_LINES {
            let Some((_, old)) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= old.len();
            self.first += 1;
        }
    }

    /// Lines from absolute index `from` on, and how many of those were already dropped.
    fn since(&self, from: usize) -> (Vec<(String, String)>, usize) {
        let start = from.max(self.first);
        let new = self.lines.range(start - self.first..).cloned().collect();
        (new, start - from)
    }
}

/// Why a container was not created, past the policy's own decision (a failure reply with
/// this message).
#[derive(Debug, thiserror::Error)]
enum CreateError {
    #[error("waiting for runc: {0}")]
    WaitRunc(#[source] std::io::Error),
    #[error("runc did not start the container within {0} s")]
    RuncTimeout(u64),
    /// The decision's result is not what the framework returns (a policy the agent cannot
    /// follow: never read as "nothing").
    #[error("the policy's env_list is not a list of strings: {0}")]
    EnvList(#[source] serde_json::Error),
    #[error("the policy's caps_list is malformed: {0}")]
    CapsList(#[source] serde_json::Error),
    #[error(transparent)]
    Spec(#[from] oci::SpecError),
}

/// Why the containers' `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` were not made.
#[derive(Debug, thiserror::Error)]
enum GroupFilesError {
    #[error("{file}: {0}", file = coffer_proto::GROUP_FILE)]
    Read(#[source] std::io::Error),
    #[error("{file}: {0}", file = coffer_proto::GROUP_FILE)]
    Parse(#[source] serde_json::Error),
    #[error("{file} is too large", file = coffer_proto::GROUP_FILE)]
    TooLarge,
    #[error("setting the host name: {0}")]
    Hostname(#[source] nix::Error),
    #[error("the host's resolv.conf is too large or not text")]
    ResolvConf,
    #[error("{what}: {source}")]
    Write {
        what: String,
        source: std::io::Error,
    },
}

/// Why a released key does not give a volume's passphrase.
#[derive(Debug, thiserror::Error)]
enum KeyError {
    #[error("released key has no '{0}'")]
    Missing(&'static str),
    #[error("keyDerivationSalt is not hex")]
    SaltNotHex,
    #[error("deriving the volume key: {0}")]
    Derive(#[source] openssl::error::ErrorStack),
    #[error("released key type {0:?} cannot open a volume")]
    KeyType(Option<String>),
}

/// Why an encrypted volume stays closed.
#[derive(Debug, thiserror::Error)]
enum VolumeError {
    #[error(transparent)]
    Broker(#[from] crate::skr::SkrSetupError),
    /// The key release failed: the SKR API's own answer.
    #[error("{0}")]
    Release(String),
    #[error("released key is not a JWK: {0}")]
    NotJwk(#[source] serde_json::Error),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{url}: {source}")]
    Remote { url: String, source: std::io::Error },
    #[error(transparent)]
    Luks(#[from] coffer_encfs::LuksError),
    #[error(transparent)]
    Disk(#[from] layer_image::LayerError),
    #[error("the image is truncated: its file system needs {fs} bytes, the volume has {size}")]
    Truncated { fs: u64, size: u64 },
    #[error("the volume does not hold an ext4 file system")]
    NotExt4,
    #[error("a volume whose plaintext the policy pins must be read-only")]
    PinnedWritable,
    #[error("hashing the volume's plaintext: {0}")]
    ReadPlaintext(#[source] coffer_encfs::LuksError),
    #[error("hashing the volume's plaintext: {0}")]
    HashPlaintext(#[source] coffer_verity::VerityError),
    #[error("the policy's verity_root is not hex")]
    PinNotHex,
    #[error(
        "the volume's plaintext (dm-verity root {found}) is not the one the policy pins ({pinned})"
    )]
    NotPinned { found: String, pinned: String },
    #[error("the volume's hash tree: {0}")]
    Tree(#[source] coffer_verity::VerityError),
    #[error("the volume's hash tree does not have the pinned root")]
    TreeRoot,
    #[error(transparent)]
    Device(#[from] crate::DeviceError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("mounting {dev}: {source}")]
    Mount { dev: String, source: nix::Error },
    /// mount(8) failed: what it said.
    #[error("mounting: {0}")]
    MountCommand(String),
}

fn vol_io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> VolumeError {
    let what = what.to_string();
    move |source| VolumeError::Io { what, source }
}

/// Read `s` line by line (lines longer than [`MAX_LINE`] split) into `out`.
/// `runc run` returns only when the container ends; it writes its pid file once the container
/// exists and its process runs. Waiting for that (or for runc to end: a process that cannot start
/// is reported through its exit status, as before) means a request that follows the create reply
/// (exec, signal) finds the container.
fn wait_started(child: &mut Child, pid_file: &Path) -> Result<(), CreateError> {
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(120);
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(500);
    loop {
        if pid_file.exists() {
            return Ok(());
        }
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(e) => return Err(CreateError::WaitRunc(e)),
        }
        if start.elapsed() > LIMIT {
            return Err(CreateError::RuncTimeout(LIMIT.as_secs()));
        }
        std::thread::sleep(pause);
        // runc takes 15-30 ms: a finer poll than that is cheap and is start-up time saved.
        pause = (pause * 2).min(std::time::Duration::from_millis(1));
    }
}

fn collect_output(s: impl Read, name: &str, out: &(Mutex<Output>, Condvar)) {
    let mut r = BufReader::new(s);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                let (m, cv) = out;
                m.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(name, String::from_utf8_lossy(&buf).into_owned());
                cv.notify_all();
            }
        }
    }
}

struct ContainerState {
    bundle: PathBuf,
    rootfs: PathBuf,
    allow_stdio: bool,
    output: Arc<(Mutex<Output>, Condvar)>,
    child: Option<Child>,
}

struct State {
    enforcer: Enforcer,
    overlays: BTreeMap<String, PathBuf>,
    containers: BTreeMap<String, ContainerState>,
    /// Layers mounted and in place, ready for overlays.
    layers: Vec<PathBuf>,
    /// Layer targets being measured and mounted.
    pending: std::collections::BTreeSet<String>,
    opened: BTreeMap<String, PathBuf>,
    blocks: Vec<coffer_encfs::block::BlockMount>,
}

/// The agent.
pub struct Agent {
    /// Encrypted volumes, as the policy names them.
    encrypted: Vec<coffer_policy::EncryptedVolumePolicy>,
    sp: Arc<dyn SecureProcessor>,
    /// The SKR API, if the policy enables it.
    skr: Option<coffer_policy::SkrPolicy>,
    cgroup_prefix: String,
    /// The group's host name, from the policy.
    hostname: Option<String>,
    /// The group that owns emptyDir volumes (the Pod's fsGroup), from the policy.
    fs_group: Option<u32>,
    /// The containers' `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`, made once.
    group_files: std::sync::OnceLock<Result<oci::GroupFiles, GroupFilesError>>,
    /// Bringing the loopback interface up (`ip`, a few ms) runs while the host sends the first
    /// requests; the first container waits for it.
    loopback: Mutex<Option<std::thread::JoinHandle<()>>>,
    state: Mutex<State>,
    work: PathBuf,
    runc: PathBuf,
    report_summary: reply::ReportSummary,
    /// Layers arrive as read-only block devices named by their virtio serial (VM backend) and
    /// are mounted through dm-verity, rather than as files in the I/O directory.
    layer_disks: bool,
    /// Encrypted volumes that are block devices (VM backend): volume name -> virtio serial.
    volume_disks: BTreeMap<String, String>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panicking request handler must not wedge the group: the state is still consistent
    // (policy state changes only after an allowed decision), so keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The policy's reason as lines: its `errors` list, else the reason as JSON.
fn reasons_of(reason: Option<Value>) -> Vec<String> {
    match reason {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(r)) => match r.get("errors") {
            Some(Value::Array(e)) => e
                .iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect(),
            _ => vec![Value::Object(r).to_string()],
        },
        Some(Value::String(s)) => vec![s],
        Some(other) => vec![other.to_string()],
    }
}

fn denied<T>(rule: &str, reason: Option<Value>) -> Result<T, Failure> {
    Err(Failure::Denied {
        rule: rule.to_string(),
        reasons: reasons_of(reason),
    })
}

fn failure(e: impl std::fmt::Display) -> Failure {
    Failure::Failed {
        message: e.to_string(),
    }
}

fn failed<T>(e: impl std::fmt::Display) -> Result<T, Failure> {
    Err(failure(e))
}

/// A handler's result as the frame the host reads.
fn answer<T: serde::Serialize>(r: Result<T, Failure>) -> Value {
    serde_json::to_value(Response::from(r)).unwrap_or_else(
        |e| json!({"err": {"kind": "failed", "message": format!("encoding the reply: {e}")}}),
    )
}

/// A container or layer id: a short name that is neither a path nor a flag.
fn safe_id(id: &str) -> bool {
    id.len() <= 64 && safe_name(id)
}

/// A file name the agent accepts for a layer image (for transports that deliver the file).
pub fn safe_file_name(name: &str) -> bool {
    safe_name(name)
}

/// A file name (at most 255 bytes) that is neither a path nor a flag.
fn safe_name(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('-')
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && id != "."
        && id != ".."
}

fn find_runc() -> PathBuf {
    for p in ["/usr/sbin/runc", "/usr/bin/runc", "/sbin/runc", "/bin/runc"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("runc")
}

/// Check the launch data and build the agent. Fails (the agent refuses to serve) unless
/// SHA-256(policy) equals the HOST_DATA in its own report.
pub fn start(policy: &[u8], sp: Arc<dyn SecureProcessor>) -> Result<Agent, AgentError> {
    let digest = coffer_policy::digest(policy);
    let mut report_data = [0u8; 64];
    report_data[..32].copy_from_slice(&digest);
    let evidence = sp.report(&report_data)?;
    let report = coffer_snp::Report::from_bytes(&evidence.report)
        .map_err(|e| AgentError::Agent(format!("the secure processor's report: {e}")))?;
    let f = report.fields();
    if f.host_data != digest {
        return Err(AgentError::Agent(format!(
            "refusing to serve: SHA-256 of the policy ({}) differs from HOST_DATA ({})",
            hex::encode(digest),
            hex::encode(f.host_data)
        )));
    }
    let text = std::str::from_utf8(policy)
        .map_err(|_| AgentError::Agent("the policy is not UTF-8".into()))?;
    let mut enforcer = Enforcer::new(text)?;
    // Settings that do not parse are a policy the agent cannot follow: refuse to serve.
    let coffer_policy::Settings {
        encrypted_volumes: encrypted,
        skr,
        hostname,
        fs_group,
        ..
    } = coffer_policy::Settings::of(&mut enforcer)?;
    Ok(Agent {
        encrypted,
        sp,
        skr,
        cgroup_prefix: format!("{:016x}", rand_u64()),
        hostname,
        fs_group,
        group_files: std::sync::OnceLock::new(),
        loopback: Mutex::new(None),
        state: Mutex::new(State {
            enforcer,
            overlays: BTreeMap::new(),
            containers: BTreeMap::new(),
            layers: Vec::new(),
            pending: Default::default(),
            opened: BTreeMap::new(),
            blocks: Vec::new(),
        }),
        work: PathBuf::from(WORK_DIR),
        runc: find_runc(),
        report_summary: reply::ReportSummary {
            host_data: hex::encode(f.host_data),
            measurement: hex::encode(f.measurement),
            report_id: hex::encode(f.report_id),
        },
        layer_disks: false,
        volume_disks: BTreeMap::new(),
    })
}

impl Agent {
    /// Take layers from block devices through dm-verity (the VM backend; the guest decides
    /// this, never the host).
    pub fn with_layer_disks(mut self) -> Self {
        self.layer_disks = true;
        self
    }

    /// Encrypted volumes arrive as block devices (volume name -> virtio serial; the VM backend):
    /// unlocked in the TEE and mapped through dm-crypt instead of the FUSE block file. Host data:
    /// a wrong mapping opens nothing (the key or the pinned plaintext does not match).
    pub fn with_volume_disks(mut self, disks: BTreeMap<String, String>) -> Self {
        self.volume_disks = disks;
        self
    }

    /// Serve on `socket` until a shutdown request.
    pub fn serve(self, socket: &Path) -> Result<(), AgentError> {
        self.start_services(&socket.with_file_name("egress.sock"))?;
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .map_err(crate::io(format!("binding {}", socket.display())))?;
        let agent = Arc::new(self);
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let a = agent.clone();
            std::thread::spawn(move || {
                if a.handle(conn) {
                    std::process::exit(0);
                }
            });
        }
        Ok(())
    }

    /// Serve every connection `accept` yields (any transport: the VM's multiplexed channel)
    /// until a shutdown request, then return (the caller ends the VM); `accept` returning `None`
    /// (the channel is gone) is an error. `egress` is the relay's socket for the SKR API.
    pub fn serve_connections<C, F>(self, egress: &Path, mut accept: F) -> Result<(), AgentError>
    where
        C: Read + Write + Send + 'static,
        F: FnMut() -> Option<C> + Send + 'static,
    {
        self.start_services(egress)?;
        let agent = Arc::new(self);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            while let Some(conn) = accept() {
                let a = agent.clone();
                let done = done_tx.clone();
                std::thread::spawn(move || {
                    if a.handle(conn) {
                        let _ = done.send(());
                    }
                });
            }
        });
        // Every sender gone without a shutdown: the accept loop ended, the channel is down.
        done_rx
            .recv()
            .map_err(|_| AgentError::Agent("the channel to the host is gone".into()))
    }

    /// The loopback interface and the SKR API, before serving.
    fn start_services(&self, egress: &Path) -> Result<(), AgentError> {
        // The loopback interface of the fresh network namespace, for sidecars on localhost: in
        // the background, unless the SKR API is to listen on it now (127.0.0.1 exists only once
        // lo is up).
        let up = std::thread::spawn(|| {
            let _ = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status();
        });
        if self.skr.is_some() {
            let _ = up.join();
        } else {
            *self.loopback.lock().unwrap_or_else(|p| p.into_inner()) = Some(up);
        }
        // The group's own UTS namespace gets the host name the policy gives (the Pod's name).
        if let Some(h) = &self.hostname {
            nix::unistd::sethostname(h)
                .map_err(crate::sys(format!("setting the host name '{h}'")))?;
        }
        if let Some(policy) = &self.skr {
            let broker = match policy.broker.as_ref().map(crate::skr::Broker::from_policy) {
                Some(Ok(b)) => Some(b),
                Some(Err(e)) => return Err(AgentError::Agent(format!("the SKR API: {e}"))),
                None => None,
            };
            let skr = crate::skr::Skr {
                sp: self.sp.clone(),
                egress: egress.to_path_buf(),
                broker,
            };
            let port = policy.port;
            std::thread::spawn(move || {
                if let Err(e) = crate::skr::serve(skr, port) {
                    eprintln!("coffer agent: {e}");
                }
            });
        }
        Ok(())
    }

    /// Handle one connection (a Unix socket or a channel stream); true when the group was shut
    /// down.
    fn handle<C: Read + Write>(&self, mut conn: C) -> bool {
        loop {
            let frame = match read_frame(&mut conn) {
                Ok(Some(f)) => f,
                _ => return false,
            };
            let req: Request = match serde_json::from_value(frame) {
                Ok(r) => r,
                Err(e) => {
                    let _ = write_frame(
                        &mut conn,
                        &answer::<reply::Done>(failed(format!("bad request: {e}"))),
                    );
                    continue;
                }
            };
            let (answer, shutdown) = match req {
                Request::Hello { version } if version == VERSION => (
                    answer(Ok(reply::Hello {
                        version: VERSION,
                        report: self.report_summary.clone(),
                    })),
                    false,
                ),
                Request::Hello { version } => (
                    answer::<reply::Hello>(failed(format!(
                        "protocol version {version} unsupported (agent speaks {VERSION})"
                    ))),
                    false,
                ),
                Request::MountLayer { target, image } => {
                    (answer(self.mount_layer(&target, &image)), false)
                }
                Request::MountOverlay {
                    container_id,
                    layer_paths,
                } => (
                    answer(self.mount_overlay(&container_id, &layer_paths)),
                    false,
                ),
                Request::CreateContainer {
                    container_id,
                    process,
                    volumes,
                } => (
                    answer(self.create(&container_id, &process, &volumes)),
                    false,
                ),
                Request::Attach { container_id } => {
                    self.attach(&container_id, &mut conn);
                    continue;
                }
                Request::Exec {
                    container_id,
                    process,
                } => (answer(self.exec(&container_id, &process)), false),
                Request::Signal {
                    container_id,
                    signal,
                } => (answer(self.signal(&container_id, signal)), false),
                Request::RemoveContainer { container_id } => {
                    (answer(self.remove_container(&container_id)), false)
                }
                Request::GetProperties => (answer(self.properties()), false),
                Request::Shutdown => {
                    let (r, end) = self.shutdown();
                    (answer(r), end)
                }
            };
            let _ = write_frame(&mut conn, &answer);
            if shutdown {
                return true;
            }
        }
    }

    /// The containers' `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`, in the work
    /// directory, from the policy's host name and what the host says of the network (`net.json`:
    /// the group's address and the host's resolvers; none: loopback only). A policy without a
    /// host name gets the host's name for the group.
    fn make_group_files(&self) -> Result<oci::GroupFiles, GroupFilesError> {
        let io = Path::new(coffer_proto::IO_DIR).join(coffer_proto::GROUP_FILE);
        let net: coffer_proto::GroupNet = match std::fs::read(&io) {
            Ok(b) if b.len() <= 2 * coffer_proto::MAX_RESOLV_CONF => {
                serde_json::from_slice(&b).map_err(GroupFilesError::Parse)?
            }
            Ok(_) => return Err(GroupFilesError::TooLarge),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(GroupFilesError::Read(e)),
        };
        let name = match &self.hostname {
            Some(h) => h.clone(),
            None if coffer_policy::is_dns_label(&net.name) => {
                nix::unistd::sethostname(&net.name).map_err(GroupFilesError::Hostname)?;
                net.name.clone()
            }
            None => "localhost".to_string(),
        };
        if net.resolv_conf.len() > coffer_proto::MAX_RESOLV_CONF || net.resolv_conf.contains('\0') {
            return Err(GroupFilesError::ResolvConf);
        }
        let own = match net.address {
            Some(a) => a.to_string(),
            None => "127.0.1.1".to_string(),
        };
        let dir = self.work.join("etc");
        std::fs::create_dir_all(&dir).map_err(|source| GroupFilesError::Write {
            what: format!("mkdir {}", dir.display()),
            source,
        })?;
        let files = oci::GroupFiles {
            hosts: dir.join("hosts"),
            hostname: dir.join("hostname"),
            resolv_conf: dir.join("resolv.conf"),
        };
        for (path, text) in [
            (
                &files.hosts,
                format!(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{name}\n"
                ),
            ),
            (&files.hostname, format!("{name}\n")),
            (&files.resolv_conf, net.resolv_conf.clone()),
        ] {
            std::fs::write(path, text).map_err(|source| GroupFilesError::Write {
                what: format!("writing {}", path.display()),
                source,
            })?;
        }
        Ok(files)
    }

    /// Whether the policy names `volume` as an encrypted volume.
    fn is_encrypted(&self, volume: &str) -> bool {
        self.encrypted.iter().any(|e| e.name == volume)
    }

    fn ask(&self, input: Input<'_>) -> Result<coffer_policy::Decision, Failure> {
        lock(&self.state).enforcer.ask(&input).map_err(failure)
    }

    /// Measure the layer image the host placed, ask the policy, mount it read-only. On any
    /// failure the policy state forgets the device again, so no overlay counts a layer that is
    /// not there.
    fn mount_layer(&self, target: &str, image: &str) -> Result<reply::LayerMounted, Failure> {
        let layers_root = self.work.join("layers");
        let name = target
            .strip_prefix(&format!("{}/", layers_root.display()))
            .unwrap_or("");
        if !safe_id(name) {
            return failed(format!(
                "layer target must be {}/<name>",
                layers_root.display()
            ));
        }
        if !safe_name(image) {
            return failed(format!(
                "invalid layer image name '{}'",
                image.escape_debug()
            ));
        }
        {
            let mut st = lock(&self.state);
            if st.layers.iter().any(|l| l == Path::new(target)) || !st.pending.insert(target.into())
            {
                return failed(format!(
                    "layer {target} is already mounted or being mounted"
                ));
            }
        }
        let result = if self.layer_disks {
            self.place_layer_disk(target, image)
        } else {
            let path = PathBuf::from(coffer_proto::IO_DIR)
                .join("layers")
                .join(image);
            self.place_layer(target, &layers_root, &path)
        };
        lock(&self.state).pending.remove(target);
        result
    }

    fn place_layer(
        &self,
        target: &str,
        layers_root: &Path,
        image: &Path,
    ) -> Result<reply::LayerMounted, Failure> {
        let opened =
            layer_image::open(image).and_then(|f| layer_image::measure_file(&f).map(|m| (f, m)));
        let (file, measured) = match opened {
            Ok(x) => x,
            Err(e) => return failed(format!("layer {target}: {e}")),
        };
        let device_hash = hex::encode(measured.root);
        let decision = self.ask(Input::MountDevice(input::MountDevice {
            target,
            device_hash: &device_hash,
        }))?;
        if !decision.allowed {
            return denied(Point::MountDevice.name(), decision.reason);
        }
        let mounted = std::fs::create_dir_all(target)
            .map_err(|e| format!("{}: {e}", layers_root.display()))
            .and_then(|()| Ok(layer_image::mount(&file, measured.size, Path::new(target))?));
        match mounted {
            Ok(()) => {
                lock(&self.state).layers.push(PathBuf::from(target));
                Ok(reply::LayerMounted { device_hash })
            }
            Err(e) => {
                let _ = std::fs::remove_dir(target);
                lock(&self.state).enforcer.forget("devices", target);
                failed(format!("layer {target} not mounted: {e}"))
            }
        }
    }

    /// The VM path: the layer is the block device whose virtio serial is `serial`, an ext4 image
    /// with its hash tree appended. The root is read from the device's own top hash block and
    /// must be one the policy allows; dm-verity then checks every block read against it, so what
    /// the container reads is what the policy measured, or an I/O error.
    fn place_layer_disk(&self, target: &str, serial: &str) -> Result<reply::LayerMounted, Failure> {
        let found = layer_image::disk_by_serial(serial)
            .and_then(|dev| layer_image::disk_root(&dev).map(|m| (dev, m)));
        let (dev, measured) = match found {
            Ok(x) => x,
            Err(e) => return failed(format!("layer {target}: {e}")),
        };
        let device_hash = hex::encode(measured.root);
        let decision = self.ask(Input::MountDevice(input::MountDevice {
            target,
            device_hash: &device_hash,
        }))?;
        if !decision.allowed {
            return denied(Point::MountDevice.name(), decision.reason);
        }
        let dm_name = format!("coffer-{serial}");
        let mounted = std::fs::create_dir_all(target)
            .map_err(|e| format!("{target}: {e}"))
            .and_then(|()| {
                Ok(layer_image::mount_verity(
                    &dev,
                    &dm_name,
                    &measured,
                    Path::new(target),
                )?)
            });
        match mounted {
            Ok(()) => {
                lock(&self.state).layers.push(PathBuf::from(target));
                Ok(reply::LayerMounted { device_hash })
            }
            Err(e) => {
                let _ = std::fs::remove_dir(target);
                lock(&self.state).enforcer.forget("devices", target);
                failed(format!("layer {target} not mounted: {e}"))
            }
        }
    }

    fn mount_overlay(&self, id: &str, layer_paths: &[String]) -> Result<reply::Done, Failure> {
        if !safe_id(id) {
            return failed("invalid container id");
        }
        let dir = self.work.join("containers").join(id);
        let rootfs = dir.join("rootfs");
        let target = rootfs.to_string_lossy();
        let input = Input::MountOverlay(input::MountOverlay {
            container_id: id,
            layer_paths,
            target: &target,
        });
        // A layer the policy already counts may still be being mounted: never overlay it
        // half-done. (A layer that failed is forgotten by the policy state, which then denies the
        // overlay.) One lock for both, so no layer can be approved between the check and the
        // decision.
        let d = {
            let mut st = lock(&self.state);
            if let Some(l) = layer_paths.iter().find(|l| st.pending.contains(l.as_str())) {
                return failed(format!("layer {l} is still being mounted"));
            }
            st.enforcer.ask(&input).map_err(failure)?
        };
        if !d.allowed {
            return denied(Point::MountOverlay.name(), d.reason);
        }
        let scratch = dir.join("scratch");
        match self.ask(Input::ScratchMount(input::ScratchMount {
            target: &scratch.to_string_lossy(),
            encrypted: false,
        })) {
            Ok(d) if d.allowed => {}
            Ok(d) => return denied(Point::ScratchMount.name(), d.reason),
            Err(e) => return Err(e),
        }
        let (upper, work) = (scratch.join("upper"), scratch.join("work"));
        for p in [&rootfs, &upper, &work] {
            if let Err(e) = std::fs::create_dir_all(p) {
                return failed(format!("mkdir {}: {e}", p.display()));
            }
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            layer_paths.join(":"),
            upper.display(),
            work.display()
        );
        if let Err(e) = nix::mount::mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        ) {
            return failed(format!("mounting the overlay: {e}"));
        }
        lock(&self.state).overlays.insert(id.to_string(), rootfs);
        Ok(reply::Done {})
    }

    fn create(
        &self,
        id: &str,
        p: &ProcessSpec,
        volumes: &[VolumeSpec],
    ) -> Result<reply::Created, Failure> {
        if !safe_id(id) {
            return failed("invalid container id");
        }
        // Volume names are the Pod's, DNS labels: never one of the agent's own entries under
        // `volumes/` (`.NAME.block`, `.NAME.verity`), nor a path.
        if let Some(v) = volumes
            .iter()
            .find(|v| !coffer_policy::is_dns_label(&v.name))
        {
            return failed(format!("invalid volume name '{}'", v.name.escape_debug()));
        }
        let by_number = |id: u32| input::IdName {
            id: id.to_string(),
            name: String::new(),
        };
        let input = Input::CreateContainer(Box::new(input::CreateContainer {
            container_id: id,
            arg_list: &p.args,
            env_list: &p.env,
            working_dir: &p.cwd,
            mounts: volumes
                .iter()
                .map(|v| input::Mount {
                    destination: &v.destination,
                    source: coffer_policy::volume_source(&v.name, self.is_encrypted(&v.name)),
                    options: vec!["rbind", "rshared", if v.read_only { "ro" } else { "rw" }],
                    kind: "bind",
                })
                .collect(),
            privileged: false,
            no_new_privileges: p.no_new_privileges,
            user: by_number(p.uid),
            umask: "0022",
            read_only_root_filesystem: p.read_only_rootfs,
            groups: std::iter::once(p.gid)
                .chain(p.additional_gids.iter().copied())
                .map(by_number)
                .collect(),
            capabilities: input::Capabilities {
                bounding: &p.capabilities,
                effective: &p.capabilities,
                permitted: &p.capabilities,
                inheritable: &[],
                ambient: &[],
            },
            resources: input::Resources {
                memory_limit: p.memory_limit,
                cpu_millis: p.cpu_millis,
            },
        }));
        let Some(rootfs) = lock(&self.state).overlays.get(id).cloned() else {
            // Still ask the policy, so the denial carries its reason.
            return match self.ask(input) {
                Ok(d) => denied(Point::CreateContainer.name(), d.reason),
                Err(e) => Err(e),
            };
        };
        let d = self.ask(input)?;
        if !d.allowed {
            return denied(Point::CreateContainer.name(), d.reason);
        }
        // Run what the policy returned: its env_list and caps_list, not the request's.
        let env = match decided_env(&d.result, &p.env) {
            Ok(e) => e,
            Err(e) => return failed(e),
        };
        let caps = match decided_caps(&d.result, &p.capabilities) {
            Ok(c) => c,
            Err(e) => return failed(e),
        };
        let allow_stdio = d.result["allow_stdio_access"].as_bool().unwrap_or(false);
        let bundle = self.work.join("containers").join(id);
        // Encrypted volumes open only with a key released to this TEE; otherwise they stay closed
        // and the container does not start.
        for v in volumes {
            if let Err(e) = self.open_encrypted(&v.name) {
                return failed(format!("volume '{}' stays closed: {e}", v.name));
            }
        }
        let mut vols = Vec::new();
        for v in volumes {
            let src = self.work.join("volumes").join(&v.name);
            if let Err(e) = std::fs::create_dir_all(&src) {
                return failed(format!("volume {}: {e}", v.name));
            }
            let encrypted = self.is_encrypted(&v.name);
            if let (Some(g), false) = (self.fs_group, encrypted) {
                if let Err(e) = oci::own_by_fs_group(&src, g) {
                    return failed(format!("volume {}: fsGroup {g}: {e}", v.name));
                }
            }
            vols.push(oci::VolumeBind {
                source: src,
                destination: v.destination.clone(),
                read_only: v.read_only,
                // An encrypted volume's file system was made outside the TEE.
                from_outside: encrypted,
            });
        }
        let cgroup = format!("/coffer/{}-{id}", self.cgroup_prefix);
        let files = match self.group_files.get_or_init(|| self.make_group_files()) {
            Ok(f) => f,
            Err(e) => return failed(e),
        };
        let spec = match oci::spec(&rootfs, p, &env, &caps, &vols, &cgroup, Some(files)) {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        if let Err(e) = spec.save(bundle.join("config.json")) {
            return failed(format!("writing the OCI spec: {e}"));
        }
        if let Some(up) = self
            .loopback
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = up.join();
        }
        let pid_file = bundle.join("runc.pid");
        if let Err(e) = std::fs::remove_file(&pid_file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return failed(format!("removing {}: {e}", pid_file.display()));
            }
        }
        let child = Command::new(&self.runc)
            .args([
                "--root",
                &self.work.join("runc").display().to_string(),
                "run",
                "--bundle",
            ])
            .arg(&bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--")
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => return failed(format!("starting runc: {e}")),
        };
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        for (stream, name) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
                "stdout",
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
                "stderr",
            ),
        ] {
            if let Some(s) = stream {
                let out = output.clone();
                std::thread::spawn(move || collect_output(s, name, &out));
            }
        }
        if let Err(e) = wait_started(&mut child, &pid_file) {
            let _ = child.kill();
            let _ = child.wait();
            return failed(e);
        }
        lock(&self.state).containers.insert(
            id.to_string(),
            ContainerState {
                bundle,
                rootfs,
                allow_stdio,
                output,
                child: Some(child),
            },
        );
        Ok(reply::Created {
            env_list: env,
            allow_stdio_access: allow_stdio,
        })
    }

    /// Release the volume's key (as the policy names it), unlock the LUKS2 image, mount it
    /// read-only. A no-op for volumes that are not encrypted or already open.
    fn open_encrypted(&self, name: &str) -> Result<(), VolumeError> {
        let Some(policy) = self.encrypted.iter().find(|v| v.name == name) else {
            return Ok(());
        };
        let read_only = &policy.read_only;
        if lock(&self.state).opened.contains_key(name) {
            return Ok(());
        }
        let broker = crate::skr::Broker::from_policy(&policy.broker)?;
        let egress = PathBuf::from(coffer_proto::IO_DIR).join("egress.sock");
        let jwk = crate::skr::release_jwk(&self.sp, &egress, &broker, &policy.key)
            .map_err(|(_, m)| VolumeError::Release(m))?;
        let jwk: Value = serde_json::from_str(&jwk).map_err(VolumeError::NotJwk)?;
        let k = volume_key(&jwk, &policy.salt, &policy.label)?;
        let image = PathBuf::from(coffer_proto::IO_DIR)
            .join("volumes")
            .join(format!("{name}.img"));
        // The volume is decrypted on demand through a FUSE block file, never copied out.
        // A remote image (the launcher leaves its URL): Range requests through the egress relay.
        let url = std::fs::read_to_string(image.with_extension("url")).ok();
        let mut disk = None;
        let vol = match url.as_deref().map(str::trim) {
            Some(url) => {
                let hostport = coffer_encfs::source::url_host_port(url).map_err(|source| {
                    VolumeError::Remote {
                        url: url.to_string(),
                        source,
                    }
                })?;
                let connect: coffer_encfs::source::Connect = Box::new(move || {
                    let mut s = UnixStream::connect(&egress)?;
                    s.write_all(format!("CONNECT {hostport}\n").as_bytes())?;
                    Ok(Box::new(s) as Box<dyn coffer_encfs::source::Stream>)
                });
                let src = coffer_encfs::source::HttpSource::new(url, Some(connect)).map_err(
                    |source| VolumeError::Remote {
                        url: url.to_string(),
                        source,
                    },
                )?;
                coffer_encfs::block::Volume::open_source(Box::new(src), &k, false)
            }
            None => match self.volume_disks.get(name) {
                Some(serial) => {
                    let dev = layer_image::disk_by_serial(serial)?;
                    let vol = coffer_encfs::block::Volume::open(&dev, &k, !*read_only);
                    disk = Some(dev);
                    vol
                }
                None => coffer_encfs::block::Volume::open(&image, &k, !*read_only),
            },
        }?;
        let start = vol.read_at(0, 2048)?;
        match coffer_encfs::ext4_size(&start) {
            Some(fs) if fs <= vol.size() => {}
            Some(fs) => {
                return Err(VolumeError::Truncated {
                    fs,
                    size: vol.size(),
                })
            }
            None => return Err(VolumeError::NotExt4),
        }
        // Pinned content: the whole plaintext file system is read and hashed once, here, and
        // every later read is checked against those hashes (dm-verity in a VM, the FUSE block
        // file otherwise), so the host cannot change the image after this check.
        let mut vol = vol;
        let pinned = if policy.verity_root.is_empty() {
            None
        } else {
            if !*read_only {
                return Err(VolumeError::PinnedWritable);
            }
            let fs = coffer_encfs::ext4_size(&start).unwrap_or(0).div_ceil(4096) * 4096;
            let level0 = vol
                .plaintext_hashes(fs)
                .map_err(VolumeError::ReadPlaintext)?;
            let root =
                coffer_verity::root_from_level0(&level0).map_err(VolumeError::HashPlaintext)?;
            let pinned = hex::decode(&policy.verity_root).map_err(|_| VolumeError::PinNotHex)?;
            if pinned.len() != 32 || !openssl::memcmp::eq(&root, &pinned[..]) {
                return Err(VolumeError::NotPinned {
                    found: hex::encode(root),
                    pinned: policy.verity_root.clone(),
                });
            }
            if disk.is_none() {
                vol.pin(level0)?;
                None
            } else {
                Some((level0, root))
            }
        };
        let dir = self.work.join("volumes").join(name);
        if let Some(dev) = disk {
            // A block device in a VM: the guest kernel's dm-crypt with the key unlocked above.
            std::fs::create_dir_all(&dir).map_err(vol_io(format!("mkdir {}", dir.display())))?;
            let dm_name = format!("coffer-vol-{name}");
            let (sectors, params) = vol.dm_crypt(&dev.to_string_lossy());
            let mut mapped = crate::dm::create(
                &dm_name,
                &crate::dm::Target {
                    sectors,
                    kind: "crypt",
                    params,
                    read_only: *read_only,
                },
            )?;
            drop(vol);
            let mut verity_name = None;
            if let Some((level0, root)) = &pinned {
                let v = format!("{dm_name}-verity");
                match self.verity_over(&mapped, &v, name, level0, root) {
                    Ok(dev) => {
                        mapped = dev;
                        verity_name = Some(v);
                    }
                    Err(e) => {
                        let _ = crate::dm::remove(&dm_name);
                        return Err(e);
                    }
                }
            }
            // The file system comes from outside the TEE: no setuid binaries, no devices.
            let mut flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
            if *read_only {
                flags |= nix::mount::MsFlags::MS_RDONLY;
            }
            let mounted = nix::mount::mount(
                Some(&mapped),
                &dir,
                Some("ext4"),
                flags,
                read_only.then_some("noload"),
            );
            if let Err(e) = mounted {
                if let Some(v) = verity_name {
                    let _ = crate::dm::remove(&v);
                }
                let _ = crate::dm::remove(&dm_name);
                return Err(VolumeError::Mount {
                    dev: mapped.display().to_string(),
                    source: e,
                });
            }
            lock(&self.state).opened.insert(name.to_string(), dir);
            return Ok(());
        }
        let block_dir = self.work.join("volumes").join(format!(".{name}.block"));
        for d in [&block_dir, &dir] {
            std::fs::create_dir_all(d).map_err(vol_io(format!("mkdir {}", d.display())))?;
        }
        let block = coffer_encfs::block::mount(vol, &block_dir)?;
        let status = Command::new("mount")
            .args([
                "-t",
                "ext4",
                "-o",
                // The file system comes from outside the TEE: no setuid binaries, no devices.
                if *read_only {
                    "loop,ro,noload,nosuid,nodev"
                } else {
                    "loop,nosuid,nodev"
                },
            ])
            .arg(&block.disk)
            .arg(&dir)
            .output()
            .map_err(vol_io("running mount"))?;
        if !status.status.success() {
            return Err(VolumeError::MountCommand(
                String::from_utf8_lossy(&status.stderr).trim().to_string(),
            ));
        }
        lock(&self.state).blocks.push(block);
        lock(&self.state).opened.insert(name.to_string(), dir);
        Ok(())
    }

    /// Map dm-verity over `data` (a decrypted volume in a VM) with a hash device the agent
    /// writes itself from the `level0` hashes it measured: a file in the guest's own memory,
    /// attached read-only to a loop device. Every block the file system reads is then checked
    /// against the pinned plaintext.
    fn verity_over(
        &self,
        data: &Path,
        dm_name: &str,
        volume: &str,
        level0: &[[u8; 32]],
        root: &[u8; 32],
    ) -> Result<PathBuf, VolumeError> {
        let tree_path = self.work.join("volumes").join(format!(".{volume}.verity"));
        let mut tree = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&tree_path)
            .map_err(vol_io(tree_path.display()))?;
        let _ = std::fs::remove_file(&tree_path);
        let written = coffer_verity::write_hash_device(&mut tree, level0, [0; 16])
            .map_err(VolumeError::Tree)?;
        if written.root != *root {
            return Err(VolumeError::TreeRoot);
        }
        // The mapping holds the loop device; closing it detaches it once unmapped (autoclear).
        let (_dev, hash) = crate::loopdev::attach_read_only(&tree, written.bytes)?;
        let blocks = level0.len() as u64;
        let params = crate::dm::verity_params(
            &data.to_string_lossy(),
            &hash.to_string_lossy(),
            blocks,
            1,
            root,
        );
        Ok(crate::dm::create(
            dm_name,
            &crate::dm::Target {
                sectors: blocks * 8,
                kind: "verity",
                params,
                read_only: true,
            },
        )?)
    }

    fn attach<W: Write>(&self, id: &str, conn: &mut W) {
        let found = {
            let mut st = lock(&self.state);
            st.containers
                .get_mut(id)
                .map(|c| (c.allow_stdio, c.output.clone(), c.child.take()))
        };
        let Some((allow, output, child)) = found else {
            let _ = write_frame(
                conn,
                &AttachFrame::Failed(failure(format!("no container '{id}'"))),
            );
            return;
        };
        if let Some(mut child) = child {
            // The first attach also reaps the runtime process and records the exit status.
            let out = output.clone();
            std::thread::spawn(move || {
                let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
                std::thread::sleep(std::time::Duration::from_millis(20));
                let (m, cv) = &*out;
                m.lock().unwrap_or_else(|p| p.into_inner()).exit = Some(code);
                cv.notify_all();
            });
        }
        if !allow {
            let _ = write_frame(
                conn,
                &AttachFrame::NoStdio {
                    reason: "stdio access is not allowed by the policy (allow_stdio_access)".into(),
                },
            );
        }
        let (m, cv) = &*output;
        let mut sent = 0;
        loop {
            let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
            while g.end() == sent && g.exit.is_none() {
                g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            let (new, dropped) = g.since(sent);
            let exit = g.exit;
            sent = g.end();
            drop(g);
            if allow {
                if dropped > 0 {
                    let note = format!("[coffer: {dropped} earlier lines of output were dropped]");
                    let frame = AttachFrame::Output {
                        stream: "stderr".into(),
                        data: note,
                    };
                    if write_frame(conn, &frame).is_err() {
                        return;
                    }
                }
                for (stream, data) in new {
                    let frame = AttachFrame::Output {
                        stream: stream.to_string(),
                        data: data.to_string(),
                    };
                    if write_frame(conn, &frame).is_err() {
                        return;
                    }
                }
            }
            if let Some(code) = exit {
                let _ = write_frame(conn, &AttachFrame::Exit { code });
                return;
            }
        }
    }

    fn exec(&self, id: &str, p: &ProcessSpec) -> Result<reply::Executed, Failure> {
        if !safe_id(id) {
            return failed("invalid container id");
        }
        let d = self.ask(Input::ExecInContainer(input::ExecInContainer {
            container_id: id,
            arg_list: &p.args,
            env_list: &p.env,
            working_dir: &p.cwd,
        }))?;
        if !d.allowed {
            return denied(Point::ExecInContainer.name(), d.reason);
        }
        let env = match decided_env(&d.result, &p.env) {
            Ok(e) => e,
            Err(e) => return failed(e),
        };
        let mut cmd = Command::new(&self.runc);
        cmd.args([
            "--root",
            &self.work.join("runc").display().to_string(),
            "exec",
            "--cwd",
            &p.cwd,
        ]);
        for e in &env {
            cmd.args(["--env", e]);
        }
        // `--`: neither the id nor the arguments can be read as runc's own flags.
        cmd.arg("--").arg(id).args(&p.args);
        match cmd.stdin(Stdio::null()).output() {
            Ok(out) => {
                let stdio = d.result["allow_stdio_access"].as_bool().unwrap_or(false);
                let text = |b: &[u8]| {
                    if stdio {
                        String::from_utf8_lossy(b).into_owned()
                    } else {
                        String::new()
                    }
                };
                Ok(reply::Executed {
                    exit: out.status.code().unwrap_or(-1),
                    stdout: text(&out.stdout),
                    stderr: text(&out.stderr),
                })
            }
            Err(e) => failed(format!("runc exec: {e}")),
        }
    }

    fn signal(&self, id: &str, signal: i32) -> Result<reply::Done, Failure> {
        if !safe_id(id) {
            return failed("invalid container id");
        }
        let d = self.ask(Input::SignalContainerProcess(
            input::SignalContainerProcess {
                container_id: id,
                signal,
                is_init_process: true,
                arg_list: &[],
            },
        ))?;
        if !d.allowed {
            return denied(Point::SignalContainerProcess.name(), d.reason);
        }
        self.runc(&["kill", "--", id, &signal.to_string()])
    }

    /// Remove an exited container so that it can be created again: the policy's
    /// `shutdown_container`, `unmount_overlay` and `scratch_unmount` each decide (and forget it),
    /// then its runtime state, overlay and scratch go.
    fn remove_container(&self, id: &str) -> Result<reply::Done, Failure> {
        if !safe_id(id) {
            return failed("invalid container id");
        }
        let exited = lock(&self.state).containers.get(id).map(|c| {
            c.child.is_none() && c.output.0.lock().map(|o| o.exit.is_some()).unwrap_or(false)
        });
        match exited {
            None => return failed(format!("no container '{id}'")),
            Some(false) => return failed(format!("container '{id}' has not exited")),
            Some(true) => {}
        }
        let dir = self.work.join("containers").join(id);
        let (rootfs, scratch) = (dir.join("rootfs"), dir.join("scratch"));
        let (rootfs_s, scratch_s) = (rootfs.to_string_lossy(), scratch.to_string_lossy());
        for input in [
            Input::ShutdownContainer(input::ContainerId { container_id: id }),
            Input::UnmountOverlay(input::UnmountTarget {
                unmount_target: &rootfs_s,
            }),
            Input::ScratchUnmount(input::UnmountTarget {
                unmount_target: &scratch_s,
            }),
        ] {
            let point = input.point();
            match self.ask(input) {
                Ok(d) if d.allowed => {}
                Ok(d) => return denied(point.name(), d.reason),
                Err(e) => return Err(e),
            }
        }
        if let Err(e) = self.runc(&["delete", "--force", "--", id]) {
            if !e.to_string().contains("does not exist") {
                return Err(e);
            }
        }
        let mut st = lock(&self.state);
        st.containers.remove(id);
        st.overlays.remove(id);
        drop(st);
        if let Err(e) = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
            return failed(format!("unmounting {}: {e}", rootfs.display()));
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(reply::Done {}),
            Err(e) => failed(format!("removing {}: {e}", dir.display())),
        }
    }

    fn runc(&self, args: &[&str]) -> Result<reply::Done, Failure> {
        match Command::new(&self.runc)
            .arg("--root")
            .arg(self.work.join("runc"))
            .args(args)
            .output()
        {
            Ok(o) if o.status.success() => Ok(reply::Done {}),
            Ok(o) => failed(format!(
                "runc {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => failed(format!("runc: {e}")),
        }
    }

    fn properties(&self) -> Result<reply::Properties, Failure> {
        match self.ask(Input::GetProperties(input::NoInput {})) {
            Ok(d) if d.allowed => {}
            Ok(d) => return denied(Point::GetProperties.name(), d.reason),
            Err(e) => return Err(e),
        }
        let st = lock(&self.state);
        let containers = st
            .containers
            .iter()
            .map(|(id, c)| reply::ContainerInfo {
                id: id.clone(),
                exit: c.output.0.lock().map(|o| o.exit).unwrap_or(None),
                rootfs: c.rootfs.to_string_lossy().into_owned(),
            })
            .collect();
        Ok(reply::Properties {
            containers,
            report: self.report_summary.clone(),
        })
    }

    /// Stop every container, then unmount everything; true when the group is to end. Only when
    /// the policy allows stopping each container: otherwise nothing is stopped (the host can still
    /// end the whole group, which it always could; it cannot make the agent stop what the policy
    /// keeps running).
    fn shutdown(&self) -> (Result<reply::ShutDown, Failure>, bool) {
        let ids: Vec<String> = lock(&self.state).containers.keys().cloned().collect();
        for id in &ids {
            match self.ask(Input::ShutdownContainer(input::ContainerId {
                container_id: id,
            })) {
                Ok(d) if d.allowed => {}
                Ok(d) => return (denied(Point::ShutdownContainer.name(), d.reason), false),
                Err(e) => return (Err(e), false),
            }
        }
        let mut problems = Vec::new();
        for id in &ids {
            let _ = self.runc(&["kill", "--", id, "KILL"]);
            let child = lock(&self.state)
                .containers
                .get_mut(id)
                .and_then(|c| c.child.take());
            if let Some(mut c) = child {
                let _ = c.wait();
            }
            if let Err(e) = self.runc(&["delete", "--force", "--", id]) {
                if !e.to_string().contains("does not exist") {
                    problems.push(format!("{id}: {e}"));
                }
            }
        }
        let st = lock(&self.state);
        for dir in st.opened.values() {
            // A plain unmount first, so a read-write volume is flushed into the image before its
            // FUSE block file goes away; detach only if something still holds it.
            if nix::mount::umount(dir).is_err() {
                let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        drop(st);
        // Unmount the FUSE block files once nothing uses them.
        lock(&self.state).blocks.clear();
        let st = lock(&self.state);
        for (_, rootfs) in st.overlays.iter() {
            let _ = nix::mount::umount2(rootfs, nix::mount::MntFlags::MNT_DETACH);
        }
        // Layer images: their loop devices go with the last unmount (autoclear).
        for layer in &st.layers {
            let _ = nix::mount::umount2(layer, nix::mount::MntFlags::MNT_DETACH);
        }
        for c in st.containers.values() {
            let _ = std::fs::remove_dir_all(&c.bundle);
        }
        // runc removes each container's cgroup, but a killed process takes a moment to leave
        // it: remove what is left of this group's own (for up to a second), then the parent if
        // no other group uses it.
        let own = format!("{}-", self.cgroup_prefix);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                let parent = c.path().join("coffer");
                loop {
                    let left: Vec<PathBuf> = std::fs::read_dir(&parent)
                        .map(|d| {
                            d.flatten()
                                .filter(|e| e.file_name().to_string_lossy().starts_with(&own))
                                .map(|e| e.path())
                                .collect()
                        })
                        .unwrap_or_default();
                    let removed = left.iter().all(|p| std::fs::remove_dir(p).is_ok());
                    if removed || std::time::Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let _ = std::fs::remove_dir(&parent);
            }
        }
        (Ok(reply::ShutDown { problems }), true)
    }
}

/// The environment a decision grants: its `env_list`, or the request's when the rule returns none
/// (a rule that allows everything). A malformed list is an error, never an empty environment.
fn decided_env(result: &Value, requested: &[String]) -> Result<Vec<String>, CreateError> {
    match result.get("env_list") {
        None | Some(Value::Null) => Ok(requested.to_vec()),
        Some(v) => serde_json::from_value(v.clone()).map_err(CreateError::EnvList),
    }
}

/// The capability sets a decision grants: its `caps_list` (each of the five as decided; a kind
/// it leaves out is empty), or the request's when the rule returns none.
fn decided_caps(result: &Value, requested: &[String]) -> Result<oci::CapsList, CreateError> {
    match result.get("caps_list") {
        None | Some(Value::Null) => Ok(oci::CapsList {
            bounding: requested.to_vec(),
            effective: requested.to_vec(),
            permitted: requested.to_vec(),
            ..Default::default()
        }),
        Some(v) => serde_json::from_value(v.clone()).map_err(CreateError::CapsList),
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = openssl::rand::rand_bytes(&mut b);
    u64::from_le_bytes(b)
}

/// Layer images: an ext4 file system as hcsshim's tar2ext4 writes it, possibly followed by its
/// dm-verity tree. Its measurement is the dm-verity root of the file system's own bytes, whose
/// length the superblock states: a stream with the same root but another length (e.g. a block of
/// the hash tree, whose root is the same) is not an ext4 image of that length and is refused.
///
/// In the namespace backend the image is a file the host placed and the agent loop-mounts after
/// hashing it: the host, which shares the kernel, could still change the file afterwards. This
/// backend does not claim otherwise; a VM reads layers through dm-verity, which checks every
/// block as it is read.
mod layer_image {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::path::Path;

    /// Largest layer image (tar2ext4's default maximum disk size for layers).
    const MAX_SIZE: u64 = 128 << 30;

    /// Why a layer image or disk was not measured or mounted.
    #[derive(Debug, thiserror::Error)]
    pub(super) enum LayerError {
        #[error("not an ext4 image (no superblock magic)")]
        NoMagic,
        #[error("not an ext4 image (shorter than its superblock)")]
        Short,
        #[error("ext4 block size 1024 << {0} is not supported")]
        BlockSize(u32),
        #[error("ext4 image of {blocks} blocks of {block_size} bytes: not a layer size")]
        Size { blocks: u64, block_size: u64 },
        #[error("the image is truncated: its file system needs {size} bytes, the file has {len}")]
        Truncated { size: u64, len: u64 },
        #[error(
            "the verified file system is {verified} bytes, not the {covered} its table covers"
        )]
        VerifiedSize { verified: u64, covered: u64 },
        #[error("no layer disk with serial '{0}'")]
        NoDisk(String),
        #[error("{what}: {source}")]
        Io {
            what: String,
            source: std::io::Error,
        },
        #[error("{what}: {source}")]
        Mount { what: String, source: nix::Error },
        #[error("hashing the layer: {0}")]
        Hash(#[source] coffer_verity::VerityError),
        #[error(transparent)]
        Device(#[from] crate::DeviceError),
    }

    impl From<LayerError> for String {
        fn from(e: LayerError) -> String {
            e.to_string()
        }
    }

    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LayerError {
        let what = what.into();
        move |source| LayerError::Io { what, source }
    }

    /// What was measured.
    pub(super) struct Measured {
        pub(super) root: [u8; 32],
        /// Bytes of the file system.
        pub(super) size: u64,
    }

    /// The file system size an ext4 superblock (the 1024 bytes at offset 1024) states.
    pub(super) fn ext4_size(sb: &[u8; 1024]) -> Result<u64, LayerError> {
        let le32 = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
        if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
            return Err(LayerError::NoMagic);
        }
        let log = le32(0x18);
        if log > 6 {
            return Err(LayerError::BlockSize(log));
        }
        let incompat_64bit = le32(0x60) & 0x80 != 0;
        let blocks = u64::from(le32(0x04))
            | if incompat_64bit {
                u64::from(le32(0x150)) << 32
            } else {
                0
            };
        let size = blocks
            .checked_mul(1024u64 << log)
            .filter(|s| *s > 0 && *s <= MAX_SIZE && s % 4096 == 0)
            .ok_or(LayerError::Size {
                blocks,
                block_size: 1024u64 << log,
            })?;
        Ok(size)
    }

    /// Hash the image's file system bytes (length from its superblock).
    #[cfg(test)]
    pub(super) fn measure(path: &Path) -> Result<Measured, LayerError> {
        measure_file(&open(path)?)
    }

    /// Open a layer image the host placed (never through a symbolic link).
    pub(super) fn open(path: &Path) -> Result<std::fs::File, LayerError> {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .map_err(io(path.display().to_string()))
    }

    /// [`measure`] an image already open: the one file that is then mounted, so the host cannot
    /// put another in its place between the measurement and the mount.
    pub(super) fn measure_file(mut f: &std::fs::File) -> Result<Measured, LayerError> {
        let len = f.metadata().map_err(io("the layer image"))?.len();
        let mut sb = [0u8; 1024];
        f.seek(SeekFrom::Start(1024))
            .and_then(|_| f.read_exact(&mut sb))
            .map_err(|_| LayerError::Short)?;
        let size = ext4_size(&sb)?;
        if size > len {
            return Err(LayerError::Truncated { size, len });
        }
        f.seek(SeekFrom::Start(0)).map_err(io("the layer image"))?;
        let root =
            coffer_verity::root_hash(std::io::BufReader::with_capacity(1 << 20, f.take(size)))
                .map_err(LayerError::Hash)?;
        Ok(Measured { root, size })
    }

    /// The block device (`/dev/vdX`) whose virtio serial is `serial`.
    pub(super) fn disk_by_serial(serial: &str) -> Result<std::path::PathBuf, LayerError> {
        let blocks = std::fs::read_dir("/sys/block").map_err(io("/sys/block"))?;
        for b in blocks.flatten() {
            let found = std::fs::read_to_string(b.path().join("serial"))
                .is_ok_and(|s| s.trim_end_matches(['\n', '\0']) == serial);
            if found {
                return Ok(Path::new("/dev").join(b.file_name()));
            }
        }
        Err(LayerError::NoDisk(serial.to_string()))
    }

    fn read_at(f: &std::fs::File, at: u64, buf: &mut [u8], what: &str) -> Result<(), LayerError> {
        use std::os::unix::fs::FileExt as _;
        f.read_exact_at(buf, at)
            .map_err(io(format!("{what}: reading {} bytes at {at}", buf.len())))
    }

    /// The layer's size from its (not yet verified) superblock and its root from the top hash
    /// block, which follows the data and one block of verity superblock. Nothing here is trusted
    /// yet: the root is checked against the policy, and [`mount_verity`] then checks the size.
    pub(super) fn disk_root(dev: &Path) -> Result<Measured, LayerError> {
        let f = std::fs::File::open(dev).map_err(io(dev.display().to_string()))?;
        let mut sb = [0u8; 1024];
        read_at(&f, 1024, &mut sb, "the superblock")?;
        let size = ext4_size(&sb)?;
        let mut top = vec![0u8; 4096];
        read_at(&f, size + 4096, &mut top, "the hash tree")?;
        let mut h = openssl::sha::Sha256::new();
        h.update(&[0u8; 32]);
        h.update(&top);
        Ok(Measured {
            root: h.finish(),
            size,
        })
    }

    /// Map `dev` through dm-verity with the approved root, check that the verified superblock
    /// states the size the table was built for (a shorter layer under the same root is refused),
    /// and mount it read-only.
    pub(super) fn mount_verity(
        dev: &Path,
        dm_name: &str,
        m: &Measured,
        target: &Path,
    ) -> Result<(), LayerError> {
        let blocks = m.size / 4096;
        let dev = dev.to_string_lossy();
        let params = crate::dm::verity_params(&dev, &dev, blocks, blocks + 1, &m.root);
        let mapped = crate::dm::create(
            dm_name,
            &crate::dm::Target {
                sectors: m.size / 512,
                kind: "verity",
                params,
                read_only: true,
            },
        )?;
        let checked = std::fs::File::open(&mapped)
            .map_err(io(mapped.display().to_string()))
            .and_then(|f| {
                let mut sb = [0u8; 1024];
                read_at(&f, 1024, &mut sb, "the verified superblock")?;
                ext4_size(&sb)
            })
            .and_then(|verified| {
                if verified == m.size {
                    Ok(())
                } else {
                    Err(LayerError::VerifiedSize {
                        verified,
                        covered: m.size,
                    })
                }
            })
            .and_then(|()| {
                nix::mount::mount(
                    Some(&mapped),
                    target,
                    Some("ext4"),
                    nix::mount::MsFlags::MS_RDONLY
                        | nix::mount::MsFlags::MS_NODEV
                        | nix::mount::MsFlags::MS_NOSUID,
                    Some("noload"),
                )
                .map_err(|source| LayerError::Mount {
                    what: format!("mount {}", mapped.display()),
                    source,
                })
            });
        if let Err(e) = checked {
            let _ = crate::dm::remove(dm_name);
            return Err(e);
        }
        Ok(())
    }

    /// Loop-mount the first `size` bytes read-only (`noload`: no journal replay, nothing written).
    pub(super) fn mount(file: &std::fs::File, size: u64, target: &Path) -> Result<(), LayerError> {
        let (dev, path) = crate::loopdev::attach_read_only(file, size)?;
        // A layer holds no device node or setuid binary the container could use.
        let mounted = nix::mount::mount(
            Some(&path),
            target,
            Some("ext4"),
            nix::mount::MsFlags::MS_RDONLY
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOSUID,
            Some("noload"),
        )
        .map_err(|source| LayerError::Mount {
            what: format!("mount {} on {}", path.display(), target.display()),
            source,
        });
        // The mount holds the device now; on failure, closing it detaches it (autoclear).
        drop(dev);
        mounted
    }
}

/// Building the OCI runtime spec.
pub(crate) mod oci {
    use std::path::{Path, PathBuf};

    use oci_spec::runtime::{
        Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder,
        LinuxNamespaceType, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
        UserBuilder,
    };

    use coffer_proto::ProcessSpec;

    /// Why the OCI spec for a container was not made.
    #[derive(Debug, thiserror::Error)]
    pub(crate) enum SpecError {
        #[error("building the OCI spec: {0}")]
        Build(#[from] oci_spec::OciSpecError),
        #[error("unknown capability '{0}'")]
        UnknownCapability(String),
        #[error("memory limit too large")]
        MemoryLimit,
        #[error("cpu limit too large")]
        CpuLimit,
    }

    fn mnt(
        dest: &str,
        typ: &str,
        src: &str,
        opts: &[&str],
    ) -> Result<oci_spec::runtime::Mount, SpecError> {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(src)
            .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .map_err(SpecError::Build)
    }

    /// The five capability sets, as a policy decision returns them.
    #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct CapsList {
        #[serde(default)]
        pub(crate) ambient: Vec<String>,
        #[serde(default)]
        pub(crate) bounding: Vec<String>,
        #[serde(default)]
        pub(crate) effective: Vec<String>,
        #[serde(default)]
        pub(crate) inheritable: Vec<String>,
        #[serde(default)]
        pub(crate) permitted: Vec<String>,
    }

    /// `CAP_CHOWN` -> the capability; an unknown name is an error, never dropped in silence.
    pub(crate) fn cap_set(
        names: &[String],
    ) -> Result<std::collections::HashSet<Capability>, SpecError> {
        names
            .iter()
            .map(|n| {
                // One `CAP_` prefix, upper case: oci-spec itself would also take `chown` or
                // `CAP_CAP_CHOWN`, names no policy writes.
                let known = n.starts_with("CAP_")
                    && !n[4..].starts_with("CAP_")
                    && n.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
                known
                    .then(|| {
                        serde_json::from_value::<Capability>(serde_json::Value::from(n.as_str()))
                            .ok()
                    })
                    .flatten()
                    .ok_or_else(|| SpecError::UnknownCapability(n.escape_debug().to_string()))
            })
            .collect()
    }

    /// A volume bound into a container.
    pub(crate) struct VolumeBind {
        pub(crate) source: PathBuf,
        pub(crate) destination: String,
        pub(crate) read_only: bool,
        /// Content made outside the TEE: mounted nosuid, nodev.
        pub(crate) from_outside: bool,
    }

    /// Kubernetes' fsGroup ownership of a volume directory: group `gid`, group-writable, setgid
    /// (files made in it belong to the group).
    pub(crate) fn own_by_fs_group(dir: &Path, gid: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        std::os::unix::fs::chown(dir, None, Some(gid))?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        std::fs::set_permissions(
            dir,
            std::fs::Permissions::from_mode((mode & 0o7777) | 0o2070),
        )
    }

    /// The group's name-service files, bound read-only into every container.
    pub(crate) struct GroupFiles {
        pub(crate) hosts: PathBuf,
        pub(crate) hostname: PathBuf,
        pub(crate) resolv_conf: PathBuf,
    }

    /// Open files per process: containerd's 1048576 (soft and hard), or less where the host
    /// allows less: the kernel's maximum (`fs.nr_open`) and, without CAP_SYS_RESOURCE (which
    /// raising a hard limit needs), the agent's own hard limit.
    pub(crate) fn nofile_limit() -> u64 {
        const CONTAINERD: u64 = 1 << 20;
        const CAP_SYS_RESOURCE: u32 = 24;
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let mut max = read("/proc/sys/fs/nr_open")
            .trim()
            .parse::<u64>()
            .unwrap_or(CONTAINERD);
        let status = read("/proc/self/status");
        let effective = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
            .unwrap_or(0);
        if effective & (1 << CAP_SYS_RESOURCE) == 0 {
            // "Max open files            SOFT                 HARD                 files"
            let hard = read("/proc/self/limits")
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).map(str::to_string))
                .and_then(|h| h.parse::<u64>().ok());
            if let Some(h) = hard {
                max = max.min(h);
            }
        }
        max.min(CONTAINERD)
    }

    /// The spec: own mount and PID namespaces, the sandbox's network, UTS and IPC.
    pub(crate) fn spec(
        rootfs: &Path,
        p: &ProcessSpec,
        env: &[String],
        caps: &CapsList,
        volumes: &[VolumeBind],
        cgroup: &str,
        files: Option<&GroupFiles>,
    ) -> Result<Spec, SpecError> {
        let nofile = nofile_limit();
        let rlimits = vec![oci_spec::runtime::PosixRlimitBuilder::default()
            .typ(oci_spec::runtime::PosixRlimitType::RlimitNofile)
            .hard(nofile)
            .soft(nofile)
            .build()
            .map_err(SpecError::Build)?];
        let capabilities = LinuxCapabilitiesBuilder::default()
            .bounding(cap_set(&caps.bounding)?)
            .effective(cap_set(&caps.effective)?)
            .permitted(cap_set(&caps.permitted)?)
            .inheritable(cap_set(&caps.inheritable)?)
            .ambient(cap_set(&caps.ambient)?)
            .build()
            .map_err(SpecError::Build)?;
        let process = ProcessBuilder::default()
            .terminal(false)
            .args(p.args.clone())
            .env(env.to_vec())
            .cwd(p.cwd.clone())
            .user(
                UserBuilder::default()
                    .uid(p.uid)
                    .gid(p.gid)
                    .additional_gids(p.additional_gids.clone())
                    .build()
                    .map_err(SpecError::Build)?,
            )
            .capabilities(capabilities)
            .no_new_privileges(p.no_new_privileges)
            .rlimits(rlimits)
            .build()
            .map_err(SpecError::Build)?;
        let mut mounts = vec![
            mnt("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
            mnt(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            )?,
            mnt(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                ],
            )?,
            mnt(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            )?,
            mnt(
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                &["nosuid", "noexec", "nodev"],
            )?,
            mnt(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            )?,
        ];
        if let Some(f) = files {
            for (dest, src) in [
                ("/etc/hosts", &f.hosts),
                ("/etc/hostname", &f.hostname),
                ("/etc/resolv.conf", &f.resolv_conf),
            ] {
                mounts.push(mnt(
                    dest,
                    "bind",
                    &src.display().to_string(),
                    &["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec"],
                )?);
            }
        }
        for v in volumes {
            let mut opts = vec!["rbind", "rprivate", if v.read_only { "ro" } else { "rw" }];
            if v.from_outside {
                opts.extend(["nosuid", "nodev"]);
            }
            mounts.push(mnt(
                &v.destination,
                "bind",
                &v.source.display().to_string(),
                &opts,
            )?);
        }
        let namespaces = [LinuxNamespaceType::Pid, LinuxNamespaceType::Mount]
            .into_iter()
            .map(|t| {
                LinuxNamespaceBuilder::default()
                    .typ(t)
                    .build()
                    .map_err(SpecError::Build)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut resources = oci_spec::runtime::LinuxResourcesBuilder::default();
        if let Some(m) = p.memory_limit {
            let limit = i64::try_from(m).map_err(|_| SpecError::MemoryLimit)?;
            resources = resources.memory(
                oci_spec::runtime::LinuxMemoryBuilder::default()
                    .limit(limit)
                    .build()
                    .map_err(SpecError::Build)?,
            );
        }
        if let Some(c) = p.cpu_millis {
            let quota = c
                .checked_mul(100)
                .and_then(|q| i64::try_from(q).ok())
                .ok_or(SpecError::CpuLimit)?;
            resources = resources.cpu(
                oci_spec::runtime::LinuxCpuBuilder::default()
                    .quota(quota)
                    .period(100_000u64)
                    .build()
                    .map_err(SpecError::Build)?,
            );
        }
        let linux = LinuxBuilder::default()
            .resources(resources.build().map_err(SpecError::Build)?)
            .namespaces(namespaces)
            .cgroups_path(PathBuf::from(cgroup))
            .masked_paths(vec![
                "/proc/kcore".into(),
                "/proc/keys".into(),
                "/proc/timer_list".into(),
                "/sys/firmware".into(),
            ])
            .readonly_paths(vec![
                "/proc/bus".into(),
                "/proc/fs".into(),
                "/proc/irq".into(),
                "/proc/sys".into(),
                "/proc/sysrq-trigger".into(),
            ])
            .build()
            .map_err(SpecError::Build)?;
        let mut spec = SpecBuilder::default()
            .version("1.0.2")
            .root(
                RootBuilder::default()
                    .path(rootfs)
                    .readonly(p.read_only_rootfs)
                    .build()
                    .map_err(SpecError::Build)?,
            )
            .process(process)
            .mounts(mounts)
            .linux(linux)
            .build()
            .map_err(SpecError::Build)?;
        // The builder's defaults set a hostname, which needs a UTS namespace of its own; the
        // group shares the sandbox's.
        spec.set_hostname(None);
        Ok(spec)
    }
    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn containers_get_the_group_files_read_only_and_the_file_limit() {
            let files = GroupFiles {
                hosts: "/run/coffer/etc/hosts".into(),
                hostname: "/run/coffer/etc/hostname".into(),
                resolv_conf: "/run/coffer/etc/resolv.conf".into(),
            };
            let p = ProcessSpec {
                args: vec!["/bin/true".into()],
                cwd: "/".into(),
                ..Default::default()
            };
            let s = spec(
                Path::new("/r"),
                &p,
                &[],
                &CapsList::default(),
                &[],
                "/coffer/x",
                Some(&files),
            )
            .unwrap();
            let v = serde_json::to_value(&s).unwrap();
            for dest in ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"] {
                let m = v["mounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["destination"] == dest)
                    .unwrap_or_else(|| panic!("no {dest} in {v}"));
                assert_eq!(m["source"], format!("/run/coffer/etc/{}", &dest[5..]));
                let opts: Vec<&str> = m["options"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o.as_str().unwrap())
                    .collect();
                assert!(opts.contains(&"ro") && opts.contains(&"nosuid"), "{opts:?}");
            }
            let n = nofile_limit();
            assert!(n > 0 && n <= 1 << 20);
            assert_eq!(
                v["process"]["rlimits"],
                serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": n, "soft": n}])
            );
            // The group shares the sandbox's UTS namespace: no host name in the spec.
            assert!(v.get("hostname").is_none(), "{v}");
        }

        #[test]
        fn limits_that_overflow_are_errors_not_wrapped_values() {
            let spec_of = |cpu_millis: Option<u64>, memory_limit: Option<u64>| {
                let p = ProcessSpec {
                    args: vec!["/bin/true".into()],
                    cwd: "/".into(),
                    cpu_millis,
                    memory_limit,
                    ..Default::default()
                };
                spec(
                    Path::new("/r"),
                    &p,
                    &[],
                    &CapsList::default(),
                    &[],
                    "/coffer/x",
                    None,
                )
            };
            let v = serde_json::to_value(spec_of(Some(1500), Some(1 << 30)).unwrap()).unwrap();
            assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 150_000);
            assert_eq!(v["linux"]["resources"]["memory"]["limit"], 1u64 << 30);
            for c in [u64::MAX, u64::MAX / 100 + 1, i64::MAX as u64 / 100 + 1] {
                let e = spec_of(Some(c), None).unwrap_err();
                assert!(matches!(e, SpecError::CpuLimit), "{c}: {e}");
            }
            let e = spec_of(None, Some(u64::MAX)).unwrap_err();
            assert!(matches!(e, SpecError::MemoryLimit), "{e}");
        }
    }
}

/// The passphrase for a volume from a released key: an `oct` key as is; an RSA key derived with
/// HKDF-SHA256 over the private exponent (salt and label from the policy), as Azure's encfs does.
fn volume_key(jwk: &Value, salt_hex: &str, label: &str) -> Result<Vec<u8>, KeyError> {
    use base64::Engine as _;
    let b64 = |f: &'static str| {
        jwk[f]
            .as_str()
            .and_then(|k| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(k.trim_end_matches('='))
                    .ok()
            })
            .ok_or(KeyError::Missing(f))
    };
    match jwk["kty"].as_str() {
        Some("oct") => b64("k"),
        Some("RSA") => {
            let d = b64("d")?;
            let salt = hex::decode(salt_hex).map_err(|_| KeyError::SaltNotHex)?;
            let info = if label.is_empty() {
                "Symmetric Encryption Key"
            } else {
                label
            };
            hkdf_sha256(&d, &salt, info.as_bytes()).map_err(KeyError::Derive)
        }
        other => Err(KeyError::KeyType(other.map(str::to_string))),
    }
}

fn hkdf_sha256(
    ikm: &[u8],
    salt: &[u8],
    info: &[u8],
) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let mut ctx = openssl::pkey_ctx::PkeyCtx::new_id(openssl::pkey::Id::HKDF)?;
    ctx.derive_init()?;
    ctx.set_hkdf_md(openssl::md::Md::sha256())?;
    ctx.set_hkdf_key(ikm)?;
    if !salt.is_empty() {
        ctx.set_hkdf_salt(salt)?;
    }
    ctx.add_hkdf_info(info)?;
    let mut out = vec![0u8; 32];
    ctx.derive(Some(&mut out))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer image as the store keeps it: tar2ext4's ext4, then its dm-verity tree.
    fn layer_image(files: &[(&str, usize)]) -> (tempfile::TempDir, PathBuf, [u8; 32]) {
        let mut b = tar::Builder::new(Vec::new());
        for (name, len) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(*len as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, name, &vec![7u8; *len][..]).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer.img");
        let f = std::fs::File::create(&path).unwrap();
        let (_, v) =
            coffer_ext4::convert_with_verity(&tar[..], f, &Default::default(), [1; 16]).unwrap();
        assert_eq!(v.root, coffer_ext4::root_digest(&tar[..]).unwrap());
        (dir, path, v.root)
    }

    /// Reports of zeros: these tests exercise request handling, not the evidence.
    struct StubSp;

    impl SecureProcessor for StubSp {
        fn report(&self, _: &[u8; 64]) -> Result<coffer_sp::Evidence, coffer_sp::SpError> {
            Ok(coffer_sp::Evidence {
                report: vec![0; 1184],
                cert_chain: None,
            })
        }
    }

    /// An agent under `policy`, working in `work`, built as `start` builds it but without the
    /// HOST_DATA check (the stub's report has none).
    fn agent(policy: &str, work: &Path) -> Agent {
        Agent {
            encrypted: Vec::new(),
            sp: Arc::new(StubSp),
            skr: None,
            cgroup_prefix: "0".into(),
            hostname: None,
            fs_group: None,
            group_files: std::sync::OnceLock::new(),
            loopback: Mutex::new(None),
            state: Mutex::new(State {
                enforcer: Enforcer::new(policy).unwrap(),
                overlays: BTreeMap::new(),
                containers: BTreeMap::new(),
                layers: Vec::new(),
                pending: Default::default(),
                opened: BTreeMap::new(),
                blocks: Vec::new(),
            }),
            work: work.to_path_buf(),
            runc: PathBuf::from("runc"),
            report_summary: reply::ReportSummary {
                host_data: String::new(),
                measurement: String::new(),
                report_id: String::new(),
            },
            layer_disks: false,
            volume_disks: BTreeMap::new(),
        }
    }

    #[test]
    fn an_overlay_over_a_layer_still_being_mounted_is_refused() {
        let work = tempfile::tempdir().unwrap();
        // A policy that would allow any overlay: the agent itself must wait for the layer.
        let a = agent(
            "package policy\napi_version := \"0.10.0\"\nmount_overlay := {\"allowed\": true}\n",
            work.path(),
        );
        let layer = work.path().join("layers/l0").display().to_string();
        lock(&a.state).pending.insert(layer.clone());
        let err = a
            .mount_overlay("c1", std::slice::from_ref(&layer))
            .unwrap_err();
        assert!(err.to_string().contains("is still being mounted"), "{err}");
        assert!(!work.path().join("containers/c1").exists());
        // Once it is no longer pending, the same request gets as far as the next decision.
        lock(&a.state).pending.remove(&layer);
        let err = a.mount_overlay("c1", &[layer]).unwrap_err();
        assert!(err.to_string().contains("scratch_mount"), "{err}");
    }

    #[test]
    fn a_layer_image_measures_to_its_layer_hash() {
        let (_d, path, root) = layer_image(&[("a", 10), ("b", 3 * 4096)]);
        let m = layer_image::measure(&path).unwrap();
        assert_eq!(m.root, root);
        assert!(
            m.size < std::fs::metadata(&path).unwrap().len(),
            "the tree is not hashed"
        );
    }

    #[test]
    fn any_changed_byte_changes_the_measurement() {
        let (_d, path, root) = layer_image(&[("a", 10)]);
        let m = layer_image::measure(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for pos in [0usize, 2048, 4096, m.size as usize - 1] {
            let mut b = bytes.clone();
            b[pos] ^= 1;
            std::fs::write(&path, &b).unwrap();
            // An error is fine too (e.g. the superblock no longer parses).
            if let Ok(m2) = layer_image::measure(&path) {
                assert_ne!(m2.root, root, "byte {pos}");
            }
        }
    }

    #[test]
    fn a_hash_block_with_the_layers_root_is_refused() {
        let (d, path, root) = layer_image(&[("big", 600 * 4096)]);
        let m = layer_image::measure(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // The top block of the file system's tree: the same root over 4096 bytes.
        let mut level: Vec<u8> = bytes[..m.size as usize].to_vec();
        let top = loop {
            let mut next: Vec<u8> = level
                .chunks(4096)
                .flat_map(|b| {
                    let mut s = openssl::sha::Sha256::new();
                    s.update(&[0u8; 32]);
                    s.update(b);
                    s.finish()
                })
                .collect();
            next.resize(next.len().div_ceil(4096) * 4096, 0);
            if next.len() == 4096 {
                break next;
            }
            level = next;
        };
        assert_eq!(
            coffer_verity::root_hash(&top[..]).unwrap(),
            root,
            "the collision exists"
        );
        let forged = d.path().join("forged.img");
        std::fs::write(&forged, &top).unwrap();
        let e = layer_image::measure(&forged).err().unwrap();
        assert!(e.to_string().contains("not an ext4 image"), "{e}");
    }

    #[test]
    fn superblock_sizes_are_bounded() {
        let mut sb = [0u8; 1024];
        sb[0x38..0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[0x04..0x08].copy_from_slice(&8u32.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(layer_image::ext4_size(&sb).unwrap(), 8 * 4096);
        sb[0x18..0x1c].copy_from_slice(&40u32.to_le_bytes());
        assert!(layer_image::ext4_size(&sb).is_err(), "absurd block size");
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&0x80u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(layer_image::ext4_size(&sb).is_err(), "more than 128 GiB");
        sb[0x04..0x08].copy_from_slice(&0u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&0u32.to_le_bytes());
        assert!(layer_image::ext4_size(&sb).is_err(), "empty");
        sb[0x38] = 0;
        assert!(layer_image::ext4_size(&sb)
            .unwrap_err()
            .to_string()
            .contains("magic"));
    }

    #[test]
    fn container_output_is_bounded_and_readers_learn_what_was_dropped() {
        let mut o = Output::default();
        let line = "x".repeat(1000);
        for _ in 0..(MAX_OUTPUT_BYTES / 1000 + 10) {
            o.push("stdout", line.clone());
        }
        let pushed = MAX_OUTPUT_BYTES / 1000 + 10;
        assert!(o.bytes <= MAX_OUTPUT_BYTES);
        assert_eq!(o.end(), pushed);
        assert_eq!(o.first, pushed - o.lines.len());
        assert!(o.first > 0);
        let (new, dropped) = o.since(0);
        assert_eq!(dropped, o.first);
        assert_eq!(new.len(), o.lines.len());
        let (new, dropped) = o.since(o.end());
        assert!(new.is_empty() && dropped == 0);
    }

    #[test]
    fn a_line_without_end_is_split_not_kept_whole() {
        let out = (Mutex::new(Output::default()), Condvar::new());
        let big = vec![b'a'; 3 * MAX_LINE as usize + 5];
        collect_output(&big[..], "stdout", &out);
        let o = out.0.lock().unwrap();
        assert_eq!(o.lines.len(), 4);
        assert!(o.lines.iter().all(|(_, l)| l.len() <= MAX_LINE as usize));
    }

    #[test]
    fn capability_names_parse_and_unknown_ones_fail() {
        let set = oci::cap_set(&["CAP_CHOWN".into(), "CAP_NET_BIND_SERVICE".into()]).unwrap();
        assert_eq!(set.len(), 2);
        for bad in ["CAP_FOO", "CHOWN", "cap_chown", "CAP_CAP_CHOWN", ""] {
            let e = oci::cap_set(&[bad.into()]).unwrap_err();
            assert!(
                matches!(&e, oci::SpecError::UnknownCapability(n) if n == &bad.escape_debug().to_string()),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_malformed_decision_never_becomes_an_empty_environment() {
        let req = vec!["A=1".to_string()];
        assert_eq!(
            decided_env(&json!({"env_list": ["B=2"]}), &req).unwrap(),
            ["B=2"]
        );
        assert_eq!(decided_env(&json!({"allowed": true}), &req).unwrap(), req);
        assert!(decided_env(&json!({"env_list": "A=1"}), &req).is_err());
        assert!(decided_env(&json!({"env_list": [1]}), &req).is_err());
    }

    #[test]
    fn each_decided_capability_set_is_kept_apart() {
        let d = json!({"caps_list": {"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_CHOWN"]}});
        let c = decided_caps(&d, &[]).unwrap();
        assert_eq!(c.bounding, ["CAP_KILL", "CAP_CHOWN"]);
        assert_eq!(c.effective, ["CAP_CHOWN"]);
        assert!(c.permitted.is_empty() && c.ambient.is_empty() && c.inheritable.is_empty());
        assert!(decided_caps(&json!({"caps_list": {"bounding": "x"}}), &[]).is_err());
        assert!(decided_caps(&json!({"caps_list": {"other": []}}), &[]).is_err());
    }

    #[test]
    fn hkdf_matches_rfc5869_case_1() {
        let ikm = [0x0b; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let okm = hkdf_sha256(&ikm, &salt, &info).unwrap();
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
    }

    #[test]
    fn volume_keys_from_released_jwks() {
        let oct =
            serde_json::json!({"kty": "oct", "k": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"});
        assert_eq!(
            volume_key(&oct, "", "").unwrap(),
            (0u8..32).collect::<Vec<_>>()
        );
        let rsa = serde_json::json!({"kty": "RSA", "d": "AQID"});
        let a = volume_key(&rsa, "00", "").unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, volume_key(&rsa, "01", "").unwrap());
        assert!(volume_key(&serde_json::json!({"kty": "EC"}), "", "").is_err());
    }
}
