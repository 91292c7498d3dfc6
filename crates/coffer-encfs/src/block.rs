//! An unlocked LUKS2 volume exposed through FUSE as one plaintext block file (`<mount>/disk`),
//! decrypted and encrypted sector by sector on demand, so the file system inside can be
//! loop-mounted without dm-crypt. Read-only unless opened writable; writes are encrypted back
//! into the image.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    ReplyWrite, Request,
};

use crate::source::Source;
use crate::{xts, Luks2, LuksError, XtsKey};

/// The data segment of an unlocked volume.
pub struct Volume {
    image: Mutex<Box<dyn Source>>,
    key: XtsKey,
    offset: u64,
    size: u64,
    sector: u64,
    tweak: u64,
    writable: bool,
    /// The level-0 dm-verity hash of every 4096-byte plaintext block, once pinned: each read
    /// is checked against them, so what the image holds cannot change after it was measured.
    pinned: Option<Vec<[u8; 32]>>,
}

impl Volume {
    /// Unlock the image at `path` with `passphrase`.
    pub fn open(path: &Path, passphrase: &[u8], writable: bool) -> Result<Self, LuksError> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)?;
        Self::open_source(Box::new(f), passphrase, writable)
    }

    /// Unlock an image from any source (a file, or an HTTP URL through a block cache).
    pub fn open_source(
        src: Box<dyn Source>,
        passphrase: &[u8],
        writable: bool,
    ) -> Result<Self, LuksError> {
        let (luks, key) = {
            let mut cur = crate::source::Cursor::new(src.as_ref());
            let luks = Luks2::open(&mut cur)?;
            let key = luks.unlock(&mut cur, passphrase)?;
            (luks, key)
        };
        let (offset, size) = luks.data_extent(src.len())?;
        let seg = &luks.metadata.segment;
        Ok(Volume {
            image: Mutex::new(src),
            key,
            offset,
            size,
            sector: u64::from(seg.sector_size),
            tweak: seg.iv_tweak,
            writable,
            pinned: None,
        })
    }

    /// The kernel's dm-crypt mapping of this data segment on `device` (the same image as a block
    /// device): `(length in 512-byte sectors, crypt target parameters)`. The parameters hold the
    /// volume key in hex: for a device-mapper table built inside the TEE only, never logged.
    /// The IV counts 512-byte units from `iv_tweak` whatever the sector size, as LUKS2 does
    /// (cryptsetup does not set `iv_large_sectors` for LUKS2).
    pub fn dm_crypt(&self, device: &str) -> (u64, String) {
        let mut params = format!(
            "aes-xts-plain64 {} {} {device} {}",
            hex::encode(self.key.as_bytes()),
            self.tweak,
            self.offset / 512
        );
        if self.sector != 512 {
            params.push_str(&format!(" 1 sector_size:{}", self.sector));
        }
        (self.size / 512, params)
    }

    /// The dm-verity root hash (format 1, SHA-256, 4096-byte blocks, no superblock, salt of 32
    /// zero bytes: coffer-verity's parameters) of the first `len` bytes of the plaintext, so a
    /// policy can pin what a read-only volume holds and a substituted volume is refused even
    /// when it opens with the right key. `len` must be a non-zero multiple of 4096 within the
    /// volume (e.g. the size its ext4 file system says it has).
    pub fn plaintext_verity_root(&self, len: u64) -> Result<[u8; 32], LuksError> {
        let level0 = self.plaintext_hashes(len)?;
        coffer_verity::root_from_level0(&level0).map_err(|e| LuksError::Verity(e.to_string()))
    }

    /// The level-0 dm-verity hashes (one per 4096-byte block) of the first `len` bytes of the
    /// plaintext: what [`Volume::plaintext_verity_root`] is computed from, and what
    /// [`Volume::pin`] and a dm-verity hash device are made of. 32 bytes per block are kept.
    pub fn plaintext_hashes(&self, len: u64) -> Result<Vec<[u8; 32]>, LuksError> {
        let block = coffer_verity::BLOCK as u64;
        if len == 0 || !len.is_multiple_of(block) || len > self.size {
            return Err(LuksError::Verity(format!(
                "{len} bytes: must be a non-zero multiple of {block} within the volume's {} bytes",
                self.size
            )));
        }
        let mut hashes = Vec::with_capacity((len / block) as usize);
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(1 << 20) as usize;
            let chunk = self.read_at(off, n)?;
            if chunk.len() != n {
                return Err(LuksError::Truncated(format!("plaintext at {off}")));
            }
            hashes.extend(
                chunk
                    .chunks_exact(coffer_verity::BLOCK)
                    .map(coffer_verity::block_hash),
            );
            off += n as u64;
        }
        Ok(hashes)
    }

    /// From now on, expose only the blocks `level0` covers and check each block read against
    /// its hash: a block the image's owner changes after the measurement reads as an error,
    /// never as other data. Only for read-only volumes.
    pub fn pin(&mut self, level0: Vec<[u8; 32]>) -> Result<(), LuksError> {
        let len = level0.len() as u64 * coffer_verity::BLOCK as u64;
        if self.writable {
            return Err(LuksError::Unsupported(
                "a writable volume cannot be pinned".into(),
            ));
        }
        if len == 0 || len > self.size {
            return Err(LuksError::Verity(format!(
                "{len} pinned bytes: must be non-zero and within the volume's {} bytes",
                self.size
            )));
        }
        self.size = len;
        self.pinned = Some(level0);
        Ok(())
    }

    /// Plaintext size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Sector range covering `[off, off + len)`; callers keep it within the volume.
    fn sectors(&self, off: u64, len: u64) -> (u64, u64) {
        let first = off / self.sector;
        let last = (off + len).div_ceil(self.sector);
        (first, last)
    }

    /// Read plaintext at `off`; on a pinned volume, whole blocks are read and checked.
    pub fn read_at(&self, off: u64, len: usize) -> Result<Vec<u8>, LuksError> {
        if off >= self.size {
            return Ok(Vec::new());
        }
        let len = (len as u64).min(self.size - off);
        let Some(pinned) = &self.pinned else {
            return self.decrypt(off, len);
        };
        let block = coffer_verity::BLOCK as u64;
        let first = off / block;
        let end = (off + len).div_ceil(block);
        let data = self.decrypt(first * block, (end - first) * block)?;
        for (i, b) in data.chunks(coffer_verity::BLOCK).enumerate() {
            let want = pinned.get(first as usize + i);
            if want.is_none_or(|h| !openssl::memcmp::eq(h, &coffer_verity::block_hash(b))) {
                return Err(LuksError::Verity(format!(
                    "block {} of the plaintext is not the one measured",
                    first + i as u64
                )));
            }
        }
        let start = (off - first * block) as usize;
        Ok(data[start..start + len as usize].to_vec())
    }

    /// Decrypt `len` bytes at `off` (within the volume).
    fn decrypt(&self, off: u64, len: u64) -> Result<Vec<u8>, LuksError> {
        let (first, last) = self.sectors(off, len);
        let mut buf = vec![0u8; ((last - first) * self.sector) as usize];
        self.image
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read_at(&mut buf, self.offset + first * self.sector)?;
        xts(
            &self.key,
            &mut buf,
            self.sector as usize,
            self.tweak + first * self.sector / 512,
            self.sector / 512,
            true,
        )?;
        let start = (off - first * self.sector) as usize;
        Ok(buf[start..start + len as usize].to_vec())
    }

    /// Write plaintext at `off` (read-modify-write of partial sectors).
    pub fn write_at(&self, off: u64, data: &[u8]) -> Result<(), LuksError> {
        if !self.writable {
            return Err(LuksError::Unsupported(
                "the volume is open read-only".into(),
            ));
        }
        if (off)
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(LuksError::Truncated(
                "write past the end of the volume".into(),
            ));
        }
        let (first, last) = self.sectors(off, data.len() as u64);
        let f = self.image.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = vec![0u8; ((last - first) * self.sector) as usize];
        f.read_at(&mut buf, self.offset + first * self.sector)?;
        let iv0 = self.tweak + first * self.sector / 512;
        xts(
            &self.key,
            &mut buf,
            self.sector as usize,
            iv0,
            self.sector / 512,
            true,
        )?;
        let start = (off - first * self.sector) as usize;
        buf[start..start + data.len()].copy_from_slice(data);
        xts(
            &self.key,
            &mut buf,
            self.sector as usize,
            iv0,
            self.sector / 512,
            false,
        )?;
        f.write_at(&buf, self.offset + first * self.sector)?;
        Ok(())
    }
}

const ROOT: u64 = 1;
const DISK: u64 = 2;
const TTL: Duration = Duration::from_secs(3600);

struct BlockFs {
    vol: Volume,
}

impl BlockFs {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == ROOT {
            (FileType::Directory, 0o755, 0, 2)
        } else {
            (
                FileType::RegularFile,
                if self.vol.writable { 0o600 } else { 0o400 },
                self.vol.size,
                1,
            )
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for BlockFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if parent == ROOT && name == "disk" {
            reply.entry(&TTL, &self.attr(DISK), 0);
        } else {
            reply.error(libc::ENOENT);
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match ino {
            ROOT | DISK => reply.attr(&TTL, &self.attr(ino)),
            _ => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if ino != DISK {
            return reply.error(libc::EISDIR);
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY && !self.vol.writable {
            return reply.error(libc::EROFS);
        }
        reply.opened(0, 0);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        if ino != DISK || offset < 0 {
            return reply.error(libc::EINVAL);
        }
        match self.vol.read_at(offset as u64, size as usize) {
            Ok(d) => reply.data(&d),
            Err(_) => reply.error(libc::EIO),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _wf: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        if ino != DISK || offset < 0 {
            return reply.error(libc::EINVAL);
        }
        if !self.vol.writable {
            return reply.error(libc::EROFS);
        }
        match self.vol.write_at(offset as u64, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(_) => reply.error(libc::EIO),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            return reply.error(libc::ENOTDIR);
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (DISK, FileType::RegularFile, "disk"),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as i64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A mounted block file; unmounted when dropped.
pub struct BlockMount {
    _session: fuser::BackgroundSession,
    /// The plaintext block file (`<mountpoint>/disk`).
    pub disk: std::path::PathBuf,
}

/// Expose `vol` at `mountpoint/disk`.
pub fn mount(vol: Volume, mountpoint: &Path) -> Result<BlockMount, LuksError> {
    let writable = vol.writable;
    let mut opts = vec![
        fuser::MountOption::FSName("coffer-encfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    opts.push(if writable {
        fuser::MountOption::RW
    } else {
        fuser::MountOption::RO
    });
    let session = fuser::spawn_mount2(BlockFs { vol }, mountpoint, &opts)?;
    Ok(BlockMount {
        _session: session,
        disk: mountpoint.join("disk"),
    })
}
