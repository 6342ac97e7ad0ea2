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
