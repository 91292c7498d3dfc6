//! `coffer encfs create|open|mount`: encrypted volumes for operators, outside a group.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub(crate) enum EncfsCommand {
    /// Make a LUKS2 image (aes-xts-plain64, 4096-byte sectors, PBKDF2 keyslot) holding an ext4
    /// file system with DIR's content. cryptsetup accepts it (luksDump, open).
    Create(CreateArgs),
    /// Decrypt an image's data segment (checks headers, key, and the file system size) into a file.
    Open(OpenArgs),
    /// Mount an image at MOUNTPOINT (read-only unless --rw): a FUSE block file decrypts sectors
    /// on demand and the ext4 inside is loop-mounted. Stays in the foreground; Ctrl-C unmounts.
    Mount(MountArgs),
}

#[derive(Args, Debug)]
pub(crate) struct CreateArgs {
    /// Directory whose content the volume holds.
    #[arg(long)]
    from: PathBuf,
    /// Key file: its bytes are the passphrase (e.g. 32 bytes of an oct-HSM key).
    #[arg(long)]
    key_file: PathBuf,
    /// Output image.
    #[arg(short, long)]
    output: PathBuf,
    /// File system size in MiB (default: content plus room).
    #[arg(long)]
    size_mib: Option<u64>,
}

#[derive(Args, Debug)]
pub(crate) struct OpenArgs {
    /// LUKS2 image.
    image: PathBuf,
    /// Key file.
    #[arg(long)]
    key_file: PathBuf,
    /// Where to write the plaintext file system.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct MountArgs {
    /// LUKS2 image: a file, or an http(s):// URL (read with Range requests and a block cache).
    image: PathBuf,
    /// Key file.
    #[arg(long)]
    key_file: PathBuf,
    /// Mount point.
    mountpoint: PathBuf,
    /// Read-write: writes are encrypted back into the image.
    #[arg(long)]
    rw: bool,
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|d| {
            d.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()) + 4096,
                    Ok(m) => m.len().div_ceil(4096) * 4096,
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Make a LUKS2 image at `output` holding an ext4 file system (mkfs.ext4 -d) with `from`'s content,
/// opened by `key`; nothing is left at `output` on failure. Returns the file system size in MiB.
pub(crate) fn create_volume(
    from: &std::path::Path,
    key: &[u8],
    output: &std::path::Path,
    size_mib: Option<u64>,
) -> Result<Created> {
    if !from.is_dir() {
        bail!("--from {} is not a directory", from.display());
    }
    let mib = size_mib.unwrap_or((dir_size(from) * 2 / (1 << 20)).max(16) + 8);
    let tmp = tempfile::NamedTempFile::new()?;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(from)
        .arg(tmp.path())
        .arg(format!("{mib}M"))
        .output()
        .context("running mkfs.ext4 (e2fsprogs)")?;
    if !out.status.success() {
        bail!("mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let len = std::fs::metadata(tmp.path())?.len();
    let plaintext_root = coffer_verity::root_hash(std::fs::File::open(tmp.path())?)?;
    let part = output.with_extension("partial");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&part)?);
    let r = coffer_encfs::create(
        &mut std::fs::File::open(tmp.path())?,
        len,
        key,
        &mut w,
        &coffer_encfs::CreateOptions::default(),
    )
    .map_err(anyhow::Error::from)
    // A write error held in the buffer must fail the image, not vanish when the writer drops.
    .and_then(|()| w.flush().map_err(anyhow::Error::from));
    drop(w);
    if let Err(e) = r {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, output)?;
    Ok(Created {
        mib,
        plaintext_root,
    })
}

/// What [`create_volume`] made.
pub(crate) struct Created {
    /// Size of the file system.
    pub(crate) mib: u64,
    /// dm-verity root of the plaintext file system: what `verityRootHash` pins.
    pub(crate) plaintext_root: [u8; 32],
}

pub(crate) fn run(cmd: EncfsCommand) -> Result<ExitCode> {
    match cmd {
        EncfsCommand::Create(a) => {
            let key = std::fs::read(&a.key_file)
                .with_context(|| format!("cannot read {}", a.key_file.display()))?;
            let c = create_volume(&a.from, &key, &a.output, a.size_mib)?;
            println!(
                "created {} ({} MiB file system, LUKS2 aes-xts-plain64)",
                a.output.display(),
                c.mib
            );
            println!(
                "plaintext dm-verity root: {} (pin a read-only volume to it with the CSI \
                 attribute verityRootHash)",
                hex::encode(c.plaintext_root)
            );
        }
        EncfsCommand::Open(a) => {
            let key = std::fs::read(&a.key_file)
                .with_context(|| format!("cannot read {}", a.key_file.display()))?;
            let mut img = std::fs::File::open(&a.image)
                .with_context(|| format!("cannot read {}", a.image.display()))?;
            let mut out = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&a.out)?;
            match coffer_encfs::open_ext4(&mut img, &key, &mut out) {
                Ok(n) => println!("decrypted {n} bytes into {}", a.out.display()),
                Err(e) => {
                    let _ = std::fs::remove_file(&a.out);
                    bail!("{}: {e}", a.image.display());
                }
            }
        }
        EncfsCommand::Mount(a) => {
            let key = std::fs::read(&a.key_file)
                .with_context(|| format!("cannot read {}", a.key_file.display()))?;
            let vol = coffer_encfs::block::Volume::open(&a.image, &key, a.rw)
                .with_context(|| a.image.display().to_string())?;
            let start = vol.read_at(0, 2048)?;
            match coffer_encfs::ext4_size(&start) {
                Some(fs) if fs <= vol.size() => {}
                Some(fs) => bail!(
                    "{}: truncated: the file system needs {fs} bytes, the volume has {}",
                    a.image.display(),
                    vol.size()
                ),
                None => bail!(
                    "{}: the volume does not hold an ext4 file system",
                    a.image.display()
                ),
            }
            let block_dir = tempfile::Builder::new().prefix("coffer-encfs-").tempdir()?;
            let block = coffer_encfs::block::mount(vol, block_dir.path())?;
            let opts = if a.rw { "loop" } else { "loop,ro,noload" };
            let st = Command::new("mount")
                .args(["-t", "ext4", "-o", opts])
                .arg(&block.disk)
                .arg(&a.mountpoint)
                .output()?;
            if !st.status.success() {
                bail!("mount: {}", String::from_utf8_lossy(&st.stderr).trim());
            }
            println!(
                "mounted {} {} at {}; Ctrl-C (or SIGTERM) unmounts",
                a.image.display(),
                if a.rw { "read-write" } else { "read-only" },
                a.mountpoint.display()
            );
            let (tx, rx) = std::sync::mpsc::channel();
            ctrlc::set_handler(move || {
                let _ = tx.send(());
            })?;
            let _ = rx.recv();
            let st = Command::new("umount").arg(&a.mountpoint).output()?;
            if !st.status.success() {
                eprintln!(
                    "coffer: umount {}: {}",
                    a.mountpoint.display(),
                    String::from_utf8_lossy(&st.stderr).trim()
                );
            }
            drop(block);
            println!("unmounted {}", a.mountpoint.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
