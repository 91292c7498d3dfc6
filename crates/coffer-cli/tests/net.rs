//! Groups on the network: outbound connections, published ports, names and limits, and teardown
//! that leaves no veth, rule or lease. As root, with the CNI plugins; otherwise skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::coffer;

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coffer_host::launch::{self as host, LaunchSpec};
use coffer_testkit::Need;

/// What a group with a network needs: root, runc, unshare, umoci, ip, iptables, the CNI plugins.
const NET: &[Need] = &[
    Need::Root,
    Need::Tool("runc"),
    Need::Tool("unshare"),
    Need::Tool("umoci"),
    Need::Tool("ip"),
    Need::Tool("iptables"),
    Need::Tool("iptables-save"),
    Need::Check("the CNI plugins", cni_plugins),
];

fn cni_plugins() -> Result<(), coffer_testkit::Unmet> {
    if coffer_host::net::available() {
        Ok(())
    } else {
        Err("containernetworking-plugins is not installed".into())
    }
}

/// Port 80 is privileged here (the test checks that only root may publish it).
fn port_80_is_privileged() -> Result<(), coffer_testkit::Unmet> {
    let unprivileged_start: u32 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
    if unprivileged_start <= 80 {
        Err("net.ipv4.ip_unprivileged_port_start lets anyone bind port 80".into())
    } else {
        Ok(())
    }
}

/// One group at a time (the checks for leftovers would see another test's group).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A home with the example image imported as hello:latest.
fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    common::import_example(tmp.path());
    tmp
}

/// A Pod `name` with one container `main` of the example image running `sh -c script`.
fn pod(home: &Path, name: &str, script: &str, ports: &str) -> PathBuf {
    let path = home.join(format!("{name}.yaml"));
    let mut yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n    - name: main\n      \
         image: hello:latest\n      command: [\"/bin/sh\", \"-c\", {}]\n",
        serde_json::Value::from(script)
    );
    if !ports.is_empty() {
        yaml.push_str(&format!("      ports: {ports}\n"));
    }
    std::fs::write(&path, yaml).unwrap();
    path
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?}");
}

/// A network namespace of the test's, with a veth to the host (10.199.77.1 host side,
/// 10.199.77.2 inside): a server outside every group. Removed when dropped.
struct Outside {
    ns: String,
    veth: String,
}

impl Outside {
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let (ns, veth, peer) = (
            format!("coffer-t{id}"),
            format!("cft{id}a"),
            format!("cft{id}b"),
        );
        let o = Outside {
            ns: ns.clone(),
            veth: veth.clone(),
        };
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
        ]);
        sh(&["ip", "link", "set", &peer, "netns", &ns]);
        sh(&["ip", "addr", "add", "10.199.77.1/30", "dev", &veth]);
        sh(&["ip", "link", "set", &veth, "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            "10.199.77.2/30",
            "dev",
            &peer,
        ]);
        sh(&["ip", "-n", &ns, "link", "set", &peer, "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        o
    }

    /// Serve one HTTP answer with `body` on 10.199.77.2:`port` inside the namespace.
    fn serve_once(&self, port: u16, body: &'static str) -> std::thread::JoinHandle<String> {
        let nsfile = std::fs::File::open(format!("/run/netns/{}", self.ns)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            // setns affects this thread only.
            nix::sched::setns(&nsfile, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = TcpListener::bind(("10.199.77.2", port)).unwrap();
            tx.send(()).unwrap();
            let (mut c, peer) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            write!(
                c,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            peer.ip().to_string()
        });
        rx.recv().unwrap();
        h
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn run_lines(home: &Path, pod: &Path) -> (bool, Vec<String>, String) {
    let out = coffer(home, &["run", pod.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix("[main] "))
            .map(str::to_string)
            .collect(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        a_group_reaches_a_server_outside_it: NET;
        a_published_port_answers_on_the_host: NET;
        a_port_is_published_on_the_address_asked_for_and_ps_shows_it: NET;
        a_group_has_its_name_hosts_resolver_and_file_limit: NET;
        teardown_leaves_no_veth_rule_or_lease: NET;
        a_port_already_in_use_is_a_clear_error: NET;
        a_host_port_below_1024_needs_root:
            Need::Tool("setpriv"),
            Need::Check("port 80 to be privileged", port_80_is_privileged),
            NET;
        a_debian_nginx_serves_a_file_through_a_published_port: NET, Need::Tool("curl"), NGINX;
        network_none_leaves_a_group_loopback_only: NET;
        a_killed_launchers_network_is_deleted_by_the_next_launch: NET;
        a_debian_redis_answers_ping_through_a_published_port_without_rlimit_warnings: NET, REDIS;
        a_debian_python_app_fetches_from_a_server_outside_the_group: NET, PYTHON;
        a_debian_postgres_stores_and_returns_rows_for_psql_on_the_host:
            NET,
            Need::Tool("psql"),
            POSTGRES;
        a_udp_port_is_published_end_to_end: Need::Tool("cc"), NET;
        a_group_reaches_outside_when_the_hosts_forward_policy_is_drop: NET;
        another_host_reaches_a_published_port_when_the_hosts_forward_policy_is_drop: NET;
    ])
}

fn a_group_reaches_a_server_outside_it() {
    let _serial = one_at_a_time();
    let tmp = setup();
    let home = tmp.path();
    let outside = Outside::new();
    let server = outside.serve_once(7777, "pong from outside");
    let pod = pod(
        home,
        "client",
        "wget -q -O - http://10.199.77.2:7777/ && echo",
        "",
    );
    let started = Instant::now();
    let (ok, lines, stderr) = run_lines(home, &pod);
    assert!(ok, "{lines:?}\n{stderr}");
    assert!(
        lines.iter().any(|l| l == "pong from outside"),
        "{lines:?}\n{stderr}"
    );
    // The group's address was masqueraded behind the host's.
    assert_eq!(server.join().unwrap(), "10.199.77.1");
    eprintln!("outbound: {:?}", started.elapsed());
    let dir = host::group_dir(home, "client");
    assert!(common::network_leftovers(&dir).is_empty());
}

/// `GET /hello.sh` from `to`, tried for up to 20 s until an HTTP answer comes: the answer.
fn get_hello(to: std::net::SocketAddr) -> Option<String> {
    let started = Instant::now();
    loop {
        let answer = (|| {
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            c.write_all(b"GET /hello.sh HTTP/1.0\r\nHost: x\r\n\r\n")
                .ok()?;
            let mut s = String::new();
            c.read_to_string(&mut s).ok()?;
            s.starts_with("HTTP/1.").then_some(s)
        })();
        if answer.is_some() || started.elapsed() > Duration::from_secs(20) {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The host's FORWARD policy set to DROP (as Docker sets it) until dropped, then restored.
struct ForwardDrop(String);

impl ForwardDrop {
    fn new() -> Self {
        let rules = Command::new("iptables")
            .args(["-S", "FORWARD"])
            .output()
            .unwrap();
        let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
        let was = rules
            .lines()
            .find_map(|l| l.strip_prefix("-P FORWARD "))
            .unwrap_or("ACCEPT")
            .trim()
            .to_string();
        sh(&["iptables", "-w", "-P", "FORWARD", "DROP"]);
        ForwardDrop(was)
    }
}

impl Drop for ForwardDrop {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-w", "-P", "FORWARD", &self.0])
            .status();
    }
}

/// The subnet's own FORWARD rules let the group's connections out and their answers back in
/// where the host drops forwarded traffic by default.
fn a_group_reaches_outside_when_the_hosts_forward_policy_is_drop() {
    let _serial = one_at_a_time();
    let tmp = setup();
    let home = tmp.path();
    let outside = Outside::new();
    let _drop = ForwardDrop::new();
    let server = outside.serve_once(7778, "pong through DROP");
    let pod = pod(
        home,
        "dropclient",
        "wget -q -O - http://10.199.77.2:7778/ && echo",
        "",
    );
    let (ok, lines, stderr) = run_lines(home, &pod);
    assert!(ok, "{lines:?}\n{stderr}");
    assert!(
        lines.iter().any(|l| l == "pong through DROP"),
        "{lines:?}\n{stderr}"
    );
    assert_eq!(server.join().unwrap(), "10.199.77.1");
}

/// A connection from another host to a port published on the host's address is forwarded to
/// the group (conntrack state DNAT) although the host drops forwarded traffic by default.
fn another_host_reaches_a_published_port_when_the_hosts_forward_policy_is_drop() {
    let _serial = one_at_a_time();
    let tmp = setup();
    let home = tmp.path();
    let outside = Outside::new();
    let _drop = ForwardDrop::new();
    let port = free_port();
    // Published on the host's address on the link to the other host (10.199.77.1).
    let _group = detached_httpd(home, "dropweb", "10.199.77.1", port);
    let nsfile = std::fs::File::open(format!("/run/netns/{}", outside.ns)).unwrap();
    let answer = std::thread::spawn(move || {
        nix::sched::setns(&nsfile, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        get_hello(std::net::SocketAddr::from(([10, 199, 77, 1], port)))
    })
    .join()
    .unwrap();
    let body = answer.unwrap_or_else(|| panic!("no answer on 10.199.77.1:{port} from outside"));
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
}

/// A detached group, stopped and removed when dropped, so a failing test leaves nothing running.
struct Detached<'a>(&'a Path, &'static str);

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        let _ = coffer(self.0, &["rm", "--force", self.1]);
    }
}

/// A detached group `name` serving the example image's files on 8080, published on
/// `address`:`port` (`coffer run --detach --publish-address`).
fn detached_httpd<'a>(
    home: &'a Path,
    name: &'static str,
    address: &str,
    port: u16,
) -> Detached<'a> {
    let pod = pod(
        home,
        name,
        HTTPD_8080,
        &format!("[{{containerPort: 8080, hostPort: {port}}}]"),
    );
    let o = coffer(
        home,
        &[
            "run",
            "--detach",
            "--publish-address",
            address,
            pod.to_str().unwrap(),
        ],
    );
    let group = Detached(home, name);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    group
}

/// `coffer run`, interrupted (Ctrl-C) and waited for when dropped, so a failing test leaves no
/// group running.
struct Interrupted(std::process::Child);

impl Interrupted {
    fn interrupt(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }
}

impl Drop for Interrupted {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.interrupt();
            let _ = self.0.wait();
        }
    }
}

/// The example image's files served on port 8080 until SIGTERM.
const HTTPD_8080: &str = "trap 'exit 0' TERM; /bin/busybox httpd -f -p 8080 -h /app & wait";

fn a_published_port_answers_on_the_host() {
    let _serial = one_at_a_time();
    let tmp = setup();
    let home = tmp.path();
    let port = free_port();
    let pod = pod(
        home,
        "web",
        HTTPD_8080,
        &format!("[{{containerPort: 8080, hostPort: {port}, name: http}}]"),
    );
    let policy = common::policy_gen(home, &pod);
    assert!(
        policy.contains(&format!(
            r#"coffer_ports := [{{"container":"main","container_port":8080,"host_port":{port},"protocol":"TCP","name":"http"}}]"#
        )),
        "{policy}"
    );
    let mut child = Interrupted(
        Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(["run", pod.to_str().unwrap()])
            .env("COFFER_HOME", home)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = std::io::BufReader::new(child.0.stderr.take().unwrap()).lines();
    let wired = loop {
        let line = stderr.next().expect("coffer run ended").unwrap();
        if line.contains(" published ") {
            break line;
        }
    };
    assert!(
        wired.contains(&format!("127.0.0.1:{port} -> 8080/TCP")),
        "{wired}"
    );
    let started = Instant::now();
    let body = get_hello(std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .unwrap_or_else(|| panic!("no answer on 127.0.0.1:{port}"));
    eprintln!("first answer after {:?}", started.elapsed());
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(
        body.contains("echo \"hello from a confidential container\""),
        "{body}"
    );
    // While the group publishes it, nobody else can take the port.
    assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err());
    child.interrupt();
    for _ in stderr {}
    assert!(child.0.wait().unwrap().success());
    let dir = host::group_dir(home, "web");
    assert!(!dir.exists());
    let left = common::network_leftovers(&dir);
    assert!(left.is_empty(), "{left:?}");
    // The port is free again.
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
}

/// `--publish-address 127.0.0.2`: the port answers there, not on 127.0.0.1, and `coffer ps`
/// shows the group's address and what it publishes.
fn a_port_is_published_on_the_address_asked_for_and_ps_shows_it() {
    let _serial = one_at_a_time();
    let tmp = setup();
    let home = tmp.path();
    let port = free_port();
    let _group = detached_httpd(home, "addr", "127.0.0.2", port);
    let asked = std::net::SocketAddr::from(([127, 0, 0, 2], port));
    let started = Instant::now();
    while TcpStream::connect_timeout(&asked, Duration::from_secs(2)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing on {asked}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
    let ps = String::from_utf8_lossy(&coffer(home, &["ps"]).stdout).into_owned();
    let row = ps
        .lines()
        .find(|l| l.starts_with("addr\t"))
        .unwrap_or_default();
    assert!(
        row.contains(&format!("127.0.0.2:{port} -> 8080/TCP")) && row.contains("10.88."),
        "{ps}"
    );
    let o = coffer(home, &["stop", "addr"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(common::group_leftovers(home, "addr"), Vec::<String>::new());
}

/// RLIMIT_NOFILE containers get: 1048576, or the host's maximum where that is lower (the
/// kernel's nr_open; the launcher's hard limit without CAP_SYS_RESOURCE).
fn expected_nofile() -> u64 {
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap();
    let mut max = nr_open.min(1 << 20);
    if eff & (1 << 24) == 0 {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let hard: u64 = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(4))
            .unwrap()
            .parse()
            .unwrap();
        max = max.min(hard);
    }
    max
}

fn a_group_has_its_name_hosts_resolver_and_file_limit() {
    let _serial = one_at_a_time();
    let tmp = setup();
    let home = tmp.path();
    let pod = pod(
        home,
        "names",
        "echo host=$(/bin/busybox hostname); echo file=$(cat /etc/hostname); cat /etc/hosts; \
         grep 'open files' /proc/self/limits; cat /etc/resolv.conf; \
         (echo x >> /etc/hosts) 2>/dev/null || echo hosts-read-only",
        "",
    );
    let (ok, lines, stderr) = run_lines(home, &pod);
    assert!(ok, "{lines:?}\n{stderr}");
    assert!(lines.contains(&"host=names".to_string()), "{lines:?}");
    assert!(lines.contains(&"file=names".to_string()), "{lines:?}");
    assert!(
        lines.contains(&"127.0.0.1\tlocalhost".to_string()),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("10.88.") && l.ends_with("\tnames")),
        "{lines:?}"
    );
    let n = expected_nofile();
    let limit = lines
        .iter()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        limit.split_whitespace().collect::<Vec<_>>()[3..5],
        [n.to_string(), n.to_string()],
        "{limit}"
    );
    for l in coffer_host::net::host_resolv_conf().lines() {
        assert!(
            lines.iter().any(|x| x == l),
            "resolv.conf line {l:?} in {lines:?}"
        );
    }
    assert!(lines.contains(&"hosts-read-only".to_string()), "{lines:?}");
    eprintln!("nofile {n}");
}

fn launch(home: &Path, name: &str, policy: &str) -> Result<host::Group, coffer_host::HostError> {
    host::launch(LaunchSpec {
        home: home.to_path_buf(),
        name: name.into(),
        policy: policy.as_bytes().to_vec(),
        host_data: coffer_policy::digest(policy.as_bytes()),
        agent_exe: common::agent_exe(),
        volumes: vec![],
        network: Default::default(),
    })
}

fn teardown_leaves_no_veth_rule_or_lease() {
    let _serial = one_at_a_time();
    let tmp = setup();
    let home = tmp.path();
    let port = free_port();
    let pod = pod(
        home,
        "gone",
        "true",
        &format!("[{{containerPort: 80, hostPort: {port}}}, {{containerPort: 53, hostPort: {port}, protocol: UDP}}]"),
    );
    let policy = common::policy_gen(home, &pod);
    let group = launch(home, "gone", &policy).unwrap();
    let net = group.network().unwrap();
    let info = net.info().clone();
    assert_eq!(net.published().len(), 2);
    assert!(info.address.octets()[..2] == [10, 88], "{info:?}");
    assert!(Path::new("/sys/class/net").join(&info.host_veth).exists());
    let dir = group.dir.clone();
    let live = common::network_leftovers(&dir);
    assert!(live.iter().any(|l| l.starts_with("lease:")), "{live:?}");
    assert!(live.iter().any(|l| l.contains("DNAT")), "{live:?}");
    // Outbound NAT is one rule for the subnet, shared and kept.
    let nat = String::from_utf8(
        Command::new("iptables-save")
            .args(["-t", "nat"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        nat.contains("-A POSTROUTING -s 10.88.0.0/16 ! -d 10.88.0.0/16 -m comment --comment \"coffer groups outbound NAT\" -j MASQUERADE"),
        "{nat}"
    );
    group.shutdown().unwrap();
    assert!(
        !Path::new("/sys/class/net").join(&info.host_veth).exists(),
        "veth {} left behind",
        info.host_veth
    );
    let left = common::network_leftovers(&dir);
    assert!(left.is_empty(), "{left:?}");
    let save = String::from_utf8(Command::new("iptables-save").output().unwrap().stdout).unwrap();
    let ip = format!("{}/32", info.address);
    assert!(!save.contains(&ip), "rules for {ip} left behind:\n{save}");
    assert!(!dir.exists());
}

fn a_port_already_in_use_is_a_clear_error() {
    let _serial = one_at_a_time();
    let tmp = setup();
    let home = tmp.path();
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let pod = pod(
        home,
        "busy",
        "true",
        &format!("[{{containerPort: 80, hostPort: {port}}}]"),
    );
    let policy = common::policy_gen(home, &pod);
    let err = launch(home, "busy", &policy)
        .err()
        .expect("the port is taken");
    assert!(
        err.to_string().contains(&format!(
            "publishing 127.0.0.1:{port}/TCP: the port is already in use on the host"
        )),
        "{err}"
    );
    let dir = host::group_dir(home, "busy");
    assert!(!dir.exists());
    assert!(common::network_leftovers(&dir).is_empty());
    // Through the CLI: the same message, and a failing exit.
    let out = coffer(home, &["run", pod.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(taken);
}

fn a_host_port_below_1024_needs_root() {
    let _serial = one_at_a_time();
    let tmp = setup();
    let home = tmp.path();
    let pod = pod(home, "low", "true", "[{containerPort: 80, hostPort: 80}]");
    sh(&["chown", "-R", "65534:65534", home.to_str().unwrap()]);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_coffer"))
        .args(["run", pod.to_str().unwrap()])
        .env("COFFER_HOME", home)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("publishing 127.0.0.1:80/TCP: host ports below 1024 need root"),
        "{stderr}"
    );
    assert!(!host::group_dir(home, "low").exists());
}

/// Where the `app` image is cached: named after its build script's SHA-256 (first 16 hex
/// digits), so a changed script builds a new image; `scripts/app-images.sh` fills the same cache.
fn app_cache(app: &str) -> PathBuf {
    let script = std::fs::read(app_script(app)).unwrap_or_default();
    let hash = hex::encode(openssl::sha::sha256(&script));
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("../coffer-apps/{app}-bookworm-{}", &hash[..16]))
}

fn app_script(app: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../examples/{app}/build-image.sh"))
}

/// The image `app` is cached, or mmdebstrap is here to build it.
fn app_buildable(app: &str) -> Result<(), coffer_testkit::Unmet> {
    if app_cache(app).join("index.json").exists() || coffer_testkit::on_path("mmdebstrap") {
        Ok(())
    } else {
        Err("mmdebstrap is not on PATH".into())
    }
}

const NGINX: Need = Need::Check("the nginx image", || app_buildable("nginx"));
const REDIS: Need = Need::Check("the redis image", || app_buildable("redis"));
const PYTHON: Need = Need::Check("the python image", || app_buildable("python"));
const POSTGRES: Need = Need::Check("the postgres image", || app_buildable("postgres"));

/// The Debian application images the tests use.
const APPS: [&str; 4] = ["nginx", "redis", "python", "postgres"];

/// A Debian application image built by `examples/<app>/build-image.sh` (mmdebstrap + umoci),
/// cached under target/coffer-apps. The first call starts building every missing one, two at a
/// time (mmdebstrap mostly waits on one core and on the mirror), so the app tests wait for the
/// builds in pairs rather than one after another. When no package mirror can be reached the test
/// cannot run here: it is reported as ignored (a failure under `COFFER_REQUIRE_VECTORS=1`).
fn app_image(app: &str) -> PathBuf {
    type Build = std::sync::mpsc::Receiver<Result<PathBuf, String>>;
    static BUILDS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::BTreeMap<String, Build>>,
    > = std::sync::OnceLock::new();
    let builds = BUILDS.get_or_init(|| {
        let queue: Vec<&str> = APPS
            .into_iter()
            .filter(|a| !app_cache(a).join("index.json").exists())
            .collect();
        let mut receivers = std::collections::BTreeMap::new();
        let mut senders = std::collections::VecDeque::new();
        for a in &queue {
            let (tx, rx) = std::sync::mpsc::channel();
            receivers.insert(a.to_string(), rx);
            senders.push_back((a.to_string(), tx));
        }
        let senders = std::sync::Arc::new(std::sync::Mutex::new(senders));
        for _ in 0..2 {
            let senders = senders.clone();
            std::thread::spawn(move || loop {
                let Some((a, tx)) = senders.lock().unwrap().pop_front() else {
                    return;
                };
                let _ = tx.send(build_app_image(&a));
            });
        }
        std::sync::Mutex::new(receivers)
    });
    let cache = app_cache(app);
    if cache.join("index.json").exists() {
        return cache;
    }
    let pending = builds.lock().unwrap().remove(app);
    let built = match pending {
        Some(rx) => rx
            .recv()
            .unwrap_or_else(|_| Err(format!("the build of the {app} image ended early"))),
        // Its build already failed for an earlier test: try once more.
        None => build_app_image(app),
    };
    built.unwrap_or_else(|why| coffer_testkit::skip(why))
}

/// Build the `app` image into its cache directory (renamed into place when complete).
fn build_app_image(app: &str) -> Result<PathBuf, String> {
    let cache = app_cache(app);
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    let building = cache.with_extension(format!("building-{}", std::process::id()));
    let script = app_script(app);
    let t0 = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(&building)
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&building);
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "mmdebstrap could not build the {app} image (no package mirror?): {why}"
        ));
    }
    std::fs::rename(&building, &cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    eprintln!(
        "built the {app} image in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(cache)
}

/// README's "A web server, step by step", with `examples/nginx/pod.yaml` on a free host port:
/// run detached, fetch a file, read nginx's access log through `coffer logs`, stop, remove, and
/// nothing of the group is left on the host.
fn a_debian_nginx_serves_a_file_through_a_published_port() {
    let _serial = one_at_a_time();
    let image = app_image("nginx");
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let o = coffer(
        home,
        &[
            "image",
            "import",
            &format!("oci:{}:latest", image.display()),
            "--name",
            "nginx:bookworm",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let port = free_port();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nginx/pod.yaml");
    let yaml = std::fs::read_to_string(example).unwrap();
    assert!(yaml.contains("hostPort: 8080"), "{yaml}");
    let pod = home.join("web.yaml");
    std::fs::write(
        &pod,
        yaml.replace("hostPort: 8080", &format!("hostPort: {port}")),
    )
    .unwrap();
    let started = Instant::now();
    let o = coffer(home, &["run", "--detach", pod.to_str().unwrap()]);
    let _group = Detached(home, "web");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "web");
    let url = format!("http://127.0.0.1:{port}/coffer.txt");
    let body = loop {
        let out = Command::new("curl")
            .args(["-sS", "-f", "-m", "5", &url])
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "nginx did not answer on {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("curl {url} after {:?}: {body}", started.elapsed());
    assert_eq!(body, "hello from nginx in a confidential group\n");
    // nginx's access log goes to its stdout (the image links it there), which the policy lets
    // the host read.
    let logged = Instant::now();
    let logs = loop {
        let o = coffer(home, &["logs", "web"]);
        let logs = String::from_utf8_lossy(&o.stdout).into_owned();
        if logs.contains("GET /coffer.txt") || logged.elapsed() > Duration::from_secs(10) {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(logs.contains("\"GET /coffer.txt HTTP/1.1\" 200"), "{logs}");
    let o = coffer(home, &["stop", "web"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(common::group_leftovers(home, "web"), Vec::<String>::new());
    let o = coffer(home, &["rm", "web"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = coffer(home, &["ps"]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("web"));
}

fn network_none_leaves_a_group_loopback_only() {
    let _serial = one_at_a_time();
    let tmp = setup();
    let home = tmp.path();
    let pod = pod(
        home,
        "alone",
        "ls /sys/class/net; cat /etc/hosts; echo host=$(/bin/busybox hostname)",
        "",
    );
    let out = coffer(home, &["run", pod.to_str().unwrap(), "--network", "none"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("[main] "))
        .collect();
    assert_eq!(lines[0], "lo", "{lines:?}");
    assert!(lines.contains(&"127.0.1.1\talone"), "{lines:?}");
    assert!(lines.contains(&"host=alone"), "{lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("10.88.")), "{lines:?}");
    // Ports need the bridge network.
    let port = free_port();
    let published = self::pod(
        home,
        "alone",
        "true",
        &format!("[{{containerPort: 80, hostPort: {port}}}]"),
    );
    let out = coffer(
        home,
        &["run", published.to_str().unwrap(), "--network", "none"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs the bridge network"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn a_killed_launchers_network_is_deleted_by_the_next_launch() {
    let _serial = one_at_a_time();
    let tmp = setup();
    let home = tmp.path();
    let port = free_port();
    let ports = format!("[{{containerPort: 80, hostPort: {port}}}]");
    let long = pod(home, "crash", "sleep 1000", &ports);
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["run", long.to_str().unwrap()])
        .env("COFFER_HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = stderr.next().expect("coffer run ended").unwrap();
        if line.contains(" published ") {
            break;
        }
    }
    let dir = host::group_dir(home, "crash");
    let sandbox: i32 = std::fs::read_to_string(dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The launcher dies without tearing anything down; so does its sandbox.
    child.kill().unwrap();
    child.wait().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sandbox),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let gone = Instant::now();
    while Path::new(&format!("/proc/{sandbox}")).exists() {
        assert!(gone.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = common::network_leftovers(&dir);
    assert!(left.iter().any(|l| l.starts_with("lease:")), "{left:?}");
    assert!(left.iter().any(|l| l.contains("DNAT")), "{left:?}");
    // The next launch of the group deletes them first, then runs and tears down as usual.
    let again = pod(home, "crash", "echo again", &ports);
    let out = coffer(home, &["run", again.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("[main] again"));
    let left = common::network_leftovers(&dir);
    assert!(left.is_empty(), "{left:?}");
    // The killed group's container cgroups (not the network's business).
    host::sweep_cgroups();
}

fn a_debian_redis_answers_ping_through_a_published_port_without_rlimit_warnings() {
    let _serial = one_at_a_time();
    let image = app_image("redis");
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let o = coffer(
        home,
        &[
            "image",
            "import",
            &format!("oci:{}:latest", image.display()),
            "--name",
            "redis:bookworm",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let port = free_port();
    let pod = home.join("redis.yaml");
    std::fs::write(
        &pod,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: redis}}\nspec:\n  containers:\n    - name: redis\n      \
             image: redis:bookworm\n      ports: [{{containerPort: 6379, hostPort: {port}}}]\n"
        ),
    )
    .unwrap();
    // As a user would: in the background, then talk to it, read its log, stop it.
    let o = coffer(home, &["run", "--detach", pod.to_str().unwrap()]);
    let _group = Detached(home, "redis");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let started = Instant::now();
    let pong = loop {
        let answer = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 64];
            let n = std::io::Read::read(&mut s, &mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        });
        match answer {
            Ok(a) if !a.is_empty() => break a,
            _ => {
                assert!(
                    started.elapsed() < Duration::from_secs(90),
                    "redis did not answer"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert_eq!(pong.trim(), "+PONG");
    let logs = coffer(home, &["logs", "redis"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("Ready to accept connections"), "{logs}");
    assert!(
        !logs.contains("open files"),
        "redis lowered maxclients: {logs}"
    );
    let o = coffer(home, &["stop", "redis"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(common::group_leftovers(home, "redis"), Vec::<String>::new());
    let o = coffer(home, &["rm", "redis"]);
    assert!(o.status.success());
}

fn a_debian_python_app_fetches_from_a_server_outside_the_group() {
    let _serial = one_at_a_time();
    let tmp = setup();
    let image = app_image("python");
    let home = tmp.path();
    let o = coffer(
        home,
        &[
            "image",
            "import",
            &format!("oci:{}:latest", image.display()),
            "--name",
            "python:bookworm",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let outside = Outside::new();
    let server = outside.serve_once(7778, "answer from outside");
    let app = "import urllib.request; print(urllib.request.urlopen('http://10.199.77.2:7778/', timeout=20).read().decode())";
    let pod = home.join("app.yaml");
    std::fs::write(
        &pod,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: app}}\nspec:\n  containers:\n    - name: main\n      \
             image: python:bookworm\n      command: [\"python3\", \"-c\", {}]\n",
            serde_json::Value::from(app)
        ),
    )
    .unwrap();
    let (ok, lines, stderr) = run_lines(home, &pod);
    assert!(ok, "{lines:?}\n{stderr}");
    assert!(
        lines.iter().any(|l| l == "answer from outside"),
        "{lines:?}\n{stderr}"
    );
    assert_eq!(server.join().unwrap(), "10.199.77.1");
    assert_eq!(common::group_leftovers(home, "app"), Vec::<String>::new());
}

fn a_debian_postgres_stores_and_returns_rows_for_psql_on_the_host() {
    let _serial = one_at_a_time();
    let image = app_image("postgres");
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let o = coffer(
        home,
        &[
            "image",
            "import",
            &format!("oci:{}:latest", image.display()),
            "--name",
            "postgres:bookworm",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let port = free_port();
    let pod = home.join("pg.yaml");
    std::fs::write(
        &pod,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: pg}}\nspec:\n  containers:\n    - name: db\n      \
             image: postgres:bookworm\n      ports: [{{containerPort: 5432, hostPort: {port}}}]\n"
        ),
    )
    .unwrap();
    let o = coffer(home, &["run", "--detach", pod.to_str().unwrap()]);
    let _group = Detached(home, "pg");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let psql = |sql: &str| {
        Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-tAc",
                sql,
            ])
            .output()
            .unwrap()
    };
    let started = Instant::now();
    while !psql("select 1").status.success() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "postgres did not answer"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let o = psql("create table t (x int, s text); insert into t values (42, 'confidential'); select x, s from t");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.lines().any(|l| l == "42|confidential"), "{out}");
    let o = coffer(home, &["stop", "pg"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(common::group_leftovers(home, "pg"), Vec::<String>::new());
    let o = coffer(home, &["rm", "pg"]);
    assert!(o.status.success());
}

/// A UDP echo server (static, so it runs in the busybox image): answers each datagram with itself.
const UDP_ECHO_C: &str = r#"
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(argc > 1 ? atoi(argv[1]) : 5353);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("bind"); return 1; }
    printf("udp echo listening\n");
    fflush(stdout);
    char buf[2048];
    for (;;) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
        if (n < 0) return 1;
        sendto(s, buf, n, 0, (struct sockaddr *)&peer, len);
    }
}
"#;

fn a_udp_port_is_published_end_to_end() {
    let _serial = one_at_a_time();
    let tmp = setup();
    let home = tmp.path();
    // The example image with the echo server added as a layer (umoci, as the example is built).
    let src = home.join("udpecho.c");
    std::fs::write(&src, UDP_ECHO_C).unwrap();
    let bin = home.join("udpecho");
    sh(&[
        "cc",
        "-static",
        "-O2",
        "-o",
        bin.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    let oci = format!("{}:latest", home.join("hello").display());
    // (unpack and repack: umoci 0.4.7's `insert` writes a layer tar without its end blocks.)
    let bundle = home.join("bundle");
    let b = bundle.to_str().unwrap();
    sh(&["umoci", "unpack", "--rootless", "--image", &oci, b]);
    std::fs::copy(&bin, bundle.join("rootfs/bin/udpecho")).unwrap();
    sh(&["umoci", "repack", "--image", &oci, b]);
    let o = coffer(
        home,
        &[
            "image",
            "import",
            &format!("oci:{oci}"),
            "--name",
            "udpecho:1",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A free UDP port on the host.
    let port = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pod = pod(
        home,
        "echo",
        "trap 'exit 0' TERM; /bin/udpecho 5353 & wait",
        &format!("[{{containerPort: 5353, hostPort: {port}, protocol: UDP}}]"),
    );
    let yaml = std::fs::read_to_string(&pod)
        .unwrap()
        .replace("hello:latest", "udpecho:1");
    std::fs::write(&pod, yaml).unwrap();
    let policy = common::policy_gen(home, &pod);
    assert!(
        policy.contains(&format!(
            r#"coffer_ports := [{{"container":"main","container_port":5353,"host_port":{port},"protocol":"UDP"}}]"#
        )),
        "{policy}"
    );
    let mut child = Interrupted(
        Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(["run", pod.to_str().unwrap()])
            .env("COFFER_HOME", home)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = std::io::BufReader::new(child.0.stderr.take().unwrap()).lines();
    let wired = loop {
        let line = stderr.next().expect("coffer run ended").unwrap();
        if line.contains(" published ") {
            break line;
        }
    };
    assert!(
        wired.contains(&format!("127.0.0.1:{port} -> 5353/UDP")),
        "{wired}"
    );
    // While the group publishes it, nobody else can take the port.
    assert!(std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_err());
    let client = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let answer = loop {
        client
            .send_to(b"ping over udp", (Ipv4Addr::LOCALHOST, port))
            .unwrap();
        if let Ok((n, from)) = client.recv_from(&mut buf) {
            break (buf[..n].to_vec(), from);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no UDP answer on 127.0.0.1:{port}"
        );
    };
    assert_eq!(answer.0, b"ping over udp");
    // The answer comes from the published address, as from any UDP server there.
    assert_eq!(
        answer.1,
        std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    );
    // Only UDP is published on that port: TCP finds nothing.
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
    child.interrupt();
    for l in stderr {
        eprintln!("coffer: {}", l.unwrap_or_default());
    }
    assert!(child.0.wait().unwrap().success());
    let dir = host::group_dir(home, "echo");
    assert!(!dir.exists());
    let left = common::network_leftovers(&dir);
    assert!(left.is_empty(), "{left:?}");
    std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
}
