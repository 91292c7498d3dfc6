//! The SEV hash table QEMU writes into the firmware for measured direct boot: SHA-256 of the kernel,
//! the initrd and the command line, which OVMF checks before it runs them (QEMU `target/i386/sev.c`,
//! `SevHashTable`; edk2 `BlobVerifierSevHashes.c`).
//!
//! ```text
//! PaddedSevHashTable (176 bytes) = SevHashTable (168) + 8 zero bytes (to 16-byte alignment)
//! SevHashTable       = guid:16 (SEV_HASH_TABLE_HEADER_GUID) | length:u16 = 168
//!                    | cmdline entry | initrd entry | kernel entry
//! SevHashTableEntry  = guid:16 | length:u16 = 50 | sha256:32
//! ```

use std::io::Read;
use std::path::Path;

use openssl::sha::Sha256;

use crate::error::MeasureError;
use crate::gctx::PAGE_SIZE;
use crate::guid::Guid;

/// Heads the hash table.
pub const SEV_HASH_TABLE_HEADER_GUID: Guid = Guid::from_fields(
    0x9438_d606,
    0x4f22,
    0x4cc9,
    [0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21],
);
/// Kernel entry.
pub const SEV_KERNEL_ENTRY_GUID: Guid = Guid::from_fields(
    0x4de7_9437,
    0xabd2,
    0x427f,
    [0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b],
);
/// Initrd entry.
pub const SEV_INITRD_ENTRY_GUID: Guid = Guid::from_fields(
    0x44ba_f731,
    0x3a2f,
    0x4bd7,
    [0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d],
);
/// Command line entry.
pub const SEV_CMDLINE_ENTRY_GUID: Guid = Guid::from_fields(
    0x97d0_2dd8,
    0xbd20,
    0x4c94,
    [0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a],
);

/// Size of one entry: GUID, length, SHA-256.
pub const ENTRY_LEN: usize = 16 + 2 + 32;
/// Size of the table: GUID, length, three entries.
pub const TABLE_LEN: usize = 16 + 2 + 3 * ENTRY_LEN;
/// Size of the table padded to a multiple of 16, as QEMU writes it.
pub const PADDED_TABLE_LEN: usize = (TABLE_LEN + 15) & !15;

/// The three hashes of a measured direct boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelHashes {
    /// SHA-256 of the kernel image.
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd (of nothing when there is none).
    pub initrd: [u8; 32],
    /// SHA-256 of the command line with its trailing NUL (just a NUL when there is none).
    pub cmdline: [u8; 32],
}

impl KernelHashes {
    /// Hash a kernel, an optional initrd and an optional command line held in memory.
    pub fn new(kernel: &[u8], initrd: Option<&[u8]>, append: Option<&str>) -> Self {
        KernelHashes {
            kernel: openssl::sha::sha256(kernel),
            initrd: openssl::sha::sha256(initrd.unwrap_or_default()),
            cmdline: cmdline_hash(append),
        }
    }

    /// Hash a kernel and an optional initrd from files, streaming, and an optional command line.
    pub fn from_files(
        kernel: &Path,
        initrd: Option<&Path>,
        append: Option<&str>,
    ) -> Result<Self, MeasureError> {
        let file_hash = |path: &Path| {
            std::fs::File::open(path)
                .and_then(sha256_reader)
                .map_err(|source| MeasureError::Io {
                    path: path.to_owned(),
                    source,
                })
        };
        Ok(KernelHashes {
            kernel: file_hash(kernel)?,
            initrd: match initrd {
                Some(p) => file_hash(p)?,
                None => openssl::sha::sha256(b""),
            },
            cmdline: cmdline_hash(append),
        })
    }

    /// The padded table as QEMU writes it (entries in the order cmdline, initrd, kernel).
    pub fn table(&self) -> [u8; PADDED_TABLE_LEN] {
        let mut t = [0u8; PADDED_TABLE_LEN];
        t[..16].copy_from_slice(SEV_HASH_TABLE_HEADER_GUID.bytes());
        t[16..18].copy_from_slice(&(TABLE_LEN as u16).to_le_bytes());
        let entries = [
            (SEV_CMDLINE_ENTRY_GUID, &self.cmdline),
            (SEV_INITRD_ENTRY_GUID, &self.initrd),
            (SEV_KERNEL_ENTRY_GUID, &self.kernel),
        ];
        for (i, (guid, hash)) in entries.into_iter().enumerate() {
            let e = &mut t[18 + i * ENTRY_LEN..18 + (i + 1) * ENTRY_LEN];
            e[..16].copy_from_slice(guid.bytes());
            e[16..18].copy_from_slice(&(ENTRY_LEN as u16).to_le_bytes());
            e[18..].copy_from_slice(hash);
        }
        t
    }

    /// The page holding the table at `offset`, zero elsewhere.
    pub fn page(&self, offset: usize) -> Result<[u8; PAGE_SIZE], MeasureError> {
        let mut page = [0u8; PAGE_SIZE];
        let slot = offset
            .checked_add(PADDED_TABLE_LEN)
            .and_then(|end| page.get_mut(offset..end))
            .ok_or(MeasureError::HashTableOffset { offset })?;
        slot.copy_from_slice(&self.table());
        Ok(page)
    }
}

/// SHA-256 of the command line as the guest sees it: UTF-8 with a trailing NUL.
pub fn cmdline_hash(append: Option<&str>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(append.unwrap_or_default().as_bytes());
    h.update(b"\0");
    h.finish()
}

/// SHA-256 of everything `r` yields.
pub fn sha256_reader(mut r: impl Read) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_layout() {
        assert_eq!((TABLE_LEN, PADDED_TABLE_LEN), (168, 176));
        let h = KernelHashes::new(b"k", None, None);
        let t = h.table();
        assert_eq!(&t[..16], SEV_HASH_TABLE_HEADER_GUID.bytes());
        assert_eq!(&t[16..18], &[168, 0]);
        assert_eq!(&t[18..34], SEV_CMDLINE_ENTRY_GUID.bytes());
        assert_eq!(&t[34..36], &[50, 0]);
        assert_eq!(&t[36..68], &openssl::sha::sha256(b"\0"));
        assert_eq!(&t[68..84], SEV_INITRD_ENTRY_GUID.bytes());
        assert_eq!(&t[86..118], &openssl::sha::sha256(b""));
        assert_eq!(&t[118..134], SEV_KERNEL_ENTRY_GUID.bytes());
        assert_eq!(&t[136..168], &openssl::sha::sha256(b"k"));
        assert_eq!(&t[168..], &[0; 8]);
    }

    #[test]
    fn empty_and_missing_are_the_same() {
        assert_eq!(
            KernelHashes::new(b"", Some(b""), Some("")),
            KernelHashes::new(b"", None, None)
        );
        assert_eq!(
            cmdline_hash(Some("console=ttyS0")),
            openssl::sha::sha256(b"console=ttyS0\0")
        );
    }

    #[test]
    fn page_bounds() {
        let h = KernelHashes::new(b"", None, None);
        assert!(h.page(0xc00).is_ok());
        assert!(h.page(PAGE_SIZE - PADDED_TABLE_LEN).is_ok());
        assert!(h.page(PAGE_SIZE - PADDED_TABLE_LEN + 1).is_err());
        assert!(h.page(usize::MAX).is_err());
    }

    #[test]
    fn files_stream_like_memory() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        std::fs::write(&k, &big).unwrap();
        assert_eq!(
            KernelHashes::from_files(&k, None, Some("a")).unwrap(),
            KernelHashes::new(&big, None, Some("a"))
        );
        let missing = dir.path().join("missing");
        assert!(matches!(
            KernelHashes::from_files(&missing, None, None),
            Err(MeasureError::Io { .. })
        ));
    }
}
