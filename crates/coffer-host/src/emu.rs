//! The emulated secure processor's service for one group (development only): the launcher
//! serves it to the agent with the launch data fixed when the group started; the agent supplies
//! only REPORT_DATA, as with real hardware (`coffer_sp::EmulatedClient` is the other end).

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use coffer_proto::{read_frame, write_frame};
use serde_json::{json, Value};

use crate::HostError;

/// The emulated secure processor serving one group, launch data fixed at start.
pub struct EmulatedService {
    stop: Arc<AtomicBool>,
    socket: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmulatedService {
    /// Serve on `socket`: every report carries these HOST_DATA and MEASUREMENT.
    pub fn start(
        socket: &Path,
        sp: coffer_snp_emu::EmulatedSp,
        host_data: [u8; 32],
        measurement: [u8; 48],
    ) -> Result<Self, HostError> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .map_err(crate::io(format!("binding {}", socket.display())))?;
        // Non-blocking accept so that stopping never depends on the socket file still existing.
        listener
            .set_nonblocking(true)
            .map_err(crate::io("configuring the secure processor socket"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let mut conn = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                        continue;
                    }
                    Err(_) => continue,
                };
                if conn.set_nonblocking(false).is_err() {
                    continue;
                }
                let answer = match read_frame(&mut conn) {
                    Ok(Some(req)) => Self::answer(&sp, &req, host_data, measurement),
                    _ => continue,
                };
                let _ = write_frame(&mut conn, &answer);
            }
        });
        Ok(EmulatedService {
            stop,
            socket: socket.to_path_buf(),
            thread: Some(thread),
        })
    }

    fn answer(
        sp: &coffer_snp_emu::EmulatedSp,
        req: &Value,
        host_data: [u8; 32],
        measurement: [u8; 48],
    ) -> Value {
        let mut report_data = [0u8; 64];
        let ok = req
            .get("report_data")
            .and_then(Value::as_str)
            .and_then(|h| hex::decode_to_slice(h, &mut report_data).ok())
            .is_some();
        if !ok {
            return json!({"error": "report_data must be 64 bytes of hex"});
        }
        let request = coffer_snp_emu::ReportRequest {
            report_data,
            host_data,
            measurement,
            ..Default::default()
        };
        match sp.report(&request) {
            Ok(r) => json!({
                "report": base64::engine::general_purpose::STANDARD.encode(r.report.bytes()),
                "cert_chain": r.chain_pem,
            }),
            Err(e) => json!({"error": e.to_string()}),
        }
    }
}

impl Drop for EmulatedService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
