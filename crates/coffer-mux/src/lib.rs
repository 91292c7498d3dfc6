//! Several independent byte streams over one `Read + Write` pipe: the single virtio-serial
//! channel between a group's launcher and the agent in its VM.
//!
//! Either side opens streams (the host even ids, the guest odd ones) naming a service; the other
//! side [`Mux::accept`]s them. Each stream has its own receive window ([`WINDOW`] bytes): a
//! sender writes only as much as the receiver has room for, and the receiver grants more as it
//! reads, so a stream nobody reads stalls only itself, and memory per stream is bounded. A
//! dropped pipe ends every stream with an error.

#![warn(missing_docs)]

mod frame;
pub mod unix;

pub use frame::{read_frame, write_frame, Frame, Kind, MAX_PAYLOAD, MAX_SERVICE};

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Bytes a receiver buffers per stream (and grants its peer at the start).
pub const WINDOW: u32 = 256 * 1024;
/// Most streams open at once; an `Open` beyond it is answered with `Close`.
pub const MAX_STREAMS: usize = 1024;
/// Most opened streams waiting for [`Mux::accept`].
const MAX_PENDING: usize = 256;

/// Errors of the multiplexer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MuxError {
    /// I/O failure on the pipe.
    #[error("channel: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not a valid frame or breaks the protocol.
    #[error("channel protocol: {0}")]
    Malformed(String),
    /// The pipe is gone.
    #[error("channel closed: {0}")]
    Closed(String),
}

/// Which end of the pipe: decides the parity of the stream ids this side opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The launcher (even ids).
    Host,
    /// The agent (odd ids).
    Guest,
}

#[derive(Default)]
struct StreamInner {
    /// Received, not yet read (at most [`WINDOW`]).
    buf: VecDeque<u8>,
    /// The peer writes no more.
    remote_closed: bool,
    /// We sent `Close`.
    local_closed: bool,
    /// No local handle is left: received data is discarded (and credited back).
    dropped: bool,
    /// Bytes we may still send.
    credit: u64,
    /// Bytes read but not yet credited back.
    unacked: u32,
    /// The pipe is gone.
    broken: Option<String>,
}

struct StreamState {
    inner: Mutex<StreamInner>,
    cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The protected state stays consistent across a panic elsewhere: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Accepting {
    queue: VecDeque<Stream>,
    dead: Option<String>,
}

struct Shared {
    out: Mutex<Option<mpsc::Sender<Frame>>>,
    /// Frames handed to the writer thread, and frames it wrote (for [`Mux::flush`]).
    queued: AtomicU64,
    written: AtomicU64,
    streams: Mutex<HashMap<u32, Arc<StreamState>>>,
    accepting: Mutex<Accepting>,
    accept_cv: Condvar,
    next_id: AtomicU32,
    side: Side,
}

impl Shared {
    fn send(&self, f: Frame) -> Result<(), MuxError> {
        let out = lock(&self.out);
        let tx = out
            .as_ref()
            .ok_or_else(|| MuxError::Closed("the channel is down".into()))?;
        self.queued.fetch_add(1, Ordering::SeqCst);
        tx.send(f)
            .map_err(|_| MuxError::Closed("the channel writer stopped".into()))
    }

    /// The pipe is gone: fail every stream and every accept.
    fn kill(&self, why: &str) {
        lock(&self.out).take();
        let streams: Vec<Arc<StreamState>> = lock(&self.streams).drain().map(|(_, s)| s).collect();
        for s in streams {
            lock(&s.inner).broken.get_or_insert_with(|| why.to_string());
            s.cv.notify_all();
        }
        let mut a = lock(&self.accepting);
        a.dead.get_or_insert_with(|| why.to_string());
        a.queue.clear();
        drop(a);
        self.accept_cv.notify_all();
    }

    /// Forget a stream once both directions are closed and no handle is left.
    fn maybe_forget(&self, id: u32, inner: &StreamInner) {
        if inner.local_closed && inner.remote_closed && inner.dropped {
            lock(&self.streams).remove(&id);
        }
    }
}

/// One end of a multiplexed pipe. Cheap to clone.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

impl Mux {
    /// Run the multiplexer over `reader`/`writer` (the two halves of one pipe). Threads read and
    /// write the pipe until it ends.
    pub fn new<R, W>(reader: R, writer: W, side: Side) -> Mux
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Frame>();
        let shared = Arc::new(Shared {
            out: Mutex::new(Some(tx)),
            queued: AtomicU64::new(0),
            written: AtomicU64::new(0),
            streams: Mutex::new(HashMap::new()),
            accepting: Mutex::new(Accepting {
                queue: VecDeque::new(),
                dead: None,
            }),
            accept_cv: Condvar::new(),
            next_id: AtomicU32::new(match side {
                Side::Host => 2,
                Side::Guest => 1,
            }),
            side,
        });
        // One writer thread: the reader thread never blocks on the pipe's other direction, so
        // two peers each waiting to write cannot deadlock.
        let w_shared = Arc::downgrade(&shared);
        std::thread::spawn(move || {
            let mut writer = writer;
            for f in rx {
                let result = write_frame(&mut writer, &f);
                let Some(s) = w_shared.upgrade() else { return };
                if let Err(e) = result {
                    s.kill(&format!("writing: {e}"));
                    return;
                }
                s.written.fetch_add(1, Ordering::SeqCst);
            }
        });
        let r_shared = shared.clone();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::with_capacity(MAX_PAYLOAD + 16, reader);
            let why = loop {
                match read_frame(&mut reader) {
                    Ok(Some(f)) => {
                        if let Err(e) = Self::dispatch(&r_shared, f) {
                            break e.to_string();
                        }
                    }
                    Ok(None) => break "the peer closed the channel".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            r_shared.kill(&why);
        });
        Mux { shared }
    }

    fn dispatch(shared: &Arc<Shared>, f: Frame) -> Result<(), MuxError> {
        let peer_parity = match shared.side {
            Side::Host => 1,
            Side::Guest => 0,
        };
        match f.kind {
            Kind::Open => {
                if f.stream % 2 != peer_parity {
                    return Err(MuxError::Malformed(format!(
                        "the peer opened stream {} of our parity",
                        f.stream
                    )));
                }
                let service = String::from_utf8(f.payload)
                    .map_err(|_| MuxError::Malformed("service name is not UTF-8".into()))?;
                let state = Arc::new(StreamState {
                    inner: Mutex::new(StreamInner {
                        credit: u64::from(WINDOW),
                        ..Default::default()
                    }),
                    cv: Condvar::new(),
                });
                {
                    let mut streams = lock(&shared.streams);
                    if streams.contains_key(&f.stream) {
                        return Err(MuxError::Malformed(format!(
                            "stream {} opened twice",
                            f.stream
                        )));
                    }
                    let pending = lock(&shared.accepting).queue.len();
                    if streams.len() >= MAX_STREAMS || pending >= MAX_PENDING {
                        drop(streams);
                        // Refused: it ends at once on the opener's side.
                        return shared.send(Frame {
                            stream: f.stream,
                            kind: Kind::Close,
                            payload: vec![],
                        });
                    }
                    streams.insert(f.stream, state.clone());
                }
                let stream = Stream::new(f.stream, service, shared.clone(), state);
                lock(&shared.accepting).queue.push_back(stream);
                shared.accept_cv.notify_one();
                Ok(())
            }
            Kind::Data => {
                let state = lock(&shared.streams).get(&f.stream).cloned();
                let len = f.payload.len() as u32;
                let Some(state) = state else {
                    // A stream already forgotten here: give the credit back, drop the bytes.
                    return shared.send(credit_frame(f.stream, len));
                };
                let mut g = lock(&state.inner);
                if g.remote_closed {
                    return Err(MuxError::Malformed(format!(
                        "data on stream {} after its close",
                        f.stream
                    )));
                }
                if g.dropped {
                    drop(g);
                    return shared.send(credit_frame(f.stream, len));
                }
                if g.buf.len() + f.payload.len() > WINDOW as usize {
                    return Err(MuxError::Malformed(format!(
                        "stream {} sent beyond its window",
                        f.stream
                    )));
                }
                g.buf.extend(f.payload);
                drop(g);
                state.cv.notify_all();
                Ok(())
            }
            Kind::Close => {
                let state = lock(&shared.streams).get(&f.stream).cloned();
                if let Some(state) = state {
                    let mut g = lock(&state.inner);
                    g.remote_closed = true;
                    shared.maybe_forget(f.stream, &g);
                    drop(g);
                    state.cv.notify_all();
                }
                Ok(())
            }
            Kind::Credit => {
                let n = u32::from_be_bytes(
                    f.payload
                        .as_slice()
                        .try_into()
                        .map_err(|_| MuxError::Malformed("credit is not 4 bytes".into()))?,
                );
                let state = lock(&shared.streams).get(&f.stream).cloned();
                if let Some(state) = state {
                    let mut g = lock(&state.inner);
                    g.credit = g.credit.saturating_add(u64::from(n));
                    if g.credit > 4 * u64::from(WINDOW) {
                        return Err(MuxError::Malformed(format!(
                            "stream {} was granted more than its window",
                            f.stream
                        )));
                    }
                    drop(g);
                    state.cv.notify_all();
                }
                Ok(())
            }
        }
    }

    /// Open a stream to `service` on the other side.
    pub fn open(&self, service: &str) -> Result<Stream, MuxError> {
        if service.len() > MAX_SERVICE {
            return Err(MuxError::Malformed("service name too long".into()));
        }
        let id = self.shared.next_id.fetch_add(2, Ordering::Relaxed);
        let state = Arc::new(StreamState {
            inner: Mutex::new(StreamInner {
                credit: u64::from(WINDOW),
                ..Default::default()
            }),
            cv: Condvar::new(),
        });
        lock(&self.shared.streams).insert(id, state.clone());
        let stream = Stream::new(id, service.to_string(), self.shared.clone(), state);
        self.shared.send(Frame {
            stream: id,
            kind: Kind::Open,
            payload: service.as_bytes().to_vec(),
        })?;
        Ok(stream)
    }

    /// The next stream the peer opened; an error once the pipe is gone.
    pub fn accept(&self) -> Result<Stream, MuxError> {
        let mut a = lock(&self.shared.accepting);
        loop {
            if let Some(s) = a.queue.pop_front() {
                return Ok(s);
            }
            if let Some(why) = &a.dead {
                return Err(MuxError::Closed(why.clone()));
            }
            a = self
                .shared
                .accept_cv
                .wait(a)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Stop using the pipe: every stream and accept fails from now on.
    pub fn close(&self) {
        self.shared.kill("closed by this side");
    }

    /// Wait until every frame sent so far is on the pipe (before a VM powers off), at most
    /// `timeout`; false if it was not.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let target = self.shared.queued.load(Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        while self.shared.written.load(Ordering::SeqCst) < target {
            if std::time::Instant::now() > deadline || self.closed().is_some() {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        true
    }

    /// Why the pipe is gone, if it is.
    pub fn closed(&self) -> Option<String> {
        lock(&self.shared.accepting).dead.clone()
    }
}

fn credit_frame(stream: u32, n: u32) -> Frame {
    Frame {
        stream,
        kind: Kind::Credit,
        payload: n.to_be_bytes().to_vec(),
    }
}

struct Core {
    id: u32,
    service: String,
    shared: Arc<Shared>,
    state: Arc<StreamState>,
}

impl Drop for Core {
    fn drop(&mut self) {
        let mut g = lock(&self.state.inner);
        g.dropped = true;
        let unread = g.buf.len() as u32 + g.unacked;
        g.buf.clear();
        g.unacked = 0;
        let send_close = !g.local_closed;
        g.local_closed = true;
        self.shared.maybe_forget(self.id, &g);
        drop(g);
        // What was never read is credited back, so the peer's writer never waits on us again.
        if unread > 0 {
            let _ = self.shared.send(credit_frame(self.id, unread));
        }
        if send_close {
            let _ = self.shared.send(Frame {
                stream: self.id,
                kind: Kind::Close,
                payload: vec![],
            });
        }
    }
}

/// One stream: `Read` until the peer closes (then `Ok(0)`), `Write` within the peer's window.
/// Clones share the stream; it closes when the last one is dropped.
#[derive(Clone)]
pub struct Stream {
    core: Arc<Core>,
}

impl Stream {
    fn new(id: u32, service: String, shared: Arc<Shared>, state: Arc<StreamState>) -> Self {
        Stream {
            core: Arc::new(Core {
                id,
                service,
                shared,
                state,
            }),
        }
    }

    /// The service it was opened for.
    pub fn service(&self) -> &str {
        &self.core.service
    }

    /// Its id on the pipe.
    pub fn id(&self) -> u32 {
        self.core.id
    }

    /// Write no more (the peer reads the end of the stream); reading goes on.
    pub fn shutdown_write(&self) -> std::io::Result<()> {
        let mut g = lock(&self.core.state.inner);
        if g.local_closed {
            return Ok(());
        }
        g.local_closed = true;
        drop(g);
        self.core
            .shared
            .send(Frame {
                stream: self.core.id,
                kind: Kind::Close,
                payload: vec![],
            })
            .map_err(io_err)
    }
}

fn io_err(e: MuxError) -> std::io::Error {
    match e {
        MuxError::Io(e) => e,
        other => std::io::Error::new(std::io::ErrorKind::BrokenPipe, other.to_string()),
    }
}

impl Read for Stream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        (&*self).read(out)
    }
}

impl Read for &Stream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let core = &self.core;
        let mut g = lock(&core.state.inner);
        while g.buf.is_empty() && !g.remote_closed && g.broken.is_none() {
            g = core.state.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if g.buf.is_empty() {
            if let Some(why) = &g.broken {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    why.clone(),
                ));
            }
            return Ok(0);
        }
        let n = out.len().min(g.buf.len());
        for (o, b) in out.iter_mut().zip(g.buf.drain(..n)) {
            *o = b;
        }
        g.unacked += n as u32;
        // Grant in batches: one credit frame per half window read, not per read call.
        let grant = if g.unacked >= WINDOW / 4 && !g.remote_closed {
            std::mem::take(&mut g.unacked)
        } else {
            0
        };
        drop(g);
        if grant > 0 {
            let _ = core.shared.send(credit_frame(core.id, grant));
        }
        Ok(n)
    }
}

impl Write for Stream {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        (&*self).write(data)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Write for &Stream {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let core = &self.core;
        let mut g = lock(&core.state.inner);
        loop {
            if let Some(why) = &g.broken {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    why.clone(),
                ));
            }
            if g.local_closed {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "stream closed for writing",
                ));
            }
            if g.credit > 0 {
                break;
            }
            g = core.state.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        let n = data
            .len()
            .min(MAX_PAYLOAD)
            .min(usize::try_from(g.credit).unwrap_or(MAX_PAYLOAD));
        g.credit -= n as u64;
        drop(g);
        core.shared
            .send(Frame {
                stream: core.id,
                kind: Kind::Data,
                payload: data[..n].to_vec(),
            })
            .map_err(io_err)?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
