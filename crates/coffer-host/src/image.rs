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
        ModuleSet::Channel => &[
            "virtio_mmio",
            "virtio_console",
            // Fails with ENODEV outside an SNP guest: the agent then uses the emulated processor.
            "sev_guest",
        ],
        ModuleSet::Pci => &["virtio_pci"],
        ModuleSet::Storage => &[
            "virtio_blk",
            "dm_verity",
            "crc32c_generic",
            "crc32c_intel",
            "crc16",
            "ext4",
            "overlay",
        ],
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

/// A kernel module as the initramfs takes it.
struct Module {
    set: ModuleSet,
    name: String,
    bytes: Vec<u8>,
    /// Where the host has it.
    file: PathBuf,
}

/// The modules of each set, dependencies first, each module in the first set that needs it.
fn modules(dir: &Path) -> Result<Vec<Module>, HostError> {
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
        order: &mut Vec<(String, Vec<u8>, PathBuf)>,
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
        order.push((name.to_string(), bytes, path.clone()));
        Ok(())
    }
    let mut out = Vec::new();
    for set in ModuleSet::ALL {
        let mut order = Vec::new();
        for m in modules_of(set) {
            visit(m, &by_name, &mut seen, &mut order)?;
        }
        out.extend(order.into_iter().map(|(name, bytes, file)| Module {
            set,
            name,
            bytes,
            file,
        }));
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
fn add_host_path(
    a: &mut Archive,
    inputs: &mut Vec<PathBuf>,
    path: &Path,
    depth: u32,
) -> Result<(), HostError> {
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
            inputs.push(prefix.clone());
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
            return add_host_path(a, inputs, &normalize(&resolved), depth + 1);
        }
        if i + 1 == comps.len() && md.is_file() {
            inputs.push(prefix.clone());
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

/// The initramfs's bytes, for a kernel's module directory, and the host files it was made from
/// (the agent, the programs and libraries, the modules, and every symlink on their way).
pub fn initramfs(agent: &Path, modules_dir: &Path) -> Result<(Vec<u8>, Vec<PathBuf>), HostError> {
    let mut a = Archive::default();
    let mut inputs = vec![agent.to_path_buf(), PathBuf::from("/etc/ld.so.cache")];
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
        add_host_path(&mut a, &mut inputs, &path, 0)?;
        programs.push(path);
    }
    for p in &programs {
        for lib in libraries(p)? {
            add_host_path(&mut a, &mut inputs, &lib, 0)?;
        }
    }
    // busybox for `ip` (the agent brings up lo) and a shell to look around.
    if let Ok(bb) = which("busybox") {
        let bytes = std::fs::read(&bb).map_err(io("reading busybox"))?;
        inputs.push(bb);
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
    for Module {
        set,
        name,
        bytes,
        file,
    } in modules(modules_dir)?
    {
        inputs.push(file);
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
    Ok((a.to_bytes(), inputs))
}

/// What the last build read from the host, to find its image again without building it anew
/// (which reads, strips and hashes ~40 MB: ~180 ms on every `coffer run --isolation vm`). Each
/// input is identified as `make` would, by its size and modification time, and by its inode
/// besides (a file replaced by another); the programs by where PATH finds them now.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct BuildInputs {
    agent: PathBuf,
    deb: PathBuf,
    programs: Vec<(String, PathBuf)>,
    files: Vec<FileId>,
    dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct FileId {
    path: PathBuf,
    len: u64,
    mtime_ns: i128,
    ino: u64,
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt as _;
        let md = std::fs::symlink_metadata(path).ok()?;
        Some(FileId {
            path: path.to_path_buf(),
            len: md.len(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            ino: md.ino(),
        })
    }
}

/// The programs the initramfs takes from the host's PATH.
const HOST_PROGRAMS: [&str; 3] = ["runc", "mount", "busybox"];

fn programs_now() -> Vec<(String, PathBuf)> {
    HOST_PROGRAMS
        .iter()
        .filter_map(|p| which(p).ok().map(|w| (p.to_string(), w)))
        .collect()
}

/// The image the last build made, if nothing it was made from has changed since.
fn unchanged(home: &Path, agent: &Path, deb: &Path) -> Option<GuestImage> {
    let text = std::fs::read(home.join("uvm").join("inputs.json")).ok()?;
    let last: BuildInputs = serde_json::from_slice(&text).ok()?;
    let same = last.agent == agent
        && last.deb == deb
        && last.programs == programs_now()
        && last
            .files
            .iter()
            .all(|f| FileId::of(&f.path).as_ref() == Some(f));
    if !same || !last.dir.join("initrd.img").is_file() || !last.dir.join("vmlinuz").is_file() {
        return None;
    }
    let hex = std::fs::read_to_string(last.dir.join("measurement")).ok()?;
    let measurement: [u8; 48] = hex::decode(hex.trim()).ok()?.try_into().ok()?;
    Some(GuestImage::in_dir(last.dir, measurement))
}

impl GuestImage {
    /// The image whose files `build` wrote into `dir`.
    fn in_dir(dir: PathBuf, measurement: [u8; 48]) -> Self {
        GuestImage {
            kernel: dir.join("vmlinuz"),
            vmlinux: Some(dir.join("vmlinux")).filter(|p| p.exists()),
            initrd: dir.join("initrd.img"),
            dir,
            append: APPEND.to_string(),
            measurement,
        }
    }
}

/// Build (or find in the cache) the guest image.
pub fn build(opts: &BuildOptions) -> Result<GuestImage, HostError> {
    let deb = kernel_deb(&opts.home, opts.kernel_deb.as_deref())?;
    if let Some(image) = unchanged(&opts.home, &opts.agent, &deb) {
        return Ok(image);
    }
    let (kernel_path, modules_dir) = unpack_kernel(&opts.home, &deb)?;
    let kernel =
        std::fs::read(&kernel_path).map_err(io(format!("reading {}", kernel_path.display())))?;
    let (initrd, mut inputs) = initramfs(&opts.agent, &modules_dir)?;
    inputs.push(deb.clone());
    inputs.push(kernel_path.clone());
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
    // Best effort: without it the next run builds again.
    let record = BuildInputs {
        agent: opts.agent.clone(),
        deb,
        programs: programs_now(),
        files: inputs.iter().filter_map(|p| FileId::of(p)).collect(),
        dir: dir.clone(),
    };
    if let Ok(text) = serde_json::to_vec(&record) {
        let path = opts.home.join("uvm").join("inputs.json");
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(GuestImage::in_dir(dir, measurement))
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

#[cfg(test)]
mod cache_tests {
    use super::*;

    /// A home whose last build recorded `input` (and the agent and package paths given).
    fn recorded(home: &Path, input: &Path) -> PathBuf {
        let dir = home.join("uvm").join("0123456789abcdef");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["initrd.img", "vmlinuz"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        std::fs::write(dir.join("measurement"), hex::encode([7u8; 48])).unwrap();
        std::fs::write(input, b"one").unwrap();
        let record = BuildInputs {
            agent: "/agent".into(),
            deb: "/kernel.deb".into(),
            programs: programs_now(),
            files: vec![FileId::of(input).unwrap()],
            dir: dir.clone(),
        };
        std::fs::write(
            home.join("uvm/inputs.json"),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        dir
    }

    #[test]
    fn an_image_whose_inputs_are_unchanged_is_found_again() {
        let home = tempfile::tempdir().unwrap();
        let input = home.path().join("input");
        let dir = recorded(home.path(), &input);
        let image = unchanged(home.path(), Path::new("/agent"), Path::new("/kernel.deb")).unwrap();
        assert_eq!(image.dir, dir);
        assert_eq!(image.initrd, dir.join("initrd.img"));
        assert_eq!(image.measurement, [7u8; 48]);
    }

    #[test]
    fn a_changed_input_means_a_new_build() {
        let home = tempfile::tempdir().unwrap();
        let input = home.path().join("input");
        recorded(home.path(), &input);
        std::fs::write(&input, b"two, longer").unwrap();
        assert!(unchanged(home.path(), Path::new("/agent"), Path::new("/kernel.deb")).is_none());
    }

    #[test]
    fn another_agent_or_kernel_package_means_a_new_build() {
        let home = tempfile::tempdir().unwrap();
        recorded(home.path(), &home.path().join("input"));
        assert!(unchanged(home.path(), Path::new("/other"), Path::new("/kernel.deb")).is_none());
        assert!(unchanged(home.path(), Path::new("/agent"), Path::new("/other.deb")).is_none());
    }

    #[test]
    fn a_recorded_image_that_is_gone_means_a_new_build() {
        let home = tempfile::tempdir().unwrap();
        let dir = recorded(home.path(), &home.path().join("input"));
        std::fs::remove_file(dir.join("initrd.img")).unwrap();
        assert!(unchanged(home.path(), Path::new("/agent"), Path::new("/kernel.deb")).is_none());
    }
}
