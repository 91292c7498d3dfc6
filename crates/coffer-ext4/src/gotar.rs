//! Reading tar streams with the semantics of Go's `archive/tar`, which is what tar2ext4 sees.
//!
//! Not the `tar` crate: it splits PAX records at newlines (binary xattr values such as
//! `security.capability` may contain them; Go reads records by length), takes the first PAX
//! `path` where Go takes the last non-empty one, frames header-only entries (links, dirs,
//! devices) by their size field where Go gives them no data, and decodes atime/ctime and
//! base-256 fields differently. Each difference changes the image, so the reader is Go's.

use std::io::Read;

use crate::Ext4Error;

/// A point in time as Go's `time.Time` carries it through tar2ext4: `None` is Go's zero time
/// (which tar2ext4 stores as 0), otherwise Unix seconds and nanoseconds in `0..1e9`.
pub(crate) type GoTime = Option<(i64, u32)>;

/// Go's `time.Unix(sec, nsec)`: nanoseconds outside `0..1e9` carry into the seconds.
pub(crate) fn go_unix(sec: i64, nsec: i64) -> GoTime {
    const NS: i64 = 1_000_000_000;
    let (mut s, mut n) = (sec, nsec);
    if !(0..NS).contains(&n) {
        let q = n / NS;
        s = s.wrapping_add(q);
        n -= q * NS;
        if n < 0 {
            n += NS;
            s = s.wrapping_sub(1);
        }
    }
    // Unix time of Go's zero Time (January 1, year 1, UTC).
    if s == -62_135_596_800 && n == 0 {
        None
    } else {
        Some((s, n as u32))
    }
}

/// tar typeflags tar2ext4 distinguishes.
pub(crate) const TYPE_REG: u8 = b'0';
pub(crate) const TYPE_REG_A: u8 = 0;
pub(crate) const TYPE_LINK: u8 = b'1';
pub(crate) const TYPE_SYMLINK: u8 = b'2';
pub(crate) const TYPE_CHAR: u8 = b'3';
pub(crate) const TYPE_BLOCK: u8 = b'4';
pub(crate) const TYPE_DIR: u8 = b'5';
pub(crate) const TYPE_FIFO: u8 = b'6';
pub(crate) const TYPE_GLOBAL: u8 = b'g';
pub(crate) const TYPE_GNU_SPARSE: u8 = b'S';

/// One tar entry's header as Go's `tar.Reader.Next` returns it.
#[derive(Debug, Clone, Default)]
pub(crate) struct GoHeader {
    pub(crate) name: Vec<u8>,
    pub(crate) linkname: Vec<u8>,
    pub(crate) typeflag: u8,
    pub(crate) mode: i64,
    pub(crate) uid: i64,
    pub(crate) gid: i64,
    pub(crate) size: i64,
    pub(crate) mtime: GoTime,
    pub(crate) atime: GoTime,
    pub(crate) ctime: GoTime,
    pub(crate) devmajor: i64,
    pub(crate) devminor: i64,
    /// PAX records in archive order (a later record of the same key wins).
    pub(crate) pax: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Bytes up to the first NUL (Go's `parseString`).
fn cstr(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

/// Go's `parseNumeric`: base-256 when the top bit is set, else octal with NUL/space padding.
fn parse_numeric(b: &[u8]) -> Option<i64> {
    if let Some(&first) = b.first() {
        if first & 0x80 != 0 {
            let inv = if first & 0x40 != 0 { 0xff } else { 0 };
            let mut x: u64 = 0;
            for (i, &c) in b.iter().enumerate() {
                let mut c = c ^ inv;
                if i == 0 {
                    c &= 0x7f;
                }
                if x >> 56 != 0 {
                    return None;
                }
                x = x << 8 | u64::from(c);
            }
            if x >> 63 != 0 {
                return None;
            }
            let v = x as i64;
            return Some(if inv == 0xff { !v } else { v });
        }
    }
    let trimmed = trim(b, b" \0");
    if trimmed.is_empty() {
        return Some(0);
    }
    let s = std::str::from_utf8(cstr(trimmed)).ok()?;
    u64::from_str_radix(s, 8).ok().map(|v| v as i64)
}

fn trim<'a>(b: &'a [u8], set: &[u8]) -> &'a [u8] {
    let start = b.iter().position(|c| !set.contains(c)).unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !set.contains(c))
        .map_or(start, |i| i + 1);
    &b[start..end.max(start)]
}

/// Go's `parsePAXTime`: "SECONDS[.FRACTION]", fraction truncated to nanoseconds.
fn parse_pax_time(v: &[u8]) -> Option<GoTime> {
    let (ss, sn) = match v.iter().position(|&c| c == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &v[v.len()..]),
    };
    let secs: i64 = std::str::from_utf8(ss).ok()?.parse().ok()?;
    if sn.is_empty() {
        return Some(go_unix(secs, 0));
    }
    if !sn.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut digits = sn.to_vec();
    digits.resize(9, b'0');
    let nsecs: i64 = std::str::from_utf8(&digits).ok()?.parse().ok()?;
    if ss.first() == Some(&b'-') {
        Some(go_unix(secs, -nsecs))
    } else {
        Some(go_unix(secs, nsecs))
    }
}

fn bad(name: &[u8], what: &str) -> Ext4Error {
    Ext4Error::TarHeader {
        path: String::from_utf8_lossy(name).into_owned(),
        reason: what.to_string(),
    }
}

/// Go's `strconv.ParseInt(v, 10, 64)`.
fn parse_int(v: &[u8]) -> Option<i64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

const BLOCK: usize = 512;
/// Go's limit on PAX and GNU long-name payloads.
const MAX_SPECIAL_FILE_SIZE: u64 = 1 << 20;

/// Go's tar header formats, as far as they change decoding.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    V7,
    Ustar,
    Star,
    Gnu,
}

/// Go's `getFormat`: the checksum (unsigned or signed sum) must match, then the magic decides.
fn format_of(b: &[u8; BLOCK]) -> Option<Format> {
    let want = parse_numeric_octal(&b[148..156])?;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &c) in b.iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        unsigned += i64::from(c);
        signed += i64::from(c as i8);
    }
    if want != unsigned && want != signed {
        return None;
    }
    let (magic, version, trailer) = (&b[257..263], &b[263..265], &b[508..512]);
    Some(if magic == b"ustar\0" && trailer == b"tar\0" {
        Format::Star
    } else if magic == b"ustar\0" {
        Format::Ustar
    } else if magic == b"ustar " && version == b" \0" {
        Format::Gnu
    } else {
        Format::V7
    })
}

/// Octal only (the checksum field has no base-256 form).
fn parse_numeric_octal(b: &[u8]) -> Option<i64> {
    if b.first().is_some_and(|&c| c & 0x80 != 0) {
        return None;
    }
    parse_numeric(b)
}

/// Go's `validPAXRecord`.
fn valid_pax_record(k: &[u8], v: &[u8]) -> bool {
    if k.is_empty() || k.contains(&b'=') {
        return false;
    }
    match k {
        b"path" | b"linkpath" | b"uname" | b"gname" => !v.contains(&0),
        _ => !k.contains(&0),
    }
}

/// Go's `parsePAX`: length-prefixed "LEN KEY=VALUE\n" records (values may hold newlines).
fn parse_pax(mut s: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let sp = s.iter().position(|&c| c == b' ')?;
        let n: i64 = std::str::from_utf8(&s[..sp]).ok()?.parse().ok()?;
        if n < 5 || n > s.len() as i64 {
            return None;
        }
        let n = n as usize;
        if n <= sp + 1 {
            return None;
        }
        let rec = &s[sp + 1..n - 1];
        if s[n - 1] != b'\n' {
            return None;
        }
        let eq = rec.iter().position(|&c| c == b'=')?;
        let (k, v) = (&rec[..eq], &rec[eq + 1..]);
        if !valid_pax_record(k, v) {
            return None;
        }
        out.push((k.to_vec(), v.to_vec()));
        s = &s[n..];
    }
    Some(out)
}

/// A tar stream read the way Go's `archive/tar` reads it: same framing (two zero blocks or
/// end of input end it, header-only types have no data whatever their size field), same
/// header decoding, same PAX and GNU long-name handling.
pub(crate) struct TarReader<R: Read> {
    r: R,
    /// Data bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's data.
    pad: u64,
}

fn bad_tar(e: std::io::Error) -> Ext4Error {
    Ext4Error::Tar(e)
}

fn is_header_only(typeflag: u8) -> bool {
    matches!(
        typeflag,
        TYPE_LINK | TYPE_SYMLINK | TYPE_CHAR | TYPE_BLOCK | TYPE_DIR | TYPE_FIFO
    )
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(r: R) -> Self {
        TarReader {
            r,
            remaining: 0,
            pad: 0,
        }
    }

    /// Read up to `buf.len()` bytes of the current entry's data; 0 at its end. A stream that
    /// ends inside the data is an error.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> Result<usize, Ext4Error> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        loop {
            match self.r.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(bad_tar(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "tar ends inside an entry's data",
                    )))
                }
                Ok(n) => {
                    self.remaining -= n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(bad_tar(e)),
            }
        }
    }

    fn read_all_data(&mut self) -> Result<Vec<u8>, Ext4Error> {
        if self.remaining > MAX_SPECIAL_FILE_SIZE {
            return Err(Ext4Error::TarHeader {
                path: String::new(),
                reason: "PAX or long-name record over 1 MiB".into(),
            });
        }
        let mut v = vec![0u8; self.remaining as usize];
        let mut at = 0;
        while at < v.len() {
            at += self.read(&mut v[at..])?;
        }
        Ok(v)
    }

    /// Fill `buf` completely; `Ok(false)` if the stream ended before its first byte.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<bool, Ext4Error> {
        let mut at = 0;
        while at < buf.len() {
            match self.r.read(&mut buf[at..]) {
                Ok(0) if at == 0 => return Ok(false),
                Ok(0) => {
                    return Err(bad_tar(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "tar ends inside a header",
                    )))
                }
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(bad_tar(e)),
            }
        }
        Ok(true)
    }

    /// Skip `n` bytes; `Ok(false)` if the stream ended first.
    fn skip(&mut self, mut n: u64) -> Result<bool, Ext4Error> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            match self.r.read(&mut buf[..k]) {
                Ok(0) => return Ok(false),
                Ok(m) => n -= m as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(bad_tar(e)),
            }
        }
        Ok(true)
    }

    /// Go's `Reader.Next`: the next entry's header, `None` at the end of the archive.
    pub(crate) fn next(&mut self) -> Result<Option<GoHeader>, Ext4Error> {
        let mut pax: Option<Vec<(Vec<u8>, Vec<u8>)>> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let rest = self.remaining;
            self.remaining = 0;
            if !self.skip(rest)? {
                return Err(bad_tar(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "tar ends inside an entry's data",
                )));
            }
            let pad = std::mem::take(&mut self.pad);
            // Go reads the padding with tryReadFull: a stream ending there ends the archive.
            if !self.skip(pad)? {
                return Ok(None);
            }
            let mut block = [0u8; BLOCK];
            if !self.read_full(&mut block)? {
                return Ok(None);
            }
            if block.iter().all(|&c| c == 0) {
                if !self.read_full(&mut block)? || block.iter().all(|&c| c == 0) {
                    return Ok(None);
                }
                return Err(Ext4Error::TarHeader {
                    path: String::new(),
                    reason: "a zero block followed by a header".into(),
                });
            }
            let mut h = decode_header(&block)?;
            self.set_data(&h)?;
            match h.typeflag {
                b'x' | TYPE_GLOBAL => {
                    let data = self.read_all_data()?;
                    let records =
                        parse_pax(&data).ok_or_else(|| bad(&h.name, "bad PAX records"))?;
                    if h.typeflag == TYPE_GLOBAL {
                        h.pax = records;
                        // Go ignores merge errors here (only the name is kept anyway).
                        let _ = merge_pax(&mut h);
                        // Go returns it as an entry of its own, only name and records set.
                        return Ok(Some(GoHeader {
                            name: h.name,
                            typeflag: TYPE_GLOBAL,
                            pax: h.pax,
                            ..GoHeader::default()
                        }));
                    }
                    pax = Some(records);
                }
                b'L' => long_name = Some(cstr(&self.read_all_data()?).to_vec()),
                b'K' => long_link = Some(cstr(&self.read_all_data()?).to_vec()),
                _ => {
                    h.pax = pax.take().unwrap_or_default();
                    merge_pax(&mut h)?;
                    if let Some(n) = long_name.take().filter(|n| !n.is_empty()) {
                        h.name = n;
                    }
                    if let Some(l) = long_link.take().filter(|l| !l.is_empty()) {
                        h.linkname = l;
                    }
                    if h.typeflag == TYPE_REG_A {
                        h.typeflag = if h.name.ends_with(b"/") {
                            TYPE_DIR
                        } else {
                            TYPE_REG
                        };
                    }
                    if h.typeflag == TYPE_GNU_SPARSE
                        || h.pax.iter().any(|(k, _)| k.starts_with(b"GNU.sparse."))
                    {
                        return Err(Ext4Error::Unsupported {
                            path: String::from_utf8_lossy(&h.name).into_owned(),
                            what: "sparse file".into(),
                        });
                    }
                    self.set_data(&h)?;
                    return Ok(Some(h));
                }
            }
        }
    }

    /// Go's `handleRegularFile`: how much data follows this header.
    fn set_data(&mut self, h: &GoHeader) -> Result<(), Ext4Error> {
        let nb = if is_header_only(h.typeflag) {
            0
        } else {
            h.size
        };
        if nb < 0 {
            return Err(bad(&h.name, "negative size"));
        }
        self.remaining = nb as u64;
        self.pad = (BLOCK as u64 - self.remaining % BLOCK as u64) % BLOCK as u64;
        Ok(())
    }
}

/// Go's `readHeader` after the format check: the fields of one header block.
fn decode_header(raw: &[u8; BLOCK]) -> Result<GoHeader, Ext4Error> {
    let format = format_of(raw).ok_or_else(|| Ext4Error::TarHeader {
        path: String::from_utf8_lossy(cstr(&raw[0..100])).into_owned(),
        reason: "not a tar header (bad checksum)".into(),
    })?;
    let mut h = GoHeader {
        name: cstr(&raw[0..100]).to_vec(),
        linkname: cstr(&raw[157..257]).to_vec(),
        typeflag: raw[156],
        ..GoHeader::default()
    };
    let num = |range: std::ops::Range<usize>, what: &str, name: &[u8]| {
        parse_numeric(&raw[range]).ok_or_else(|| bad(name, what))
    };
    h.size = num(124..136, "bad size field", &h.name)?;
    h.mode = num(100..108, "bad mode field", &h.name)?;
    h.uid = num(108..116, "bad uid field", &h.name)?;
    h.gid = num(116..124, "bad gid field", &h.name)?;
    h.mtime = go_unix(num(136..148, "bad mtime field", &h.name)?, 0);
    if format != Format::V7 {
        h.devmajor = num(329..337, "bad devmajor field", &h.name)?;
        h.devminor = num(337..345, "bad devminor field", &h.name)?;
        let prefix: &[u8] = match format {
            Format::Ustar => cstr(&raw[345..500]),
            Format::Star => {
                h.atime = go_unix(num(476..488, "bad atime field", &h.name)?, 0);
                h.ctime = go_unix(num(488..500, "bad ctime field", &h.name)?, 0);
                cstr(&raw[345..476])
            }
            _ => {
                // GNU: atime and ctime when present; a bad value reads as 0.
                if raw[345] != 0 {
                    h.atime = go_unix(parse_numeric(&raw[345..357]).unwrap_or(0), 0);
                }
                if raw[357] != 0 {
                    h.ctime = go_unix(parse_numeric(&raw[357..369]).unwrap_or(0), 0);
                }
                &[]
            }
        };
        if !prefix.is_empty() {
            let mut n = prefix.to_vec();
            n.push(b'/');
            n.extend_from_slice(&h.name);
            h.name = n;
        }
    }
    Ok(h)
}

/// Go's `mergePAX`: records override header fields; an empty value keeps the header's.
fn merge_pax(h: &mut GoHeader) -> Result<(), Ext4Error> {
    let records = std::mem::take(&mut h.pax);
    let mut r = Ok(());
    for (i, (key, v)) in records.iter().enumerate() {
        // Go keeps records in a map: only the last of a key counts, even when empty.
        if v.is_empty() || records[i + 1..].iter().any(|(k, _)| k == key) {
            continue;
        }
        let invalid = || {
            bad(
                &h.name,
                &format!("bad PAX {}", String::from_utf8_lossy(key)),
            )
        };
        let res = match key.as_slice() {
            b"path" => {
                h.name = v.clone();
                Ok(())
            }
            b"linkpath" => {
                h.linkname = v.clone();
                Ok(())
            }
            b"uid" => parse_int(v).map(|x| h.uid = x).ok_or_else(invalid),
            b"gid" => parse_int(v).map(|x| h.gid = x).ok_or_else(invalid),
            b"mtime" => parse_pax_time(v).map(|t| h.mtime = t).ok_or_else(invalid),
            b"atime" => parse_pax_time(v).map(|t| h.atime = t).ok_or_else(invalid),
            b"ctime" => parse_pax_time(v).map(|t| h.ctime = t).ok_or_else(invalid),
            b"size" => parse_int(v).map(|x| h.size = x).ok_or_else(invalid),
            _ => Ok(()),
        };
        if res.is_err() {
            r = res;
        }
    }
    h.pax = records;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields_decode_like_go() {
        assert_eq!(parse_numeric(b"0000644\0"), Some(0o644));
        assert_eq!(parse_numeric(b"  755 \0"), Some(0o755));
        assert_eq!(parse_numeric(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_numeric(b"12x\0"), None);
        assert_eq!(
            parse_numeric(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
            Some(1 << 32)
        );
        assert_eq!(parse_numeric(&[0xff; 8]), Some(-1));
    }

    #[test]
    fn pax_records_are_read_by_length_not_by_line() {
        let recs = parse_pax(b"29 SCHILY.xattr.user.v=a\nb\x00c\n11 path=p/\n").unwrap();
        assert_eq!(
            recs[0],
            (b"SCHILY.xattr.user.v".to_vec(), b"a\nb\x00c".to_vec())
        );
        assert_eq!(recs[1], (b"path".to_vec(), b"p/".to_vec()));
        assert!(parse_pax(b"11 path=a\x00\n").is_none(), "NUL in a path");
        assert!(parse_pax(b"12 path=a\n").is_none(), "length past the end");
    }

    fn block(name: &str, typeflag: u8, size: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&c| u32::from(c)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    #[test]
    fn header_only_entries_have_no_data_whatever_their_size_field() {
        // A symlink header claiming 600 bytes, directly followed by the next header.
        let mut tar = block("l", TYPE_SYMLINK, 600);
        tar.extend(block("f", TYPE_REG, 3));
        tar.extend_from_slice(b"abc");
        tar.resize(tar.len() + 509 + 1024, 0);
        let mut r = TarReader::new(&tar[..]);
        assert_eq!(r.next().unwrap().unwrap().name, b"l");
        let f = r.next().unwrap().unwrap();
        assert_eq!((f.name.as_slice(), f.size), (&b"f"[..], 3));
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        assert!(r.next().unwrap().is_none());
    }

    #[test]
    fn legacy_regular_entries_ending_in_slash_are_directories() {
        let mut tar = block("d/", TYPE_REG_A, 0);
        tar.extend(block("f", TYPE_REG_A, 0));
        let mut r = TarReader::new(&tar[..]);
        assert_eq!(r.next().unwrap().unwrap().typeflag, TYPE_DIR);
        assert_eq!(r.next().unwrap().unwrap().typeflag, TYPE_REG);
        assert!(
            r.next().unwrap().is_none(),
            "input ending without zero blocks ends the archive"
        );
    }

    #[test]
    fn pax_times_decode_like_go() {
        assert_eq!(
            parse_pax_time(b"1700000000"),
            Some(Some((1_700_000_000, 0)))
        );
        assert_eq!(parse_pax_time(b"1.5"), Some(Some((1, 500_000_000))));
        assert_eq!(
            parse_pax_time(b"1.1234567891"),
            Some(Some((1, 123_456_789)))
        );
        assert_eq!(parse_pax_time(b"-1.5"), Some(Some((-2, 500_000_000))));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
    }
}
