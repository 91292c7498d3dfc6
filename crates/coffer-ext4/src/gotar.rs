//! Reading tar headers with the semantics of Go's `archive/tar` (what tar2ext4 sees), on top of
//! the `tar` crate's framing (headers, GNU long names, PAX records, data).
//!
//! The `tar` crate and Go disagree on details (numeric fields in base-256, which PAX `path`
//! wins, atime/ctime of GNU and star headers, legacy directories), so the fields that end up in
//! the image are decoded here from the raw header the way Go decodes them.

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
    pub(crate) size: u64,
    pub(crate) mtime: GoTime,
    pub(crate) atime: GoTime,
    pub(crate) ctime: GoTime,
    pub(crate) devmajor: i64,
    pub(crate) devminor: i64,
    /// PAX records in archive order (a later record of the same key wins).
    pub(crate) pax: Vec<(Vec<u8>, Vec<u8>)>,
}

impl GoHeader {
    /// The value of the last record `key`.
    fn pax_value(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
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

/// Decode `entry`'s header the way Go's tar reader does.
pub(crate) fn read_header<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<GoHeader, Ext4Error> {
    let raw: [u8; 512] = *entry.header().as_bytes();
    let mut h = GoHeader {
        name: cstr(&raw[0..100]).to_vec(),
        linkname: cstr(&raw[157..257]).to_vec(),
        typeflag: raw[156],
        size: entry.size(),
        ..GoHeader::default()
    };
    let num = |range: std::ops::Range<usize>, what: &str, name: &[u8]| {
        parse_numeric(&raw[range]).ok_or_else(|| bad(name, what))
    };
    h.mode = num(100..108, "bad mode field", &h.name)?;
    h.uid = num(108..116, "bad uid field", &h.name)?;
    h.gid = num(116..124, "bad gid field", &h.name)?;
    h.mtime = go_unix(num(136..148, "bad mtime field", &h.name)?, 0);

    let magic = &raw[257..263];
    let version = &raw[263..265];
    let trailer = &raw[508..512];
    let ustar = magic == b"ustar\0";
    let gnu = magic == b"ustar " && version == b" \0";
    if ustar || gnu {
        h.devmajor = num(329..337, "bad devmajor field", &h.name)?;
        h.devminor = num(337..345, "bad devminor field", &h.name)?;
        let mut prefix: &[u8] = &[];
        if ustar && trailer == b"tar\0" {
            // star: a shorter prefix, then atime and ctime.
            prefix = cstr(&raw[345..476]);
            h.atime = go_unix(num(476..488, "bad atime field", &h.name)?, 0);
            h.ctime = go_unix(num(488..500, "bad ctime field", &h.name)?, 0);
        } else if ustar {
            prefix = cstr(&raw[345..500]);
        } else {
            // GNU: atime and ctime when present; a bad value is read as 0.
            if raw[345] != 0 {
                h.atime = go_unix(parse_numeric(&raw[345..357]).unwrap_or(0), 0);
            }
            if raw[357] != 0 {
                h.ctime = go_unix(parse_numeric(&raw[357..369]).unwrap_or(0), 0);
            }
        }
        if !prefix.is_empty() {
            let mut n = prefix.to_vec();
            n.push(b'/');
            n.extend_from_slice(&h.name);
            h.name = n;
        }
    }

    // What the tar crate resolved, to spot GNU long names (which win over PAX in Go).
    let crate_header_path = entry.header().path_bytes().into_owned();
    let crate_header_link = entry.header().link_name_bytes().map(|l| l.into_owned());
    let crate_path = entry.path_bytes().into_owned();
    let crate_link = entry.link_name_bytes().map(|l| l.into_owned());

    if let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| bad(&h.name, &format!("PAX records: {e}")))?
    {
        for ext in exts {
            let ext = ext.map_err(|e| bad(&h.name, &format!("PAX records: {e}")))?;
            h.pax
                .push((ext.key_bytes().to_vec(), ext.value_bytes().to_vec()));
        }
    }
    if h.pax.iter().any(|(k, _)| k.starts_with(b"GNU.sparse.")) {
        return Err(Ext4Error::Unsupported {
            path: String::from_utf8_lossy(&h.name).into_owned(),
            what: "sparse file (PAX GNU.sparse)".into(),
        });
    }
    let first_pax = |key: &[u8]| h.pax.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let gnu_long_name = (crate_path != crate_header_path
        && Some(&crate_path) != first_pax(b"path").as_ref())
    .then(|| cstr(&crate_path).to_vec());
    let gnu_long_link = match (&crate_link, &crate_header_link) {
        (Some(l), hl) if Some(l) != hl.as_ref() && Some(l) != first_pax(b"linkpath").as_ref() => {
            Some(cstr(l).to_vec())
        }
        _ => None,
    };

    // Go's mergePAX: an empty value keeps the header's.
    let mut seen: Vec<&[u8]> = Vec::new();
    for (k, _) in h.pax.iter().rev() {
        if !seen.contains(&k.as_slice()) {
            seen.push(k);
        }
    }
    let mut merged = h.clone();
    for key in seen {
        let v = h.pax_value(key).unwrap_or_default();
        if v.is_empty() {
            continue;
        }
        let invalid = || {
            bad(
                &h.name,
                &format!("bad PAX {}", String::from_utf8_lossy(key)),
            )
        };
        match key {
            b"path" => merged.name = v.to_vec(),
            b"linkpath" => merged.linkname = v.to_vec(),
            b"uid" => merged.uid = parse_int(v).ok_or_else(invalid)?,
            b"gid" => merged.gid = parse_int(v).ok_or_else(invalid)?,
            b"mtime" => merged.mtime = parse_pax_time(v).ok_or_else(invalid)?,
            b"atime" => merged.atime = parse_pax_time(v).ok_or_else(invalid)?,
            b"ctime" => merged.ctime = parse_pax_time(v).ok_or_else(invalid)?,
            _ => {}
        }
    }
    let mut h = merged;

    if h.typeflag == TYPE_GLOBAL {
        // Go returns a global header as an entry of its own with only name and records set.
        return Ok(GoHeader {
            name: h.name,
            typeflag: TYPE_GLOBAL,
            pax: h.pax,
            ..GoHeader::default()
        });
    }
    if let Some(n) = gnu_long_name {
        h.name = n;
    }
    if let Some(l) = gnu_long_link {
        h.linkname = l;
    }
    if h.typeflag == TYPE_GNU_SPARSE {
        return Err(Ext4Error::Unsupported {
            path: String::from_utf8_lossy(&h.name).into_owned(),
            what: "sparse file (GNU)".into(),
        });
    }
    if h.typeflag == TYPE_REG_A {
        h.typeflag = if h.name.ends_with(b"/") {
            TYPE_DIR
        } else {
            TYPE_REG
        };
    }
    Ok(h)
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
