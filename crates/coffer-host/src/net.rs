//! The group's network: a veth from the sandbox's network namespace to the host bridge `coffer0`
//! (10.88.0.0/16), an address, a default route, outbound NAT, and the ports the policy publishes.
//!
//! **Why the CNI plugins.** The wiring is done by the reference CNI plugins Kubernetes runtimes
//! use (Debian's `containernetworking-plugins`: `bridge` with `host-local` IPAM, and `portmap`),
//! chained as containerd and CRI-O chain them, rather than by our own `ip`/`iptables` calls. They
//! are the code every Kubernetes node runs for exactly this job: an idempotent bridge and gateway
//! address, IPv4 forwarding, address leases under a lock, and per-group DNAT chains for host
//! ports, each removed by `DEL` with the group's id. Writing and tearing down the same rules
//! ourselves would duplicate that with less testing; the plugins are small static binaries with
//! no daemon. (`COFFER_CNI_PATH` overrides where they are looked for.)
//!
//! **Subnet-wide rules instead of per-group ones.** Outbound NAT (one MASQUERADE rule) and the
//! FORWARD rules that let the groups' traffic through on hosts whose FORWARD policy is DROP (as
//! Docker sets it) are the same for every group, so they are added once for the whole subnet and
//! kept, like the bridge (`ensure_rules`). The `firewall` plugin would add and delete the same
//! FORWARD rules per group: about nine `iptables` runs, 20 ms on the start of every group and as
//! much on its end, for no difference in what passes. The FORWARD rules also accept connections
//! to a published port from other hosts (conntrack state DNAT), which the plugin's rules do not.
//!
//! **Published ports** use `portmap`'s DNAT (nat PREROUTING for other hosts, nat OUTPUT for the
//! host itself; for `127.0.0.1` it sets `route_localnet` on the bridge and masquerades, as
//! Kubernetes' hostPort does), so the kernel forwards TCP and UDP without a copy through the
//! launcher. DNAT binds nothing, so the launcher also binds each published host address and port
//! itself for the group's lifetime (as the kubelet's hostport manager did): a port another process
//! or group uses is a clear error before anything starts, a port below 1024 needs root, and no
//! host process can take the port while the group publishes it.
//!
//! **Leases and state** live host-wide under [`STATE_DIR`] (a tmpfs, like the bridge and the
//! rules, gone at reboot), not under `$COFFER_HOME`: the bridge and its subnet are host-wide, so
//! two homes (e.g. two test runs) must not lease the same address.
//!
//! The group's CNI id is derived from its host directory ([`network_id`]); what `ADD` returned is
//! kept in `STATE_DIR/groups/<id>.json` until `DEL`, so a launcher that was killed leaves nothing
//! for long: the next launch of the same group first deletes what the old one left.
//!
//! The launcher keeps the group's network namespace open (an fd) from `ADD` to `DEL`, and names
//! it to the plugins through that fd, so `DEL` removes the veth synchronously and can never act on
//! another namespace, even after the sandbox exited and its PID was reused.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::HostError;

/// The host bridge.
pub const BRIDGE: &str = "coffer0";
/// The groups' subnet.
pub const SUBNET: &str = "10.88.0.0/16";
/// The CNI network name (in the plugins' iptables comments and lease directory).
pub const NETWORK: &str = "coffer";
/// Host-wide state: leases (`ipam/coffer/<address>`, holding the group's id) and the lock.
pub const STATE_DIR: &str = "/run/coffer-net";
/// The interface name inside the group.
pub const IFNAME: &str = "eth0";

/// How a group is wired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// Loopback only (no outbound connectivity, no published ports).
    None,
    /// A veth to the host bridge; ports the policy publishes without a host address of their own
    /// are published on `publish_address`.
    Bridge {
        /// Default host address for published ports.
        publish_address: Ipv4Addr,
    },
}

impl Default for NetworkMode {
    fn default() -> Self {
        NetworkMode::Bridge {
            publish_address: Ipv4Addr::LOCALHOST,
        }
    }
}

pub use coffer_proto::{GroupNet, GROUP_FILE, MAX_RESOLV_CONF};

/// A published port, and the socket that holds its host address and port.
pub struct Published {
    /// Host address (unspecified: all).
    pub host_ip: Ipv4Addr,
    /// Host port.
    pub host_port: u16,
    /// Port in the group.
    pub container_port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
    _hold: Hold,
}

enum Hold {
    Tcp(#[allow(dead_code)] TcpListener),
    Udp(#[allow(dead_code)] UdpSocket),
}

impl std::fmt::Display for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} -> {}/{}",
            self.host_ip, self.host_port, self.container_port, self.protocol
        )
    }
}

pub(crate) fn net_err(m: impl Into<String>) -> HostError {
    HostError::Agent(format!("group network: {}", m.into()))
}

/// Hold every port the policy publishes (before the sandbox starts, so a conflict fails early).
pub fn reserve(
    mode: &NetworkMode,
    ports: &[coffer_policy::PortPolicy],
) -> Result<Vec<Published>, HostError> {
    let publish_address =
        match mode {
            NetworkMode::Bridge { publish_address } => *publish_address,
            NetworkMode::None if ports.is_empty() => return Ok(Vec::new()),
            NetworkMode::None => return Err(net_err(
                "the policy publishes ports, which needs the bridge network (not --network none)",
            )),
        };
    ports
        .iter()
        .map(|p| {
            let host_ip = if p.host_ip.is_empty() {
                publish_address
            } else {
                p.host_ip
                    .parse()
                    .map_err(|_| net_err(format!("host address '{}'", p.host_ip)))?
            };
            let addr = (host_ip, p.host_port);
            let hold = match p.protocol.as_str() {
                "TCP" => TcpListener::bind(addr).map(Hold::Tcp),
                "UDP" => UdpSocket::bind(addr).map(Hold::Udp),
                other => return Err(net_err(format!("protocol {other}"))),
            }
            .map_err(|e| {
                let what = format!("publishing {host_ip}:{}/{}", p.host_port, p.protocol);
                net_err(match e.kind() {
                    std::io::ErrorKind::AddrInUse => format!(
                        "{what}: the port is already in use on the host (by another group or a host process)"
                    ),
                    std::io::ErrorKind::PermissionDenied if p.host_port < 1024 => format!(
                        "{what}: host ports below 1024 need root (or CAP_NET_BIND_SERVICE)"
                    ),
                    std::io::ErrorKind::AddrNotAvailable => format!(
                        "{what}: {host_ip} is not an address of this host (--publish-address, or the Pod's hostIP)"
                    ),
                    _ => format!("{what}: {e}"),
                })
            })?;
            Ok(Published {
                host_ip,
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: p.protocol.clone(),
                _hold: hold,
            })
        })
        .collect()
}

/// Where the CNI plugins are.
fn cni_path() -> Result<PathBuf, HostError> {
    let candidates: Vec<PathBuf> = match std::env::var_os("COFFER_CNI_PATH") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
    };
    candidates
        .into_iter()
        .find(|d| {
            ["bridge", "host-local", "portmap"]
                .iter()
                .all(|p| d.join(p).is_file())
        })
        .ok_or_else(|| {
            net_err(
                "the CNI plugins bridge, host-local and portmap were not found in \
                 /usr/lib/cni or /opt/cni/bin (apt-get install containernetworking-plugins, or set \
                 COFFER_CNI_PATH); `coffer run --network none` runs a group with loopback only",
            )
        })
}

/// Whether the plugins are installed (tests skip networking checks without them).
pub fn available() -> bool {
    cni_path().is_ok()
}

/// An exclusive lock on the host-wide state, held while plugins run.
struct Lock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

fn lock() -> Result<Lock, HostError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(STATE_DIR)
        .map_err(crate::io(format!("mkdir {STATE_DIR}")))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(STATE_DIR).join("lock"))
        .map_err(crate::io("opening the network lock"))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map(Lock)
        .map_err(|(_, e)| crate::sys("locking the network state")(e))
}

/// The host-wide rules every group needs, checked (`iptables -C`) and added if missing, then
/// kept: outbound NAT for the subnet (not the bridge plugin's per-group `ipMasq` chain: its `DEL`
/// finds the group's address through the namespace, so a killed launcher's chain would stay), and
/// FORWARD rules placed first so that a DROP policy or a later REJECT does not stop the groups'
/// traffic: out of the subnet, replies into it, and connections to published ports.
fn ensure_rules() -> Result<(), HostError> {
    let rules: [(&str, &str, &[&str]); 4] = [
        (
            "nat",
            "POSTROUTING",
            &["-s", SUBNET, "!", "-d", SUBNET, "-j", "MASQUERADE"],
        ),
        ("filter", "FORWARD", &["-s", SUBNET, "-j", "ACCEPT"]),
        (
            "filter",
            "FORWARD",
            &[
                "-d",
                SUBNET,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "ACCEPT",
            ],
        ),
        (
            "filter",
            "FORWARD",
            &[
                "-d",
                SUBNET,
                "-m",
                "conntrack",
                "--ctstate",
                "DNAT",
                "-j",
                "ACCEPT",
            ],
        ),
    ];
    let iptables = |op: &str, (table, chain, rule): (&str, &str, &[&str])| {
        // The NAT rule keeps the comment it always had, so that it is found again.
        let comment = match table {
            "nat" => "coffer groups outbound NAT",
            _ => "coffer groups",
        };
        Command::new("iptables")
            .args(["-w", "-t", table, op, chain])
            .args(rule)
            .args(["-m", "comment", "--comment", comment])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(crate::io("running iptables"))
    };
    // All four checks at once (each is a process of about 1.5 ms), then what is missing added.
    let checks = rules
        .iter()
        .map(|r| iptables("-C", *r))
        .collect::<Result<Vec<_>, _>>()?;
    for (mut check, rule) in checks.into_iter().zip(rules) {
        if check
            .wait()
            .map_err(crate::io("running iptables"))?
            .success()
        {
            continue;
        }
        // NAT goes last in POSTROUTING (after others' exceptions); FORWARD accepts go first.
        let add = if rule.0 == "nat" { "-A" } else { "-I" };
        let added = iptables(add, rule)?
            .wait()
            .map_err(crate::io("running iptables"))?;
        if !added.success() {
            return Err(net_err(format!(
                "iptables -t {} {add} {} {} failed",
                rule.0,
                rule.1,
                rule.2.join(" ")
            )));
        }
    }
    Ok(())
}

/// What a connected group's network is, for reports and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkInfo {
    /// The CNI container id (in the plugins' iptables comments and the lease file).
    pub id: String,
    /// The group's address.
    pub address: Ipv4Addr,
    /// The host end of the veth.
    pub host_veth: String,
}

/// A group's network, connected until [`Network::teardown`] (or drop).
pub struct Network {
    info: NetworkInfo,
    netns: std::fs::File,
    cni_path: PathBuf,
    plugins: Vec<Value>,
    result: Value,
    published: Vec<Published>,
    done: bool,
}

/// The CNI container id of the group whose host directory is `group_dir`: in the plugins'
/// iptables comments and in its lease file.
pub fn network_id(group_dir: &Path, name: &str) -> String {
    let h = openssl::sha::sha256(group_dir.as_os_str().as_encoded_bytes());
    format!("coffer-{name}-{}", &hex::encode(h)[..12])
}

/// What `DEL` needs, kept from `ADD` until `DEL`.
#[derive(Serialize, Deserialize)]
struct Saved {
    plugins: Vec<Value>,
    result: Value,
}

fn saved_path(id: &str) -> PathBuf {
    Path::new(STATE_DIR)
        .join("groups")
        .join(format!("{id}.json"))
}

impl Network {
    /// Connect the network namespace of `sandbox_pid` (which must differ from ours) to the bridge
    /// and publish `published`.
    pub fn connect(
        group: &str,
        group_dir: &Path,
        sandbox_pid: u32,
        published: Vec<Published>,
    ) -> Result<Network, HostError> {
        use std::os::unix::fs::MetadataExt as _;
        let cni_path = cni_path()?;
        let path = format!("/proc/{sandbox_pid}/ns/net");
        let netns = std::fs::File::open(&path).map_err(crate::io(format!("opening {path}")))?;
        let own = std::fs::metadata("/proc/self/ns/net").map_err(crate::io("/proc/self/ns/net"))?;
        let theirs = netns.metadata().map_err(crate::io(path.clone()))?;
        if (own.dev(), own.ino()) == (theirs.dev(), theirs.ino()) {
            return Err(net_err(
                "the sandbox has no network namespace of its own; refusing to configure the host's",
            ));
        }
        let mut plugins = vec![json!({
            "type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": SUBNET}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": Path::new(STATE_DIR).join("ipam"),
            },
        })];
        if !published.is_empty() {
            let mappings: Vec<Value> = published
                .iter()
                .map(|p| {
                    let mut m = json!({
                        "hostPort": p.host_port, "containerPort": p.container_port,
                        "protocol": p.protocol.to_ascii_lowercase(),
                    });
                    if !p.host_ip.is_unspecified() {
                        m["hostIP"] = json!(p.host_ip.to_string());
                    }
                    m
                })
                .collect();
            plugins.push(json!({
                "type": "portmap", "capabilities": {"portMappings": true}, "snat": true,
                "runtimeConfig": {"portMappings": mappings},
            }));
        }
        let mut net = Network {
            info: NetworkInfo {
                id: network_id(group_dir, group),
                address: Ipv4Addr::UNSPECIFIED,
                host_veth: String::new(),
            },
            netns,
            cni_path,
            plugins,
            result: Value::Null,
            published,
            done: false,
        };
        let _lock = lock()?;
        // What a killed launcher of this group left behind (its namespace is gone).
        if let Ok(b) = std::fs::read(saved_path(&net.info.id)) {
            if let Ok(old) = serde_json::from_slice::<Saved>(&b) {
                for conf in old.plugins.iter().rev() {
                    let _ = net.run_plugin("DEL", conf, &old.result, None);
                }
            }
            let _ = std::fs::remove_file(saved_path(&net.info.id));
        }
        // The host-wide rules are checked while the plugins run (both take milliseconds).
        let rules = std::thread::spawn(ensure_rules);
        let mut prev = Value::Null;
        let mut added = Ok(());
        for i in 0..net.plugins.len() {
            match net.cni("ADD", i, &prev) {
                Ok(r) => prev = r,
                Err(e) => {
                    added = Err(e);
                    break;
                }
            }
        }
        net.result = prev;
        let rules = rules
            .join()
            .unwrap_or_else(|_| Err(net_err("checking the iptables rules panicked")));
        if let Err(e) = added.and(rules) {
            net.done = true;
            let _ = net.del_all();
            return Err(e);
        }
        let parsed = (|| {
            let address = net.result["ips"][0]["address"].as_str()?;
            let address: Ipv4Addr = address.split('/').next()?.parse().ok()?;
            let veth = net.result["interfaces"]
                .as_array()?
                .iter()
                .find(|i| i.get("sandbox").is_none() && i["name"] != BRIDGE)?["name"]
                .as_str()?
                .to_string();
            Some((address, veth))
        })();
        let saved = Saved {
            plugins: net.plugins.clone(),
            result: net.result.clone(),
        };
        let path = saved_path(&net.info.id);
        let _ = std::fs::create_dir_all(path.parent().unwrap_or(Path::new(STATE_DIR)));
        let _ = std::fs::write(&path, serde_json::to_vec(&saved).unwrap_or_default());
        match parsed {
            Some((address, veth)) => {
                net.info.address = address;
                net.info.host_veth = veth;
                Ok(net)
            }
            None => {
                net.done = true;
                let _ = net.del_all();
                Err(net_err(format!(
                    "unexpected result from the bridge plugin: {}",
                    net.result
                )))
            }
        }
    }

    /// Run plugin `i` with `command` in the group's namespace.
    fn cni(&self, command: &str, i: usize, prev: &Value) -> Result<Value, HostError> {
        let netns = format!("/proc/{}/fd/{}", std::process::id(), self.netns.as_raw_fd());
        self.run_plugin(command, &self.plugins[i], prev, Some(&netns))
    }

    /// Run the plugin `conf` names with `command`; no `netns`: the namespace is gone (`DEL`).
    fn run_plugin(
        &self,
        command: &str,
        conf: &Value,
        prev: &Value,
        netns: Option<&str>,
    ) -> Result<Value, HostError> {
        let mut conf = conf.clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!(NETWORK);
        if !prev.is_null() {
            conf["prevResult"] = prev.clone();
        }
        let typ = conf["type"].as_str().unwrap_or_default().to_string();
        let mut child = Command::new(self.cni_path.join(&typ))
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.info.id)
            .env("CNI_NETNS", netns.unwrap_or_default())
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(crate::io(format!("running the CNI plugin {typ}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            let _ = stdin.write_all(conf.to_string().as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(crate::io(format!("running the CNI plugin {typ}")))?;
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let msg = answer["msg"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            let details = answer["details"].as_str().unwrap_or_default();
            return Err(net_err(format!("CNI {typ} {command}: {msg} {details}")));
        }
        Ok(answer)
    }

    /// DEL every plugin, last first; the first error.
    fn del_all(&mut self) -> Result<(), HostError> {
        let mut first = None;
        let prev = self.result.clone();
        for i in (0..self.plugins.len()).rev() {
            if let Err(e) = self.cni("DEL", i, &prev) {
                first.get_or_insert(e);
            }
        }
        // The veth goes with its namespace end; make sure of the host end in any case.
        let veth = &self.info.host_veth;
        if !veth.is_empty() && Path::new("/sys/class/net").join(veth).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", "dev", veth])
                .stderr(Stdio::null())
                .status();
        }
        if first.is_none() {
            let _ = std::fs::remove_file(saved_path(&self.info.id));
        }
        first.map_or(Ok(()), Err)
    }

    /// The group's address, id and host veth.
    pub fn info(&self) -> &NetworkInfo {
        &self.info
    }

    /// The published ports.
    pub fn published(&self) -> &[Published] {
        &self.published
    }

    /// Remove the veth, the group's iptables rules and its address lease; release its ports.
    pub fn teardown(mut self) -> Result<(), HostError> {
        self.done = true;
        let _lock = lock()?;
        self.del_all()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            if let Ok(_lock) = lock() {
                let _ = self.del_all();
            }
        }
    }
}

/// The host's resolver configuration for the group: `/etc/resolv.conf`, or systemd-resolved's
/// upstream list when the former names only loopback resolvers (which the group cannot reach).
pub fn host_resolv_conf() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .filter(|t| t.len() <= MAX_RESOLV_CONF)
    };
    let main = read("/etc/resolv.conf").unwrap_or_default();
    let servers: Vec<&str> = main
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .collect();
    let loopback_only = !servers.is_empty()
        && servers.iter().all(|s| {
            s.parse::<std::net::IpAddr>()
                .map(|a| a.is_loopback())
                .unwrap_or(false)
        });
    if loopback_only {
        if let Some(upstream) = read("/run/systemd/resolve/resolv.conf") {
            return upstream;
        }
    }
    main
}

/// Write [`GroupNet`] for the agent (atomically: the agent reads it when it makes a container).
pub fn write_group_file(io_dir: &Path, net: &GroupNet) -> Result<(), HostError> {
    let tmp = io_dir.join(format!("{GROUP_FILE}.tmp"));
    let bytes = serde_json::to_vec(net).map_err(|e| HostError::Protocol(e.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(crate::io("writing net.json"))?;
    std::fs::rename(&tmp, io_dir.join(GROUP_FILE)).map_err(crate::io("writing net.json"))
}
