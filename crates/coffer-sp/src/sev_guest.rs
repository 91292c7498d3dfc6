//! The real secure processor: Linux `/dev/sev-guest`, ioctl SNP_GET_REPORT.
//!
//! Structures mirror the kernel UAPI (`include/uapi/linux/sev-guest.h`): `snp_report_req`,
//! `snp_report_resp`, `snp_guest_request_ioctl`, and the firmware's MSG_REPORT_RSP inside the
//! response (status, report_size, reserved, report). Runs only where the device exists; the layout
//! is unit-tested everywhere.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::{Evidence, SecureProcessor, SpError};

/// `struct snp_report_req`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SnpReportReq {
    /// REPORT_DATA.
    pub user_data: [u8; 64],
    /// VMPL of the report.
    pub vmpl: u32,
    /// Must be zero.
    pub rsvd: [u8; 28],
}

/// `struct snp_report_resp`: the firmware's MSG_REPORT_RSP.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SnpReportResp {
    /// Response bytes.
    pub data: [u8; 4000],
}

/// `struct snp_guest_request_ioctl`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SnpGuestRequestIoctl {
    /// Message version (1).
    pub msg_version: u8,
    /// Address of the request.
    pub req_data: u64,
    /// Address of the response.
    pub resp_data: u64,
    /// Firmware and VMM error codes.
    pub exitinfo2: u64,
}

const _: () = assert!(std::mem::size_of::<SnpReportReq>() == 96);
const _: () = assert!(std::mem::size_of::<SnpReportResp>() == 4000);
const _: () = assert!(std::mem::size_of::<SnpGuestRequestIoctl>() == 32);

mod ioctl {
    #![allow(missing_docs, unreachable_pub)]
    use super::SnpGuestRequestIoctl;
    nix::ioctl_readwrite!(snp_get_report, b'S', 0x0, SnpGuestRequestIoctl);
}
use ioctl::snp_get_report;

/// The ioctl request number (`_IOWR('S', 0x0, struct snp_guest_request_ioctl)`).
pub const SNP_GET_REPORT: u64 = 0xC020_5300;

/// `/dev/sev-guest`.
pub struct SevGuest {
    path: std::path::PathBuf,
    vmpl: u32,
}

impl SevGuest {
    /// Use the device at `path` (normally `/dev/sev-guest`).
    pub fn new(path: &Path, vmpl: u32) -> Self {
        SevGuest {
            path: path.to_path_buf(),
            vmpl,
        }
    }

    /// Whether a device exists here.
    pub fn available() -> bool {
        Path::new("/dev/sev-guest").exists()
    }
}

/// Extract the report from MSG_REPORT_RSP: status (0 = success), report_size, 24 reserved bytes.
pub fn parse_report_resp(resp: &SnpReportResp) -> Result<Vec<u8>, SpError> {
    let status = u32::from_le_bytes([resp.data[0], resp.data[1], resp.data[2], resp.data[3]]);
    let size =
        u32::from_le_bytes([resp.data[4], resp.data[5], resp.data[6], resp.data[7]]) as usize;
    if status != 0 {
        return Err(SpError::Refused(format!("firmware status {status:#x}")));
    }
    if size != coffer_snp::REPORT_LEN || 32 + size > resp.data.len() {
        return Err(SpError::Refused(format!(
            "report size {size}, expected {}",
            coffer_snp::REPORT_LEN
        )));
    }
    Ok(resp.data[32..32 + size].to_vec())
}

impl SecureProcessor for SevGuest {
    fn report(&self, report_data: &[u8; 64]) -> Result<Evidence, SpError> {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(crate::io(format!("opening {}", self.path.display())))?;
        let req = SnpReportReq {
            user_data: *report_data,
            vmpl: self.vmpl,
            rsvd: [0; 28],
        };
        let mut resp = SnpReportResp { data: [0; 4000] };
        let mut ioctl = SnpGuestRequestIoctl {
            msg_version: 1,
            req_data: &req as *const SnpReportReq as u64,
            resp_data: &mut resp as *mut SnpReportResp as u64,
            exitinfo2: 0,
        };
        // SAFETY: `dev` is an open sev-guest device; `ioctl` points at a correctly laid out
        // snp_guest_request_ioctl whose req_data/resp_data point at live, correctly sized buffers
        // (`req`, `resp`) that outlive the call.
        let r = unsafe { snp_get_report(dev.as_raw_fd(), &mut ioctl) };
        r.map_err(|e| {
            SpError::Refused(format!(
                "SNP_GET_REPORT: {e} (exitinfo2 {:#x})",
                ioctl.exitinfo2
            ))
        })?;
        Ok(Evidence {
            report: parse_report_resp(&resp)?,
            cert_chain: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_matches_the_kernel_abi() {
        // _IOWR = dir 3 << 30 | size << 16 | type << 8 | nr.
        let n = (3u64 << 30)
            | ((std::mem::size_of::<SnpGuestRequestIoctl>() as u64) << 16)
            | ((b'S' as u64) << 8);
        assert_eq!(n, SNP_GET_REPORT);
        assert_eq!(std::mem::offset_of!(SnpGuestRequestIoctl, req_data), 8);
        assert_eq!(std::mem::offset_of!(SnpGuestRequestIoctl, exitinfo2), 24);
        assert_eq!(std::mem::offset_of!(SnpReportReq, vmpl), 64);
    }

    #[test]
    fn response_parsing_checks_status_and_size() {
        let mut resp = SnpReportResp { data: [0; 4000] };
        resp.data[4..8].copy_from_slice(&1184u32.to_le_bytes());
        resp.data[32] = 2;
        assert_eq!(parse_report_resp(&resp).unwrap()[0], 2);
        resp.data[0] = 0x16;
        assert!(parse_report_resp(&resp).is_err());
        resp.data[0] = 0;
        resp.data[4..8].copy_from_slice(&5000u32.to_le_bytes());
        assert!(parse_report_resp(&resp).is_err());
    }
}
