//! The VM backend under QEMU (TCG here): the guest image is deterministic; the hello group runs
//! in a VM with its output streamed and its exit status passed through; an agent whose policy is
//! not HOST_DATA refuses; layer disks are read through dm-verity, and disks that lie are not
//! mounted; a killed launcher takes its VM along; a group reaches out and serves on its port;
//! nothing is left behind. Reported as ignored without qemu-system-x86_64 or the kernel package.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_host::cpio::{Archive, Node};
use coffer_host::launch::LaunchSpec;
use coffer_testkit::Need;

/// One VM at a time: the CI machine has two cores, and each test checks for leftover QEMUs.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Downloaded kernel packages, kept across tests and runs.
fn kernels() -> PathBuf {
    std::env::temp_dir().join("coffer-uvm-kernels")
}

/// QEMU and the kernel package.
const VM: &[Need] = &[Need::Tool("qemu-system-x86_64"), KERNEL];

/// What a group test needs: a VM, and root, runc, umoci.
const VM_GROUP: &[Need] = &[
    Need::Tool("qemu-system-x86_64"),
    KERNEL,
    Need::Root,
    Need::Tool("runc"),
    Need::Tool("umoci"),
];

/// The kernel package, downloaded into `kernels()` once (`COFFER_UVM_KERNELS`, set by `main`).
const KERNEL: Need = Need::Check("the kernel package", kernel_package);

fn kernel_package() -> Result<(), coffer_testkit::Unmet> {
    let home = tempfile::tempdir().map_err(|e| e.to_string())?;
    coffer_host::image::kernel_deb(home.path(), None)
        .map(drop)
        .map_err(|e| e.to_string().into())
}

/// A fresh home with the example image imported and the guest image built.
fn home_with_hello() -> (tempfile::TempDir, coffer_host::image::GuestImage) {
    let tmp = tempfile::tempdir().unwrap();
    common::import_example(tmp.path());
    let image = build(tmp.path());
    (tmp, image)
}

fn build(home: &Path) -> coffer_host::image::GuestImage {
    coffer_host::image::build(&coffer_host::image::BuildOptions {
        home: home.to_path_buf(),
        agent: common::agent_exe(),
        kernel_deb: None,
    })
    .unwrap()
}

/// QEMU processes whose command line mentions `needle`.
fn qemus_with(needle: &str) -> Vec<String> {
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with("qemu-system") && cmd.contains(needle) {
            found.push(cmd);
        }
    }
    found
}

fn assert_nothing_left(home: &Path, name: &str) {
    let dir = coffer_host::launch::group_dir(home, name);
    assert!(!dir.exists(), "{} left behind", dir.display());
    let q = qemus_with(&home.display().to_string());
    assert!(q.is_empty(), "QEMU left running: {q:?}");
}

/// Launch group `name` in a VM of `image` (512 MiB, one vCPU, no network) with `disks` attached.
fn launch_vm(
    home: &Path,
    name: &str,
    policy: &[u8],
    host_data: [u8; 32],
    image: coffer_host::image::GuestImage,
    disks: Vec<PathBuf>,
) -> Result<coffer_host::qemu::VmGroup, coffer_host::HostError> {
    coffer_host::qemu::launch(
        LaunchSpec {
            home: home.to_path_buf(),
            name: name.into(),
            policy: policy.to_vec(),
            host_data,
            agent_exe: common::agent_exe(),
            volumes: vec![],
            network: coffer_host::net::NetworkMode::None,
        },
        &coffer_host::qemu::VmConfig {
            image,
            memory_mib: 512,
            vcpus: 1,
            snp: None,
            disks,
        },
    )
}

fn main() -> std::process::ExitCode {
    // The kernel package, shared with the volume test, kept across runs.
    std::env::set_var("COFFER_UVM_KERNELS", kernels());
    coffer_testkit::run(coffer_testkit::tests![
        uvm_build_twice_gives_identical_bytes: VM, Need::Vectors;
        the_hello_group_runs_in_a_vm_and_a_wrong_host_data_is_refused: VM_GROUP;
        layer_disks_are_verified_by_dm_verity_in_the_guest: VM_GROUP;
        a_killed_launcher_takes_its_vm_along_and_the_next_run_starts_clean: VM_GROUP;
        a_vm_group_reaches_out_and_serves_on_its_published_port: VM_GROUP;
        layer_disks_that_lie_are_not_mounted_and_leave_the_target_free: VM_GROUP;
        a_guest_panic_ends_the_launch_with_its_reason_and_leaves_nothing: VM, Need::Root, Need::Tool("busybox");
    ])
}

fn uvm_build_twice_gives_identical_bytes() {
    let _serial = one_at_a_time();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let t0 = Instant::now();
    let out = common::coffer(a.path(), &["uvm", "build"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir_a = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    eprintln!("uvm build: {:?}", t0.elapsed());
    let img_b = build(b.path());
    assert_eq!(
        dir_a.file_name(),
        img_b.dir.file_name(),
        "same content, same cache key"
    );
    for f in ["vmlinuz", "initrd.img", "cmdline", "measurement"] {
        assert!(
            std::fs::read(dir_a.join(f)).unwrap() == std::fs::read(img_b.dir.join(f)).unwrap(),
            "{f} differs between two builds"
        );
    }
    // A second build in the same home finds it in the cache.
    let again = build(a.path());
    assert_eq!(again.dir, dir_a);

    // `uvm measure --guest` is the launch digest of exactly this kernel, initramfs and command
    // line (the vectors' AmdSev firmware stands in for a real OVMF build).
    let vectors = coffer_testkit::vectors();
    let ovmf = vectors.join("snp-measure/ovmf_AmdSev_suffix.bin");
    let ovmf = ovmf.to_str().unwrap();
    let digest = |args: &[&str]| {
        let out = common::coffer(a.path(), args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let guest = digest(&["uvm", "measure", "--guest", "--ovmf", ovmf, "--vcpus", "2"]);
    let explicit = digest(&[
        "uvm",
        "measure",
        "--ovmf",
        ovmf,
        "--kernel",
        again.kernel.to_str().unwrap(),
        "--initrd",
        again.initrd.to_str().unwrap(),
        "--append",
        &again.append,
        "--vcpus",
        "2",
    ]);
    assert_eq!(guest.len(), 96, "{guest}");
    assert_eq!(guest, explicit);
    let one = digest(&["uvm", "measure", "--guest", "--ovmf", ovmf, "--vcpus", "1"]);
    assert_ne!(one, guest, "the vCPU count is measured");
}

/// Time from spawning QEMU to `needle` on its serial console.
fn time_to_console_line(mut cmd: Command, needle: &str, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let found = Arc::new(AtomicBool::new(false));
    let f2 = found.clone();
    let needle = needle.to_string();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains(&needle) {
                f2.store(true, Ordering::SeqCst);
                return Some(t0.elapsed());
            }
        }
        None
    });
    while !found.load(Ordering::SeqCst) && t0.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap()
}

fn the_hello_group_runs_in_a_vm_and_a_wrong_host_data_is_refused() {
    let _serial = one_at_a_time();
    let (tmp, image) = home_with_hello();
    let home = tmp.path();

    // The floor: the same kernel, a one-line initramfs (busybox sh printing a line).
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut a = Archive::default();
    a.insert("bin/busybox", Node::File(0o755, busybox));
    a.insert("bin/sh", Node::Symlink("busybox".into()));
    a.insert("dev/console", Node::CharDev(0o600, 5, 1));
    a.insert(
        "init",
        Node::File(0o755, b"#!/bin/sh\necho coffer-bare-init\n".to_vec()),
    );
    let bare = home.join("bare.cpio");
    std::fs::write(&bare, a.to_bytes()).unwrap();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "512M",
    ])
    .args(["-nodefaults", "-no-user-config", "-display", "none"])
    .args(["-no-reboot", "-serial", "stdio", "-kernel"])
    // The kernel as groups boot it: the bzImage's payload, uncompressed, when there is one.
    .arg(image.vmlinux.as_ref().unwrap_or(&image.kernel))
    .arg("-initrd")
    .arg(&bare)
    .arg("-append")
    .arg(format!(
        "console=ttyS0 loglevel=3 panic=-1{}",
        coffer_host::qemu::tcg_append()
    ));
    let floor = time_to_console_line(cmd, "coffer-bare-init", Duration::from_secs(120));
    eprintln!("bench: bare QEMU boot to a one-line init: {floor:?}");

    // The hello group in a VM, exiting 3 after its output.
    let pod = hello_pod(home, "/bin/sh /app/hello.sh; exit 3");
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["run", pod.to_str().unwrap(), "--isolation", "vm"])
        .env("COFFER_HOME", home)
        .env("COFFER_TIMING", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Peak RSS of the group's QEMU while it runs.
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (p2, d2, pid_file) = (
        peak.clone(),
        done.clone(),
        coffer_host::launch::group_dir(home, "hello").join("pid"),
    );
    let watcher = std::thread::spawn(move || {
        while !d2.load(Ordering::SeqCst) {
            if let Ok(pid) = std::fs::read_to_string(&pid_file) {
                let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))
                    .unwrap_or_default();
                if let Some(kb) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    p2.fetch_max(kb, Ordering::SeqCst);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let mut first_line = None;
    let mut lines = vec![];
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        first_line.get_or_insert(t0.elapsed());
        lines.push(line);
    }
    let status = child.wait().unwrap();
    done.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    let stderr = err_thread.join().unwrap();
    let stdout = lines.join("\n");
    assert_eq!(status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("[hello] hello from a confidential container"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("[hello] GREETING=bonjour"), "{stdout}");
    assert!(stderr.contains("isolation vm"), "{stderr}");
    eprintln!("{stderr}");
    eprintln!(
        "bench: coffer run --isolation vm: first output line after {first_line:?}, total {:?}; \
         QEMU peak RSS {} MiB; floor {floor:?}; ratio {:.2}",
        t0.elapsed(),
        peak.load(Ordering::SeqCst) / 1024,
        match (first_line, floor) {
            (Some(a), Some(b)) => a.as_secs_f64() / b.as_secs_f64(),
            _ => f64::NAN,
        }
    );
    assert_nothing_left(home, "hello");

    // A policy whose SHA-256 is not the HOST_DATA the VM was launched with: the agent refuses.
    let rego = home.join("p.rego");
    let out = common::coffer(
        home,
        &[
            "policy",
            "gen",
            pod.to_str().unwrap(),
            "-o",
            rego.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let policy = std::fs::read(&rego).unwrap();
    let err = launch_vm(home, "refused", &policy, [7u8; 32], image, vec![])
        .err()
        .expect("the agent must refuse a policy that is not HOST_DATA");
    let msg = err.to_string();
    assert!(msg.contains("refusing to serve"), "{msg}");
    assert!(msg.contains(&hex::encode([7u8; 32])), "{msg}");
    assert_nothing_left(home, "refused");
}

/// Add a layer holding `/data/big` (64 KiB of a pattern, so it has data blocks of its own) to
/// the example image at `oci`.
fn add_data_layer(oci: &Path, pattern: &[u8]) {
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    let image = format!("{}:latest", oci.display());
    let run = |args: &[&str]| {
        let out = Command::new("umoci").args(args).output().unwrap();
        assert!(out.status.success(), "umoci {args:?}: {out:?}");
    };
    run(&[
        "unpack",
        "--rootless",
        "--image",
        &image,
        bundle.to_str().unwrap(),
    ]);
    let data = bundle.join("rootfs/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("big"), pattern.repeat((64 << 10) / pattern.len())).unwrap();
    run(&["repack", "--image", &image, bundle.to_str().unwrap()]);
}

/// `coffer run --isolation vm` of `pod`: (exit code, stdout, stderr).
fn run_vm(home: &Path, pod: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["run", pod.to_str().unwrap(), "--isolation", "vm"])
        .env("COFFER_HOME", home)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn layer_disks_are_verified_by_dm_verity_in_the_guest() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let oci = home.join("hello");
    coffer_testkit::build_example_image(&oci);
    let pattern = b"coffer-verity-pattern-0123456789";
    add_data_layer(&oci, pattern);
    let out = common::coffer(
        home,
        &[
            "image",
            "import",
            &format!("oci:{}:latest", oci.display()),
            "--name",
            "hello:latest",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    build(home);
    let pod = hello_pod(
        home,
        "if cat /data/big > /dev/null 2> /tmp/err; then echo read-ok; else echo read-failed: $(cat /tmp/err); fi; /bin/sh /app/hello.sh",
    );
    // The policy (and the layer images) as `coffer run` makes them; the data layer is the one
    // whose image holds the pattern.
    let out = common::coffer(home, &["policy", "gen", pod.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, stdout, stderr) = run_vm(home, &pod);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("read-ok"), "{stdout}\n{stderr}");
    let layer_dir = home.join("images/layer-images");
    let data_layer = std::fs::read_dir(&layer_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "img")
                && std::fs::read(p)
                    .unwrap()
                    .windows(pattern.len())
                    .any(|w| w == pattern)
        })
        .expect("the data layer's image");
    let mut bytes = std::fs::read(&data_layer).unwrap();

    // One byte of the file's data flipped in the cached image: the root (read from the hash
    // tree) still matches the policy, the layer mounts, and dm-verity fails the read of that
    // block: the container sees an I/O error, never the altered data, and the rest runs.
    let at = bytes
        .windows(pattern.len())
        .position(|w| w == pattern)
        .unwrap()
        + 8192;
    bytes[at] ^= 0x01;
    std::fs::write(&data_layer, &bytes).unwrap();
    let (code, stdout, stderr) = run_vm(home, &pod);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("read-failed"), "{stdout}\n{stderr}");
    assert!(stdout.contains("Input/output error"), "{stdout}");
    assert!(
        stdout.contains("hello from a confidential container"),
        "{stdout}"
    );
    assert_nothing_left(home, "hello");
}

/// The hello Pod with `command` instead of the image's entrypoint.
fn hello_pod(home: &Path, command: &str) -> PathBuf {
    let pod = home.join("pod.yaml");
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/pod.yaml"),
    )
    .unwrap()
    .replace(
        "      image: hello:latest\n",
        &format!(
            "      image: hello:latest\n      command: [\"/bin/sh\", \"-c\", \"{command}\"]\n"
        ),
    );
    std::fs::write(&pod, yaml).unwrap();
    pod
}

fn a_killed_launcher_takes_its_vm_along_and_the_next_run_starts_clean() {
    let _serial = one_at_a_time();
    let (tmp, _) = home_with_hello();
    let home = tmp.path();
    let pod = hello_pod(home, "echo started; sleep 600");
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["run", pod.to_str().unwrap(), "--isolation", "vm"])
        .env("COFFER_HOME", home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("started"), "{first}");
    assert_eq!(qemus_with(&home.display().to_string()).len(), 1);
    // SIGKILL: no handler runs, nothing is stopped through the policy.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !qemus_with(&home.display().to_string()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = qemus_with(&home.display().to_string());
    assert!(left.is_empty(), "QEMU outlived its launcher: {left:?}");
    // The next run of the same group is not blocked by what the killed one left, and cleans up.
    let pod = hello_pod(home, "echo again");
    let out = common::coffer(home, &["run", pod.to_str().unwrap(), "--isolation", "vm"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("again"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_left(home, "hello");
}

fn a_vm_group_reaches_out_and_serves_on_its_published_port() {
    let _serial = one_at_a_time();
    let (tmp, _) = home_with_hello();
    let home = tmp.path();
    // A server on the host's loopback: the guest reaches it through its gateway (outbound NAT).
    let outside = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let outside_port = outside.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in outside.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = std::io::Write::write_all(
                &mut conn,
                b"HTTP/1.0 200 OK\r\nContent-Length: 12\r\n\r\nfrom-outside",
            );
        }
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pod = hello_pod(
        home,
        &format!(
            "wget -q -O - http://10.0.2.2:{outside_port}/; echo; echo served > /tmp/index.html; \
             trap 'exit 0' TERM; /bin/busybox httpd -f -p 8080 -h /tmp & wait"
        ),
    );
    let yaml = std::fs::read_to_string(&pod).unwrap().replace(
        "      image: hello:latest\n",
        &format!(
            "      image: hello:latest\n      ports: [{{containerPort: 8080, hostPort: {port}}}]\n"
        ),
    );
    std::fs::write(&pod, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["run", pod.to_str().unwrap(), "--isolation", "vm"])
        .env("COFFER_HOME", home)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let fetch = || -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        std::io::Write::write_all(&mut s, b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = None;
    while Instant::now() < deadline {
        got = fetch().filter(|b| b.contains("served"));
        if got.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Ctrl-C: the group stops through the policy and QEMU goes.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(first.contains("from-outside"), "{first}\n{stderr}");
    assert!(
        got.is_some(),
        "nothing served on 127.0.0.1:{port}\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("127.0.0.1:{port} -> 8080/TCP")),
        "{stderr}"
    );
    assert!(status.code().is_some(), "{status:?}");
    assert_nothing_left(home, "hello");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the published port is free again"
    );
}

/// A host that lies about the layer disks it attached: a serial that names no disk, a disk
/// whose superblock claims another size (the hash tree moved to match), a disk whose top hash
/// block is altered, and a disk cut short before its hash tree. The agent mounts none of them,
/// each attempt leaves the target free (the policy state forgets it), and the real layer then
/// mounts at that same target. One boot for all the lies: VM boots are the suite's cost.
fn layer_disks_that_lie_are_not_mounted_and_leave_the_target_free() {
    let _serial = one_at_a_time();
    let (tmp, image) = home_with_hello();
    let home = tmp.path();
    let pod = hello_pod(home, "/bin/sh /app/hello.sh");
    let rego = home.join("p.rego");
    let out = common::coffer(
        home,
        &[
            "policy",
            "gen",
            pod.to_str().unwrap(),
            "-o",
            rego.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policy = std::fs::read(&rego).unwrap();
    let store = coffer_image::Store::open(home).unwrap();
    let img = store
        .resolve(&coffer_image::ImageRef::Stored("hello:latest".into()))
        .unwrap();
    let layers: Vec<PathBuf> = (0..img.image.layers.len())
        .map(|i| store.layer_image(&img, i).unwrap())
        .collect();
    let real = std::fs::read(&layers[0]).unwrap();
    let fs_size = {
        let sb = &real[1024..2048];
        let blocks = u32::from_le_bytes(sb[4..8].try_into().unwrap()) as usize;
        blocks * (1024 << u32::from_le_bytes(sb[0x18..0x1c].try_into().unwrap()))
    };
    let lies = home.join("lies");
    std::fs::create_dir_all(&lies).unwrap();
    // The superblock claims one 4 KiB block fewer; the verity superblock and tree follow that
    // size, so the unverified root read from the disk is the approved one.
    let mut claimed = real[..fs_size - 4096].to_vec();
    let blocks = u32::from_le_bytes(claimed[1028..1032].try_into().unwrap());
    let log = u32::from_le_bytes(claimed[1024 + 0x18..1024 + 0x1c].try_into().unwrap());
    let fewer = blocks - (4096 >> (10 + log)).max(1);
    claimed[1028..1032].copy_from_slice(&fewer.to_le_bytes());
    claimed.extend_from_slice(&real[fs_size..]);
    let mut top_flipped = real.clone();
    top_flipped[fs_size + 4096 + 5] ^= 0x01;
    let cut = real[..fs_size + 4096].to_vec();
    let mut disks = layers.clone();
    for (name, bytes) in [
        ("claimed.img", &claimed),
        ("top-flipped.img", &top_flipped),
        ("cut.img", &cut),
    ] {
        let p = lies.join(name);
        std::fs::write(&p, bytes).unwrap();
        disks.push(p);
    }
    let group = launch_vm(
        home,
        "lies",
        &policy,
        coffer_policy::digest(&policy),
        image,
        disks.clone(),
    )
    .unwrap();
    let serial = |p: &Path| group.stage_layer(p).unwrap();
    let mut c = group.client().unwrap();
    let target = "/run/coffer/layers/l0";
    let err = |r: Result<coffer_proto::reply::LayerMounted, coffer_host::HostError>| {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    };
    let no_disk = err(c.mount_layer(target, "l99"));
    assert!(no_disk.contains("no layer disk with serial"), "{no_disk}");
    let sized = err(c.mount_layer(target, &serial(&lies.join("claimed.img"))));
    assert!(sized.contains("not mounted"), "{sized}");
    let flipped = err(c.mount_layer(target, &serial(&lies.join("top-flipped.img"))));
    assert!(flipped.contains("mount_device"), "{flipped}");
    let short = err(c.mount_layer(target, &serial(&lies.join("cut.img"))));
    assert!(short.contains("hash tree"), "{short}");
    eprintln!("refusals:\n  {no_disk}\n  {sized}\n  {flipped}\n  {short}");
    // After every lie the target is free and the real layers mount, the first one where the
    // lies were offered.
    let mut paths = vec![];
    for (i, layer) in layers.iter().enumerate() {
        let t = format!("/run/coffer/layers/l{i}");
        c.mount_layer(&t, &serial(layer)).unwrap();
        paths.push(t);
    }
    paths.reverse();
    c.mount_overlay("hello", paths).unwrap();
    group.shutdown().unwrap();
    assert_nothing_left(home, "lies");
}

/// A guest whose init dies: the kernel panics, QEMU ends (`panic=-1`, `-no-reboot`), and the
/// launch fails with the console's panic line, leaving no QEMU, socket or directory. (busybox
/// stands in for an agent that crashes: run as `coffer-agent` it finds no such applet and exits.)
fn a_guest_panic_ends_the_launch_with_its_reason_and_leaves_nothing() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let image = coffer_host::image::build(&coffer_host::image::BuildOptions {
        home: home.to_path_buf(),
        agent: PathBuf::from("/bin/busybox"),
        kernel_deb: None,
    })
    .unwrap();
    let policy = b"package policy\n".to_vec();
    let t0 = Instant::now();
    let err = launch_vm(
        home,
        "panicked",
        &policy,
        coffer_policy::digest(&policy),
        image,
        vec![],
    )
    .err()
    .expect("a guest without a working init cannot start a group");
    let msg = err.to_string();
    eprintln!("guest panic reported after {:?}: {msg}", t0.elapsed());
    assert!(msg.contains("Kernel panic"), "{msg}");
    assert!(msg.contains("Attempted to kill init"), "{msg}");
    assert_nothing_left(home, "panicked");
}
