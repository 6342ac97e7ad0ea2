//! The qrexec message set (Qubes' inter-qube RPC), pure encode/decode.
//!
//! Every message is an 8-byte header `{u32 type, u32 len}` (little-endian, as
//! on every Qubes platform) and `len` bytes of body. Bodies are checked
//! against per-type sizes and the negotiated protocol version's data chunk
//! limit before anything is allocated, so a hostile peer cannot make the
//! reader buffer more than [`MAX_BODY`] bytes. See
//! `shared/reference/qubes-compat.md` §5.1.

use thiserror::Error;

/// Newest protocol version we speak (Qubes R4.3).
pub const PROTOCOL_VERSION: u32 = 4;
/// Oldest protocol version we accept (Qubes R3.0–4.0).
pub const MIN_PROTOCOL_VERSION: u32 = 2;
/// Data chunk limit for protocol version 2.
pub const MAX_DATA_CHUNK_V2: usize = 4096;
/// Data chunk limit for protocol versions 3 and 4.
pub const MAX_DATA_CHUNK_V3: usize = 65536;
/// Longest `service+arg` name.
pub const MAX_SERVICE_NAME_LEN: usize = 65000;
/// Longest command line in `MSG_EXEC_CMDLINE`.
pub const MAX_QREXEC_CMD_LEN: usize = 65535;
/// Header size.
pub const HEADER_LEN: usize = 8;
/// No body is ever larger than this, whatever the type.
pub const MAX_BODY: usize = MAX_DATA_CHUNK_V3 + 8 + 128;

/// Exit code: service does not exist.
pub const EXIT_NO_SERVICE: i32 = 127;
/// Exit code: request refused by policy.
pub const EXIT_REFUSED: i32 = 126;
/// Exit code: qrexec itself failed.
pub const EXIT_QREXEC_FAILED: i32 = 125;

/// Message type codes.
pub mod msg {
    pub const DATA_STDIN: u32 = 0x190;
    pub const DATA_STDOUT: u32 = 0x191;
    pub const DATA_STDERR: u32 = 0x192;
    pub const DATA_EXIT_CODE: u32 = 0x193;
    pub const EXEC_CMDLINE: u32 = 0x200;
    pub const JUST_EXEC: u32 = 0x201;
    pub const SERVICE_CONNECT: u32 = 0x202;
    pub const SERVICE_REFUSED: u32 = 0x203;
    pub const TRIGGER_SERVICE: u32 = 0x210;
    pub const CONNECTION_TERMINATED: u32 = 0x211;
    pub const TRIGGER_SERVICE3: u32 = 0x212;
    pub const TRIGGER_SERVICE4: u32 = 0x213;
    pub const HELLO: u32 = 0x300;
}

/// Size of the fixed `ident` field.
pub const IDENT_LEN: usize = 32;
/// Size of a domain name field in TRIGGER_SERVICE3/4.
pub const DOMAIN_LEN: usize = 64;

/// One decoded qrexec message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello {
        version: u32,
    },
    /// Run a command; `cmdline` excludes the terminating NUL.
    ExecCmdline {
        connect_domain: u32,
        connect_port: u32,
        cmdline: Vec<u8>,
    },
    JustExec {
        connect_domain: u32,
        connect_port: u32,
        cmdline: Vec<u8>,
    },
    ServiceConnect {
        domain: u32,
        port: u32,
        ident: String,
    },
    ServiceRefused {
        ident: String,
    },
    /// Protocol v2 trigger (fixed-size fields).
    TriggerService {
        service_name: String,
        target_domain: String,
        ident: String,
    },
    ConnectionTerminated {
        domain: u32,
        port: u32,
    },
    TriggerService3 {
        target_domain: String,
        ident: String,
        service_name: String,
    },
    TriggerService4 {
        source_domain: String,
        target_domain: String,
        ident: String,
        service_name: String,
    },
    DataStdin(Vec<u8>),
    DataStdout(Vec<u8>),
    DataStderr(Vec<u8>),
    ExitCode(u32),
}

/// Why bytes from a peer were refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QrexecError {
    #[error("unknown message type 0x{0:x}")]
    UnknownType(u32),
    #[error("message type 0x{ty:x} has a {len}-byte body; {why}")]
    BadLength {
        ty: u32,
        len: usize,
        why: &'static str,
    },
    #[error("{field} is not NUL-terminated")]
    NotTerminated { field: &'static str },
    #[error("{field} contains bytes other than printable ASCII")]
    NotPrintable { field: &'static str },
    #[error("peer speaks qrexec protocol {0}, we need at least {MIN_PROTOCOL_VERSION}")]
    VersionTooOld(u32),
}

/// The version both sides use: the lower of the two, refused below v2.
pub fn negotiate(ours: u32, theirs: u32) -> Result<u32, QrexecError> {
    let v = ours.min(theirs);
    if v < MIN_PROTOCOL_VERSION {
        return Err(QrexecError::VersionTooOld(v));
    }
    Ok(v)
}

/// Data chunk limit for a version.
pub fn max_chunk(version: u32) -> usize {
    if version >= 3 {
        MAX_DATA_CHUNK_V3
    } else {
        MAX_DATA_CHUNK_V2
    }
}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ty: u32,
    pub len: u32,
}

/// Reads a header and checks the body length it announces for `version`,
/// before the body is read.
pub fn parse_header(bytes: &[u8; HEADER_LEN], version: u32) -> Result<Header, QrexecError> {
    let ty = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let n = len as usize;
    let bad = |why| Err(QrexecError::BadLength { ty, len: n, why });
    match ty {
        msg::DATA_STDIN | msg::DATA_STDOUT | msg::DATA_STDERR if n > max_chunk(version) => {
            return bad("more than the data chunk limit");
        }
        msg::DATA_STDIN | msg::DATA_STDOUT | msg::DATA_STDERR => {}
        msg::DATA_EXIT_CODE | msg::HELLO if n != 4 => return bad("expected 4"),
        msg::DATA_EXIT_CODE | msg::HELLO => {}
        msg::EXEC_CMDLINE | msg::JUST_EXEC if !(9..=8 + MAX_QREXEC_CMD_LEN).contains(&n) => {
            return bad("command line empty or too long");
        }
        msg::EXEC_CMDLINE | msg::JUST_EXEC => {}
        msg::SERVICE_CONNECT if n != 8 + IDENT_LEN => return bad("expected 40"),
        msg::SERVICE_REFUSED if n != IDENT_LEN => return bad("expected 32"),
        msg::TRIGGER_SERVICE if n != 64 + 32 + IDENT_LEN => return bad("expected 128"),
        msg::CONNECTION_TERMINATED if n != 8 => return bad("expected 8"),
        msg::TRIGGER_SERVICE3
            if !(DOMAIN_LEN + IDENT_LEN + 2
                ..=DOMAIN_LEN + IDENT_LEN + MAX_SERVICE_NAME_LEN + 1)
                .contains(&n) =>
        {
            return bad("service name empty or too long");
        }
        msg::TRIGGER_SERVICE4
            if !(2 * DOMAIN_LEN + IDENT_LEN + 2
                ..=2 * DOMAIN_LEN + IDENT_LEN + MAX_SERVICE_NAME_LEN + 1)
                .contains(&n) =>
        {
            return bad("service name empty or too long");
        }
        msg::SERVICE_CONNECT
        | msg::SERVICE_REFUSED
        | msg::TRIGGER_SERVICE
        | msg::CONNECTION_TERMINATED
        | msg::TRIGGER_SERVICE3
        | msg::TRIGGER_SERVICE4 => {}
        other => return Err(QrexecError::UnknownType(other)),
    }
    debug_assert!(n <= MAX_BODY);
    Ok(Header { ty, len })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A fixed-size, NUL-padded text field: text up to the first NUL, which must exist.
fn fixed_str(b: &[u8], field: &'static str) -> Result<String, QrexecError> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or(QrexecError::NotTerminated { field })?;
    printable(&b[..end], field)
}

/// A trailing NUL-terminated text field occupying the rest of the body.
fn tail_str(b: &[u8], field: &'static str) -> Result<String, QrexecError> {
    match b.split_last() {
        Some((0, text)) if !text.contains(&0) => printable(text, field),
        _ => Err(QrexecError::NotTerminated { field }),
    }
}

fn printable(b: &[u8], field: &'static str) -> Result<String, QrexecError> {
    if !b.iter().all(|c| (0x20..0x7f).contains(c)) {
        return Err(QrexecError::NotPrintable { field });
    }
    // Printable ASCII is valid UTF-8.
    Ok(String::from_utf8_lossy(b).into_owned())
}

/// Decodes a body whose header already passed [`parse_header`].
pub fn parse_body(h: Header, body: &[u8]) -> Result<Message, QrexecError> {
    if body.len() != h.len as usize {
        return Err(QrexecError::BadLength {
            ty: h.ty,
            len: body.len(),
            why: "body shorter than its header says",
        });
    }
    Ok(match h.ty {
        msg::DATA_STDIN => Message::DataStdin(body.to_vec()),
        msg::DATA_STDOUT => Message::DataStdout(body.to_vec()),
        msg::DATA_STDERR => Message::DataStderr(body.to_vec()),
        msg::DATA_EXIT_CODE => Message::ExitCode(u32_at(body, 0)),
        msg::HELLO => Message::Hello {
            version: u32_at(body, 0),
        },
        msg::EXEC_CMDLINE | msg::JUST_EXEC => {
            let (connect_domain, connect_port) = (u32_at(body, 0), u32_at(body, 4));
            let cmd = &body[8..];
            match cmd.split_last() {
                Some((0, c)) if !c.contains(&0) => {}
                _ => return Err(QrexecError::NotTerminated { field: "cmdline" }),
            }
            let cmdline = cmd[..cmd.len() - 1].to_vec();
            if h.ty == msg::EXEC_CMDLINE {
                Message::ExecCmdline {
                    connect_domain,
                    connect_port,
                    cmdline,
                }
            } else {
                Message::JustExec {
                    connect_domain,
                    connect_port,
                    cmdline,
                }
            }
        }
        msg::SERVICE_CONNECT => Message::ServiceConnect {
            domain: u32_at(body, 0),
            port: u32_at(body, 4),
            ident: fixed_str(&body[8..], "ident")?,
        },
        msg::SERVICE_REFUSED => Message::ServiceRefused {
            ident: fixed_str(body, "ident")?,
        },
        msg::TRIGGER_SERVICE => Message::TriggerService {
            service_name: fixed_str(&body[..64], "service_name")?,
            target_domain: fixed_str(&body[64..96], "target_domain")?,
            ident: fixed_str(&body[96..], "ident")?,
        },
        msg::CONNECTION_TERMINATED => Message::ConnectionTerminated {
            domain: u32_at(body, 0),
            port: u32_at(body, 4),
        },
        msg::TRIGGER_SERVICE3 => Message::TriggerService3 {
            target_domain: fixed_str(&body[..DOMAIN_LEN], "target_domain")?,
            ident: fixed_str(&body[DOMAIN_LEN..DOMAIN_LEN + IDENT_LEN], "ident")?,
            service_name: tail_str(&body[DOMAIN_LEN + IDENT_LEN..], "service_name")?,
        },
        msg::TRIGGER_SERVICE4 => Message::TriggerService4 {
            source_domain: fixed_str(&body[..DOMAIN_LEN], "source_domain")?,
            target_domain: fixed_str(&body[DOMAIN_LEN..2 * DOMAIN_LEN], "target_domain")?,
            ident: fixed_str(&body[2 * DOMAIN_LEN..2 * DOMAIN_LEN + IDENT_LEN], "ident")?,
            service_name: tail_str(&body[2 * DOMAIN_LEN + IDENT_LEN..], "service_name")?,
        },
        other => return Err(QrexecError::UnknownType(other)),
    })
}

/// Why a message could not be encoded (a field does not fit its slot).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field} does not fit: {len} bytes, at most {max} (without NUL)")]
pub struct TooLong {
    pub field: &'static str,
    pub len: usize,
    pub max: usize,
}

fn put_fixed(out: &mut Vec<u8>, s: &str, size: usize, field: &'static str) -> Result<(), TooLong> {
    if s.len() >= size || s.as_bytes().contains(&0) {
        return Err(TooLong {
            field,
            len: s.len(),
            max: size - 1,
        });
    }
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + size - s.len(), 0);
    Ok(())
}

fn put_tail(out: &mut Vec<u8>, s: &[u8], max: usize, field: &'static str) -> Result<(), TooLong> {
    if s.len() > max || s.contains(&0) {
        return Err(TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    out.extend_from_slice(s);
    out.push(0);
    Ok(())
}

/// Encodes a message with its header.
pub fn encode(m: &Message) -> Result<Vec<u8>, TooLong> {
    let mut body = Vec::new();
    let ty = match m {
        Message::Hello { version } => {
            body.extend_from_slice(&version.to_le_bytes());
            msg::HELLO
        }
        Message::ExecCmdline {
            connect_domain,
            connect_port,
            cmdline,
        }
        | Message::JustExec {
            connect_domain,
            connect_port,
            cmdline,
        } => {
            body.extend_from_slice(&connect_domain.to_le_bytes());
            body.extend_from_slice(&connect_port.to_le_bytes());
            put_tail(&mut body, cmdline, MAX_QREXEC_CMD_LEN - 1, "cmdline")?;
            if matches!(m, Message::ExecCmdline { .. }) {
                msg::EXEC_CMDLINE
            } else {
                msg::JUST_EXEC
            }
        }
        Message::ServiceConnect {
            domain,
            port,
            ident,
        } => {
            body.extend_from_slice(&domain.to_le_bytes());
            body.extend_from_slice(&port.to_le_bytes());
            put_fixed(&mut body, ident, IDENT_LEN, "ident")?;
            msg::SERVICE_CONNECT
        }
        Message::ServiceRefused { ident } => {
            put_fixed(&mut body, ident, IDENT_LEN, "ident")?;
            msg::SERVICE_REFUSED
        }
        Message::TriggerService {
            service_name,
            target_domain,
            ident,
        } => {
            put_fixed(&mut body, service_name, 64, "service_name")?;
            put_fixed(&mut body, target_domain, 32, "target_domain")?;
            put_fixed(&mut body, ident, IDENT_LEN, "ident")?;
            msg::TRIGGER_SERVICE
        }
        Message::ConnectionTerminated { domain, port } => {
            body.extend_from_slice(&domain.to_le_bytes());
            body.extend_from_slice(&port.to_le_bytes());
            msg::CONNECTION_TERMINATED
        }
        Message::TriggerService3 {
            target_domain,
            ident,
            service_name,
        } => {
            put_fixed(&mut body, target_domain, DOMAIN_LEN, "target_domain")?;
            put_fixed(&mut body, ident, IDENT_LEN, "ident")?;
            put_tail(
                &mut body,
                service_name.as_bytes(),
                MAX_SERVICE_NAME_LEN,
                "service_name",
            )?;
            msg::TRIGGER_SERVICE3
        }
        Message::TriggerService4 {
            source_domain,
            target_domain,
            ident,
            service_name,
        } => {
            put_fixed(&mut body, source_domain, DOMAIN_LEN, "source_domain")?;
            put_fixed(&mut body, target_domain, DOMAIN_LEN, "target_domain")?;
            put_fixed(&mut body, ident, IDENT_LEN, "ident")?;
            put_tail(
                &mut body,
                service_name.as_bytes(),
                MAX_SERVICE_NAME_LEN,
                "service_name",
            )?;
            msg::TRIGGER_SERVICE4
        }
        Message::DataStdin(d) | Message::DataStdout(d) | Message::DataStderr(d) => {
            if d.len() > MAX_DATA_CHUNK_V3 {
                return Err(TooLong {
                    field: "data",
                    len: d.len(),
                    max: MAX_DATA_CHUNK_V3,
                });
            }
            body.extend_from_slice(d);
            match m {
                Message::DataStdin(_) => msg::DATA_STDIN,
                Message::DataStdout(_) => msg::DATA_STDOUT,
                _ => msg::DATA_STDERR,
            }
        }
        Message::ExitCode(c) => {
            body.extend_from_slice(&c.to_le_bytes());
            msg::DATA_EXIT_CODE
        }
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Incremental decoder for a byte stream of messages, for one negotiated
/// version. Buffers at most one header plus one (checked) body.
#[derive(Debug)]
pub struct Decoder {
    version: u32,
    buf: Vec<u8>,
    /// Where the next message starts in `buf` (consumed bytes before it are
    /// dropped in bulk, not per message: linear, not quadratic).
    start: usize,
}

impl Decoder {
    /// A decoder; before HELLO is done use [`MIN_PROTOCOL_VERSION`] limits.
    pub fn new(version: u32) -> Self {
        Self {
            version,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Changes the version after negotiation.
    pub fn set_version(&mut self, version: u32) {
        self.version = version;
    }

    /// Gives up the decoder, returning the bytes received but not yet
    /// decoded (a peer may send the next messages right behind the last
    /// decoded one), to continue with [`crate::qrexec_io::read_data`].
    pub fn into_pending(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }

    /// Appends bytes from the peer.
    pub fn feed(&mut self, data: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed. After an
    /// error the stream is unusable and must be closed.
    pub fn next_message(&mut self) -> Result<Option<Message>, QrexecError> {
        let pending = &self.buf[self.start..];
        if pending.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut hb = [0u8; HEADER_LEN];
        hb.copy_from_slice(&pending[..HEADER_LEN]);
        let h = parse_header(&hb, self.version)?;
        let end = HEADER_LEN + h.len as usize;
        if pending.len() < end {
            return Ok(None);
        }
        let m = parse_body(h, &pending[HEADER_LEN..end])?;
        self.start += end;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hello_bytes_match_qubes_little_endian_layout() {
        let b = encode(&Message::Hello { version: 4 }).unwrap();
        assert_eq!(b, [0x00, 0x03, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0]);
    }

    #[test]
    fn exec_cmdline_layout() {
        let m = Message::ExecCmdline {
            connect_domain: 0,
            connect_port: 0,
            cmdline: b"user:QUBESRPC qubes.VMShell+ dom0".to_vec(),
        };
        let b = encode(&m).unwrap();
        assert_eq!(&b[..4], &0x200u32.to_le_bytes());
        assert_eq!(*b.last().unwrap(), 0);
        let mut d = Decoder::new(4);
        d.feed(&b);
        assert_eq!(d.next_message().unwrap(), Some(m));
    }

    #[test]
    fn negotiation_picks_the_lower_and_refuses_v1() {
        assert_eq!(negotiate(4, 3), Ok(3));
        assert_eq!(negotiate(4, 9), Ok(4));
        assert_eq!(negotiate(4, 1), Err(QrexecError::VersionTooOld(1)));
        assert_eq!(max_chunk(2), 4096);
        assert_eq!(max_chunk(4), 65536);
    }

    #[test]
    fn hostile_headers_are_refused_before_reading_bodies() {
        let h = |ty: u32, len: u32| {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&ty.to_le_bytes());
            b[4..].copy_from_slice(&len.to_le_bytes());
            b
        };
        assert!(parse_header(&h(msg::DATA_STDOUT, 65536), 4).is_ok());
        assert!(parse_header(&h(msg::DATA_STDOUT, 65537), 4).is_err());
        assert!(parse_header(&h(msg::DATA_STDOUT, 4097), 2).is_err());
        assert!(parse_header(&h(msg::HELLO, 5), 4).is_err());
        assert!(parse_header(&h(msg::EXEC_CMDLINE, u32::MAX), 4).is_err());
        assert!(parse_header(&h(msg::EXEC_CMDLINE, 8), 4).is_err());
        assert_eq!(
            parse_header(&h(0x999, 0), 4),
            Err(QrexecError::UnknownType(0x999))
        );
    }

    #[test]
    fn fields_must_be_terminated_and_printable() {
        let mut body = vec![b'a'; 40];
        body[..8].fill(0);
        let h = Header {
            ty: msg::SERVICE_CONNECT,
            len: 40,
        };
        assert_eq!(
            parse_body(h, &body),
            Err(QrexecError::NotTerminated { field: "ident" })
        );
        body[20] = 0;
        body[10] = 0x07;
        assert_eq!(
            parse_body(h, &body),
            Err(QrexecError::NotPrintable { field: "ident" })
        );
        let tooling = encode(&Message::ServiceRefused {
            ident: "x".repeat(32),
        });
        assert!(tooling.is_err());
    }

    #[test]
    fn trigger_service4_round_trip_in_one_byte_pieces() {
        let m = Message::TriggerService4 {
            source_domain: String::new(),
            target_domain: "@dispvm:work-dvm".into(),
            ident: "SOCKET7".into(),
            service_name: "qubes.Filecopy+".into(),
        };
        let b = encode(&m).unwrap();
        let mut d = Decoder::new(4);
        let mut got = None;
        for byte in b {
            d.feed(&[byte]);
            if let Some(x) = d.next_message().unwrap() {
                got = Some(x);
            }
        }
        assert_eq!(got, Some(m));
    }

    fn text(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[ -~]{{0,{max}}}")).unwrap()
    }

    fn message() -> impl Strategy<Value = Message> {
        let data = proptest::collection::vec(any::<u8>(), 0..300);
        let cmd = proptest::collection::vec(1u8..=255, 1..200);
        prop_oneof![
            any::<u32>().prop_map(|version| Message::Hello { version }),
            (any::<u32>(), any::<u32>(), cmd.clone()).prop_map(
                |(connect_domain, connect_port, cmdline)| Message::ExecCmdline {
                    connect_domain,
                    connect_port,
                    cmdline
                }
            ),
            (any::<u32>(), any::<u32>(), cmd).prop_map(
                |(connect_domain, connect_port, cmdline)| Message::JustExec {
                    connect_domain,
                    connect_port,
                    cmdline
                }
            ),
            (any::<u32>(), any::<u32>(), text(31)).prop_map(|(domain, port, ident)| {
                Message::ServiceConnect {
                    domain,
                    port,
                    ident,
                }
            }),
            text(31).prop_map(|ident| Message::ServiceRefused { ident }),
            (text(63), text(31), text(31)).prop_map(|(service_name, target_domain, ident)| {
                Message::TriggerService {
                    service_name,
                    target_domain,
                    ident,
                }
            }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(domain, port)| Message::ConnectionTerminated { domain, port }),
            (text(63), text(31), "[ -~]{1,100}").prop_map(
                |(target_domain, ident, service_name)| Message::TriggerService3 {
                    target_domain,
                    ident,
                    service_name
                }
            ),
            (text(63), text(63), text(31), "[ -~]{1,100}").prop_map(
                |(source_domain, target_domain, ident, service_name)| Message::TriggerService4 {
                    source_domain,
                    target_domain,
                    ident,
                    service_name
                }
            ),
            data.clone().prop_map(Message::DataStdin),
            data.clone().prop_map(Message::DataStdout),
            data.prop_map(Message::DataStderr),
            any::<u32>().prop_map(Message::ExitCode),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(msgs in proptest::collection::vec(message(), 1..8), split in 1usize..50) {
            let mut bytes = Vec::new();
            for m in &msgs {
                bytes.extend(encode(m).unwrap());
            }
            let mut d = Decoder::new(4);
            let mut got = Vec::new();
            for chunk in bytes.chunks(split) {
                d.feed(chunk);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut d = Decoder::new(2);
            d.feed(&bytes);
            while let Ok(Some(_)) = d.next_message() {}
        }
    }
}
