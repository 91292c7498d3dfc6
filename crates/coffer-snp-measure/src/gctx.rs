//! The launch digest chain: each SNP_LAUNCH_UPDATE hashes a PAGE_INFO structure that holds the
//! digest so far, so the final digest commits to every page, its type and its address, in order.
//!
//! AMD SEV-SNP Firmware ABI Specification (publication 56860), "PAGE_INFO" (Table "Layout of the
//! PAGE_INFO Structure") and SNP_LAUNCH_UPDATE.

use openssl::sha::{sha384, Sha384};

/// Size of a guest page.
pub const PAGE_SIZE: usize = 4096;

/// Size of a launch digest (SHA-384).
pub const DIGEST_LEN: usize = 48;

/// The GPA recorded for VMSA pages: the RMP holds them at GPA `(u64)-1`, which the firmware
/// page-aligns and truncates to 52 bits.
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// PAGE_TYPE of an SNP_LAUNCH_UPDATE, with AMD's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PageType {
    /// PAGE_TYPE_NORMAL: a page of data, measured by its SHA-384.
    Normal = 0x01,
    /// PAGE_TYPE_VMSA: a vCPU's initial save area, measured by its SHA-384.
    Vmsa = 0x02,
    /// PAGE_TYPE_ZERO: a page the firmware zeroes; CONTENTS is zero.
    Zero = 0x03,
    /// PAGE_TYPE_UNMEASURED: contents not measured; CONTENTS is zero.
    Unmeasured = 0x04,
    /// PAGE_TYPE_SECRETS: the secrets page the firmware fills; CONTENTS is zero.
    Secrets = 0x05,
    /// PAGE_TYPE_CPUID: the CPUID page the firmware checks; CONTENTS is zero.
    Cpuid = 0x06,
}

/// The PAGE_INFO structure hashed at each launch update (0x70 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageInfo {
    /// DIGEST_CUR: the launch digest before this update.
    pub digest_cur: [u8; DIGEST_LEN],
    /// CONTENTS: SHA-384 of the page for normal and VMSA pages, zero otherwise.
    pub contents: [u8; DIGEST_LEN],
    /// LENGTH: the length of this structure, 0x70.
    pub length: u16,
    /// PAGE_TYPE.
    pub page_type: PageType,
    /// IMI_PAGE: whether the page is part of a migration image (never, for a launch).
    pub imi_page: bool,
    /// VMPL3_PERMS.
    pub vmpl3_perms: u8,
    /// VMPL2_PERMS.
    pub vmpl2_perms: u8,
    /// VMPL1_PERMS.
    pub vmpl1_perms: u8,
    /// GPA: the guest-physical address of the page.
    pub gpa: u64,
}

impl PageInfo {
    /// Size of the encoding.
    pub const LEN: usize = 0x70;

    /// A launch update as QEMU issues it: not IMI, no VMPL1-3 permissions.
    pub fn launch(
        digest_cur: [u8; DIGEST_LEN],
        contents: [u8; DIGEST_LEN],
        page_type: PageType,
        gpa: u64,
    ) -> Self {
        PageInfo {
            digest_cur,
            contents,
            length: Self::LEN as u16,
            page_type,
            imi_page: false,
            vmpl3_perms: 0,
            vmpl2_perms: 0,
            vmpl1_perms: 0,
            gpa,
        }
    }

    /// The ABI encoding: DIGEST_CUR at 0x00, CONTENTS at 0x30, LENGTH at 0x60, PAGE_TYPE at 0x62,
    /// IMI_PAGE at 0x63 (bit 0), VMPL3/2/1_PERMS at 0x64..0x67, reserved 0x67, GPA at 0x68.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0x00..0x30].copy_from_slice(&self.digest_cur);
        out[0x30..0x60].copy_from_slice(&self.contents);
        out[0x60..0x62].copy_from_slice(&self.length.to_le_bytes());
        out[0x62] = self.page_type as u8;
        out[0x63] = u8::from(self.imi_page);
        out[0x64] = self.vmpl3_perms;
        out[0x65] = self.vmpl2_perms;
        out[0x66] = self.vmpl1_perms;
        out[0x68..0x70].copy_from_slice(&self.gpa.to_le_bytes());
        out
    }
}

/// The guest context's launch digest (GCTX.LD), updated page by page as the PSP does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchDigest {
    ld: [u8; DIGEST_LEN],
}

impl Default for LaunchDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl LaunchDigest {
    /// The digest at SNP_LAUNCH_START: zero.
    pub fn new() -> Self {
        LaunchDigest {
            ld: [0; DIGEST_LEN],
        }
    }

    /// Continue from a digest computed elsewhere (e.g. of the firmware pages alone).
    pub fn from_seed(ld: [u8; DIGEST_LEN]) -> Self {
        LaunchDigest { ld }
    }

    /// The digest so far.
    pub fn digest(&self) -> [u8; DIGEST_LEN] {
        self.ld
    }

    /// One launch update: LD = SHA-384(PAGE_INFO with DIGEST_CUR = LD).
    pub fn update(&mut self, page_type: PageType, gpa: u64, contents: [u8; DIGEST_LEN]) {
        let info = PageInfo::launch(self.ld, contents, page_type, gpa);
        self.ld = sha384(&info.encode());
    }

    /// Normal pages with the given data, from `gpa` on. A short last page is zero-padded (callers
    /// in this crate only pass whole pages).
    pub fn update_normal_pages(&mut self, gpa: u64, data: &[u8]) {
        let mut page_gpa = gpa;
        for page in data.chunks(PAGE_SIZE) {
            let mut h = Sha384::new();
            h.update(page);
            if page.len() < PAGE_SIZE {
                h.update(&[0u8; PAGE_SIZE][page.len()..]);
            }
            self.update(PageType::Normal, page_gpa, h.finish());
            page_gpa += PAGE_SIZE as u64;
        }
    }

    /// One VMSA page, recorded at [`VMSA_GPA`].
    pub fn update_vmsa_page(&mut self, vmsa: &[u8; PAGE_SIZE]) {
        self.update(PageType::Vmsa, VMSA_GPA, sha384(vmsa));
    }

    /// `pages` pages of a type measured with zero CONTENTS (zero, unmeasured, secrets, CPUID).
    pub fn update_empty_pages(&mut self, page_type: PageType, gpa: u64, pages: u64) {
        for i in 0..pages {
            self.update(page_type, gpa + i * PAGE_SIZE as u64, [0; DIGEST_LEN]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_info_layout() {
        let info = PageInfo::launch([0x11; 48], [0x22; 48], PageType::Secrets, 0x80_d000);
        let b = info.encode();
        assert_eq!(&b[..0x30], &[0x11; 48]);
        assert_eq!(&b[0x30..0x60], &[0x22; 48]);
        assert_eq!(&b[0x60..0x68], &[0x70, 0x00, 0x05, 0x00, 0, 0, 0, 0]);
        assert_eq!(&b[0x68..0x70], &0x80_d000u64.to_le_bytes());
    }

    #[test]
    fn short_page_is_zero_padded() {
        let mut a = LaunchDigest::new();
        a.update_normal_pages(0x1000, b"abc");
        let mut page = [0u8; PAGE_SIZE];
        page[..3].copy_from_slice(b"abc");
        let mut b = LaunchDigest::new();
        b.update_normal_pages(0x1000, &page);
        assert_eq!(a, b);
    }
}
