//! QEMU's EPYC vCPU models and their CPUID signatures: at reset RDX holds the signature
//! (CPUID Fn0000_0001_EAX), so the model is part of every VMSA and so of the measurement.

use std::fmt;
use std::str::FromStr;

use crate::error::MeasureError;

/// The CPUID Fn0000_0001_EAX signature of a family, model and stepping (AMD CPUID Specification,
/// publication 25481): families above 0xf are split into base 0xf plus an extended family.
pub const fn cpu_sig(family: u32, model: u32, stepping: u32) -> u32 {
    let (family_low, family_high) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (family_high << 20)
        | (((model >> 4) & 0xf) << 16)
        | (family_low << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// A guest vCPU type: one of the EPYC models QEMU defines (`builtin_x86_defs`), named as `-cpu`
/// takes them, or a raw signature (e.g. for `-cpu host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VcpuType {
    /// `EPYC` (Naples).
    Epyc,
    /// `EPYC-v1`.
    EpycV1,
    /// `EPYC-v2`.
    EpycV2,
    /// `EPYC-IBPB`.
    EpycIbpb,
    /// `EPYC-v3`.
    EpycV3,
    /// `EPYC-v4`.
    EpycV4,
    /// `EPYC-Rome`.
    EpycRome,
    /// `EPYC-Rome-v1`.
    EpycRomeV1,
    /// `EPYC-Rome-v2`.
    EpycRomeV2,
    /// `EPYC-Rome-v3`.
    EpycRomeV3,
    /// `EPYC-Milan`.
    EpycMilan,
    /// `EPYC-Milan-v1`.
    EpycMilanV1,
    /// `EPYC-Milan-v2`.
    EpycMilanV2,
    /// `EPYC-Genoa`.
    EpycGenoa,
    /// `EPYC-Genoa-v1`.
    EpycGenoaV1,
    /// `EPYC-Turin`.
    EpycTurin,
    /// Any other CPUID signature (sev-snp-measure's `--vcpu-sig`, or [`cpu_sig`] of
    /// `--vcpu-family/-model/-stepping`).
    Signature(u32),
}

const NAMED: [(VcpuType, &str, u32); 16] = [
    (VcpuType::Epyc, "EPYC", cpu_sig(23, 1, 2)),
    (VcpuType::EpycV1, "EPYC-v1", cpu_sig(23, 1, 2)),
    (VcpuType::EpycV2, "EPYC-v2", cpu_sig(23, 1, 2)),
    (VcpuType::EpycIbpb, "EPYC-IBPB", cpu_sig(23, 1, 2)),
    (VcpuType::EpycV3, "EPYC-v3", cpu_sig(23, 1, 2)),
    (VcpuType::EpycV4, "EPYC-v4", cpu_sig(23, 1, 2)),
    (VcpuType::EpycRome, "EPYC-Rome", cpu_sig(23, 49, 0)),
    (VcpuType::EpycRomeV1, "EPYC-Rome-v1", cpu_sig(23, 49, 0)),
    (VcpuType::EpycRomeV2, "EPYC-Rome-v2", cpu_sig(23, 49, 0)),
    (VcpuType::EpycRomeV3, "EPYC-Rome-v3", cpu_sig(23, 49, 0)),
    (VcpuType::EpycMilan, "EPYC-Milan", cpu_sig(25, 1, 1)),
    (VcpuType::EpycMilanV1, "EPYC-Milan-v1", cpu_sig(25, 1, 1)),
    (VcpuType::EpycMilanV2, "EPYC-Milan-v2", cpu_sig(25, 1, 1)),
    (VcpuType::EpycGenoa, "EPYC-Genoa", cpu_sig(25, 17, 0)),
    (VcpuType::EpycGenoaV1, "EPYC-Genoa-v1", cpu_sig(25, 17, 0)),
    (VcpuType::EpycTurin, "EPYC-Turin", cpu_sig(26, 0, 0)),
];

impl VcpuType {
    /// The model names [`FromStr`] accepts (exactly, as QEMU and sev-snp-measure spell them).
    pub const NAMES: [&'static str; 16] = {
        let mut names = [""; 16];
        let mut i = 0;
        while i < NAMED.len() {
            names[i] = NAMED[i].1;
            i += 1;
        }
        names
    };

    /// The CPUID signature the vCPU reports, which QEMU puts in RDX at reset.
    pub fn signature(self) -> u32 {
        match self {
            VcpuType::Signature(s) => s,
            named => NAMED
                .iter()
                .find(|(t, _, _)| *t == named)
                .map_or(0, |(_, _, s)| *s),
        }
    }

    /// A raw signature from family, model and stepping.
    pub const fn from_family_model_stepping(family: u32, model: u32, stepping: u32) -> Self {
        VcpuType::Signature(cpu_sig(family, model, stepping))
    }
}

impl FromStr for VcpuType {
    type Err = MeasureError;

    fn from_str(s: &str) -> Result<Self, MeasureError> {
        NAMED
            .iter()
            .find(|(_, name, _)| *name == s)
            .map(|(t, _, _)| *t)
            .ok_or_else(|| MeasureError::UnknownVcpuType(s.to_owned()))
    }
}

impl fmt::Display for VcpuType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VcpuType::Signature(s) => write!(f, "signature {s:#x}"),
            named => match NAMED.iter().find(|(t, _, _)| t == named) {
                Some((_, name, _)) => f.write_str(name),
                None => write!(f, "{named:?}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        assert_eq!(VcpuType::EpycV4.signature(), 0x0080_0f12);
        assert_eq!(
            "EPYC-Milan".parse::<VcpuType>().unwrap().signature(),
            0x00a0_0f11
        );
        assert_eq!(
            "EPYC-Genoa".parse::<VcpuType>().unwrap().signature(),
            0x00a1_0f10
        );
        assert_eq!(
            "EPYC-Turin".parse::<VcpuType>().unwrap().signature(),
            0x00b0_0f00
        );
        assert_eq!(
            VcpuType::from_family_model_stepping(25, 1, 1).signature(),
            0x00a0_0f11
        );
        assert_eq!(
            VcpuType::from_family_model_stepping(6, 0x55, 4).signature(),
            0x0005_0654
        );
    }

    #[test]
    fn names_round_trip() {
        for name in VcpuType::NAMES {
            let t: VcpuType = name.parse().unwrap();
            assert_eq!(t.to_string(), name);
            assert_ne!(t.signature(), 0);
        }
        assert!(matches!(
            "epyc-v4".parse::<VcpuType>(),
            Err(MeasureError::UnknownVcpuType(_))
        ));
    }
}
