//! `coffer uvm`: the utility VM a group runs in. For now: its SEV-SNP launch measurement.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use coffer_snp_measure::{launch_digest, KernelHashes, LaunchInputs, VcpuType};

#[derive(Subcommand, Debug)]
pub(crate) enum UvmCommand {
    /// Print the SEV-SNP launch digest (MEASUREMENT, hex) a QEMU SNP guest with these inputs
    /// gets, as virtee's sev-snp-measure computes it; what `coffer serve --reference-values`
    /// and release policies (`x-ms-sevsnpvm-launchmeasurement`) compare with.
    Measure(MeasureArgs),
    /// Build the guest image (Debian's kernel and a deterministic initramfs holding the agent,
    /// runc and the kernel modules) into `$COFFER_HOME/uvm/<hash>/`; prints its directory.
    Build(BuildArgs),
}

#[derive(Args, Debug)]
pub(crate) struct BuildArgs {
    /// The agent binary put in the image as init (default: `coffer-agent` next to `coffer`, or `$COFFER_AGENT`).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// A linux-image-*-amd64 .deb (default: `apt-get download` of linux-image-amd64's kernel,
    /// cached in $COFFER_UVM_KERNELS or $COFFER_HOME/uvm/kernels).
    #[arg(long)]
    kernel_deb: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct MeasureArgs {
    /// OVMF firmware (QEMU's -bios), an AmdSevX64 build for measured direct boot.
    #[arg(long)]
    ovmf: PathBuf,
    /// Measure Coffer's own guest image (built or taken from the cache: kernel, initramfs and
    /// command line), as `coffer run --isolation vm` launches it.
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "append", "vcpu_type"])]
    guest: bool,
    /// Kernel for measured direct boot (-kernel; needs an AmdSevX64 OVMF).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initrd (-initrd).
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line (-append).
    #[arg(long, requires = "kernel")]
    append: Option<String>,
    /// Number of vCPUs (-smp).
    #[arg(long)]
    vcpus: u32,
    /// vCPU model (-cpu), e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa.
    #[arg(long, default_value = "EPYC-v4")]
    vcpu_type: String,
    /// SEV_FEATURES of the VMSAs (hex): 0x1 is SNP alone, 0x21 adds DebugSwap.
    #[arg(long, default_value = "0x1")]
    guest_features: String,
}

pub(crate) fn run(cmd: UvmCommand) -> Result<ExitCode> {
    match cmd {
        UvmCommand::Build(a) => {
            let image = coffer_host::image::build(&coffer_host::image::BuildOptions {
                home: crate::home::coffer_home()?,
                agent: match a.agent {
                    Some(p) => p,
                    None => coffer_host::launch::agent_exe()?,
                },
                kernel_deb: a.kernel_deb,
            })?;
            eprintln!(
                "coffer: guest image: kernel {}, initrd {}, measurement (emulated) {}",
                image.kernel.display(),
                image.initrd.display(),
                hex::encode(image.measurement)
            );
            println!("{}", image.dir.display());
        }
        UvmCommand::Measure(a) if a.guest => {
            let image = coffer_host::image::build(&coffer_host::image::BuildOptions {
                home: crate::home::coffer_home()?,
                agent: coffer_host::launch::agent_exe()?,
                kernel_deb: None,
            })
            .context("the guest image (coffer uvm build)")?;
            let cfg = coffer_host::snp::SnpConfig::new(a.ovmf.clone());
            if a.guest_features != "0x1" {
                anyhow::bail!("--guest measures the launch `coffer run` makes (SEV_FEATURES 0x1)");
            }
            println!(
                "{}",
                hex::encode(coffer_host::snp::launch_digest(&cfg, &image, a.vcpus)?)
            );
        }
        UvmCommand::Measure(a) => {
            let ovmf = std::fs::read(&a.ovmf)
                .with_context(|| format!("cannot read {}", a.ovmf.display()))?;
            let vcpu_type: VcpuType = a
                .vcpu_type
                .parse()
                .with_context(|| format!("--vcpu-type {}", a.vcpu_type))?;
            let features = u64::from_str_radix(a.guest_features.trim_start_matches("0x"), 16)
                .with_context(|| format!("--guest-features '{}' is not hex", a.guest_features))?;
            let mut inputs = LaunchInputs::new(ovmf, a.vcpus, vcpu_type);
            inputs.guest_features = features;
            if let Some(k) = &a.kernel {
                inputs.kernel = Some(KernelHashes::from_files(
                    k,
                    a.initrd.as_deref(),
                    a.append.as_deref(),
                )?);
            }
            println!("{}", hex::encode(launch_digest(&inputs)?));
        }
    }
    Ok(ExitCode::SUCCESS)
}
