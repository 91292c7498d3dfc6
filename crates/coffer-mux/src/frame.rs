//! Frames: stream id (u32 BE), kind (u8), payload length (u32 BE, at most [`MAX_PAYLOAD`]),
//! payload.

use std::io::{Read, Write};

use crate::MuxError;

/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Largest service name in an `Open` frame.
pub const MAX_SERVICE: usize = 255;
const HEADER: usize = 9;

/// What a frame does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A new stream; the payload names the service (UTF-8).
    Open = 0,
    /// Bytes of a stream.
    Data = 1,
    /// The sender writes no more on this stream (half close).
    Close = 2,
    /// The sender consumed this many more bytes (u32 BE): the peer may send them.
    Credit = 3,
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Stream id.
    pub stream: u32,
    /// Kind.
    pub kind: Kind,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Write one frame (header and payload in one buffer: one write on the channel).
pub fn write_frame<W: Write + ?Sized>(w: &mut W, f: &Frame) -> Result<(), MuxError> {
    if f.payload.len() > MAX_PAYLOAD {
        return Err(MuxError::Malformed(format!(
            "payload of {} bytes exceeds {MAX_PAYLOAD}",
            f.payload.len()
        )));
    }
    let mut buf = Vec::with_capacity(HEADER + f.payload.len());
    buf.extend_from_slice(&f.stream.to_be_bytes());
    buf.push(f.kind as u8);
    buf.extend_from_slice(&(f.payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&f.payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Read one frame; `None` at a clean end of the channel (between frames). The length is checked
/// before anything is allocated.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Option<Frame>, MuxError> {
    let mut h = [0u8; HEADER];
    // A clean end only before the first header byte.
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(MuxError::Malformed("channel ended inside a header".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let stream = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let kind = match h[4] {
        0 => Kind::Open,
        1 => Kind::Data,
        2 => Kind::Close,
        3 => Kind::Credit,
        k => return Err(MuxError::Malformed(format!("unknown frame kind {k}"))),
    };
    let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
    let max = match kind {
        Kind::Open => MAX_SERVICE,
        Kind::Data => MAX_PAYLOAD,
        Kind::Close => 0,
        Kind::Credit => 4,
    };
    if len > max || (kind == Kind::Credit && len != 4) {
        return Err(MuxError::Malformed(format!(
            "{kind:?} frame with a payload of {len} bytes"
        )));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            MuxError::Malformed("channel ended inside a frame".into())
        } else {
            e.into()
        }
    })?;
    Ok(Some(Frame {
        stream,
        kind,
        payload,
    }))
}
