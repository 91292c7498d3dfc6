//! A deterministic newc cpio archive: entries sorted by path, parents implied, inode numbers
//! in order, uid/gid 0, mtime 0. The same entries give the same bytes.

use std::collections::BTreeMap;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A directory (mode bits).
    Dir(u32),
    /// A regular file (mode bits, content).
    File(u32, Vec<u8>),
    /// A symbolic link to the target.
    Symlink(String),
    /// A character device (mode bits, major, minor).
    CharDev(u32, u32, u32),
}

/// Paths (without the leading `/`) to nodes.
#[derive(Default, Debug)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

impl Archive {
    /// Add (or replace) `path`, and the directories above it (0755) that are not there yet.
    pub fn insert(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = String::new();
        for comp in path
            .split('/')
            .take(path.split('/').count().saturating_sub(1))
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            self.entries
                .entry(parent.clone())
                .or_insert(Node::Dir(0o755));
        }
        self.entries.insert(path, node);
    }

    /// Whether `path` is there.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    /// The archive's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (path, node)) in self.entries.iter().enumerate() {
            let (mode, data, nlink, rdev): (u32, &[u8], u32, (u32, u32)) = match node {
                Node::Dir(m) => (0o040000 | (m & 0o7777), &[], 2, (0, 0)),
                Node::File(m, d) => (0o100000 | (m & 0o7777), d, 1, (0, 0)),
                Node::Symlink(t) => (0o120777, t.as_bytes(), 1, (0, 0)),
                Node::CharDev(m, ma, mi) => (0o020000 | (m & 0o7777), &[], 1, (*ma, *mi)),
            };
            header(&mut out, i as u32 + 1, mode, nlink, data.len(), rdev, path);
            out.extend_from_slice(data);
            pad(&mut out);
        }
        header(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!");
        out
    }
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) {
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad(out);
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}
