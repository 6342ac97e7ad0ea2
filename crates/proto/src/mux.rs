//! The guest channel of the `vm` backend: many byte streams multiplexed over
//! one link (a virtio-serial port), with per-stream credit flow control, so
//! that qrexec calls run over it exactly as over the `ns` backend's unix
//! sockets and one slow stream never stalls the others.
//!
//! A frame is a 12-byte header — kind, stream id, payload length, each a
//! little-endian `u32` — and the payload. Kinds:
//!
//! | kind | payload | meaning |
//! |---|---|---|
//! | `HELLO` | version (`u32`) | first frame each way; stream 0 |
//! | `OPEN` | port (`u32`) | the sender opens stream `id` to a service port of the peer |
//! | `DATA` | 1..=[`MAX_PAYLOAD`] bytes | stream bytes; at most the credit the peer granted |
//! | `CREDIT` | bytes (`u32`) | the receiver consumed that many bytes: the sender may send more |
//! | `EOF` | none | the sender will send no more bytes on the stream (half close) |
//! | `CLOSE` | none | the sender is done with the stream (both directions) |
//!
//! Every stream starts with [`WINDOW`] bytes of credit each way. The host
//! opens odd ids, the guest even ones (never 0). Parsing here is pure and
//! bounded; the engine that moves the bytes is `bulkhead-vmchan`.

use thiserror::Error;

/// Header bytes.
pub const HEADER_LEN: usize = 12;
/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Credit each stream starts with, each way: the most bytes a receiver
/// must buffer for one stream.
pub const WINDOW: u32 = 256 * 1024;
/// Protocol version sent in `HELLO`.
pub const VERSION: u32 = 1;
/// Most streams open at once, per side.
pub const MAX_STREAMS: usize = 1024;

/// Service ports a stream may be opened to.
pub mod port {
    /// The guest agent's qrexec socket (host → guest).
    pub const AGENT: u32 = 0;
    /// The qube's qrexec relay on the host (guest → host).
    pub const RELAY: u32 = 1;
    /// Power control of the guest (host → guest): `shutdown\n`.
    pub const CONTROL: u32 = 2;
}

const HELLO: u32 = 1;
const OPEN: u32 = 2;
const DATA: u32 = 3;
const CREDIT: u32 = 4;
const EOF: u32 = 5;
const CLOSE: u32 = 6;

/// A malformed frame: the link is broken and must be dropped.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MuxError {
    #[error("unknown frame kind {0}")]
    Kind(u32),
    #[error("frame kind {kind} with a {len}-byte payload")]
    Length { kind: u32, len: u32 },
    #[error("frame kind {kind} on stream {stream}, which it may not use")]
    Stream { kind: u32, stream: u32 },
}

/// A parsed header: what the payload that follows must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u32,
    pub stream: u32,
    pub len: u32,
}

/// A whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello { version: u32 },
    Open { stream: u32, port: u32 },
    Data { stream: u32, data: &'a [u8] },
    Credit { stream: u32, bytes: u32 },
    Eof { stream: u32 },
    Close { stream: u32 },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Checks a header: known kind, a payload length that kind allows, stream 0
/// only for `HELLO`.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<Header, MuxError> {
    let (kind, stream, len) = (u32_at(h, 0), u32_at(h, 4), u32_at(h, 8));
    let len_ok = match kind {
        HELLO | OPEN | CREDIT => len == 4,
        DATA => len >= 1 && len as usize <= MAX_PAYLOAD,
        EOF | CLOSE => len == 0,
        other => return Err(MuxError::Kind(other)),
    };
    if !len_ok {
        return Err(MuxError::Length { kind, len });
    }
    if (kind == HELLO) != (stream == 0) {
        return Err(MuxError::Stream { kind, stream });
    }
    Ok(Header { kind, stream, len })
}

/// The frame of a checked header and its payload (`payload.len()` must be
/// `h.len`).
pub fn parse_frame(h: Header, payload: &[u8]) -> Result<Frame<'_>, MuxError> {
    if payload.len() != h.len as usize {
        return Err(MuxError::Length {
            kind: h.kind,
            len: payload.len() as u32,
        });
    }
    let word = || u32_at(payload, 0);
    Ok(match h.kind {
        HELLO => Frame::Hello { version: word() },
        OPEN => Frame::Open {
            stream: h.stream,
            port: word(),
        },
        DATA => Frame::Data {
            stream: h.stream,
            data: payload,
        },
        CREDIT => Frame::Credit {
            stream: h.stream,
            bytes: word(),
        },
        EOF => Frame::Eof { stream: h.stream },
        CLOSE => Frame::Close { stream: h.stream },
        other => return Err(MuxError::Kind(other)),
    })
}

/// The header of a `DATA` frame carrying `len` bytes (the caller writes the
/// bytes after it, so big payloads are not copied).
pub fn data_header(stream: u32, len: usize) -> [u8; HEADER_LEN] {
    header(DATA, stream, len as u32)
}

fn header(kind: u32, stream: u32, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[4..8].copy_from_slice(&stream.to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h
}

/// Encodes a frame. `DATA` payloads over [`MAX_PAYLOAD`] or empty are a
/// caller bug and yield `None`.
pub fn encode(f: &Frame<'_>) -> Option<Vec<u8>> {
    let with_word = |kind, stream, w: u32| {
        let mut v = header(kind, stream, 4).to_vec();
        v.extend_from_slice(&w.to_le_bytes());
        v
    };
    Some(match *f {
        Frame::Hello { version } => with_word(HELLO, 0, version),
        Frame::Open { stream, port } => with_word(OPEN, stream, port),
        Frame::Credit { stream, bytes } => with_word(CREDIT, stream, bytes),
        Frame::Data { stream, data } => {
            if data.is_empty() || data.len() > MAX_PAYLOAD {
                return None;
            }
            let mut v = data_header(stream, data.len()).to_vec();
            v.extend_from_slice(data);
            v
        }
        Frame::Eof { stream } => header(EOF, stream, 0).to_vec(),
        Frame::Close { stream } => header(CLOSE, stream, 0).to_vec(),
    })
}

/// Parses every whole frame at the start of `bytes` (for tests and the
/// fuzz target); stops at the first error or partial frame.
pub fn parse_all(mut bytes: &[u8]) -> Result<Vec<Frame<'_>>, MuxError> {
    let mut out = Vec::new();
    while bytes.len() >= HEADER_LEN {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&bytes[..HEADER_LEN]);
        let h = parse_header(&h)?;
        let end = HEADER_LEN + h.len as usize;
        if bytes.len() < end {
            break;
        }
        out.push(parse_frame(h, &bytes[HEADER_LEN..end])?);
        bytes = &bytes[end..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Hello { version: VERSION },
            Frame::Open {
                stream: 3,
                port: port::AGENT,
            },
            Frame::Data {
                stream: 3,
                data: b"hello",
            },
            Frame::Credit {
                stream: 3,
                bytes: 5,
            },
            Frame::Eof { stream: 3 },
            Frame::Close { stream: 3 },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(encode(f).unwrap());
        }
        assert_eq!(parse_all(&wire).unwrap(), frames);
    }

    #[test]
    fn bad_headers_are_refused() {
        let h = |k: u32, s: u32, l: u32| {
            let mut b = [0u8; HEADER_LEN];
            b[0..4].copy_from_slice(&k.to_le_bytes());
            b[4..8].copy_from_slice(&s.to_le_bytes());
            b[8..12].copy_from_slice(&l.to_le_bytes());
            parse_header(&b)
        };
        assert_eq!(h(99, 1, 0), Err(MuxError::Kind(99)));
        assert!(matches!(h(DATA, 1, 0), Err(MuxError::Length { .. })));
        assert!(matches!(
            h(DATA, 1, MAX_PAYLOAD as u32 + 1),
            Err(MuxError::Length { .. })
        ));
        assert!(matches!(h(OPEN, 1, 8), Err(MuxError::Length { .. })));
        assert!(matches!(h(EOF, 1, 1), Err(MuxError::Length { .. })));
        assert!(matches!(h(HELLO, 1, 4), Err(MuxError::Stream { .. })));
        assert!(matches!(h(DATA, 0, 4), Err(MuxError::Stream { .. })));
        assert!(h(DATA, 7, MAX_PAYLOAD as u32).is_ok());
        assert!(encode(&Frame::Data {
            stream: 1,
            data: &[]
        })
        .is_none());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_all(&bytes);
        }
    }
}
