//! A group in its own QEMU VM: the guest image, one virtio-serial port on a Unix-socket chardev,
//! the multiplexer on it. The launcher serves the guest's `policy`, `sp` (the emulated secure
//! processor, launch data fixed here) and `egress` streams, and forwards `io/agent.sock`
//! connections as `agent` streams, so `AgentClient`, `coffer exec` and `coffer ps` work as with
//! the namespace backend.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::emu::EmulatedService;
use crate::launch::{group_dir, AgentClient, Egress, LaunchSpec};
use coffer_mux::{Mux, Side};

use crate::image::GuestImage;
use crate::{io, HostError};

/// How long a boot may take under TCG before the launcher gives up.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// The VM's shape.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The guest image.
    pub image: GuestImage,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// SEV-SNP launch ([`crate::snp::detect`]), or none: KVM or TCG with the emulated secure
    /// processor.
    pub snp: Option<crate::snp::SnpConfig>,
    /// Layer images (ext4 + dm-verity tree) attached read-only as virtio-blk disks, in this
    /// order, with serials `l0`, `l1`, ... by which the agent finds them.
    pub disks: Vec<PathBuf>,
}

/// Most layer disks a group gets (microvm's virtio-mmio slots, less the serial port's).
pub const MAX_DISKS: usize = 20;

/// The virtio serial of disk `i` (what `stage_layer` answers and the agent looks for).
pub fn disk_serial(i: usize) -> String {
    format!("l{i}")
}

/// KVM only where a stock guest runs on it (`kvm_amd`/`kvm_intel`; this machine's PVM KVM
/// boots only special guests); TCG otherwise.
pub fn kvm_usable() -> bool {
    Path::new("/dev/kvm").exists()
        && (Path::new("/sys/module/kvm_amd").exists()
            || Path::new("/sys/module/kvm_intel").exists())
}

/// What TCG needs on the kernel command line: the TSC frequency. Under TCG the guest's TSC runs
/// at the host's rate, and microvm has no HPET or PM timer to calibrate it against; a loaded host
/// makes the PIT calibration fail, after which the boot hangs (seen here: 3 of 3 boots under
/// load). Emulation only: a KVM or SNP guest gets its TSC rate from the hypervisor, and the
/// measured command line is the image's own.
pub fn tcg_append() -> String {
    let mhz = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("cpu MHz"))
                .and_then(|v| {
                    v.trim_start_matches([' ', '\t', ':'])
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
        })
        .unwrap_or(2000.0);
    format!(" tsc_early_khz={}", (mhz * 1000.0) as u64)
}

/// The QEMU command line for a group: microvm (KVM or TCG) with virtio-mmio devices, or, with
/// `cfg.snp`, an SEV-SNP q35 guest with PCI devices and HOST_DATA fixed at launch.
///
/// `network`: none (the guest has loopback only), or QEMU's user-mode network with these
/// `hostfwd` rules (see [`GUEST_NET`]).
pub fn qemu_command(
    cfg: &VmConfig,
    dir: &Path,
    host_data: &[u8; 32],
    network: Option<&[String]>,
    volumes: &[Disk],
) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    let (serial_dev, blk_dev, net_dev) = match &cfg.snp {
        Some(snp) => {
            c.args(crate::snp::machine_args(snp, cfg.memory_mib, host_data));
            ("virtio-serial-pci", "virtio-blk-pci", "virtio-net-pci")
        }
        None => {
            let kvm = kvm_usable();
            c.args(["-M", "microvm", "-accel", if kvm { "kvm" } else { "tcg" }])
                .args(["-cpu", if kvm { "host" } else { "max" }]);
            (
                "virtio-serial-device",
                "virtio-blk-device",
                "virtio-net-device",
            )
        }
    };
    if let Some(rules) = network {
        let mut netdev = format!(
            "user,id=n0,net={},host={}",
            GUEST_NET.subnet, GUEST_NET.gateway
        );
        for r in rules {
            netdev.push_str(",hostfwd=");
            netdev.push_str(r);
        }
        c.args(["-netdev", &netdev])
            .args(["-device", &format!("{net_dev},netdev=n0")]);
    }
    // Under TCG only, the TSC rate goes on the kernel command line (see `tcg_append`); kernel
    // parameters go before `--` (after it, they are init's arguments).
    let append = if cfg.snp.is_some() || kvm_usable() {
        cfg.image.append.clone()
    } else {
        match cfg.image.append.split_once(" -- ") {
            Some((kernel, init)) => format!("{kernel}{} -- {init}", tcg_append()),
            None => format!("{}{}", cfg.image.append, tcg_append()),
        }
    };
    c.args(["-m", &format!("{}M", cfg.memory_mib)])
        .args(["-smp", &cfg.vcpus.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        // A guest reset (init gone, panic=-1) ends QEMU.
        .arg("-no-reboot")
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .arg("-kernel")
        .arg(match (&cfg.snp, &cfg.image.vmlinux) {
            // Outside SNP, the bzImage's payload, uncompressed at build time (PVH entry).
            (None, Some(elf)) => elf,
            _ => &cfg.image.kernel,
        })
        .arg("-initrd")
        .arg(&cfg.image.initrd)
        .arg("-append")
        .arg(append)
        .args(["-device", serial_dev])
        .arg("-chardev")
        .arg(format!(
            "socket,id=c0,path={},server=on,wait=off",
            dir.join("channel.sock").display()
        ))
        .args([
            "-device",
            &format!("virtserialport,chardev=c0,name={}", crate::PORT_NAME),
        ]);
    let layers = cfg.disks.iter().enumerate().map(|(i, path)| Disk {
        path: path.clone(),
        serial: disk_serial(i),
        writable: false,
    });
    for (i, disk) in layers.chain(volumes.iter().cloned()).enumerate() {
        // QEMU's option syntax escapes a comma by doubling it.
        let file = disk.path.to_string_lossy().replace(',', ",,");
        c.arg("-drive")
            .arg(format!(
                "file={file},format=raw,if=none,id=d{i},readonly={}",
                if disk.writable { "off" } else { "on" }
            ))
            .arg("-device")
            .arg(format!("{blk_dev},drive=d{i},serial={}", disk.serial));
    }
    c
}

/// A disk of the group's VM.
#[derive(Clone, Debug)]
pub struct Disk {
    /// The image on the host.
    pub path: PathBuf,
    /// Its virtio serial, by which the agent finds it.
    pub serial: String,
    /// Attached writable (an encrypted volume the policy lets the group write).
    pub writable: bool,
}

/// The guest's side of QEMU's user-mode network (slirp): why this and not the namespace
/// backend's CNI bridge: the VM's NIC is a userspace device anyway, slirp gives it outbound NAT
/// and DNS with no host configuration, and `hostfwd` publishes ports (TCP and UDP) with QEMU
/// binding the host address itself, so nothing outlives the VM and no tap, bridge or iptables
/// rule is needed. The cost is throughput (a userspace copy), acceptable for this backend's use.
pub struct GuestNet {
    /// The subnet.
    pub subnet: &'static str,
    /// The host as the guest sees it (gateway; connections to it reach the host's loopback).
    pub gateway: &'static str,
    /// The guest's address.
    pub address: std::net::Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// slirp's DNS forwarder.
    pub dns: &'static str,
}

/// The one guest network layout (QEMU's defaults).
pub const GUEST_NET: GuestNet = GuestNet {
    subnet: "10.0.2.0/24",
    gateway: "10.0.2.2",
    address: std::net::Ipv4Addr::new(10, 0, 2, 15),
    prefix: 24,
    dns: "10.0.2.3",
};

/// A running VM group.
pub struct VmGroup {
    /// Name.
    pub name: String,
    /// `$COFFER_HOME/run/<name>`.
    pub dir: PathBuf,
    /// MEASUREMENT the emulated secure processor reports (the guest image's).
    pub measurement: [u8; 48],
    qemu: Option<Child>,
    mux: Mux,
    agent_fwd: Option<coffer_mux::unix::Forward>,
    sp: Option<EmulatedService>,
    egress: Option<Egress>,
    disks: Vec<PathBuf>,
    net_summary: Option<String>,
}

/// Start the VM and wait until the agent serves (or refuses).
pub fn launch(spec: LaunchSpec, cfg: &VmConfig) -> Result<VmGroup, HostError> {
    let dir = group_dir(&spec.home, &spec.name);
    crate::refuse_if_running(&dir, &spec.name)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("io")).map_err(io(format!("mkdir {}", dir.display())))?;
    let emu = coffer_snp_emu::EmulatedSp::open_or_create(&spec.home)
        .map_err(|e| HostError::SecureProcessor(e.to_string()))?;
    let measurement = cfg.image.measurement;
    let sp = EmulatedService::start(&dir.join("sp.sock"), emu, spec.host_data, measurement)?;
    let text = std::str::from_utf8(&spec.policy)
        .map_err(|_| HostError::Unsupported("the policy is not UTF-8".into()))?;
    let settings = coffer_policy::Settings::of(&mut coffer_policy::Enforcer::new(text)?)?;
    let egress = Egress::start(&dir.join("egress.sock"), settings.egress_destinations())?;
    // Encrypted volumes are disks too (after the layers), writable only where the policy says so;
    // the agent unlocks them and maps them through dm-crypt.
    let mut volume_disks = Vec::new();
    let mut volume_serials = std::collections::BTreeMap::new();
    for (name, src) in &spec.volumes {
        let text = src.to_string_lossy();
        if text.starts_with("http://") || text.starts_with("https://") {
            return Err(HostError::Unsupported(format!(
                "encrypted volume {name}: a remote image in a VM group (not yet: use \
                 --isolation namespace, or a local file)"
            )));
        }
        let writable = settings
            .encrypted_volumes
            .iter()
            .any(|v| &v.name == name && !v.read_only);
        let serial = format!("v{}", volume_disks.len());
        volume_serials.insert(name.clone(), serial.clone());
        volume_disks.push(Disk {
            path: src.clone(),
            serial,
            writable,
        });
    }
    if cfg.disks.len() + volume_disks.len() > MAX_DISKS {
        return Err(HostError::Unsupported(format!(
            "{} layers and {} volumes: a VM group takes at most {MAX_DISKS} disks",
            cfg.disks.len(),
            volume_disks.len()
        )));
    }
    // Published ports are checked here (a clear error for a port in use or below 1024 without
    // root), then released for QEMU to bind.
    let published = crate::net::reserve(&spec.network, &settings.ports)?;
    let rules: Vec<String> = published
        .iter()
        .map(|p| {
            format!(
                "{}:{}:{}-:{}",
                p.protocol.to_ascii_lowercase(),
                p.host_ip,
                p.host_port,
                p.container_port
            )
        })
        .collect();
    let summary: Vec<String> = published.iter().map(|p| p.to_string()).collect();
    drop(published);
    let network = match spec.network {
        crate::net::NetworkMode::None => None,
        crate::net::NetworkMode::Bridge { .. } => Some(rules),
    };
    let guest_net = coffer_proto::GroupNet {
        name: spec.name.clone(),
        address: network.as_ref().map(|_| GUEST_NET.address),
        resolv_conf: match network {
            Some(_) => format!("nameserver {}\n", GUEST_NET.dns),
            None => String::new(),
        },
    };
    let net_summary = network.as_ref().map(|_| {
        if summary.is_empty() {
            format!("{} (user-mode NAT)", GUEST_NET.address)
        } else {
            format!(
                "{} (user-mode NAT), published {}",
                GUEST_NET.address,
                summary.join(", ")
            )
        }
    });
    let mut cmd = qemu_command(
        cfg,
        &dir,
        &spec.host_data,
        network.as_deref(),
        &volume_disks,
    );
    crate::die_with_launcher(&mut cmd);
    let qemu = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("qemu.log")).map_err(io("creating qemu.log"))?)
        // Its own process group: a terminal's Ctrl-C reaches the launcher, which stops the
        // group through the policy and then ends QEMU itself.
        .process_group(0)
        .spawn()
        .map_err(io("starting qemu-system-x86_64"))?;
    std::fs::write(dir.join("pid"), qemu.id().to_string()).map_err(io("writing the pid file"))?;
    // The group exists from here: every error path below tears it down (Drop).
    let mut group = VmGroup {
        name: spec.name.clone(),
        dir: dir.clone(),
        measurement,
        qemu: Some(qemu),
        mux: Mux::new(std::io::empty(), std::io::sink(), Side::Host),
        agent_fwd: None,
        sp: Some(sp),
        egress: Some(egress),
        disks: cfg.disks.clone(),
        net_summary,
    };
    let channel = group.connect_channel(&dir.join("channel.sock"))?;
    let reader = channel.try_clone().map_err(io("channel socket"))?;
    group.mux = Mux::new(reader, channel, Side::Host);
    let (ready_tx, ready_rx) = mpsc::channel::<String>();
    let mux = group.mux.clone();
    let policy = spec.policy.clone();
    let host_dir = dir.clone();
    let net = serde_json::to_vec(&guest_net).map_err(|e| HostError::Protocol(e.to_string()))?;
    let volumes =
        serde_json::to_vec(&volume_serials).map_err(|e| HostError::Protocol(e.to_string()))?;
    std::thread::spawn(move || serve_guest(mux, policy, net, volumes, host_dir, ready_tx));
    let started = Instant::now();
    let verdict = loop {
        match ready_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(v) => break v,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break format!(
                    "the channel closed before the agent answered ({})",
                    group.mux.closed().unwrap_or_default()
                )
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(status) = group.exited() {
            break format!("the VM exited ({status})");
        }
        if started.elapsed() > BOOT_TIMEOUT {
            break format!(
                "the agent did not answer within {} s",
                BOOT_TIMEOUT.as_secs()
            );
        }
    };
    if verdict != "ok" {
        return Err(HostError::Refused(format!(
            "{verdict}{}",
            group.console_tail()
        )));
    }
    group.agent_fwd = Some(coffer_mux::unix::Forward::start(
        group.mux.clone(),
        &dir.join("io/agent.sock"),
        "agent",
    )?);
    Ok(group)
}

/// The guest's requests to the host, until the channel ends.
fn serve_guest(
    mux: Mux,
    policy: Vec<u8>,
    net: Vec<u8>,
    volumes: Vec<u8>,
    dir: PathBuf,
    ready: mpsc::Sender<String>,
) {
    while let Ok(s) = mux.accept() {
        match s.service() {
            "policy" => {
                let _ = (&s).write_all(&policy);
            }
            "net" => {
                let _ = (&s).write_all(&net);
            }
            "volumes" => {
                let _ = (&s).write_all(&volumes);
            }
            "sp" | "egress" => {
                let path = dir.join(format!("{}.sock", s.service()));
                if let Ok(conn) = UnixStream::connect(path) {
                    std::thread::spawn(move || coffer_mux::unix::bridge(s, conn));
                }
            }
            "ready" => {
                let mut v = String::new();
                let _ = (&s).take(64 << 10).read_to_string(&mut v);
                let _ = ready.send(v);
            }
            _ => {}
        }
    }
}

impl VmGroup {
    fn connect_channel(&mut self, path: &Path) -> Result<UnixStream, HostError> {
        let t0 = Instant::now();
        loop {
            if let Ok(s) = UnixStream::connect(path) {
                return Ok(s);
            }
            if let Some(status) = self.exited() {
                return Err(HostError::Refused(format!(
                    "QEMU exited ({status}): {}",
                    std::fs::read_to_string(self.dir.join("qemu.log"))
                        .unwrap_or_default()
                        .trim()
                )));
            }
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(HostError::Refused(
                    "QEMU did not open its channel socket".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.qemu.as_mut().and_then(|q| q.try_wait().ok().flatten())
    }

    /// The last lines of the guest console, for error messages.
    fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        // The agent's own lines, and the end (a panic's first line, not its trace).
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("coffer") || l.contains("panic") || !l.starts_with('['))
            .collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("\nguest console:\n{tail}")
        }
    }

    /// The layer disk holding `image` (attached at launch): its serial, for
    /// `AgentClient::mount_layer`. The agent measures and maps the disk itself.
    pub fn stage_layer(&self, image: &Path) -> Result<String, HostError> {
        self.disks
            .iter()
            .position(|d| d == image)
            .map(disk_serial)
            .ok_or_else(|| {
                HostError::Unsupported(format!(
                    "{}: not attached to the VM at launch (VmConfig::disks)",
                    image.display()
                ))
            })
    }

    /// The group's address and published ports (user-mode network), if it has a network.
    pub fn network_summary(&self) -> Option<String> {
        self.net_summary.clone()
    }

    /// The agent's socket on the host.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("io/agent.sock")
    }

    /// A new client connection.
    pub fn client(&self) -> Result<AgentClient, HostError> {
        AgentClient::connect(&self.socket())
    }

    /// Ask the agent to shut down, wait for the VM to end (a few seconds at most), then remove
    /// every trace.
    pub fn shutdown(mut self) -> Result<coffer_proto::reply::ShutDown, HostError> {
        let answer = self.client().and_then(|mut c| c.shutdown());
        let deadline = Instant::now()
            + if answer.is_ok() {
                Duration::from_secs(10)
            } else {
                Duration::ZERO
            };
        while Instant::now() < deadline && self.exited().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.teardown();
        answer
    }

    /// End QEMU (if it is still running) and remove the sockets and the group's directory.
    fn teardown(&mut self) {
        self.agent_fwd.take();
        self.mux.close();
        if let Some(mut q) = self.qemu.take() {
            let _ = q.kill();
            let _ = q.wait();
        }
        self.sp.take();
        self.egress.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for VmGroup {
    fn drop(&mut self) {
        self.teardown();
    }
}
