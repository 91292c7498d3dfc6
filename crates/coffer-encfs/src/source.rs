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
        use std::os::unix::fs::FileTypeExt as _;
        match self.metadata() {
            // A block device (a VM's volume disk) has no length in its metadata: its end is.
            Ok(m) if m.file_type().is_block_device() => {
                let mut f = self;
                io::Seek::seek(&mut f, io::SeekFrom::End(0)).unwrap_or(0)
            }
            Ok(m) => m.len(),
            Err(_) => 0,
        }
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
        // A Range answer holds at most the bytes asked for.
        let want = usize::try_from(b.saturating_sub(a).saturating_add(1)).unwrap_or(usize::MAX);
        let resp = read_response(BufReader::new(c), want)
            .map_err(|e| bad(format!("{}{}: {e}", self.host, self.path)))?;
        if resp.status != 206 {
            return Err(bad(format!(
                "{}{}: HTTP {} (the server must answer Range requests with 206)",
                self.host, self.path, resp.status
            )));
        }
        let total = resp
            .header("content-range")
            .and_then(|v| v.rsplit('/').next())
            .and_then(|t| t.trim().parse::<u64>().ok())
            .ok_or_else(|| bad("no Content-Range total"))?;
        if resp.header("content-length").is_none() {
            return Err(bad("no Content-Length"));
        }
        Ok((resp.body, total))
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

/// Longest status or header line, and most header lines, accepted in a response.
const MAX_LINE: u64 = 8192;
const MAX_HEADERS: usize = 100;

/// Why bytes are not an acceptable HTTP/1.1 response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// Reading failed.
    #[error("reading {during}: {source}")]
    Io {
        /// What was being read ("the response", "a chunk", "the body").
        during: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The connection ended mid-response.
    #[error("the connection closed before the response ended")]
    Closed,
    /// A status, header or chunk-size line over `MAX_LINE` bytes.
    #[error("a response line is longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// The status line is not `HTTP/1.x CODE ...`.
    #[error("not an HTTP response")]
    NotHttp,
    /// More than `MAX_HEADERS` header lines.
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    /// A header line without a colon.
    #[error("a header line without ':'")]
    HeaderWithoutColon,
    /// Content-Length is not a number.
    #[error("a bad Content-Length")]
    BadContentLength,
    /// A chunk size is not hexadecimal.
    #[error("a bad chunk size")]
    BadChunkSize,
    /// The body is larger than the caller accepts.
    #[error("the body exceeds {limit} bytes")]
    BodyTooLong {
        /// The caller's limit.
        limit: usize,
    },
}

fn read_line_bounded(r: &mut impl BufRead) -> Result<String, HttpError> {
    let mut line = String::new();
    let n = r
        .take(MAX_LINE)
        .read_line(&mut line)
        .map_err(|source| HttpError::Io {
            during: "the response",
            source,
        })?;
    if n == 0 {
        return Err(HttpError::Closed);
    }
    if !line.ends_with('\n') {
        return Err(HttpError::LineTooLong);
    }
    Ok(line.trim_end().to_string())
}

/// An HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header lines as (lower-case name, value).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Read an HTTP/1.1 response, the body at most `limit` bytes. Everything read is bounded (line
/// lengths, header count, body): whoever relays the answer may send anything.
pub fn read_response(mut r: impl BufRead, limit: usize) -> Result<Response, HttpError> {
    let status_line = read_line_bounded(&mut r)?;
    let status: u16 = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::NotHttp)?;
    let (mut chunked, mut length) = (false, None::<usize>);
    let mut headers = Vec::new();
    loop {
        let h = read_line_bounded(&mut r)?;
        if h.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        let (name, value) = h.split_once(':').ok_or(HttpError::HeaderWithoutColon)?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        let lower = h.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            let n: usize = v.trim().parse().map_err(|_| HttpError::BadContentLength)?;
            if n > limit {
                return Err(HttpError::BodyTooLong { limit });
            }
            length = Some(n);
        }
    }
    let too_long = || HttpError::BodyTooLong { limit };
    let mut body = Vec::new();
    if chunked {
        loop {
            let size = read_line_bounded(&mut r)?;
            let size = size.split(';').next().unwrap_or_default().trim();
            let n = usize::from_str_radix(size, 16).map_err(|_| HttpError::BadChunkSize)?;
            if n == 0 {
                break;
            }
            if n > limit.saturating_sub(body.len()) {
                return Err(too_long());
            }
            let start = body.len();
            body.resize(start + n, 0);
            r.read_exact(&mut body[start..])
                .map_err(|source| HttpError::Io {
                    during: "a chunk",
                    source,
                })?;
            read_line_bounded(&mut r)?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body).map_err(|source| HttpError::Io {
            during: "the body",
            source,
        })?;
    } else {
        r.take(limit as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|source| HttpError::Io {
                during: "the body",
                source,
            })?;
        if body.len() > limit {
            return Err(too_long());
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod http_tests {
    use super::*;

    fn parse(raw: &[u8], limit: usize) -> Result<(u16, Vec<u8>), HttpError> {
        read_response(std::io::Cursor::new(raw.to_vec()), limit).map(|r| (r.status, r.body))
    }

    #[test]
    fn responses_parse_with_length_chunks_or_close() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 10).unwrap();
        assert_eq!(r, (200, b"hi".to_vec()));
        let r = parse(
            b"HTTP/1.1 403 No\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
            10,
        )
        .unwrap();
        assert_eq!(r, (403, b"abc".to_vec()));
        let r = parse(b"HTTP/1.0 200 OK\r\n\r\nxyz", 10).unwrap();
        assert_eq!(r.1, b"xyz");
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocating() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nabcdef\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n0123456789abc",
        ] {
            assert!(
                matches!(
                    parse(raw, 10),
                    Err(HttpError::BodyTooLong { limit: 10 } | HttpError::BadContentLength)
                ),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(10_000));
        assert!(matches!(
            parse(long.as_bytes(), 10),
            Err(HttpError::LineTooLong)
        ));
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "X: y\r\n".repeat(200));
        assert!(matches!(
            parse(many.as_bytes(), 10),
            Err(HttpError::TooManyHeaders)
        ));
        assert!(matches!(
            parse(b"SSH-2.0-x\r\n", 10),
            Err(HttpError::NotHttp)
        ));
        assert!(matches!(parse(b"", 10), Err(HttpError::Closed)));
    }
}
