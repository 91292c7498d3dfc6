//! Differential test against virtee's `sev-snp-measure` (PyPI), run as a program: `$SEV_SNP_MEASURE`
//! or `sev-snp-measure` on PATH. Without it the test is reported as ignored, even in CI (which need
//! not install it).
//!
//! Firmware: synthetic images (1 to 16 pages, with and without kernel hashes support), and the
//! shared vectors' two OVMF suffixes, also padded in front to 64 KiB. Inputs:
//! vCPU counts 1/2/4/7, several EPYC models and a raw signature, guest features 0x1/0x21/0x5,
//! with and without kernel, initrd and command line (small generated files).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use coffer_snp_measure::{launch_digest, ovmf_hash, KernelHashes, LaunchInputs, VcpuType};
use coffer_testkit::Need;
use common::SyntheticOvmf;

fn tool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SEV_SNP_MEASURE") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("sev-snp-measure"))
            .find(|p| p.is_file())
    })
}

#[derive(Debug, Clone, Copy)]
enum Vcpu {
    Named(&'static str),
    Sig(u32),
}

#[derive(Debug)]
struct Case<'a> {
    ovmf: &'a Path,
    vcpus: u32,
    vcpu: Vcpu,
    features: u64,
    kernel: Option<&'a Path>,
    initrd: Option<&'a Path>,
    append: Option<&'a str>,
}

/// The tool's digest, or `Err(stderr)` when it fails.
fn reference(tool: &Path, c: &Case<'_>) -> Result<String, String> {
    let mut cmd = Command::new(tool);
    cmd.args(["--mode", "snp", "--vcpus", &c.vcpus.to_string()])
        .arg("--ovmf")
        .arg(c.ovmf)
        .args(["--guest-features", &format!("{:#x}", c.features)]);
    match c.vcpu {
        Vcpu::Named(n) => cmd.args(["--vcpu-type", n]),
        Vcpu::Sig(s) => cmd.args(["--vcpu-sig", &format!("{s:#x}")]),
    };
    if let Some(k) = c.kernel {
        cmd.arg("--kernel").arg(k);
    }
    if let Some(i) = c.initrd {
        cmd.arg("--initrd").arg(i);
    }
    if let Some(a) = c.append {
        cmd.args(["--append", a]);
    }
    let out = cmd.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn ours(c: &Case<'_>) -> Result<String, String> {
    let vcpu_type = match c.vcpu {
        Vcpu::Named(n) => n.parse::<VcpuType>().unwrap(),
        Vcpu::Sig(s) => VcpuType::Signature(s),
    };
    let kernel = c
        .kernel
        .map(|k| KernelHashes::from_files(k, c.initrd, c.append).unwrap());
    let inputs = LaunchInputs {
        kernel,
        guest_features: c.features,
        ..LaunchInputs::new(std::fs::read(c.ovmf).unwrap(), c.vcpus, vcpu_type)
    };
    launch_digest(&inputs)
        .map(hex::encode)
        .map_err(|e| e.to_string())
}

fn ovmf_hash_reference(tool: &Path, ovmf: &Path) -> String {
    let out = Command::new(tool)
        .args(["--mode", "snp:ovmf-hash", "--ovmf"])
        .arg(ovmf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as u8
        })
        .collect()
}

fn main() -> std::process::ExitCode {
    coffer_testkit::run(coffer_testkit::tests![
        matches_sev_snp_measure: SEV_SNP_MEASURE, Need::Vectors;
    ])
}

/// virtee's `sev-snp-measure`, which CI does not install.
const SEV_SNP_MEASURE: Need = Need::Optional(&Need::Check("sev-snp-measure", found));

fn found() -> Result<(), coffer_testkit::Unmet> {
    tool()
        .map(drop)
        .ok_or_else(|| "not found (pip install sev-snp-measure, or set SEV_SNP_MEASURE)".into())
}

fn matches_sev_snp_measure() {
    let tool = tool().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    // Firmware images: (path, supports kernel hashes).
    let mut firmware = vec![
        (
            write("amd1.fd", &SyntheticOvmf::amd_sev(1, 11).build()),
            true,
        ),
        (
            write("amd16.fd", &SyntheticOvmf::amd_sev(16, 12).build()),
            true,
        ),
        (
            write("x64_3.fd", &SyntheticOvmf::ovmf_x64(3, 13).build()),
            false,
        ),
    ];
    let vectors = coffer_testkit::vectors();
    for (name, hashes) in [
        ("ovmf_AmdSev_suffix.bin", true),
        ("ovmf_OvmfX64_suffix.bin", false),
    ] {
        let suffix = coffer_testkit::read(&vectors, &format!("snp-measure/{name}"));
        let mut padded = pseudo_random(64 * 1024 - suffix.len(), 99);
        padded.extend_from_slice(&suffix);
        firmware.push((write(name, &suffix), hashes));
        firmware.push((write(&format!("padded_{name}"), &padded), hashes));
    }

    let kernel = write("vmlinuz", &pseudo_random(300_001, 1));
    let initrd = write("initrd", &pseudo_random(70_000, 2));
    let empty = write("empty", b"");
    // (kernel, initrd, append)
    let boots: [(Option<&Path>, Option<&Path>, Option<&str>); 6] = [
        (None, None, None),
        (Some(&kernel), None, None),
        (Some(&kernel), Some(&initrd), None),
        (
            Some(&kernel),
            Some(&initrd),
            Some("console=ttyS0 root=/dev/vda1 ro"),
        ),
        (Some(&empty), Some(&empty), Some("")),
        (Some(&kernel), None, Some("quiet \u{e9}t\u{e9} \u{1f980}")),
    ];
    let vcpus = [1, 2, 4, 7];
    let types = [
        Vcpu::Named("EPYC-v4"),
        Vcpu::Named("EPYC-Milan"),
        Vcpu::Named("EPYC-Genoa"),
        Vcpu::Named("EPYC-Rome-v2"),
        Vcpu::Named("EPYC-Turin"),
        Vcpu::Sig(0x00a1_0f11),
    ];
    let features = [0x1, 0x21, 0x5];

    let mut compared = 0;
    let mut refused = 0;
    let mut i = 0usize;
    for (ovmf, supports_kernel) in &firmware {
        assert_eq!(
            hex::encode(ovmf_hash(&std::fs::read(ovmf).unwrap()).unwrap()),
            ovmf_hash_reference(&tool, ovmf),
            "ovmf hash of {}",
            ovmf.display()
        );
        for (kernel, initrd, append) in boots {
            // Rotate the other inputs so that every value meets every firmware and boot.
            let case = Case {
                ovmf,
                vcpus: vcpus[i % vcpus.len()],
                vcpu: types[i % types.len()],
                features: features[i % features.len()],
                kernel,
                initrd,
                append,
            };
            i += 1;
            let (want, got) = (reference(&tool, &case), ours(&case));
            match (&want, &got) {
                (Ok(w), Ok(g)) => {
                    assert_eq!(g, w, "{case:?}");
                    compared += 1;
                }
                (Err(_), Err(_)) => {
                    assert!(kernel.is_some() && !supports_kernel, "{case:?}: {want:?}");
                    refused += 1;
                }
                _ => panic!("{case:?}: sev-snp-measure {want:?}, ours {got:?}"),
            }
        }
    }
    // Every vCPU count and type on one firmware, with a kernel.
    let (ovmf, _) = &firmware[1];
    for n in vcpus {
        for vcpu in types {
            let case = Case {
                ovmf,
                vcpus: n,
                vcpu,
                features: 0x21,
                kernel: Some(&kernel),
                initrd: Some(&initrd),
                append: Some("a"),
            };
            assert_eq!(ours(&case), reference(&tool, &case), "{case:?}");
            compared += 1;
        }
    }
    eprintln!(
        "matches_sev_snp_measure: {compared} digests equal, {refused} kernel-without-support \
         refusals equal, {} ovmf hashes equal",
        firmware.len()
    );
}
