//! SEV-SNP launch of a group's VM (QEMU >= 9.1 on a host with SNP enabled, an AmdSev OVMF).
//!
//! What the launch fixes, and so what the launch digest covers: the firmware, the kernel, the
//! initramfs and the command line (`kernel-hashes=on`: OVMF measures them into the digest), the
//! vCPU count and model, and the guest policy. HOST_DATA is SHA-256(policy): per-group data enters
//! only there, so one launch digest (`coffer uvm measure --guest`) covers every group.
//!
//! Written to QEMU's documented `sev-snp-guest` object; no SNP hardware was available to run it
//! (the golden test pins the command line).

use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::HostError;

/// Guest policy: bit 17 must be one, bit 16 allows SMT; debugging (bit 19) and migration agents
/// (bit 18) stay off, so a debug guest never gets a key (`coffer serve` refuses debug reports).
pub const GUEST_POLICY: u64 = 0x30000;
/// The C-bit position of AMD EPYC Milan, Genoa and Turin (CPUID 0x8000001F EBX bits 5:0).
pub const CBITPOS: u32 = 51;
/// The vCPU model the digest is computed for (its CPUID signature is in the VMSAs).
pub const VCPU_TYPE: &str = "EPYC-v4";

/// How an SNP group is launched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnpConfig {
    /// The AmdSevX64 OVMF (`-bios`).
    pub ovmf: PathBuf,
    /// `cbitpos`.
    pub cbitpos: u32,
    /// The guest policy.
    pub policy: u64,
}

impl SnpConfig {
    /// Defaults for this firmware.
    pub fn new(ovmf: PathBuf) -> Self {
        SnpConfig {
            ovmf,
            cbitpos: CBITPOS,
            policy: GUEST_POLICY,
        }
    }
}

/// QEMU's version from `qemu-system-x86_64 --version` output ("QEMU emulator version 9.1.0 ...").
pub fn parse_qemu_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split("version ").nth(1)?.split_whitespace().next()?;
    let mut it = v.split(['.', '(', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// What keeps this host from launching SNP guests.
#[derive(Debug, thiserror::Error)]
pub enum NoSnp {
    /// Not an SEV host.
    #[error("no /dev/sev (not an SEV host)")]
    NoDevice,
    /// kvm_amd loaded without SNP.
    #[error("kvm_amd has SNP disabled (sev_snp)")]
    Disabled,
    /// QEMU does not run.
    #[error("qemu-system-x86_64: {0}")]
    Qemu(std::io::Error),
    /// QEMU older than 9.1.
    #[error("QEMU {0}.{1} cannot launch SNP guests (needs 9.1)")]
    QemuTooOld(u32, u32),
    /// `--version` said nothing readable.
    #[error("cannot read QEMU's version")]
    QemuVersion,
    /// No firmware configured.
    #[error("no AmdSev OVMF configured (COFFER_OVMF)")]
    NoFirmware,
    /// The configured firmware is not a file.
    #[error("COFFER_OVMF: {} is not a file", .0.display())]
    FirmwareMissing(PathBuf),
}

/// SNP is usable when the host has it enabled (`/dev/sev`, kvm_amd's `sev_snp=Y`), QEMU is 9.1
/// or newer, and an AmdSev OVMF is configured (`$COFFER_OVMF`). `Err` says what is missing.
pub fn detect() -> Result<SnpConfig, NoSnp> {
    if !Path::new("/dev/sev").exists() {
        return Err(NoSnp::NoDevice);
    }
    let snp = std::fs::read_to_string("/sys/module/kvm_amd/parameters/sev_snp").unwrap_or_default();
    if snp.trim() != "Y" && snp.trim() != "1" {
        return Err(NoSnp::Disabled);
    }
    let out = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map_err(NoSnp::Qemu)?;
    match parse_qemu_version(&String::from_utf8_lossy(&out.stdout)) {
        Some(v) if v >= (9, 1) => {}
        Some((a, b)) => return Err(NoSnp::QemuTooOld(a, b)),
        None => return Err(NoSnp::QemuVersion),
    }
    let ovmf = std::env::var_os("COFFER_OVMF")
        .map(PathBuf::from)
        .ok_or(NoSnp::NoFirmware)?;
    if !ovmf.is_file() {
        return Err(NoSnp::FirmwareMissing(ovmf));
    }
    Ok(SnpConfig::new(ovmf))
}

/// The machine arguments of an SNP launch: q35 with the SNP object (HOST_DATA, kernel hashes),
/// guest memory from a memfd (private memory is converted per page), the firmware, KVM.
pub fn machine_args(snp: &SnpConfig, memory_mib: u64, host_data: &[u8; 32]) -> Vec<String> {
    let host_data = base64::engine::general_purpose::STANDARD.encode(host_data);
    vec![
        "-machine".into(),
        "q35,confidential-guest-support=sev0,memory-backend=ram0".into(),
        "-accel".into(),
        "kvm".into(),
        "-cpu".into(),
        VCPU_TYPE.into(),
        "-object".into(),
        format!("memory-backend-memfd,id=ram0,size={memory_mib}M,share=true"),
        "-object".into(),
        format!(
            "sev-snp-guest,id=sev0,cbitpos={},reduced-phys-bits=1,policy={:#x},\
             host-data={host_data},kernel-hashes=on",
            snp.cbitpos, snp.policy
        ),
        "-bios".into(),
        snp.ovmf.to_string_lossy().into_owned(),
    ]
}

/// The launch digest an SNP guest of `image` with `vcpus` gets under this firmware: what
/// reference values and release policies pin.
pub fn launch_digest(
    snp: &SnpConfig,
    image: &crate::image::GuestImage,
    vcpus: u32,
) -> Result<[u8; 48], HostError> {
    let ovmf =
        std::fs::read(&snp.ovmf).map_err(crate::io(format!("reading {}", snp.ovmf.display())))?;
    let vcpu_type = VCPU_TYPE
        .parse()
        .map_err(|e| HostError::Tool(format!("vCPU type {VCPU_TYPE}: {e}")))?;
    let mut inputs = coffer_snp_measure::LaunchInputs::new(ovmf, vcpus, vcpu_type);
    inputs.kernel = Some(
        coffer_snp_measure::KernelHashes::from_files(
            &image.kernel,
            Some(&image.initrd),
            Some(&image.append),
        )
        .map_err(|e| HostError::Tool(format!("hashing the guest image: {e}")))?,
    );
    coffer_snp_measure::launch_digest(&inputs)
        .map_err(|e| HostError::Tool(format!("launch digest: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_versions_are_read_from_its_banner() {
        let v = "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nCopyright";
        assert_eq!(parse_qemu_version(v), Some((7, 2)));
        assert_eq!(
            parse_qemu_version("QEMU emulator version 10.0.2 (Debian)"),
            Some((10, 0))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 9.1.0"),
            Some((9, 1))
        );
        assert_eq!(parse_qemu_version("something else"), None);
    }

    #[test]
    fn the_snp_machine_arguments_are_the_documented_ones() {
        let snp = SnpConfig::new(PathBuf::from("/fw/OVMF.amdsev.fd"));
        let args = machine_args(&snp, 2048, &[0xab; 32]);
        assert_eq!(
            args.join(" "),
            "-machine q35,confidential-guest-support=sev0,memory-backend=ram0 -accel kvm \
             -cpu EPYC-v4 -object memory-backend-memfd,id=ram0,size=2048M,share=true \
             -object sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,\
             host-data=q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=,kernel-hashes=on \
             -bios /fw/OVMF.amdsev.fd"
        );
    }
}
