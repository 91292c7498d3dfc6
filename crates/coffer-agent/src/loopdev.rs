//! Loop devices through their ioctls (`include/uapi/linux/loop.h`), for the namespace backend's
//! layer images: attached read-only from the file the agent measured, then mounted, with no
//! `mount` process per layer (two fork/execs of util-linux were most of a layer's mount time).
//!
//! Why not the `loopdev` crate: it generates its bindings with bindgen at build time (libclang
//! on every build machine), for two ioctls whose ABI (`struct loop_config`, Linux 5.8) is fixed.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;

use crate::DeviceError;

/// `LOOP_CTL_GET_FREE` on `/dev/loop-control`: the number of a free loop device.
const LOOP_CTL_GET_FREE: u64 = 0x4C82;
/// `LOOP_CONFIGURE` on `/dev/loopN`: attach a file with its settings in one step.
const LOOP_CONFIGURE: u64 = 0x4C0A;
/// `LO_FLAGS_READ_ONLY`.
const LO_FLAGS_READ_ONLY: u32 = 1;
/// `LO_FLAGS_AUTOCLEAR`: the device detaches itself when its last user (the mount) goes.
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attach the first `size` bytes of `file` to a free loop device, read-only and cleared when
/// no longer used. Returns the device, open: keep it open until it is mounted.
pub(crate) fn attach_read_only(file: &File, size: u64) -> Result<(File, PathBuf), DeviceError> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(DeviceError::LoopControl)?;
    let fd = u32::try_from(file.as_raw_fd()).map_err(|_| DeviceError::BadFd)?;
    let config = LoopConfig {
        fd,
        block_size: 0,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: size,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // Another process may take the free device between the two calls: try the next one.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let n = unsafe { nix::libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(DeviceError::NoFreeLoop(std::io::Error::last_os_error()));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .open(&path)
            .map_err(|source| DeviceError::Open {
                path: path.clone(),
                source,
            })?;
        // SAFETY: `config` is a `struct loop_config` that outlives the call; the kernel only
        // reads it.
        let r = unsafe {
            nix::libc::ioctl(
                dev.as_raw_fd(),
                LOOP_CONFIGURE as _,
                &config as *const LoopConfig,
            )
        };
        if r == 0 {
            return Ok((dev, path));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(nix::libc::EBUSY) {
            return Err(DeviceError::Attach { path, source: e });
        }
    }
    Err(DeviceError::LoopsTaken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_config_has_the_kernels_layout() {
        // include/uapi/linux/loop.h: loop_info64 is 232 bytes, loop_config 304.
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
