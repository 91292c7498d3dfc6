//! The secure processor, seen from the agent: one trait, two implementations.
//!
//! * [`EmulatedClient`] asks the emulated secure processor, which runs outside the sandbox (in
//!   the launcher's `coffer-host`) with the launch data fixed when the group started. The agent
//!   can only supply REPORT_DATA, exactly as with real hardware, so it cannot forge HOST_DATA or
//!   MEASUREMENT.
//! * [`sev_guest::SevGuest`] is the Linux `/dev/sev-guest` SNP_GET_REPORT ioctl.
//!
//! This crate runs inside the TEE: it has the emulator's *client* only, never the emulator.

pub mod sev_guest;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{json, Value};

use coffer_proto::{read_frame, write_frame, ProtoError};

/// Errors of the secure processor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpError {
    /// Reaching the secure processor failed.
    #[error("secure processor: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The channel to the emulated secure processor broke.
    #[error("secure processor: {0}")]
    Channel(#[from] ProtoError),
    /// The secure processor refused or answered something unusable.
    #[error("secure processor: {0}")]
    Refused(String),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SpError {
    let what = what.into();
    move |source| SpError::Io { what, source }
}

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
    fn report(&self, report_data: &[u8; 64]) -> Result<Evidence, SpError>;
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
    fn report(&self, report_data: &[u8; 64]) -> Result<Evidence, SpError> {
        let mut s = UnixStream::connect(&self.socket)
            .map_err(io(format!("connecting to {}", self.socket.display())))?;
        write_frame(&mut s, &json!({"report_data": hex::encode(report_data)}))?;
        let v = read_frame(&mut s)?.ok_or_else(|| SpError::Refused("no answer".into()))?;
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            return Err(SpError::Refused(e.to_string()));
        }
        let report = v
            .get("report")
            .and_then(Value::as_str)
            .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
            .ok_or_else(|| SpError::Refused("answer has no report".into()))?;
        let cert_chain = v
            .get("cert_chain")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Evidence { report, cert_chain })
    }
}
