//! The SEV-SNP launch digest (the attestation report's MEASUREMENT) of a QEMU guest booted with
//! OVMF, computed from its inputs as AMD's PSP computes it during SNP_LAUNCH_UPDATE, and as virtee's
//! `sev-snp-measure` (`--mode snp`, VMM QEMU) computes it:
//!
//! ```text
//! LD = 0
//! for each 4 KiB page of OVMF (mapped to end at 4 GiB):      NORMAL  (SHA-384 of the page)
//! for each section of OVMF's SEV metadata, in order:
//!     SNP_SEC_MEM, SVSM_CAA                                   ZERO    (per page)
//!     SNP_SECRETS                                             SECRETS (one page)
//!     CPUID                                                   CPUID   (one page)
//!     SNP_KERNEL_HASHES: with a kernel, the hash table page   NORMAL; without, ZERO pages
//! for each vCPU (BSP at 0xfffffff0, APs at OVMF's reset vector): VMSA
//! each step: LD = SHA-384(PAGE_INFO { LD, CONTENTS, 0x70, PAGE_TYPE, 0, 0, 0, 0, GPA })
//! ```
//!
//! Parsing never does I/O and never panics on malformed firmware; [`KernelHashes::from_files`]
//! streams large kernels and initrds from disk.
//!
//! Why not the `sev` crate's `measurement` module: it computes the same thing, but it is one
//! feature of a crate for the whole SEV firmware/KVM interface (ioctl and KVM bindings, certificate
//! handling, `openssl` vendored by default so a build compiles OpenSSL) and asks for a newer Rust
//! than this workspace; the digest itself is a few hundred lines over `openssl::sha`, which the
//! workspace already uses.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod gctx;
pub mod guid;
pub mod hashes;
pub mod ovmf;
pub mod vcpu;
pub mod vmsa;

pub use error::MeasureError;
pub use gctx::{LaunchDigest, PageInfo, PageType, DIGEST_LEN, PAGE_SIZE, VMSA_GPA};
pub use guid::Guid;
pub use hashes::KernelHashes;
pub use ovmf::{FooterEntry, FooterTable, Ovmf, SectionDesc, SectionType, SevMetadataHeader};
pub use vcpu::{cpu_sig, VcpuType};
pub use vmsa::{SevEsSaveArea, VmcbSegment, BSP_EIP};

/// SEV_FEATURES bits of the VMSA (AMD APM Vol. 2, "SEV_FEATURES").
pub mod sev_features {
    /// SNPActive: the guest is an SNP guest (required).
    pub const SNP_ACTIVE: u64 = 1 << 0;
    /// DebugSwap: the hardware swaps debug registers (KVM enables it on hosts that have it).
    pub const DEBUG_SWAP: u64 = 1 << 5;
    /// sev-snp-measure's default `--guest-features` (SNPActive only).
    pub const DEFAULT: u64 = SNP_ACTIVE;
}

/// What determines a QEMU SEV-SNP guest's launch digest.
#[derive(Debug, Clone)]
pub struct LaunchInputs {
    /// The whole OVMF image (`OVMF.fd`, as given to QEMU's `-bios`), mapped to end at 4 GiB.
    pub ovmf: Vec<u8>,
    /// The measured direct boot hashes (`-kernel`, `-initrd`, `-append`), if a kernel is given.
    /// Only firmware with an SNP_KERNEL_HASHES section (AmdSevX64) can measure one.
    pub kernel: Option<KernelHashes>,
    /// Number of vCPUs (`-smp`), at least 1.
    pub vcpus: u32,
    /// vCPU model (`-cpu`).
    pub vcpu_type: VcpuType,
    /// SEV_FEATURES of every VMSA (see [`sev_features`]; sev-snp-measure's `--guest-features`).
    pub guest_features: u64,
}

impl LaunchInputs {
    /// Inputs without a kernel and with [`sev_features::DEFAULT`].
    pub fn new(ovmf: Vec<u8>, vcpus: u32, vcpu_type: VcpuType) -> Self {
        LaunchInputs {
            ovmf,
            kernel: None,
            vcpus,
            vcpu_type,
            guest_features: sev_features::DEFAULT,
        }
    }
}

/// The launch digest (MEASUREMENT) of a guest launched with these inputs.
pub fn launch_digest(inputs: &LaunchInputs) -> Result<[u8; DIGEST_LEN], MeasureError> {
    let ovmf = Ovmf::parse(&inputs.ovmf)?;
    let mut ld = LaunchDigest::new();
    measure_firmware(&mut ld, &ovmf)?;
    measure_metadata(&mut ld, &ovmf, inputs.kernel.as_ref())?;
    measure_vmsas(
        &mut ld,
        &ovmf,
        inputs.vcpus,
        inputs.vcpu_type.signature(),
        inputs.guest_features,
    )?;
    Ok(ld.digest())
}

/// The digest of the firmware pages alone (sev-snp-measure `--mode snp:ovmf-hash`).
pub fn ovmf_hash(ovmf: &[u8]) -> Result<[u8; DIGEST_LEN], MeasureError> {
    let ovmf = Ovmf::parse(ovmf)?;
    let mut ld = LaunchDigest::new();
    measure_firmware(&mut ld, &ovmf)?;
    Ok(ld.digest())
}

/// The firmware image as normal pages, from the GPA at which it ends at 4 GiB.
pub fn measure_firmware(ld: &mut LaunchDigest, ovmf: &Ovmf<'_>) -> Result<(), MeasureError> {
    let image = ovmf.image();
    if !image.len().is_multiple_of(PAGE_SIZE) {
        return Err(MeasureError::FirmwareNotPageAligned { len: image.len() });
    }
    ld.update_normal_pages(ovmf.gpa()?, image);
    Ok(())
}

/// The SEV metadata sections, in the firmware's order, with the kernel hash table if given.
pub fn measure_metadata(
    ld: &mut LaunchDigest,
    ovmf: &Ovmf<'_>,
    kernel: Option<&KernelHashes>,
) -> Result<(), MeasureError> {
    if kernel.is_some() && !ovmf.has_section(SectionType::SnpKernelHashes) {
        return Err(MeasureError::KernelHashesUnsupported);
    }
    for s in ovmf.sections() {
        let gpa = u64::from(s.gpa);
        let pages = || {
            if (s.size as usize).is_multiple_of(PAGE_SIZE) {
                Ok(u64::from(s.size) / PAGE_SIZE as u64)
            } else {
                Err(MeasureError::SectionNotPageAligned {
                    kind: s.kind,
                    gpa: s.gpa,
                    size: s.size,
                })
            }
        };
        match s.kind {
            SectionType::SnpSecMem | SectionType::SvsmCaa => {
                ld.update_empty_pages(PageType::Zero, gpa, pages()?);
            }
            SectionType::SnpSecrets => ld.update_empty_pages(PageType::Secrets, gpa, 1),
            SectionType::Cpuid => ld.update_empty_pages(PageType::Cpuid, gpa, 1),
            SectionType::SnpKernelHashes => match kernel {
                Some(hashes) => {
                    let table_gpa = ovmf
                        .sev_hash_table_gpa()?
                        .ok_or(MeasureError::NoHashTableGpa)?;
                    if s.size as usize != PAGE_SIZE {
                        return Err(MeasureError::KernelHashesSectionSize { size: s.size });
                    }
                    let page = hashes.page(table_gpa as usize & (PAGE_SIZE - 1))?;
                    ld.update_normal_pages(gpa, &page);
                }
                None => ld.update_empty_pages(PageType::Zero, gpa, pages()?),
            },
        }
    }
    Ok(())
}

/// One VMSA per vCPU: the BSP at the architectural reset vector, the APs at the firmware's.
pub fn measure_vmsas(
    ld: &mut LaunchDigest,
    ovmf: &Ovmf<'_>,
    vcpus: u32,
    vcpu_sig: u32,
    sev_features: u64,
) -> Result<(), MeasureError> {
    if vcpus == 0 {
        return Err(MeasureError::NoVcpus);
    }
    let ap_eip = ovmf.sev_es_reset_eip()?.ok_or(MeasureError::NoResetBlock)?;
    if ap_eip == 0 && vcpus > 1 {
        return Err(MeasureError::NoApResetVector { vcpus });
    }
    ld.update_vmsa_page(&SevEsSaveArea::qemu_reset(BSP_EIP, sev_features, vcpu_sig).encode());
    if vcpus > 1 {
        let ap = SevEsSaveArea::qemu_reset(ap_eip, sev_features, vcpu_sig).encode();
        for _ in 1..vcpus {
            ld.update_vmsa_page(&ap);
        }
    }
    Ok(())
}
