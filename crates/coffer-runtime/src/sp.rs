//! The secure processor, seen from the agent: one trait, two implementations.
//!
//! * [`EmulatedClient`] asks the emulated secure processor, which runs outside the sandbox (in
//!   the launcher, [`EmulatedService`]) with the launch data fixed when the group started. The agent
//!   can only supply REPORT_DATA, exactly as with real hardware, so it cannot forge HOST_DATA or
//!   MEASUREMENT.
//! * [`crate::sev_guest::SevGuest`] is the Linux `/dev/sev-guest` SNP_GET_REPORT ioctl.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::protocol::{read_frame, write_frame};
use crate::RuntimeError;

/// Evidence from the secure processor.
#[derive(Clone, Debug)]
pub struct Evidence {
    /// The 1184-byte ATTESTATION_REPORT.
    pub report: Vec<u8>,
    /// The certificate chain (VCEK, ASK, ARK PEM) when the platform hands it out.
    pub cert_chain: Option<String>,
}

/// Something that produces attestation reports for the code that calls it.
pub trait SecureProcessor: Send + Sync {
    /// A report whose REPORT_DATA is `report_data`.
    fn report(&self, report_data: &[u8; 64]) -> Result<Evidence, RuntimeError>;
}

/// The agent's side of the emulated secure processor.
pub struct EmulatedClient {
    socket: PathBuf,
}

impl EmulatedClient {
    /// Talk to the service at `socket`.
    pub fn new(socket: &Path) -> Self {
        EmulatedClient {
            socket: socket.to_path_buf(),
        }
    }
}

impl SecureProcessor for EmulatedClient {
    fn report(&self, report_data: &[u8; 64]) -> Result<Evidence, RuntimeError> {
        let mut s = UnixStream::connect(&self.socket).map_err(crate::io(format!(
            "connecting to {}",
            self.socket.display()
        )))?;
        write_frame(&mut s, &json!({"report_data": hex::encode(report_data)}))?;
        let v =
            read_frame(&mut s)?.ok_or_else(|| RuntimeError::SecureProcessor("no answer".into()))?;
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            return Err(RuntimeError::SecureProcessor(e.to_string()));
        }
        let report = v
            .get("report")
            .and_then(Value::as_str)
            .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
            .ok_or_else(|| RuntimeError::SecureProcessor("answer has no report".into()))?;
        let cert_chain = v
            .get("cert_chain")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Evidence { report, cert_chain })
    }
}

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
    ) -> Result<Self, RuntimeError> {
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
