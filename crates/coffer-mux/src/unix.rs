//! Unix sockets on either end of a stream: what lets unchanged socket clients and servers talk
//! across the channel.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{Mux, MuxError, Stream};

/// Copy both ways between `stream` and `unix` until both directions have ended. Each end of
/// one direction becomes a half close of the other side's writer; a broken channel closes both.
pub fn bridge(stream: Stream, unix: UnixStream) {
    let (Ok(mut unix_r), Ok(unix_w)) = (unix.try_clone(), unix.try_clone()) else {
        let _ = unix.shutdown(std::net::Shutdown::Both);
        return;
    };
    let up_stream = stream.clone();
    let up = std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match unix_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if (&up_stream).write_all(&buf[..n]).is_err() {
                        let _ = unix_r.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                }
            }
        }
        let _ = up_stream.shutdown_write();
    });
    let mut unix_w = unix_w;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match (&stream).read(&mut buf) {
            Ok(0) => {
                let _ = unix_w.shutdown(std::net::Shutdown::Write);
                break;
            }
            Err(_) => {
                let _ = unix_w.shutdown(std::net::Shutdown::Both);
                break;
            }
            Ok(n) => {
                if unix_w.write_all(&buf[..n]).is_err() {
                    let _ = unix_w.shutdown(std::net::Shutdown::Both);
                    break;
                }
            }
        }
    }
    let _ = up.join();
}

/// A Unix socket whose every connection becomes a new stream to `service` on the other side.
/// Stops accepting (and removes the socket file) when dropped.
pub struct Forward {
    stop: Arc<AtomicBool>,
    path: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forward {
    /// Listen on `path`.
    pub fn start(mux: Mux, path: &Path, service: &str) -> Result<Forward, MuxError> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        // Non-blocking accept, so that stopping never depends on a last connection.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let service = service.to_string();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) && mux.closed().is_none() {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if conn.set_nonblocking(false).is_err() {
                            continue;
                        }
                        match mux.open(&service) {
                            Ok(s) => {
                                std::thread::spawn(move || bridge(s, conn));
                            }
                            Err(_) => return,
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(Forward {
            stop,
            path: path.to_path_buf(),
            thread: Some(thread),
        })
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
