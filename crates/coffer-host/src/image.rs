//! The guest image: Debian's generic kernel and an initramfs holding the agent as init, runc,
//! util-linux's mount, busybox, their shared libraries and the kernel modules the agent loads.
//! Cached under `$COFFER_HOME/uvm/<hash of its bytes>/`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use coffer_proto::layout::ModuleSet;

use crate::cpio::{Archive, Node};
use crate::{io, HostError};

/// The kernel command line: the same for every group (per-group data enters only as
/// HOST_DATA). `rdinit` runs the agent with the arguments after `--`; `panic=-1` with QEMU's
/// `-no-reboot` ends the VM if init dies. (`quiet` stalled the boot here: not used.)
pub const APPEND: &str = "console=ttyS0 loglevel=3 panic=-1 rdinit=/usr/bin/coffer-agent -- --vm";

/// The modules of each set the agent loads ([`ModuleSet`]), in this order after their
/// dependencies (crc32c before jbd2/ext4: a soft dependency `depends=` does not name).
fn modules_of(set: ModuleSet) -> &'static [&'static str] {
    match set {
        ModuleSet::Boot => &[
            "virtio_mmio",
            "virtio_console",
            "virtio_blk",
            "dm_verity",
            "crc32c_generic",
            "crc32c_intel",
            "crc16",
            "ext4",
            "overlay",
            // Fails with ENODEV outside an SNP guest: the agent then uses the emulated processor.
            "sev_guest",
        ],
        ModuleSet::Pci => &["virtio_pci"],
        ModuleSet::Net => &["virtio_net"],
        // dm-crypt's aes-xts-plain64: the crypto API would ask modprobe for xts and ecb, and the
        // guest has no modprobe.
        ModuleSet::Volumes => &["ecb", "xts", "dm_crypt", "loop"],
    }
}

/// A built guest image.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// `$COFFER_HOME/uvm/<hash>`.
    pub dir: PathBuf,
    /// The kernel (bzImage): what SNP's launch measures, and what the MEASUREMENT covers.
    pub kernel: PathBuf,
    /// The same kernel's payload, uncompressed (`vmlinux`, an ELF with a PVH entry), when it
    /// could be taken out of the bzImage: QEMU boots it directly outside SNP, which spares the
    /// bzImage's own decompression (about 5 s of the boot under TCG here).
    pub vmlinux: Option<PathBuf>,
    /// The initramfs (uncompressed newc cpio: no decompression under TCG).
    pub initrd: PathBuf,
    /// The kernel command line.
    pub append: String,
    /// The MEASUREMENT the emulated secure processor reports for this image.
    pub measurement: [u8; 48],
}

/// What to build from.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// `$COFFER_HOME`.
    pub home: PathBuf,
    /// The agent binary (`coffer-agent`, run as the VM's init with `--vm`).
    pub agent: PathBuf,
    /// A `linux-image-*-amd64` .deb; by default the one `apt-get download` fetches for
    /// `linux-image-amd64`, cached in [`kernel_cache`].
    pub kernel_deb: Option<PathBuf>,
}

/// Where downloaded and unpacked kernel packages are kept: `$COFFER_UVM_KERNELS`, else
/// `$COFFER_HOME/uvm/kernels`.
pub fn kernel_cache(home: &Path) -> PathBuf {
    std::env::var_os("COFFER_UVM_KERNELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join("uvm/kernels"))
}

fn run(cmd: &mut Command) -> Result<String, HostError> {
    let out = cmd
        .output()
        .map_err(io(format!("running {:?}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(HostError::Tool(format!(
            "{:?}: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel package: the given .deb, a cached one, or a fresh `apt-get download`.
pub fn kernel_deb(home: &Path, given: Option<&Path>) -> Result<PathBuf, HostError> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let cache = kernel_cache(home);
    std::fs::create_dir_all(&cache).map_err(io(format!("mkdir {}", cache.display())))?;
    let cached = |c: &Path| -> Option<PathBuf> {
        let mut debs: Vec<PathBuf> = std::fs::read_dir(c)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("linux-image-") && n.ends_with(".deb"))
            })
            .collect();
        debs.sort();
        debs.pop()
    };
    if let Some(d) = cached(&cache) {
        return Ok(d);
    }
    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| HostError::Tool("apt-cache names no linux-image for amd64".into()))?
        .to_string();
    run(Command::new("apt-get")
        .args(["download", &package])
        .current_dir(&cache))?;
    cached(&cache).ok_or_else(|| HostError::Tool(format!("apt-get download {package}: no .deb")))
}

/// Unpack the package once (`dpkg -x`); returns (bzImage, modules directory).
fn unpack_kernel(home: &Path, deb: &Path) -> Result<(PathBuf, PathBuf), HostError> {
    let stem = deb
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| HostError::Tool(format!("{}: not a package name", deb.display())))?;
    let dir = kernel_cache(home).join(stem);
    if !dir.join("boot").exists() {
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        run(Command::new("dpkg").arg("-x").arg(deb).arg(&tmp))?;
        std::fs::rename(&tmp, &dir).map_err(io(format!("rename to {}", dir.display())))?;
    }
    let find = |d: &Path, prefix: &str| -> Result<PathBuf, HostError> {
        std::fs::read_dir(d)
            .map_err(io(format!("reading {}", d.display())))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .ok_or_else(|| HostError::Tool(format!("{}: no {prefix}*", d.display())))
    };
    let kernel = find(&dir.join("boot"), "vmlinuz-")?;
    let modules = find(&dir.join("lib/modules"), "")?;
    Ok((kernel, modules))
}

/// `depends=` of a module, from its `.modinfo` strings.
fn module_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|b| *b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The modules of each set, dependencies first, each module in the first set that needs it:
/// (set, name, content).
fn modules(dir: &Path) -> Result<Vec<(ModuleSet, String, Vec<u8>)>, HostError> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut stack = vec![dir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .map_err(io(format!("reading {}", d.display())))?
            .flatten()
        {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = n.strip_suffix(".ko") {
                    by_name.insert(stem.replace('-', "_"), p.clone());
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        by_name: &BTreeMap<String, PathBuf>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<(), HostError> {
        // modinfo's `depends=` spells some names with '-' (dm-mod), file stems are keyed with '_'.
        let name = &name.replace('-', "_");
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let path = by_name
            .get(name)
            .ok_or_else(|| HostError::Tool(format!("kernel module {name} not in the package")))?;
        let bytes = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
        for dep in module_depends(&bytes) {
            visit(&dep, by_name, seen, order)?;
        }
        order.push((name.to_string(), bytes));
        Ok(())
    }
    let mut out = Vec::new();
    for set in ModuleSet::ALL {
        let mut order = Vec::new();
        for m in modules_of(set) {
            visit(m, &by_name, &mut seen, &mut order)?;
        }
        out.extend(order.into_iter().map(|(name, bytes)| (set, name, bytes)));
    }
    Ok(out)
}

/// A program on PATH.
fn which(name: &str) -> Result<PathBuf, HostError> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| HostError::Tool(format!("'{name}' not found on PATH")))
}

/// Add `path` as the host has it: every symlink on the way (as a symlink), then the file.
fn add_host_path(a: &mut Archive, path: &Path, depth: u32) -> Result<(), HostError> {
    if depth > 16 {
        return Err(HostError::Tool(format!("{}: symlink loop", path.display())));
    }
    let mut prefix = PathBuf::from("/");
    let comps: Vec<Component> = path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        if matches!(c, Component::RootDir) {
            continue;
        }
        prefix.push(c);
        let md = std::fs::symlink_metadata(&prefix)
            .map_err(io(format!("reading {}", prefix.display())))?;
        if md.file_type().is_symlink() {
            let target = std::fs::read_link(&prefix)
                .map_err(io(format!("readlink {}", prefix.display())))?;
            a.insert(
                &prefix.to_string_lossy(),
                Node::Symlink(target.to_string_lossy().into_owned()),
            );
            let parent = prefix.parent().unwrap_or(Path::new("/"));
            let mut resolved = parent.join(&target);
            for rest in &comps[i + 1..] {
                resolved.push(rest);
            }
            return add_host_path(a, &normalize(&resolved), depth + 1);
        }
        if i + 1 == comps.len() && md.is_file() {
            let bytes =
                std::fs::read(&prefix).map_err(io(format!("reading {}", prefix.display())))?;
            a.insert(
                &prefix.to_string_lossy(),
                Node::File(md.permissions().mode() & 0o755, bytes),
            );
        }
    }
    Ok(())
}

/// `a/b/../c` -> `a/c` (no file system access).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Shared libraries (and the loader) of a dynamically linked program, as `ldd` resolves them.
fn libraries(program: &Path) -> Result<Vec<PathBuf>, HostError> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(io("running ldd"))?;
    // A static program: ldd says so and fails.
    if !out.status.success() {
        return Ok(vec![]);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, r)) => r.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// The agent binary without its debug information (`strip`; deterministic for one input).
fn stripped(agent: &Path) -> Result<Vec<u8>, HostError> {
    let tmp = std::env::temp_dir().join(format!("coffer-agent-strip-{}", std::process::id()));
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&tmp)
        .arg(agent)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let bytes = if ok {
        std::fs::read(&tmp)
    } else {
        std::fs::read(agent)
    }
    .map_err(io(format!("reading {}", agent.display())));
    let _ = std::fs::remove_file(&tmp);
    bytes
}

/// The initramfs's bytes, for a kernel's module directory.
pub fn initramfs(agent: &Path, modules_dir: &Path) -> Result<Vec<u8>, HostError> {
    let mut a = Archive::default();
    for d in ["proc", "sys", "dev", "run", "tmp", "etc"] {
        a.insert(d, Node::Dir(0o755));
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    a.insert("dev/console", Node::CharDev(0o600, 5, 1));
    // Merged /usr, as on the host (the loader path /lib64/... goes through these).
    for (l, t) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        if Path::new("/").join(l).is_symlink() {
            a.insert(l, Node::Symlink(t.into()));
        }
    }
    a.insert("usr/bin/coffer-agent", Node::File(0o755, stripped(agent)?));
    let mut programs = vec![agent.to_path_buf()];
    for p in ["runc", "mount"] {
        let path = which(p)?;
        add_host_path(&mut a, &path, 0)?;
        programs.push(path);
    }
    for p in &programs {
        for lib in libraries(p)? {
            add_host_path(&mut a, &lib, 0)?;
        }
    }
    // busybox for `ip` (the agent brings up lo) and a shell to look around.
    if let Ok(bb) = which("busybox") {
        let bytes = std::fs::read(&bb).map_err(io("reading busybox"))?;
        a.insert("usr/bin/busybox", Node::File(0o755, bytes));
        for applet in ["usr/bin/sh", "usr/sbin/ip"] {
            if !a.contains(applet) {
                a.insert(applet, Node::Symlink("/usr/bin/busybox".into()));
            }
        }
    }
    let mut lists: BTreeMap<&str, String> = ModuleSet::ALL
        .iter()
        .map(|s| (s.list(), String::new()))
        .collect();
    for (set, name, bytes) in modules(modules_dir)? {
        let path = format!("usr/lib/coffer/modules/{name}.ko");
        lists
            .entry(set.list())
            .or_default()
            .push_str(&format!("/{path}\n"));
        a.insert(&path, Node::File(0o644, bytes));
    }
    for (list, text) in lists {
        a.insert(
            list.trim_start_matches('/'),
            Node::File(0o644, text.into_bytes()),
        );
    }
    Ok(a.to_bytes())
}

/// Build (or find in the cache) the guest image.
pub fn build(opts: &BuildOptions) -> Result<GuestImage, HostError> {
    let deb = kernel_deb(&opts.home, opts.kernel_deb.as_deref())?;
    let (kernel_path, modules_dir) = unpack_kernel(&opts.home, &deb)?;
    let kernel =
        std::fs::read(&kernel_path).map_err(io(format!("reading {}", kernel_path.display())))?;
    let initrd = initramfs(&opts.agent, &modules_dir)?;
    let mut h = openssl::sha::Sha256::new();
    h.update(&kernel);
    h.update(&initrd);
    h.update(APPEND.as_bytes());
    let hash = hex::encode(h.finish());
    let dir = opts.home.join("uvm").join(&hash[..16]);
    let measurement = measurement(&kernel, &initrd, APPEND);
    if !dir.join("initrd.img").exists() {
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(format!("mkdir {}", tmp.display())))?;
        for (name, bytes) in [
            ("vmlinuz", &kernel[..]),
            ("initrd.img", &initrd[..]),
            ("cmdline", APPEND.as_bytes()),
            ("measurement", hex::encode(measurement).as_bytes()),
        ] {
            std::fs::write(tmp.join(name), bytes).map_err(io(format!("writing {name}")))?;
        }
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another build put the same bytes there first.
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    // The payload of the measured bzImage, decompressed once here rather than by the kernel on
    // every boot. Without it (another compression, no `xz`), the bzImage is booted: slower only.
    let elf = dir.join("vmlinux");
    if !elf.exists() {
        if let Ok(bytes) = vmlinux(&kernel) {
            let tmp = elf.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes).map_err(io(format!("writing {}", tmp.display())))?;
            std::fs::rename(&tmp, &elf).map_err(io(format!("writing {}", elf.display())))?;
        }
    }
    Ok(GuestImage {
        kernel: dir.join("vmlinuz"),
        vmlinux: Some(dir.join("vmlinux")).filter(|p| p.exists()),
        initrd: dir.join("initrd.img"),
        dir,
        append: APPEND.to_string(),
        measurement,
    })
}

/// The uncompressed kernel inside a bzImage: the payload the setup header locates
/// (`payload_offset`/`payload_length`, boot protocol 2.08+), decompressed by `xz` (Debian's
/// kernels are xz-compressed; xz-utils is in every Debian system), checked to be an ELF.
pub fn vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, HostError> {
    let bad = |why: &str| {
        HostError::Tool(format!(
            "the kernel is not a bzImage this can unpack: {why}"
        ))
    };
    let u32_at = |at: usize| -> Option<usize> {
        let b = bzimage.get(at..at + 4)?;
        usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("no HdrS signature"));
    }
    let version = bzimage
        .get(0x206..0x208)
        .map(|v| u16::from_le_bytes([v[0], v[1]]));
    if version.is_none_or(|v| v < 0x0208) {
        return Err(bad("boot protocol before 2.08 (no payload fields)"));
    }
    let setup_sects = match bzimage.get(0x1f1) {
        Some(0) => 4,
        Some(&n) => usize::from(n),
        None => return Err(bad("truncated")),
    };
    let (offset, length) = u32_at(0x248)
        .zip(u32_at(0x24c))
        .ok_or_else(|| bad("truncated header"))?;
    let start = (setup_sects + 1) * 512 + offset;
    let payload = start
        .checked_add(length)
        .and_then(|end| bzimage.get(start..end))
        .ok_or_else(|| bad("the payload lies outside the file"))?;
    if !payload.starts_with(b"\xfd7zXZ\x00") {
        return Err(bad("the payload is not xz-compressed"));
    }
    let mut child = Command::new("xz")
        .args(["--decompress", "--stdout", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(io("running xz"))?;
    let mut stdin = child.stdin.take().ok_or_else(|| bad("no pipe to xz"))?;
    let payload = payload.to_vec();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &payload));
    let out = child.wait_with_output().map_err(io("running xz"))?;
    let fed = feeder.join();
    if !out.status.success() || !matches!(fed, Ok(Ok(()))) {
        return Err(HostError::Tool(format!(
            "xz: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if !out.stdout.starts_with(b"\x7fELF") {
        return Err(bad("the payload is not an ELF"));
    }
    Ok(out.stdout)
}

/// The emulated MEASUREMENT of a guest image: SHA-384 over the SHA-256 of kernel, initrd and
/// command line (the inputs SNP's kernel-hashes covers). A stand-in until the launch digest
/// with a real AmdSev OVMF (`coffer uvm measure`) is computed for the image.
pub fn measurement(kernel: &[u8], initrd: &[u8], append: &str) -> [u8; 48] {
    let mut h = openssl::sha::Sha384::new();
    h.update(&openssl::sha::sha256(kernel));
    h.update(&openssl::sha::sha256(initrd));
    h.update(&openssl::sha::sha256(append.as_bytes()));
    h.finish()
}

#[cfg(test)]
mod vmlinux_tests {
    use super::vmlinux;

    /// A bzImage header (boot protocol 2.15) whose payload is `payload`, one setup sector.
    fn bzimage(payload: &[u8], offset: u32, length: u32) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        b[0x1f1] = 1;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        b[0x248..0x24c].copy_from_slice(&offset.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&length.to_le_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn a_file_without_the_setup_signature_is_refused() {
        let e = vmlinux(&[0u8; 4096]).unwrap_err().to_string();
        assert!(e.contains("HdrS"), "{e}");
    }

    #[test]
    fn a_payload_outside_the_file_is_refused() {
        let e = vmlinux(&bzimage(b"\xfd7zXZ\x00", 0, 1 << 30))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the file"), "{e}");
    }

    #[test]
    fn a_payload_that_is_not_xz_is_refused() {
        let e = vmlinux(&bzimage(b"\x1f\x8b\x08\x00", 0, 4))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not xz"), "{e}");
    }

    #[test]
    fn an_xz_payload_that_is_not_an_elf_is_refused() {
        let mut xz = std::process::Command::new("xz")
            .args(["--compress", "--stdout", "--check=crc32"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut xz.stdin.take().unwrap(), b"not a kernel").unwrap();
        let payload = xz.wait_with_output().unwrap().stdout;
        let len = u32::try_from(payload.len()).unwrap();
        let e = vmlinux(&bzimage(&payload, 0, len)).unwrap_err().to_string();
        assert!(e.contains("not an ELF"), "{e}");
    }
}
