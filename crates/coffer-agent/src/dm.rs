//! Device-mapper through its ioctls (`include/uapi/linux/dm-ioctl.h`), for the one target the
//! agent sets up in a VM: `verity`, with the root hash the policy approved.
//!
//! Why not the `devicemapper` crate: it generates its bindings with bindgen at build time (libclang
//! on every build machine and in the guest image's build) for three ioctls whose ABI is a 312-byte
//! header, stable since dm-ioctl 4.0. `unsafe` in the agent is confined to this module and
//! `loopdev`, the two block-device ioctl interfaces it uses.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;

use crate::DeviceError;

/// `struct dm_ioctl`'s size.
const DM_IOCTL_SIZE: usize = 312;
/// `struct dm_target_spec`'s size (the target's parameter string follows it).
const DM_TARGET_SPEC_SIZE: usize = 40;
/// The interface version the agent speaks (the kernel accepts 4.x with x up to its own).
const DM_VERSION: [u32; 3] = [4, 0, 0];
/// `DM_READONLY_FLAG`.
const DM_READONLY_FLAG: u32 = 1 << 0;

/// ioctl numbers, `_IOWR(DM_IOCTL, nr, struct dm_ioctl)`.
const DM_DEV_CREATE: u8 = 3;
const DM_DEV_REMOVE: u8 = 4;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;

/// Offsets in `struct dm_ioctl`.
mod off {
    pub(super) const VERSION: usize = 0;
    pub(super) const DATA_SIZE: usize = 12;
    pub(super) const DATA_START: usize = 16;
    pub(super) const TARGET_COUNT: usize = 20;
    pub(super) const FLAGS: usize = 28;
    pub(super) const DEV: usize = 40;
    pub(super) const NAME: usize = 48;
    pub(super) const NAME_LEN: usize = 128;
}

/// One linear table entry: `start length target params`.
pub(crate) struct Target<'a> {
    /// Sectors covered.
    pub(crate) sectors: u64,
    /// Target type, e.g. `verity`.
    pub(crate) kind: &'a str,
    /// The target's parameter string.
    pub(crate) params: String,
    /// Map read-only.
    pub(crate) read_only: bool,
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

/// The ioctl header for device `name`, with room for `extra` bytes of data after it.
fn header(name: &str, flags: u32, extra: usize) -> Result<Vec<u8>, DeviceError> {
    if name.is_empty() || name.len() >= off::NAME_LEN || name.contains(['/', '\0']) {
        return Err(DeviceError::Name(name.to_string()));
    }
    let mut b = vec![0u8; DM_IOCTL_SIZE + extra];
    for (i, v) in DM_VERSION.iter().enumerate() {
        put_u32(&mut b, off::VERSION + 4 * i, *v);
    }
    let size = u32::try_from(b.len()).map_err(|_| DeviceError::TooLarge)?;
    put_u32(&mut b, off::DATA_SIZE, size);
    put_u32(&mut b, off::DATA_START, DM_IOCTL_SIZE as u32);
    put_u32(&mut b, off::FLAGS, flags);
    b[off::NAME..off::NAME + name.len()].copy_from_slice(name.as_bytes());
    Ok(b)
}

/// The table-load request: the header, one `dm_target_spec`, its NUL-terminated parameters
/// padded to 8 bytes.
fn table_load(name: &str, t: &Target<'_>) -> Result<Vec<u8>, DeviceError> {
    if t.kind.is_empty() || t.kind.len() >= 16 || t.params.contains('\0') {
        return Err(DeviceError::Target(t.kind.to_string()));
    }
    let params = t.params.len() + 1;
    let spec = DM_TARGET_SPEC_SIZE + params.div_ceil(8) * 8;
    let flags = if t.read_only { DM_READONLY_FLAG } else { 0 };
    let mut b = header(name, flags, spec)?;
    put_u32(&mut b, off::TARGET_COUNT, 1);
    let s = DM_IOCTL_SIZE;
    // sector_start 0, length, status 0, next = this spec's size.
    b[s + 8..s + 16].copy_from_slice(&t.sectors.to_ne_bytes());
    put_u32(&mut b, s + 20, spec as u32);
    b[s + 24..s + 24 + t.kind.len()].copy_from_slice(t.kind.as_bytes());
    let p = s + DM_TARGET_SPEC_SIZE;
    b[p..p + t.params.len()].copy_from_slice(t.params.as_bytes());
    Ok(b)
}

fn control() -> Result<File, DeviceError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(DeviceError::Control)
}

fn call(ctl: &File, nr: u8, buf: &mut [u8], op: &'static str) -> Result<(), DeviceError> {
    let request = nix::request_code_readwrite!(0xfd, nr, DM_IOCTL_SIZE);
    // SAFETY: `buf` is a `struct dm_ioctl` followed by its data, `data_size` (set by `header`)
    // is `buf.len()`, so the kernel reads and writes only inside `buf`.
    let r = unsafe { nix::libc::ioctl(ctl.as_raw_fd(), request as _, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(DeviceError::Ioctl {
            op,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Create device `name` with a table of one target and activate it; returns its
/// block device (`/dev/dm-N`, created by devtmpfs).
pub(crate) fn create(name: &str, target: &Target<'_>) -> Result<PathBuf, DeviceError> {
    let ctl = control()?;
    let mut create = header(name, 0, 0)?;
    call(&ctl, DM_DEV_CREATE, &mut create, "create")?;
    let dev = u64::from_ne_bytes(
        create[off::DEV..off::DEV + 8]
            .try_into()
            .map_err(|_| DeviceError::ShortAnswer)?,
    );
    let loaded = table_load(name, target)
        .and_then(|mut t| call(&ctl, DM_TABLE_LOAD, &mut t, "table load"))
        .and_then(|()| header(name, 0, 0))
        .and_then(|mut r| call(&ctl, DM_DEV_SUSPEND, &mut r, "resume"));
    if let Err(e) = loaded {
        let _ = remove(name);
        return Err(e);
    }
    let minor = nix::sys::stat::minor(dev);
    let path = PathBuf::from(format!("/dev/dm-{minor}"));
    // devtmpfs creates the node asynchronously.
    for _ in 0..500 {
        if path.exists() {
            return Ok(path);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = remove(name);
    Err(DeviceError::NoNode(path))
}

/// Remove device `name`.
pub(crate) fn remove(name: &str) -> Result<(), DeviceError> {
    let ctl = control()?;
    let mut r = header(name, 0, 0)?;
    call(&ctl, DM_DEV_REMOVE, &mut r, "remove")
}

/// The `verity` target's parameters: format 1, 4096-byte blocks, `data_blocks` of data on
/// `data`, the hash tree on `hash` from block `hash_start` (after the verity superblock), SHA-256
/// with 32 zero bytes of salt (the layout hcsshim, `coffer-ext4` and `coffer-verity` write).
/// Corruption makes reads fail with EIO (the default).
pub(crate) fn verity_params(
    data: &str,
    hash: &str,
    data_blocks: u64,
    hash_start: u64,
    root: &[u8; 32],
) -> String {
    format!(
        "1 {data} {hash} 4096 4096 {data_blocks} {hash_start} sha256 {} {}",
        hex::encode(root),
        "0".repeat(64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn a_table_load_request_has_the_kernels_layout() {
        let t = Target {
            sectors: 16,
            kind: "verity",
            params: verity_params("/dev/vda", "/dev/vda", 2, 3, &[0xab; 32]),
            read_only: true,
        };
        let b = table_load("coffer-l0", &t).unwrap();
        assert_eq!(b.len() % 8, 0);
        assert_eq!(u32_at(&b, off::DATA_SIZE) as usize, b.len());
        assert_eq!(u32_at(&b, off::DATA_START) as usize, DM_IOCTL_SIZE);
        assert_eq!(u32_at(&b, off::TARGET_COUNT), 1);
        assert_eq!(u32_at(&b, off::FLAGS), DM_READONLY_FLAG);
        assert_eq!(&b[off::NAME..off::NAME + 10], b"coffer-l0\0");
        let s = DM_IOCTL_SIZE;
        assert_eq!(u64::from_ne_bytes(b[s + 8..s + 16].try_into().unwrap()), 16);
        assert_eq!(&b[s + 24..s + 31], b"verity\0");
        let params = &b[s + DM_TARGET_SPEC_SIZE..];
        let end = params.iter().position(|c| *c == 0).unwrap();
        assert_eq!(
            std::str::from_utf8(&params[..end]).unwrap(),
            format!(
                "1 /dev/vda /dev/vda 4096 4096 2 3 sha256 {} {}",
                "ab".repeat(32),
                "0".repeat(64)
            )
        );
    }

    #[test]
    fn names_and_targets_that_do_not_fit_are_refused() {
        assert!(header("", 0, 0).is_err());
        assert!(header(&"x".repeat(128), 0, 0).is_err());
        assert!(header("a/b", 0, 0).is_err());
        let t = Target {
            sectors: 1,
            kind: "a-target-name-too-long",
            params: String::new(),
            read_only: true,
        };
        assert!(table_load("x", &t).is_err());
    }
}
