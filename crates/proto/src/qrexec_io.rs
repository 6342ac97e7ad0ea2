//! Blocking framing helpers: qrexec messages over any `Read`/`Write` byte
//! stream (unix sockets on the host and in qubes). They only move bytes
//! through [`crate::qrexec`]'s checked encoder and decoder.

use std::io::{self, Read, Write};

use crate::qrexec::{self, encode, Decoder, Message};

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Writes one message.
pub fn send(w: &mut impl Write, m: &Message) -> io::Result<()> {
    let bytes = encode(m).map_err(|e| bad(e.to_string()))?;
    w.write_all(&bytes)
}

/// Reads the next message; `None` at a clean end of stream.
pub fn recv(r: &mut impl Read, dec: &mut Decoder) -> io::Result<Option<Message>> {
    // One whole v3 message per read where the peer wrote one.
    let mut buf = vec![0u8; qrexec::MAX_DATA_CHUNK_V3 + qrexec::HEADER_LEN];
    loop {
        if let Some(m) = dec.next_message().map_err(|e| bad(e.to_string()))? {
            return Ok(Some(m));
        }
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        dec.feed(&buf[..n]);
    }
}

/// HELLO both ways (ours first); returns a decoder set to the negotiated
/// version, and the version.
pub fn hello(s: &mut (impl Read + Write)) -> io::Result<(Decoder, u32)> {
    send(
        s,
        &Message::Hello {
            version: qrexec::PROTOCOL_VERSION,
        },
    )?;
    let mut dec = Decoder::new(qrexec::MIN_PROTOCOL_VERSION);
    let version = match recv(s, &mut dec)? {
        Some(Message::Hello { version }) => {
            qrexec::negotiate(qrexec::PROTOCOL_VERSION, version).map_err(|e| bad(e.to_string()))?
        }
        other => return Err(bad(format!("expected HELLO, got {other:?}"))),
    };
    dec.set_version(version);
    Ok((dec, version))
}

/// Reads one message header and its body into `body` (reused, no other
/// copy), checking the header against `version`'s limits first: the fast
/// path for data messages, whose bodies are opaque bytes. Returns the
/// message type, or `None` at a clean end of stream.
pub fn read_data(r: &mut impl Read, version: u32, body: &mut Vec<u8>) -> io::Result<Option<u32>> {
    let mut hb = [0u8; qrexec::HEADER_LEN];
    let mut got = 0;
    while got < hb.len() {
        let n = r.read(&mut hb[got..])?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream ended inside a header",
            ));
        }
        got += n;
    }
    let h = qrexec::parse_header(&hb, version).map_err(|e| bad(e.to_string()))?;
    body.resize(h.len as usize, 0);
    r.read_exact(body)?;
    Ok(Some(h.ty))
}

/// Writes one message of type `ty` with `body` (header then body, no
/// intermediate buffer). The caller keeps `body` within the version's limit.
pub fn write_data(w: &mut impl Write, ty: u32, body: &[u8]) -> io::Result<()> {
    let mut hb = [0u8; qrexec::HEADER_LEN];
    hb[..4].copy_from_slice(&ty.to_le_bytes());
    hb[4..].copy_from_slice(&(body.len() as u32).to_le_bytes());
    w.write_all(&hb)?;
    w.write_all(body)
}

/// Writes `data` as messages of type `ty` of at most `chunk` bytes each
/// (never an empty one: empty means end of stream).
pub fn write_chunked(w: &mut impl Write, ty: u32, data: &[u8], chunk: usize) -> io::Result<()> {
    for c in data.chunks(chunk.max(1)) {
        write_data(w, ty, c)?;
    }
    Ok(())
}
