//! Test support: a small tar writer (ustar + PAX records, written by hand so every field is
//! under the test's control) and a seeded generator of random layer trees.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

/// xorshift64*: deterministic, no dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    pub(crate) fn name(&mut self, max: usize) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._-";
        let len = 1 + self.below(max as u64) as usize;
        let mut s: String = (0..len)
            .map(|_| CHARS[self.below(CHARS.len() as u64) as usize] as char)
            .collect();
        if s == "." || s == ".." || s.starts_with(".wh.") {
            s.insert(0, 'x');
        }
        s
    }
}

/// One tar entry to write.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) typeflag: u8,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) mtime: u64,
    pub(crate) link: String,
    pub(crate) dev: (u32, u32),
    pub(crate) data: Vec<u8>,
    pub(crate) pax: Vec<(String, Vec<u8>)>,
}

impl Entry {
    pub(crate) fn new(name: &str, typeflag: u8) -> Self {
        Entry {
            name: name.to_string(),
            typeflag,
            mode: if typeflag == b'5' { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            link: String::new(),
            dev: (0, 0),
            data: Vec::new(),
            pax: Vec::new(),
        }
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}", v, width = field.len() - 1);
    field[..s.len()].copy_from_slice(s.as_bytes());
}

fn fits_octal(field_len: usize, v: u64) -> bool {
    v < 1u64 << (3 * (field_len - 1))
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body_len + 1;
    while len.to_string().len() + body_len != len {
        len = len.to_string().len() + body_len;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Numeric field: octal when it fits, else base-256 (GNU).
fn number(field: &mut [u8], v: u64, gnu: bool) {
    if fits_octal(field.len(), v) || !gnu {
        octal(field, v & ((1u64 << (3 * (field.len() - 1))) - 1));
    } else {
        field.fill(0);
        field[0] = 0x80;
        let n = field.len();
        for (i, b) in v.to_be_bytes().iter().rev().enumerate() {
            if i < n - 1 {
                field[n - 1 - i] = *b;
            }
        }
    }
}

fn header(name: &[u8], typeflag: u8, e: &Entry, size: u64) -> [u8; 512] {
    header_fmt(name, typeflag, e, size, false)
}

fn header_fmt(name: &[u8], typeflag: u8, e: &Entry, size: u64, gnu: bool) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(e.mode) & 0o7777777);
    number(&mut h[108..116], e.uid, gnu);
    number(&mut h[116..124], e.gid, gnu);
    octal(&mut h[124..136], size);
    number(&mut h[136..148], e.mtime, gnu);
    h[156] = typeflag;
    let l = e.link.len().min(100);
    h[157..157 + l].copy_from_slice(&e.link.as_bytes()[..l]);
    if gnu {
        h[257..263].copy_from_slice(b"ustar ");
        h[263..265].copy_from_slice(b" \0");
    } else {
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
    }
    octal(&mut h[329..337], u64::from(e.dev.0) & 0o7777777);
    octal(&mut h[337..345], u64::from(e.dev.1) & 0o7777777);
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

/// A GNU tar of `entries`: 'L'/'K' long names, base-256 numbers, PAX records only for the
/// entry's own records (xattrs).
pub(crate) fn write_gnu_tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        for (kind, long) in [(b'L', &e.name), (b'K', &e.link)] {
            if long.len() > 100 {
                let mut data = long.as_bytes().to_vec();
                data.push(0);
                let le = Entry::new("././@LongLink", kind);
                out.extend_from_slice(&header_fmt(
                    b"././@LongLink",
                    kind,
                    &le,
                    data.len() as u64,
                    true,
                ));
                out.extend_from_slice(&data);
                pad(&mut out);
            }
        }
        let mut pax: Vec<u8> = Vec::new();
        for (k, v) in &e.pax {
            pax.extend(pax_record(k, v));
        }
        if !pax.is_empty() {
            let pe = Entry::new("PaxHeader", b'x');
            out.extend_from_slice(&header(b"PaxHeader", b'x', &pe, pax.len() as u64));
            out.extend_from_slice(&pax);
            pad(&mut out);
        }
        out.extend_from_slice(&header_fmt(
            e.name.as_bytes(),
            e.typeflag,
            e,
            e.data.len() as u64,
            true,
        ));
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A PAX tar of `entries` (PAX records for long names, big ids and the entry's own records).
pub(crate) fn write_tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut pax: Vec<u8> = Vec::new();
        if e.name.len() > 100 {
            pax.extend(pax_record("path", e.name.as_bytes()));
        }
        if e.link.len() > 100 {
            pax.extend(pax_record("linkpath", e.link.as_bytes()));
        }
        if !fits_octal(8, e.uid) {
            pax.extend(pax_record("uid", e.uid.to_string().as_bytes()));
        }
        if !fits_octal(8, e.gid) {
            pax.extend(pax_record("gid", e.gid.to_string().as_bytes()));
        }
        if !fits_octal(12, e.mtime) {
            pax.extend(pax_record("mtime", e.mtime.to_string().as_bytes()));
        }
        for (k, v) in &e.pax {
            pax.extend(pax_record(k, v));
        }
        if !pax.is_empty() {
            let pe = Entry::new("PaxHeader", b'x');
            out.extend_from_slice(&header(b"PaxHeader", b'x', &pe, pax.len() as u64));
            out.extend_from_slice(&pax);
            pad(&mut out);
        }
        out.extend_from_slice(&header(
            e.name.as_bytes(),
            e.typeflag,
            e,
            e.data.len() as u64,
        ));
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn xattrs(rng: &mut Rng) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    if rng.chance(15) {
        // Many: a full xattr block, sorted by tar2ext4's (Go's) sort of more than 12 entries.
        for _ in 0..13 + rng.below(70) {
            let prefix = ["user.", "trusted.", "security.", "system.", ""][rng.below(5) as usize];
            let name = format!("{prefix}{}", rng.name(8));
            let len = rng.below(40) as usize;
            v.push((format!("SCHILY.xattr.{name}"), rng.bytes(len)));
        }
        return v;
    }
    for _ in 0..rng.below(4) {
        let name = match rng.below(6) {
            0 => "security.capability".to_string(),
            1 => format!("trusted.{}", rng.name(20)),
            2 => "system.posix_acl_access".to_string(),
            3 => format!("security.{}", rng.name(12)),
            _ => format!("user.{}", rng.name(30)),
        };
        let len = match rng.below(4) {
            0 => 0,
            1 => 1 + rng.below(20),
            2 => 20 + rng.below(100),
            _ => 100 + rng.below(500),
        } as usize;
        let value = rng.bytes(len);
        v.push((format!("SCHILY.xattr.{name}"), value));
    }
    v
}

/// A random layer: directories (explicit and implicit), files of all size classes, symlinks
/// short and long, hard links, whiteouts, opaque markers, devices, fifos, xattrs, long names,
/// odd ids, modes and times. Only what tar2ext4 accepts (no file listed twice).
pub(crate) fn random_layer(seed: u64) -> Vec<Entry> {
    let mut rng = Rng::new(seed);
    let mut dirs: Vec<String> = vec![String::new()];
    let mut files: Vec<String> = Vec::new();
    // Entries without data blocks: tar2ext4 lets a later entry replace them in place.
    let mut relistable: Vec<String> = Vec::new();
    let mut taken: std::collections::HashSet<String> = Default::default();
    let mut entries = Vec::new();
    if rng.chance(50) {
        let mut root = Entry::new("./", b'5');
        root.mode = 0o755;
        entries.push(root);
    }
    let count = 5 + rng.below(60);
    for _ in 0..count {
        let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let long = rng.chance(5);
        let base = if long { rng.name(255) } else { rng.name(12) };
        let mut path = if parent.is_empty() {
            base.clone()
        } else {
            format!("{parent}/{base}")
        };
        if rng.chance(10) {
            // Implicit parents: a path under directories never listed.
            path = format!("{path}.d/{}/{}", rng.name(8), rng.name(8));
        }
        if taken.contains(&path) {
            continue;
        }
        let mut e = Entry::new(&path, b'0');
        e.mode = rng.below(0o10000) as u32;
        if rng.chance(20) {
            e.uid = rng.below(1 << 33);
            e.gid = rng.below(70000);
        }
        e.mtime = match rng.below(5) {
            0 => 0,
            1 => rng.below(1 << 31),
            2 => (1 << 31) + rng.below(1 << 31),
            3 => rng.below(1 << 36),
            _ => 1_700_000_000,
        };
        if rng.chance(10) {
            e.pax.push((
                "mtime".into(),
                format!("{}.{}", rng.below(1 << 32), rng.below(1_000_000_000)).into_bytes(),
            ));
        }
        if rng.chance(25) {
            e.pax.extend(xattrs(&mut rng));
        }
        if rng.chance(8) {
            e.pax.push(("SCHILY.xattr.user.empty".into(), Vec::new()));
        }
        match rng.below(24) {
            0..=3 => {
                e.typeflag = b'5';
                e.mode |= 0o700;
                dirs.push(path.clone());
            }
            4..=10 => {
                let size = match rng.below(6) {
                    0 => 0,
                    1 => 1 + rng.below(60),
                    2 => 61 + rng.below(4096),
                    3 => 4096 * (1 + rng.below(4)),
                    4 => 4097 + rng.below(100_000),
                    _ => rng.below(400_000),
                };
                e.data = rng.bytes(size as usize);
                files.push(path.clone());
            }
            11 | 12 => {
                e.typeflag = b'2';
                let len = match rng.below(4) {
                    0 => 59,
                    1 => 60,
                    2 => 1 + rng.below(59),
                    _ => 61 + rng.below(300),
                };
                e.link = (0..len)
                    .map(|i| if i % 9 == 8 { '/' } else { 'l' })
                    .collect();
            }
            13 if !files.is_empty() => {
                e.typeflag = b'1';
                e.link = files[rng.below(files.len() as u64) as usize].clone();
                e.data.clear();
            }
            14 => {
                e.typeflag = if rng.chance(50) { b'3' } else { b'4' };
                e.dev = (rng.below(300) as u32, rng.below(70000) as u32);
                relistable.push(path.clone());
            }
            15 => {
                e.typeflag = b'6';
                relistable.push(path.clone());
            }
            20 if !relistable.is_empty() => {
                // An entry listed again (no data written yet): replaced in place.
                let old = relistable[rng.below(relistable.len() as u64) as usize].clone();
                e.name = old;
                match rng.below(4) {
                    0 => e.typeflag = b'6',
                    1 => {
                        e.typeflag = b'2';
                        e.link = "target".into();
                    }
                    2 => {
                        let n = rng.below(9000) as usize;
                        e.data = rng.bytes(n);
                    }
                    _ => {
                        e.typeflag = b'3';
                        e.dev = (1, 2);
                    }
                }
            }
            21 if !relistable.is_empty() => {
                // A whiteout of an entry of this layer that has no data.
                let old = relistable[rng.below(relistable.len() as u64) as usize].clone();
                let (dir, base) = old.rsplit_once('/').unwrap_or(("", &old));
                e = Entry::new(
                    &if dir.is_empty() {
                        format!(".wh.{base}")
                    } else {
                        format!("{dir}/.wh.{base}")
                    },
                    b'0',
                );
            }
            22 => {
                // Odd spellings and types Go normalises: ./ prefixes, doubled slashes, a
                // trailing slash on a legacy directory, contiguous and unknown typeflags.
                match rng.below(4) {
                    0 => e.name = format!("./{path}"),
                    1 => e.name = path.replacen('/', "//", 1),
                    2 => {
                        e.typeflag = 0;
                        e.name = format!("{path}/");
                        dirs.push(path.clone());
                    }
                    _ => {
                        e.typeflag = if rng.chance(50) { b'7' } else { b'Z' };
                        let n = rng.below(5000) as usize;
                        e.data = rng.bytes(n);
                    }
                }
            }
            23 if !files.is_empty() => {
                // Two more names for one file, then one of them listed as a new file.
                let target = files[rng.below(files.len() as u64) as usize].clone();
                e.typeflag = b'1';
                e.link = target.clone();
                let mut again = e.clone();
                entries.push(e.clone());
                again.typeflag = b'0';
                again.link.clear();
                let n = rng.below(100) as usize;
                again.data = rng.bytes(n);
                e = again;
            }
            16 => {
                // A whiteout for a lower-layer file (a name not in this layer).
                let (dir, _) = path.rsplit_once('/').unwrap_or(("", &path));
                let name = format!("{}{}", ".wh.", rng.name(10));
                e = Entry::new(
                    &if dir.is_empty() {
                        name
                    } else {
                        format!("{dir}/{name}")
                    },
                    b'0',
                );
            }
            17 => {
                let dir = dirs[rng.below(dirs.len() as u64) as usize].clone();
                e = Entry::new(
                    &if dir.is_empty() {
                        ".wh..wh..opq".to_string()
                    } else {
                        format!("{dir}/.wh..wh..opq")
                    },
                    b'0',
                );
            }
            18 if dirs.len() > 1 => {
                // A directory listed again, with other attributes.
                let d = dirs[1 + rng.below(dirs.len() as u64 - 1) as usize].clone();
                e.name = d;
                e.typeflag = b'5';
                e.mode |= 0o700;
            }
            _ => {
                let n = rng.below(200) as usize;
                e.data = rng.bytes(n);
                files.push(path.clone());
            }
        }
        taken.insert(e.name.clone());
        entries.push(e);
    }
    if rng.chance(10) {
        // One file over 4 extents' worth is too slow here; a multi-megabyte one is not.
        let mut e = Entry::new(&format!("big-{seed}"), b'0');
        let n = (3 << 20) + rng.below(5000) as usize;
        e.data = rng.bytes(n);
        entries.push(e);
    }
    entries
}
