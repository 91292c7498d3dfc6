//! The agent as PID 1 of a group's VM (`coffer-agent --vm`, the initramfs's init).
//!
//! Boot: leave the initramfs for a bind mount of it (runc's `pivot_root` cannot leave the
//! initramfs itself), mount proc/sys/devtmpfs/cgroup2/run, load the kernel modules `coffer uvm
//! build` listed in dependency order (those for PCI, the network and encrypted volumes only when
//! the group has them: [`ModuleSet`]), open the virtio-serial port `coffer.0` and run the
//! multiplexer on it. The agent then sees the same I/O directory as in the namespace backend: the
//! emulated secure processor and the egress relay are Unix sockets there whose connections become
//! streams to the launcher. Layers are read-only virtio-blk disks, mapped through dm-verity with the root the
//! policy approved (`agent.rs`, `dm.rs`); nothing the host sends is written into the guest.
//!
//! Services on the channel (stream names): guest -> host `policy` (the host writes the policy,
//! checked against HOST_DATA like any other input), `sp`, `egress`, `ready` (the agent's
//! verdict: `ok` or the reason it refuses); host -> guest `agent` (the protocol, one connection
//! per stream).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_mux::{Mux, Side};

use crate::{io, sys, AgentError};
use coffer_proto::layout::ModuleSet;
use coffer_proto::IO_DIR;
use nix::mount::{mount, MsFlags};

/// Name of the virtio-serial port carrying the channel.
pub const PORT_NAME: &str = "coffer.0";
/// Largest policy accepted.
const MAX_POLICY: u64 = 16 << 20;

/// Run as the VM's init; ends the VM when the agent is done (never returns).
pub fn main() -> ! {
    let code = match boot_and_serve() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("coffer agent: {e}");
            1
        }
    };
    eprintln!("coffer agent: powering off ({code})");
    nix::unistd::sync();
    // With QEMU's -no-reboot a reset ends the VM; a power-off where the machine has one.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    std::process::exit(code)
}

fn boot_and_serve() -> Result<(), AgentError> {
    let t0 = Instant::now();
    // The kernel gives init no PATH; the agent runs mount, ip and runc by name.
    std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    leave_initramfs()?;
    let left = t0.elapsed();
    mount_basics()?;
    // The kernel's own part of the start (uptime when init began), for the console's timing line.
    let booted = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| (s * 1000.0) as u128)
        .saturating_sub(t0.elapsed().as_millis());
    load_modules(ModuleSet::Channel);
    // SNP's q35 machine puts the devices on PCI; microvm has no PCI bus.
    if std::fs::read_dir("/sys/bus/pci/devices").is_ok_and(|mut d| d.next().is_some()) {
        load_modules(ModuleSet::Pci);
    }
    // Disks, dm-verity and the file systems load on another vCPU while the policy is fetched
    // and checked (ext4 alone takes ~160 ms under TCG); nothing is mounted before they are in.
    let storage = std::thread::spawn(|| load_modules(ModuleSet::Storage));
    let port = find_port(Duration::from_secs(20))?;
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)
        .map_err(io(format!("opening {}", port.display())))?;
    let writer = reader.try_clone().map_err(io("duplicating the port"))?;
    let mux = Mux::new(reader, writer, Side::Guest);
    let io_dir = PathBuf::from(IO_DIR);
    std::fs::create_dir_all(io_dir.join("layers")).map_err(io("creating the I/O directory"))?;
    let _sp = coffer_mux::unix::Forward::start(mux.clone(), &io_dir.join("sp.sock"), "sp")?;
    let _egress =
        coffer_mux::unix::Forward::start(mux.clone(), &io_dir.join("egress.sock"), "egress")?;
    let policy = ask(&mux, "policy", MAX_POLICY)?;
    let _ = std::fs::write(io_dir.join("policy.rego"), &policy);
    if let Err(e) = guest_network(&mux, &io_dir) {
        // Host data that does not parse: the group runs with loopback only.
        eprintln!("coffer agent: network: {e}");
    }
    let sp: Arc<dyn coffer_sp::SecureProcessor> = if coffer_sp::sev_guest::SevGuest::available() {
        Arc::new(coffer_sp::sev_guest::SevGuest::new(
            Path::new("/dev/sev-guest"),
            0,
        ))
    } else {
        Arc::new(coffer_sp::EmulatedClient::new(&io_dir.join("sp.sock")))
    };
    let volume_disks = volume_disks(&mux)?;
    let has_volumes = !volume_disks.is_empty();
    let verdict = crate::agent::start(&policy, sp)
        .map(|a| a.with_layer_disks().with_volume_disks(volume_disks));
    let _ = storage.join();
    if has_volumes && verdict.is_ok() {
        // dm-crypt needs dm-mod, which came with dm-verity.
        load_modules(ModuleSet::Volumes);
    }
    let loaded = t0.elapsed();
    let ready = mux.open("ready")?;
    match &verdict {
        Ok(_) => {
            let _ = (&ready).write_all(b"ok");
            eprintln!(
                "coffer agent: serving {} ms after init ({} ms after boot; initramfs left at {} ms, \
                 modules loaded at {} ms)",
                t0.elapsed().as_millis(),
                booted + t0.elapsed().as_millis(),
                left.as_millis(),
                loaded.as_millis()
            );
        }
        Err(e) => {
            let _ = (&ready).write_all(e.to_string().as_bytes());
        }
    }
    drop(ready);
    let agent = match verdict {
        Ok(a) => a,
        Err(e) => {
            mux.flush(Duration::from_secs(5));
            return Err(e);
        }
    };
    let accept_mux = mux.clone();
    let result = agent.serve_connections(&io_dir.join("egress.sock"), move || loop {
        let s = accept_mux.accept().ok()?;
        match s.service() {
            "agent" => return Some(s),
            other => eprintln!("coffer agent: unknown service '{}'", other.escape_debug()),
        }
    });
    // The shutdown answer must reach the host before the VM goes.
    mux.flush(Duration::from_secs(5));
    result
}

/// What the host answers on the guest -> host stream `service`, at most `limit` bytes.
fn ask(mux: &Mux, service: &str, limit: u64) -> Result<Vec<u8>, AgentError> {
    let s = mux.open(service)?;
    s.shutdown_write()
        .map_err(io(format!("asking the host for '{service}'")))?;
    let mut bytes = Vec::new();
    (&s).take(limit)
        .read_to_end(&mut bytes)
        .map_err(io(format!("reading the host's '{service}'")))?;
    Ok(bytes)
}

/// Which virtio serial holds which encrypted volume (`volumes` stream: a JSON object of
/// volume name -> serial). Host data: a wrong entry opens nothing (see
/// `Agent::with_volume_disks`).
fn volume_disks(mux: &Mux) -> Result<std::collections::BTreeMap<String, String>, AgentError> {
    parse_volume_disks(&ask(mux, "volumes", 64 << 10)?)
}

/// The group's network as the host describes it (`net` stream, host data like the rest): kept
/// as `net.json` for the containers' /etc files, and the NIC configured with its address, the
/// gateway as default route. No address: loopback only.
fn guest_network(mux: &Mux, io_dir: &Path) -> Result<(), AgentError> {
    let bytes = ask(mux, "net", 2 * coffer_proto::MAX_RESOLV_CONF as u64 + 1)?;
    let net = parse_net(&bytes)?;
    std::fs::write(io_dir.join(coffer_proto::GROUP_FILE), &bytes)
        .map_err(io("writing net.json"))?;
    let Some(address) = net.address else {
        return Ok(());
    };
    load_modules(ModuleSet::Net);
    // The gateway is the subnet's .2, as QEMU's user-mode network has it.
    let [a, b, c, _] = address.octets();
    let gateway = std::net::Ipv4Addr::new(a, b, c, 2);
    let steps: [&[&str]; 3] = [
        &["addr", "add", &format!("{address}/24"), "dev", "eth0"],
        &["link", "set", "eth0", "up"],
        &["route", "add", "default", "via", &gateway.to_string()],
    ];
    for args in steps {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .map_err(io("running ip"))?;
        if !out.status.success() {
            return Err(AgentError::Agent(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// The host's network description: bounded, every field typed, nothing unknown.
fn parse_net(bytes: &[u8]) -> Result<coffer_proto::GroupNet, AgentError> {
    if bytes.len() > 2 * coffer_proto::MAX_RESOLV_CONF {
        return Err(AgentError::Agent(
            "the network description is too large".into(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| AgentError::Agent(format!("the network description: {e}")))
}

/// The host's map of encrypted volume name -> disk serial.
fn parse_volume_disks(
    bytes: &[u8],
) -> Result<std::collections::BTreeMap<String, String>, AgentError> {
    serde_json::from_slice(bytes).map_err(|e| AgentError::Agent(format!("the volume disks: {e}")))
}

/// Leave the initramfs without copying it. runc's `pivot_root` needs the root to be a mount with
/// a parent, which the initramfs (the kernel's rootfs) is not; a recursive bind of `/` on
/// `/newroot`, moved over `/` and chrooted into, is one. The files stay where the kernel unpacked
/// them: no copy of its 32 MB (~200 ms under TCG) and no second copy in memory.
fn leave_initramfs() -> Result<(), AgentError> {
    let new = Path::new("/newroot");
    std::fs::create_dir_all(new).map_err(io("mkdir /newroot"))?;
    mount(
        Some("/"),
        new,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("binding the initramfs on /newroot"))?;
    nix::unistd::chdir(new).map_err(sys("chdir /newroot"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("moving the root"))?;
    nix::unistd::chroot(".").map_err(sys("chroot"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    Ok(())
}

fn mount_basics() -> Result<(), AgentError> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for (src, dst, fs, flags) in [
        ("proc", "/proc", "proc", nosuid),
        ("sysfs", "/sys", "sysfs", nosuid),
        ("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        ),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid),
    ] {
        std::fs::create_dir_all(dst).map_err(io(format!("mkdir {dst}")))?;
        mount(Some(src), dst, Some(fs), flags, None::<&str>)
            .map_err(sys(format!("mount {dst}")))?;
    }
    Ok(())
}

/// Load the listed modules in order; one that fails (e.g. a CPU-specific one on another CPU) is
/// reported and skipped: a missing driver shows up as its own error later.
/// Load the modules of `set` from its list (written by `coffer uvm build`), in order.
fn load_modules(set: ModuleSet) {
    let Ok(list) = std::fs::read_to_string(set.list()) else {
        eprintln!("coffer agent: no {}", set.list());
        return;
    };
    for path in list.lines().filter(|l| !l.trim().is_empty()) {
        let loaded = std::fs::File::open(path)
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc_enoent())))
            .and_then(|f| nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()));
        match loaded {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            // sev-guest outside an SNP guest: expected, the emulated processor is used.
            Err(nix::Error::ENODEV) if path.contains("sev-guest") || path.contains("sev_guest") => {
            }
            Err(e) => eprintln!("coffer agent: module {path}: {e}"),
        }
    }
}

fn libc_enoent() -> i32 {
    nix::Error::ENOENT as i32
}

/// The character device of the virtio-serial port named [`PORT_NAME`].
fn find_port(timeout: Duration) -> Result<PathBuf, AgentError> {
    let t0 = Instant::now();
    loop {
        if let Ok(ports) = std::fs::read_dir("/sys/class/virtio-ports") {
            for p in ports.flatten() {
                let name = std::fs::read_to_string(p.path().join("name")).unwrap_or_default();
                if name.trim() == PORT_NAME {
                    let dev = Path::new("/dev").join(p.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if t0.elapsed() > timeout {
            return Err(AgentError::Io {
                what: format!("finding the virtio-serial port {PORT_NAME}"),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_description_larger_than_the_bound_is_refused() {
        let big = vec![b' '; 2 * coffer_proto::MAX_RESOLV_CONF + 1];
        let e = parse_net(&big).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn a_network_description_that_is_not_json_is_refused() {
        let e = parse_net(b"address=10.0.2.15").unwrap_err().to_string();
        assert!(e.contains("the network description"), "{e}");
    }

    #[test]
    fn a_network_description_with_an_unknown_field_is_refused() {
        let e = parse_net(br#"{"name":"g","resolv_conf":"","routes":["0.0.0.0/0"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn a_network_address_that_is_not_ipv4_is_refused() {
        let e = parse_net(br#"{"name":"g","resolv_conf":"","address":"10.0.2.15; reboot"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the network description"), "{e}");
    }

    #[test]
    fn a_well_formed_network_description_is_read() {
        let net = parse_net(
            br#"{"name":"g","resolv_conf":"nameserver 10.0.2.3\n","address":"10.0.2.15"}"#,
        )
        .unwrap();
        assert_eq!(net.address, Some(std::net::Ipv4Addr::new(10, 0, 2, 15)));
    }

    #[test]
    fn a_volume_disk_map_that_is_not_names_to_serials_is_refused() {
        let e = parse_volume_disks(br#"{"data":7}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the volume disks"), "{e}");
    }
}
