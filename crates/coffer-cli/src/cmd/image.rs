//! `coffer image import|ls|measure`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use coffer_image::{ImageRef, Progress, Store};

use crate::home::coffer_home;

#[derive(Subcommand, Debug)]
pub(crate) enum ImageCommand {
    /// Import an image from an OCI image layout (as written by skopeo or umoci) into the store.
    ///
    /// Every blob is checked against its digest and every layer against its diff_id; a corrupted
    /// image is refused and the store left unchanged. Layers are measured (dm-verity) on the way.
    Import(ImportArgs),
    /// Pull an image from an OCI registry into the store (plain HTTP only for localhost and
    /// 127.0.0.1 registries). Checked and measured like an import.
    Pull(PullArgs),
    /// List the images in the store.
    Ls,
    /// Print each layer's diff_id and layer hash, base layer first.
    ///
    /// The layer hash is Azure's: the dm-verity root (SHA-256, 4 KiB blocks, zero salt) of the
    /// ext4 image hcsshim's tar2ext4 makes of the uncompressed layer tar, as `az confcom
    /// acipolicygen` writes into policies. With --tar, the hash of one uncompressed layer tar.
    Measure(MeasureArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ImportArgs {
    /// Source: `oci:DIR[:TAG]`.
    source: String,
    /// Name in the store (default: DIR's basename and TAG, e.g. hello:latest).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct PullArgs {
    /// Reference, e.g. 127.0.0.1:5000/hello:latest.
    reference: String,
    /// Name in the store (default: the reference).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct MeasureArgs {
    /// A stored image name, or `oci:DIR[:TAG]`.
    #[arg(required_unless_present = "tar", conflicts_with = "tar")]
    image: Option<String>,
    /// Instead: one uncompressed layer tar ("-" = standard input); prints its layer hash.
    #[arg(long, value_name = "FILE")]
    tar: Option<PathBuf>,
}

pub(crate) fn run(cmd: ImageCommand) -> Result<ExitCode> {
    let store = Store::open(&coffer_home()?)?;
    match cmd {
        ImageCommand::Import(a) => {
            let src = ImageRef::parse(&a.source)?;
            let img = with_progress("importing", |p| {
                store.import(&src, a.name.as_deref(), Some(p))
            })?;
            let size: u64 = img.image.layers.iter().map(|l| l.size).sum();
            println!(
                "imported {} ({} layers, {:.1} MiB, manifest {})",
                img.name,
                img.image.layers.len(),
                size as f64 / 1048576.0,
                img.image.manifest_digest
            );
        }
        ImageCommand::Pull(a) => {
            let img = with_progress("pulling", |p| {
                store.pull(&a.reference, a.name.as_deref(), Some(p))
            })?;
            println!(
                "pulled {} ({} layers, manifest {})",
                img.name,
                img.image.layers.len(),
                img.image.manifest_digest
            );
        }
        ImageCommand::Ls => {
            let images = store.list()?;
            if images.is_empty() {
                eprintln!("no images (import one with: coffer image import oci:DIR[:TAG])");
            }
            for (name, digest) in images {
                let img = store.resolve(&ImageRef::Stored(name.clone()))?;
                let size: u64 = img.image.layers.iter().map(|l| l.size).sum();
                println!(
                    "{name}\t{digest}\t{} layers\t{:.1} MiB",
                    img.image.layers.len(),
                    size as f64 / 1048576.0
                );
            }
        }
        ImageCommand::Measure(MeasureArgs {
            tar: Some(path), ..
        }) => {
            let root = if path.as_os_str() == "-" {
                coffer_image::layer_root(std::io::stdin().lock())
            } else {
                let f = std::fs::File::open(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                coffer_image::layer_root(std::io::BufReader::with_capacity(1 << 20, f))
            }
            .with_context(|| format!("{}: not a layer tar tar2ext4 converts", path.display()))?;
            println!("{}", hex::encode(root));
        }
        ImageCommand::Measure(MeasureArgs {
            image: Some(image), ..
        }) => {
            let img = store.resolve(&ImageRef::parse(&image)?)?;
            let m = with_progress("measuring", |p| store.measure(&img, Some(p)))?;
            for l in m {
                println!("{} {}", l.diff_id, hex::encode(l.root_hash));
            }
        }
        ImageCommand::Measure(_) => anyhow::bail!("give an image, or --tar FILE"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `f`, drawing a progress line on stderr when it is a terminal and the work takes a while.
pub(crate) fn with_progress<T>(what: &str, f: impl FnOnce(&Progress) -> T + Send) -> T
where
    T: Send,
{
    let progress = Progress::default();
    if !std::io::stderr().is_terminal() {
        return f(&progress);
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut drawn = false;
            let mut ticks = 0;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                ticks += 1;
                if ticks < 5 {
                    continue;
                }
                let (b, t) = (
                    progress.bytes.load(Ordering::Relaxed),
                    progress.total.load(Ordering::Relaxed),
                );
                let pct = (b.min(t) * 100).checked_div(t).unwrap_or(0);
                let bar: String = (0..30)
                    .map(|i| if i * 100 < pct * 30 { '#' } else { '.' })
                    .collect();
                eprint!(
                    "\r{what} [{bar}] {pct:3}% {:.1}/{:.1} MiB",
                    b as f64 / 1048576.0,
                    t as f64 / 1048576.0
                );
                drawn = true;
            }
            if drawn {
                eprintln!();
            }
        });
        let r = f(&progress);
        done.store(true, Ordering::Relaxed);
        r
    })
}
