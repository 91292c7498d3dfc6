//! Where an image's bytes come from: a local file, or an HTTP(S) URL read with Range requests
//! through a block cache (512 KiB blocks, 32 of them, as Azure's encfs reader does).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt as _;
use std::sync::Mutex;

/// Random access to an image.
pub trait Source: Send + Sync {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fill `buf` from `off`.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Write `buf` at `off` (local files only).
    fn write_at(&self, _buf: &[u8], _off: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "this image source is read-only",
        ))
    }
}

impl Source for File {
    fn len(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.read_exact_at(buf, off)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.write_all_at(buf, off)
    }
}

/// A byte stream to an HTTP server (a TCP connection, or a relay).
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Opens a new connection to the server.
pub type Connect = Box<dyn Fn() -> io::Result<Box<dyn Stream>> + Send + Sync>;

const BLOCK: u64 = 512 << 10;
const BLOCKS: usize = 32;

/// An image behind an `http://` or `https://` URL. For HTTPS the TLS session runs over whatever
/// stream `connect` gives (a TCP connection, or the group's egress relay), so the relay only ever
/// sees ciphertext.
pub struct HttpSource {
    connect: Connect,
    tls: Option<native_tls::TlsConnector>,
    server_name: String,
    host: String,
    path: String,
    len: u64,
    cache: Mutex<VecDeque<(u64, Vec<u8>)>>,
}

fn bad(m: impl Into<String>) -> io::Error {
    io::Error::other(m.into())
}

/// `host:port` of an `http(s)://host[:port]/path` URL (port 80 or 443 when absent): where its
/// connections go.
pub fn url_host_port(url: &str) -> io::Result<String> {
    let (rest, port) = if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else if let Some(r) = url.strip_prefix("http://") {
        (r, 80)
    } else {
        return Err(bad(format!(
            "{url}: only http:// and https:// URLs are supported"
        )));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty()
        || host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(bad(format!("{url}: no host")));
    }
    Ok(if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:{port}")
    })
}

impl HttpSource {
    /// `url` is `http(s)://host[:port]/path`; `connect` opens connections (None: TCP to host:port).
    pub fn new(url: &str, connect: Option<Connect>) -> io::Result<Self> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (
                Some(native_tls::TlsConnector::new().map_err(|e| bad(format!("TLS: {e}")))?),
                r,
            )
        } else if let Some(r) = url.strip_prefix("http://") {
            (None, r)
        } else {
            return Err(bad(format!(
                "{url}: only http:// and https:// URLs are supported"
            )));
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
            None => (rest.to_string(), "/".to_string()),
        };
        let server_name = host
            .rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .unwrap_or_else(|| host.clone());
        let connect = connect.unwrap_or_else(|| {
            let addr = url_host_port(url).unwrap_or_default();
            Box::new(move || Ok(Box::new(std::net::TcpStream::connect(&addr)?) as Box<dyn Stream>))
        });
        let mut s = HttpSource {
            connect,
            tls,
            server_name,
            host,
            path,
            len: 0,
            cache: Mutex::new(VecDeque::new()),
        };
        let (_, total) = s.get(0, 0)?;
        s.len = total;
        Ok(s)
    }

    /// GET bytes `a..=b`: the body and the total size from Content-Range.
    fn get(&self, a: u64, b: u64) -> io::Result<(Vec<u8>, u64)> {
        let mut c: Box<dyn Stream> = match &self.tls {
            Some(tls) => {
                let raw = (self.connect)()?;
                match tls.connect(&self.server_name, raw) {
                    Ok(s) => Box::new(s),
                    Err(native_tls::HandshakeError::Failure(e)) => {
                        return Err(bad(format!("TLS to {}: {e}", self.server_name)))
                    }
                    Err(_) => {
                        return Err(bad(format!(
                            "TLS to {}: handshake did not complete",
                            self.server_name
                        )))
                    }
                }
            }
            None => (self.connect)()?,
        };
        write!(
            c,
            "GET {} HTTP/1.1\r\nHost: {}\r\nRange: bytes={a}-{b}\r\nConnection: close\r\n\r\n",
            self.path, self.host
        )?;
        let mut r = BufReader::new(c);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("not an HTTP response"))?;
        if status != 206 {
            return Err(bad(format!(
                "{}{}: HTTP {status} (the server must answer Range requests with 206)",
                self.host, self.path
            )));
        }
        let (mut length, mut total) = (None, None);
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            }
            if let Some(v) = h.strip_prefix("content-range:") {
                total = v
                    .rsplit('/')
                    .next()
                    .and_then(|t| t.trim().parse::<u64>().ok());
            }
        }
        let length = length.ok_or_else(|| bad("no Content-Length"))?;
        let total = total.ok_or_else(|| bad("no Content-Range total"))?;
        let mut body = vec![0u8; length];
        r.read_exact(&mut body)?;
        Ok((body, total))
    }

    fn block(&self, index: u64) -> io::Result<Vec<u8>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pos) = cache.iter().position(|(i, _)| *i == index) {
            let hit = cache.remove(pos).ok_or_else(|| bad("cache"))?;
            let data = hit.1.clone();
            cache.push_front(hit);
            return Ok(data);
        }
        drop(cache);
        let a = index * BLOCK;
        let b = (a + BLOCK).min(self.len) - 1;
        let (data, _) = self.get(a, b)?;
        if data.len() as u64 != b - a + 1 {
            return Err(bad("short Range response"));
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.push_front((index, data.clone()));
        cache.truncate(BLOCKS);
        Ok(data)
    }
}

impl Source for HttpSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        if off + buf.len() as u64 > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the image",
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let block = self.block(pos / BLOCK)?;
            let start = (pos % BLOCK) as usize;
            let n = (block.len() - start).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&block[start..start + n]);
            done += n;
        }
        Ok(())
    }
}

/// `Read + Seek` over a [`Source`], for header parsing.
pub struct Cursor<'a> {
    src: &'a dyn Source,
    pos: u64,
}

impl<'a> Cursor<'a> {
    /// At offset 0.
    pub fn new(src: &'a dyn Source) -> Self {
        Cursor { src, pos: 0 }
    }
}

impl Read for Cursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.src.len().saturating_sub(self.pos)) as usize;
        self.src.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = self.src.len() as i128;
        let new = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => len + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}
