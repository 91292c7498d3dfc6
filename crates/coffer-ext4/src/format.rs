//! ext4 on-disk structures, as far as the compact writer uses them. Each type has one `encode`
//! producing its little-endian on-disk bytes; fields the writer never sets are left out and
//! encode as zero.
//!
//! Field names follow the kernel's `struct ext4_*` (without the `s_`/`i_`/`bg_` prefixes); see
//! the ext4 disk layout documentation for their meaning.
#![allow(missing_docs)]

/// Filesystem block size (the only one the writer uses).
pub const BLOCK_SIZE: usize = 4096;
/// Blocks (and, via the one-block bitmap, at most inodes) per block group.
pub const BLOCKS_PER_GROUP: u32 = (BLOCK_SIZE * 8) as u32;
/// On-disk inode record size.
pub const INODE_SIZE: usize = 256;
/// Bytes of the inode record the writer fills (through `i_crtime_extra`).
pub const INODE_USED_SIZE: usize = 152;
/// In-inode extended attribute area (after the used part).
pub const INODE_EXTRA_SIZE: usize = INODE_SIZE - INODE_USED_SIZE;
/// Small (32-byte) group descriptors: no 64bit feature.
pub const GROUP_DESCRIPTOR_SIZE: usize = 32;
/// First inode number not reserved by ext4; it is lost+found here.
pub const FIRST_INODE: u32 = 11;
/// The root directory's inode number.
pub const ROOT_INODE: u32 = 2;
/// ext4's hard link limit (`EXT4_LINK_MAX`).
pub const MAX_LINKS: u32 = 65000;

pub const S_IFIFO: u16 = 0x1000;
pub const S_IFCHR: u16 = 0x2000;
pub const S_IFDIR: u16 = 0x4000;
pub const S_IFBLK: u16 = 0x6000;
pub const S_IFREG: u16 = 0x8000;
pub const S_IFLNK: u16 = 0xa000;
pub const S_IFSOCK: u16 = 0xc000;
pub const TYPE_MASK: u16 = 0xf000;

pub const INODE_FLAG_HUGE_FILE: u32 = 0x40000;
pub const INODE_FLAG_EXTENTS: u32 = 0x80000;

pub const XATTR_MAGIC: u32 = 0xea02_0000;
pub const EXTENT_MAGIC: u16 = 0xf30a;

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// The superblock fields the compact writer sets (everything else is zero: no journal, no UUID,
/// no checksums, no times, so that the image depends only on the tar).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuperBlock {
    pub inodes_count: u32,
    pub blocks_count: u32,
    pub free_blocks_count: u32,
    pub free_inodes_count: u32,
    pub log_block_size: u32,
    pub log_cluster_size: u32,
    pub blocks_per_group: u32,
    pub clusters_per_group: u32,
    pub inodes_per_group: u32,
    pub magic: u16,
    pub state: u16,
    pub errors: u16,
    pub rev_level: u32,
    pub first_ino: u32,
    pub inode_size: u16,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub min_extra_isize: u16,
    pub want_extra_isize: u16,
    pub log_groups_per_flex: u8,
    pub lpf_ino: u32,
}

impl SuperBlock {
    pub const MAGIC: u16 = 0xef53;
    pub const COMPAT_EXT_ATTR: u32 = 0x8;
    pub const COMPAT_SPARSE_SUPER2: u32 = 0x200;
    pub const INCOMPAT_FILETYPE: u32 = 0x2;
    pub const INCOMPAT_EXTENTS: u32 = 0x40;
    pub const INCOMPAT_FLEX_BG: u32 = 0x200;
    pub const RO_COMPAT_LARGE_FILE: u32 = 0x2;
    pub const RO_COMPAT_HUGE_FILE: u32 = 0x8;
    pub const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
    pub const RO_COMPAT_READONLY: u32 = 0x1000;

    /// The 1024-byte on-disk superblock.
    pub fn encode(&self) -> [u8; 1024] {
        let mut b = [0u8; 1024];
        put32(&mut b, 0, self.inodes_count);
        put32(&mut b, 4, self.blocks_count);
        put32(&mut b, 12, self.free_blocks_count);
        put32(&mut b, 16, self.free_inodes_count);
        put32(&mut b, 24, self.log_block_size);
        put32(&mut b, 28, self.log_cluster_size);
        put32(&mut b, 32, self.blocks_per_group);
        put32(&mut b, 36, self.clusters_per_group);
        put32(&mut b, 40, self.inodes_per_group);
        put16(&mut b, 56, self.magic);
        put16(&mut b, 58, self.state);
        put16(&mut b, 60, self.errors);
        put32(&mut b, 76, self.rev_level);
        put32(&mut b, 84, self.first_ino);
        put16(&mut b, 88, self.inode_size);
        put32(&mut b, 92, self.feature_compat);
        put32(&mut b, 96, self.feature_incompat);
        put32(&mut b, 100, self.feature_ro_compat);
        put16(&mut b, 348, self.min_extra_isize);
        put16(&mut b, 350, self.want_extra_isize);
        b[372] = self.log_groups_per_flex;
        put32(&mut b, 616, self.lpf_ino);
        b
    }
}

/// A 32-byte block group descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupDescriptor {
    pub block_bitmap: u32,
    pub inode_bitmap: u32,
    pub inode_table: u32,
    pub free_blocks_count: u16,
    pub free_inodes_count: u16,
    pub used_dirs_count: u16,
}

impl GroupDescriptor {
    pub fn encode(&self) -> [u8; GROUP_DESCRIPTOR_SIZE] {
        let mut b = [0u8; GROUP_DESCRIPTOR_SIZE];
        put32(&mut b, 0, self.block_bitmap);
        put32(&mut b, 4, self.inode_bitmap);
        put32(&mut b, 8, self.inode_table);
        put16(&mut b, 12, self.free_blocks_count);
        put16(&mut b, 14, self.free_inodes_count);
        put16(&mut b, 16, self.used_dirs_count);
        b
    }
}

/// An inode record: the first 152 bytes are the classic inode plus the extra fields through
/// `i_crtime_extra`; the rest of the 256 bytes holds in-inode extended attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links_count: u16,
    /// In filesystem blocks (HUGE_FILE flag set on every inode).
    pub blocks: u32,
    pub flags: u32,
    pub block: [u8; 60],
    pub xattr_block: u32,
    pub extra_isize: u16,
    /// Encoded times: low 32 bits are the seconds field, high 32 the `_extra` field.
    pub atime: u64,
    pub ctime: u64,
    pub mtime: u64,
    pub crtime: u64,
}

impl Inode {
    /// The 256-byte record, with `xattrs` (the in-inode attribute area, may be empty) after the
    /// used part.
    pub fn encode(&self, xattrs: &[u8]) -> [u8; INODE_SIZE] {
        let mut b = [0u8; INODE_SIZE];
        put16(&mut b, 0, self.mode);
        put16(&mut b, 2, self.uid as u16);
        put32(&mut b, 4, self.size as u32);
        put32(&mut b, 8, self.atime as u32);
        put32(&mut b, 12, self.ctime as u32);
        put32(&mut b, 16, self.mtime as u32);
        put16(&mut b, 24, self.gid as u16);
        put16(&mut b, 26, self.links_count);
        put32(&mut b, 28, self.blocks);
        put32(&mut b, 32, self.flags);
        b[40..100].copy_from_slice(&self.block);
        put32(&mut b, 104, self.xattr_block);
        put32(&mut b, 108, (self.size >> 32) as u32);
        put16(&mut b, 120, (self.uid >> 16) as u16);
        put16(&mut b, 122, (self.gid >> 16) as u16);
        put16(&mut b, 128, self.extra_isize);
        put32(&mut b, 132, (self.ctime >> 32) as u32);
        put32(&mut b, 136, (self.mtime >> 32) as u32);
        put32(&mut b, 140, (self.atime >> 32) as u32);
        put32(&mut b, 144, self.crtime as u32);
        put32(&mut b, 148, (self.crtime >> 32) as u32);
        let n = xattrs.len().min(INODE_EXTRA_SIZE);
        b[INODE_USED_SIZE..INODE_USED_SIZE + n].copy_from_slice(&xattrs[..n]);
        b
    }
}

/// Header of an extent node (in the inode's `i_block` or in a tree block).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtentHeader {
    pub entries: u16,
    pub max: u16,
    pub depth: u16,
}

impl ExtentHeader {
    pub fn encode(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        put16(&mut b, 0, EXTENT_MAGIC);
        put16(&mut b, 2, self.entries);
        put16(&mut b, 4, self.max);
        put16(&mut b, 6, self.depth);
        b
    }
}

/// A leaf extent: `len` blocks of the file from logical block `block` at physical `start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtentLeaf {
    pub block: u32,
    pub len: u16,
    pub start: u32,
}

impl ExtentLeaf {
    pub fn encode(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        put32(&mut b, 0, self.block);
        put16(&mut b, 4, self.len);
        put32(&mut b, 8, self.start);
        b
    }
}

/// An index extent: logical blocks from `block` on are described by the leaf node at `leaf`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtentIndex {
    pub block: u32,
    pub leaf: u32,
}

impl ExtentIndex {
    pub fn encode(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        put32(&mut b, 0, self.block);
        put32(&mut b, 4, self.leaf);
        b
    }
}

/// Directory entry file types.
pub const FT_UNKNOWN: u8 = 0;
pub const FT_REG: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHR: u8 = 3;
pub const FT_BLK: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_LNK: u8 = 7;

/// The file type a directory entry records for an inode mode.
pub fn file_type(mode: u16) -> u8 {
    match mode & TYPE_MASK {
        S_IFREG => FT_REG,
        S_IFDIR => FT_DIR,
        S_IFCHR => FT_CHR,
        S_IFBLK => FT_BLK,
        S_IFIFO => FT_FIFO,
        S_IFSOCK => FT_SOCK,
        S_IFLNK => FT_LNK,
        _ => FT_UNKNOWN,
    }
}

/// Fixed part of a directory entry (`ext4_dir_entry_2`), followed on disk by the name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirEntry {
    pub inode: u32,
    pub rec_len: u16,
    pub name_len: u8,
    pub file_type: u8,
}

impl DirEntry {
    pub const SIZE: usize = 8;

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put32(&mut b, 0, self.inode);
        put16(&mut b, 4, self.rec_len);
        b[6] = self.name_len;
        b[7] = self.file_type;
        b
    }
}

/// Fixed part of an extended attribute entry, followed by the (prefix-stripped) name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XattrEntry {
    pub name_len: u8,
    pub name_index: u8,
    pub value_offset: u16,
    pub value_size: u32,
    pub hash: u32,
}

impl XattrEntry {
    pub const SIZE: usize = 16;

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0] = self.name_len;
        b[1] = self.name_index;
        put16(&mut b, 2, self.value_offset);
        put32(&mut b, 8, self.value_size);
        put32(&mut b, 12, self.hash);
        b
    }
}
