//! The VMSA (VM save area, `struct sev_es_save_area`; AMD APM Vol. 2, Table B-4) of each vCPU as
//! QEMU/KVM set it at reset. Only the fields that are not zero at reset are modelled; everything
//! else in the 4 KiB page is zero.

use crate::gctx::PAGE_SIZE;

/// A segment register in the save area (`struct vmcb_seg`, 16 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmcbSegment {
    /// Selector.
    pub selector: u16,
    /// Attributes (the VMCB's compressed form).
    pub attrib: u16,
    /// Limit.
    pub limit: u32,
    /// Base.
    pub base: u64,
}

impl VmcbSegment {
    const fn new(selector: u16, attrib: u16, limit: u32, base: u64) -> Self {
        VmcbSegment {
            selector,
            attrib,
            limit,
            base,
        }
    }

    fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..2].copy_from_slice(&self.selector.to_le_bytes());
        b[2..4].copy_from_slice(&self.attrib.to_le_bytes());
        b[4..8].copy_from_slice(&self.limit.to_le_bytes());
        b[8..16].copy_from_slice(&self.base.to_le_bytes());
        b
    }
}

/// The save area fields that are non-zero at reset, with their offsets in the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SevEsSaveArea {
    /// ES, at 0x000.
    pub es: VmcbSegment,
    /// CS, at 0x010.
    pub cs: VmcbSegment,
    /// SS, at 0x020.
    pub ss: VmcbSegment,
    /// DS, at 0x030.
    pub ds: VmcbSegment,
    /// FS, at 0x040.
    pub fs: VmcbSegment,
    /// GS, at 0x050.
    pub gs: VmcbSegment,
    /// GDTR, at 0x060.
    pub gdtr: VmcbSegment,
    /// LDTR, at 0x070.
    pub ldtr: VmcbSegment,
    /// IDTR, at 0x080.
    pub idtr: VmcbSegment,
    /// TR, at 0x090.
    pub tr: VmcbSegment,
    /// EFER, at 0x0d0.
    pub efer: u64,
    /// CR4, at 0x148.
    pub cr4: u64,
    /// CR0, at 0x158.
    pub cr0: u64,
    /// DR7, at 0x160.
    pub dr7: u64,
    /// DR6, at 0x168.
    pub dr6: u64,
    /// RFLAGS, at 0x170.
    pub rflags: u64,
    /// RIP, at 0x178.
    pub rip: u64,
    /// G_PAT, at 0x268.
    pub g_pat: u64,
    /// RDX, at 0x310: the CPUID signature at reset.
    pub rdx: u64,
    /// SEV_FEATURES, at 0x3b0: the guest's SEV features (bit 0 SNPActive, bit 5 DebugSwap, ...).
    pub sev_features: u64,
    /// XCR0, at 0x3e8.
    pub xcr0: u64,
    /// MXCSR, at 0x408.
    pub mxcsr: u32,
    /// X87_FCW, at 0x410.
    pub x87_fcw: u16,
}

/// The BSP's reset vector (EIP 0xfffffff0: CS base 0xffff0000, IP 0xfff0).
pub const BSP_EIP: u32 = 0xffff_fff0;

impl SevEsSaveArea {
    /// A vCPU at reset as QEMU/KVM sets it up, starting at `eip` (CS base = the high 16 bits,
    /// RIP = the low 16), with the given SEV features and CPUID signature.
    pub fn qemu_reset(eip: u32, sev_features: u64, vcpu_sig: u32) -> Self {
        let data = VmcbSegment::new(0, 0x93, 0xffff, 0);
        SevEsSaveArea {
            es: data,
            cs: VmcbSegment::new(0xf000, 0x9b, 0xffff, u64::from(eip & 0xffff_0000)),
            ss: data,
            ds: data,
            fs: data,
            gs: data,
            gdtr: VmcbSegment::new(0, 0, 0xffff, 0),
            ldtr: VmcbSegment::new(0, 0x82, 0xffff, 0),
            idtr: VmcbSegment::new(0, 0, 0xffff, 0),
            tr: VmcbSegment::new(0, 0x8b, 0xffff, 0),
            efer: 0x1000, // EFER.SVME, which KVM sets
            cr4: 0x40,    // CR4.MCE, which KVM sets
            cr0: 0x10,    // CR0.ET
            dr7: 0x400,
            dr6: 0xffff_0ff0,
            rflags: 0x2,
            rip: u64::from(eip & 0xffff),
            g_pat: 0x0007_0406_0007_0406, // PAT power-on value (APM Vol. 2, A.3)
            rdx: u64::from(vcpu_sig),
            sev_features,
            xcr0: 0x1,
            mxcsr: 0x1f80,
            x87_fcw: 0x37f,
        }
    }

    /// The 4 KiB VMSA page.
    pub fn encode(&self) -> [u8; PAGE_SIZE] {
        let mut p = [0u8; PAGE_SIZE];
        let segs = [
            &self.es, &self.cs, &self.ss, &self.ds, &self.fs, &self.gs, &self.gdtr, &self.ldtr,
            &self.idtr, &self.tr,
        ];
        for (i, s) in segs.into_iter().enumerate() {
            p[i * 16..(i + 1) * 16].copy_from_slice(&s.encode());
        }
        let u64s = [
            (0x0d0, self.efer),
            (0x148, self.cr4),
            (0x158, self.cr0),
            (0x160, self.dr7),
            (0x168, self.dr6),
            (0x170, self.rflags),
            (0x178, self.rip),
            (0x268, self.g_pat),
            (0x310, self.rdx),
            (0x3b0, self.sev_features),
            (0x3e8, self.xcr0),
        ];
        for (at, v) in u64s {
            p[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        p[0x408..0x40c].copy_from_slice(&self.mxcsr.to_le_bytes());
        p[0x410..0x412].copy_from_slice(&self.x87_fcw.to_le_bytes());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bsp_reset_page() {
        let p = SevEsSaveArea::qemu_reset(BSP_EIP, 0x21, 0x80_0f12).encode();
        // CS: selector 0xf000, attrib 0x9b, limit 0xffff, base 0xffff0000.
        assert_eq!(
            hex::encode(&p[0x10..0x20]),
            "00f09b00ffff00000000ffff00000000"
        );
        assert_eq!(&p[0x178..0x180], &0xfff0u64.to_le_bytes());
        assert_eq!(&p[0x310..0x318], &0x80_0f12u64.to_le_bytes());
        assert_eq!(&p[0x3b0..0x3b8], &0x21u64.to_le_bytes());
        assert_eq!(&p[0x408..0x40c], &0x1f80u32.to_le_bytes());
        assert_eq!(&p[0x410..0x412], &0x37fu16.to_le_bytes());
        assert!(p[0x420..].iter().all(|b| *b == 0));
        // SHA-384 of sev-snp-measure's BSP page for the same inputs (`VMSA(...).bsp_save_area`).
        assert_eq!(
            hex::encode(openssl::sha::sha384(&p)),
            "ae79efa6efbe1594a2717dfd42af495a0e4ed37b00e529a5fdf349bea04c3513\
             962ffb0c74cf65b0d9a1857271833d6e"
        );
    }

    #[test]
    fn ap_reset_page_splits_eip() {
        let s = SevEsSaveArea::qemu_reset(0x80_b004, 0x21, 0x80_0f12);
        assert_eq!((s.cs.base, s.rip), (0x80_0000, 0xb004));
        // SHA-384 of sev-snp-measure's AP page for the same inputs.
        assert_eq!(
            hex::encode(openssl::sha::sha384(&s.encode())),
            "180ef2675dc01615d31b3e84ef27a0a69d08bfbbb58ea4f6a0188f08884ab640\
             7591ada42f99749ce9a406fb4e5d8355"
        );
    }
}
