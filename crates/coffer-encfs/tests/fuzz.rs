//! Arbitrary bytes, and a valid image's headers with random byte flips or random JSON edits
//! (re-checksummed, so the edits reach the metadata checks), go through `Luks2::open` and
//! `unlock` without a panic. Bounded to a few seconds for CI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::sync::OnceLock;

use coffer_encfs::header::{BinaryHeader, HeaderCopy, BIN_LEN};
use coffer_encfs::metadata::Kdf;
use coffer_encfs::Luks2;
use proptest::prelude::*;
use serde_json::{json, Value};

const PASS: &[u8] = b"fuzz passphrase";
const HDR: usize = 16384;

/// A valid image made by `create` (16 MiB of header and keyslots, 4 KiB of data).
fn base() -> &'static [u8] {
    static IMG: OnceLock<Vec<u8>> = OnceLock::new();
    IMG.get_or_init(|| {
        let mut out = Vec::new();
        coffer_encfs::create(
            &mut Cursor::new(vec![7u8; 4096]),
            4096,
            PASS,
            &mut out,
            &Default::default(),
        )
        .unwrap();
        out
    })
}

/// The base image with its two header copies (the first 32 KiB) replaced, without copying the
/// 16 MiB for every case.
struct Overlay {
    head: Vec<u8>,
    pos: u64,
}

impl Read for Overlay {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let base = base();
        let pos = self.pos as usize;
        let n = if pos < self.head.len() {
            let n = buf.len().min(self.head.len() - pos);
            buf[..n].copy_from_slice(&self.head[pos..pos + n]);
            n
        } else if pos < base.len() {
            let n = buf.len().min(base.len() - pos);
            buf[..n].copy_from_slice(&base[pos..pos + n]);
            n
        } else {
            0
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Overlay {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let len = base().len() as i128;
        let p = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => len + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        self.pos = u64::try_from(p).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        Ok(self.pos)
    }
}

/// Open, and unlock when the (validated) KDF costs are small enough for a test.
fn exercise<R: Read + Seek>(r: &mut R) {
    let Ok(luks) = Luks2::open(r) else { return };
    let cheap_kdf = luks.metadata.keyslots.iter().all(|k| match k.kdf {
        Kdf::Pbkdf2 { iterations, .. } => iterations <= 5000,
        Kdf::Argon2 {
            time, memory_kib, ..
        } => u64::from(time) * u64::from(memory_kib) <= 1 << 14,
    });
    let cheap_digest = luks.metadata.digests.iter().all(|d| d.iterations <= 5000);
    if cheap_kdf && cheap_digest && luks.metadata.keyslots.len() <= 4 {
        let _ = luks.unlock(r, PASS);
    }
}

/// Both header copies with `json` as metadata, sealed.
fn with_json(json: &Value) -> Option<Vec<u8>> {
    let text = serde_json::to_vec(json).ok()?;
    let mut head = base()[..2 * HDR].to_vec();
    if text.len() >= HDR - BIN_LEN {
        return None;
    }
    for (copy, off) in [(HeaderCopy::Primary, 0), (HeaderCopy::Secondary, HDR)] {
        let area = &mut head[off + BIN_LEN..off + HDR];
        area.fill(0);
        area[..text.len()].copy_from_slice(&text);
        let mut bin = BinaryHeader::parse(head[off..off + BIN_LEN].try_into().ok()?);
        assert_eq!(bin.hdr_offset, off as u64, "{copy}");
        bin.seal(&head[off + BIN_LEN..off + HDR]).ok()?;
        head[off..off + BIN_LEN].copy_from_slice(&bin.encode());
    }
    Some(head)
}

fn base_json() -> Value {
    let area = &base()[BIN_LEN..HDR];
    let end = area.iter().position(|&b| b == 0).unwrap();
    serde_json::from_slice(&area[..end]).unwrap()
}

/// JSON pointers of every node below the root.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        _ => {}
    }
}

fn values() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!({})),
        Just(json!([])),
        Just(json!(true)),
        Just(json!("dynamic")),
        Just(json!("")),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(4000)),
        Just(json!(1.5)),
        Just(json!("18446744073709551616")),
        any::<u64>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        (0u32..70).prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n.to_string())),
        (0u64..1 << 26).prop_map(|n| json!((n * 512).to_string())),
        "[a-z0-9+/=]{0,12}".prop_map(|s| json!(s)),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, Value),
    Remove(usize),
    Insert(usize, String, Value),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        3 => (any::<usize>(), values()).prop_map(|(i, v)| Edit::Replace(i, v)),
        1 => any::<usize>().prop_map(Edit::Remove),
        1 => (any::<usize>(), "[a-z_0-9]{1,10}", values()).prop_map(|(i, k, v)| Edit::Insert(i, k, v)),
    ];
    proptest::collection::vec(edit, 1..4)
}

fn apply(v: &mut Value, e: &Edit) {
    let mut ps = Vec::new();
    pointers(v, String::new(), &mut ps);
    if ps.is_empty() {
        return;
    }
    match e {
        Edit::Replace(i, new) => {
            if let Some(x) = v.pointer_mut(&ps[i % ps.len()]) {
                *x = new.clone();
            }
        }
        Edit::Remove(i) => {
            let p = &ps[i % ps.len()];
            let (parent, key) = p.rsplit_once('/').unwrap_or(("", p));
            let key = key.replace("~1", "/").replace("~0", "~");
            match v.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.remove(&key);
                }
                Some(Value::Array(a)) => {
                    if let Ok(i) = key.parse::<usize>() {
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                }
                _ => {}
            }
        }
        Edit::Insert(i, k, new) => {
            if let Some(Value::Object(m)) = v.pointer_mut(&ps[i % ps.len()]) {
                m.insert(k.clone(), new.clone());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_do_not_panic(seed in any::<u64>(), len in 0usize..40000, magic in any::<bool>()) {
        // xorshift from the seed: cheaper than 40000 generated bytes per case.
        let mut x = seed | 1;
        let mut bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        if magic && bytes.len() >= 16 {
            // Past the magic and version, into the size and checksum checks.
            bytes[..8].copy_from_slice(b"LUKS\xba\xbe\x00\x02");
        }
        exercise(&mut Cursor::new(bytes));
    }

    #[test]
    fn flipped_header_bytes_do_not_panic(
        flips in proptest::collection::vec((0usize..2 * BIN_LEN, any::<u8>()), 1..8),
        reseal in any::<bool>(),
    ) {
        let mut head = base()[..2 * HDR].to_vec();
        for (i, x) in flips {
            // The two binary headers (first 4096 bytes of each copy).
            let at = if i < BIN_LEN { i } else { HDR + i - BIN_LEN };
            head[at] ^= x | 1;
        }
        if reseal {
            for off in [0, HDR] {
                let mut bin = BinaryHeader::parse(head[off..off + BIN_LEN].try_into().unwrap());
                let json = head[off + BIN_LEN..off + HDR].to_vec();
                let _ = bin.seal(&json);
                head[off..off + BIN_LEN].copy_from_slice(&bin.encode());
            }
        }
        exercise(&mut Overlay { head, pos: 0 });
    }

    #[test]
    fn edited_json_does_not_panic(edits in edits()) {
        let mut v = base_json();
        for e in &edits {
            apply(&mut v, e);
        }
        if let Some(head) = with_json(&v) {
            exercise(&mut Overlay { head, pos: 0 });
        }
    }
}

#[test]
fn the_unedited_base_opens() {
    let head = with_json(&base_json()).unwrap();
    let mut r = Overlay { head, pos: 0 };
    let luks = Luks2::open(&mut r).unwrap();
    luks.unlock(&mut r, PASS).unwrap();
}
