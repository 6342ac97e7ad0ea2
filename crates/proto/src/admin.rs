//! The Qubes Admin API framing (qubesd's socket protocol), both directions.
//!
//! Request: `method[+arg] SP source SP dest_type SP dest NUL payload…`, ended by
//! the client's half-close. Replies start with one type byte and a NUL:
//! `0` OK + body; `1` event (repeated); `2` exception. See
//! `shared/reference/qubes-compat.md` §1.2–1.3.

use thiserror::Error;

/// Largest request (header + payload) qubesd accepts; longer ones are aborted.
pub const MAX_REQUEST: usize = 65536;
/// Largest reply a client will buffer before giving up (replies are ours, but a
/// client may also be pointed at something hostile).
pub const MAX_REPLY: usize = 64 << 20;
/// Largest single event message a client will buffer.
pub const MAX_EVENT: usize = 1 << 20;

/// A request as framed on the wire, before any of its fields are trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method name without the argument, e.g. `admin.vm.property.Get`.
    pub method: String,
    /// Argument after the first `+`; empty when absent.
    pub arg: String,
    /// Claimed source qube (set by qrexec for qube callers, by the client on the socket).
    pub source: String,
    /// Destination: a qube name or `uuid:…`; `keyword adminvm` is rewritten to `dom0`.
    pub dest: String,
    /// Raw, untrusted payload.
    pub payload: Vec<u8>,
}

/// Why a request could not be framed. Qubes aborts the connection on all of these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FramingError {
    #[error("request longer than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("request header has no NUL terminator")]
    NoTerminator,
    #[error("request header is not ASCII")]
    NotAscii,
    #[error("request header does not have four space-separated fields")]
    FieldCount,
    #[error("destination type {0:?} is not supported (only 'name' and 'keyword adminvm')")]
    DestType(String),
}

/// Parses one complete request (everything the client sent before EOF).
pub fn parse_request(buf: &[u8]) -> Result<Request, FramingError> {
    if buf.len() > MAX_REQUEST {
        return Err(FramingError::TooLong);
    }
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(FramingError::NoTerminator)?;
    let header = &buf[..nul];
    if !header.is_ascii() {
        return Err(FramingError::NotAscii);
    }
    // is_ascii() guarantees valid UTF-8.
    let header = std::str::from_utf8(header).map_err(|_| FramingError::NotAscii)?;
    let mut fields = header.splitn(4, ' ');
    let (Some(meth_arg), Some(source), Some(dest_type), Some(dest)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(FramingError::FieldCount);
    };
    let dest = match (dest_type, dest) {
        ("keyword", "adminvm") => "dom0",
        ("name", d) => d,
        (other, _) => return Err(FramingError::DestType(other.to_string())),
    };
    let (method, arg) = match meth_arg.split_once('+') {
        Some((m, a)) => (m, a),
        None => (meth_arg, ""),
    };
    Ok(Request {
        method: method.to_string(),
        arg: arg.to_string(),
        source: source.to_string(),
        dest: dest.to_string(),
        payload: buf[nul + 1..].to_vec(),
    })
}

/// Encodes a request the way the Qubes Python client does (`method+arg` always).
pub fn encode_request(
    method: &str,
    arg: &str,
    source: &str,
    dest: &str,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        method.len() + arg.len() + source.len() + dest.len() + 8 + payload.len(),
    );
    out.extend_from_slice(method.as_bytes());
    out.push(b'+');
    out.extend_from_slice(arg.as_bytes());
    out.push(b' ');
    out.extend_from_slice(source.as_bytes());
    out.extend_from_slice(b" name ");
    out.extend_from_slice(dest.as_bytes());
    out.push(0);
    out.extend_from_slice(payload);
    out
}

/// Reply type byte: success.
pub const TYPE_OK: u8 = 0x30;
/// Reply type byte: event.
pub const TYPE_EVENT: u8 = 0x31;
/// Reply type byte: exception.
pub const TYPE_EXCEPTION: u8 = 0x32;

/// `0\0<body>`.
pub fn encode_ok(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&[TYPE_OK, 0]);
    out.extend_from_slice(body);
    out
}

/// `2\0<class>\0<traceback>\0<message>\0`; we never send a traceback.
pub fn encode_exception(class: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(class.len() + message.len() + 5);
    out.extend_from_slice(&[TYPE_EXCEPTION, 0]);
    out.extend_from_slice(class.as_bytes());
    out.push(0);
    out.push(0);
    out.extend_from_slice(message.as_bytes());
    out.push(0);
    out
}

/// One event as carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Qube name, or empty for the global (app) object.
    pub subject: String,
    /// Event name, e.g. `property-set:netvm`.
    pub event: String,
    /// Keyword arguments in the order they were sent.
    pub kwargs: Vec<(String, String)>,
}

/// `1\0<subject>\0<event>\0(<k>\0<v>\0)*\0`.
pub fn encode_event(ev: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[TYPE_EVENT, 0]);
    out.extend_from_slice(ev.subject.as_bytes());
    out.push(0);
    out.extend_from_slice(ev.event.as_bytes());
    out.push(0);
    for (k, v) in &ev.kwargs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out.push(0);
    out
}

/// A complete non-event reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `0\0…`: the body.
    Ok(Vec<u8>),
    /// `2\0…`: Qubes exception class name and message.
    Exception { class: String, message: String },
    /// The server closed without a byte: Qubes' way of saying "refused" (policy
    /// denial, protocol error).
    Empty,
}

/// Why a reply could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("reply longer than {MAX_REPLY} bytes")]
    TooLong,
    #[error("reply is truncated")]
    Truncated,
    #[error("unknown reply type byte 0x{0:02x}")]
    UnknownType(u8),
    #[error("reply is an event stream, not a single reply")]
    UnexpectedEvent,
}

/// Parses a whole (non-streaming) reply.
pub fn parse_reply(buf: &[u8]) -> Result<Reply, ReplyError> {
    if buf.len() > MAX_REPLY {
        return Err(ReplyError::TooLong);
    }
    if buf.is_empty() {
        return Ok(Reply::Empty);
    }
    if buf.len() < 2 || buf[1] != 0 {
        return Err(ReplyError::Truncated);
    }
    match buf[0] {
        TYPE_OK => Ok(Reply::Ok(buf[2..].to_vec())),
        TYPE_EXCEPTION => {
            let mut parts = buf[2..].split(|&b| b == 0);
            let class = parts.next().ok_or(ReplyError::Truncated)?;
            let _traceback = parts.next().ok_or(ReplyError::Truncated)?;
            let message = parts.next().ok_or(ReplyError::Truncated)?;
            Ok(Reply::Exception {
                class: String::from_utf8_lossy(class).into_owned(),
                message: String::from_utf8_lossy(message).into_owned(),
            })
        }
        TYPE_EVENT => Err(ReplyError::UnexpectedEvent),
        other => Err(ReplyError::UnknownType(other)),
    }
}

/// Incremental parser for an `admin.Events` stream: feed bytes as they arrive,
/// take complete events out. Bounded: a single event over [`MAX_EVENT`] is an error.
#[derive(Debug, Default)]
pub struct EventStream {
    buf: Vec<u8>,
}

impl EventStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Takes the next complete event, `Ok(None)` if more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, ReplyError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        if self.buf[0] != TYPE_EVENT {
            return Err(ReplyError::UnknownType(self.buf[0]));
        }
        // Fields: header NUL, subject, event, then k/v pairs, ended by an empty field.
        let mut fields: Vec<&[u8]> = Vec::new();
        let mut start = 2;
        if self.buf.len() < 2 {
            return Ok(None);
        }
        if self.buf[1] != 0 {
            return Err(ReplyError::Truncated);
        }
        let mut end = None;
        let mut i = start;
        while i < self.buf.len() {
            if self.buf[i] == 0 {
                let field = &self.buf[start..i];
                // After subject and event, an empty field in key position ends the event.
                if fields.len() >= 2 && fields.len().is_multiple_of(2) && field.is_empty() {
                    end = Some(i + 1);
                    break;
                }
                fields.push(field);
                start = i + 1;
            }
            i += 1;
        }
        let Some(end) = end else {
            if self.buf.len() > MAX_EVENT {
                return Err(ReplyError::TooLong);
            }
            return Ok(None);
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let ev = Event {
            subject: text(fields[0]),
            event: text(fields[1]),
            kwargs: fields[2..]
                .chunks(2)
                .map(|kv| (text(kv[0]), text(kv[1])))
                .collect(),
        };
        self.buf.drain(..end);
        Ok(Some(ev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_python_client_request() {
        let r = parse_request(b"admin.vm.property.Get+netvm dom0 name work\0").unwrap();
        assert_eq!(r.method, "admin.vm.property.Get");
        assert_eq!(r.arg, "netvm");
        assert_eq!(r.source, "dom0");
        assert_eq!(r.dest, "work");
        assert!(r.payload.is_empty());
    }

    #[test]
    fn keyword_adminvm_becomes_dom0_and_payload_keeps_nuls() {
        let r = parse_request(b"admin.vm.List+ work keyword adminvm\0a\0b").unwrap();
        assert_eq!(r.dest, "dom0");
        assert_eq!(r.arg, "");
        assert_eq!(r.payload, b"a\0b");
    }

    #[test]
    fn plus_splits_at_the_first_only() {
        let r = parse_request(b"admin.vm.Shutdown+force+wait dom0 name work\0").unwrap();
        assert_eq!(r.method, "admin.vm.Shutdown");
        assert_eq!(r.arg, "force+wait");
    }

    #[test]
    fn framing_errors() {
        assert_eq!(
            parse_request(b"admin.vm.List dom0 name dom0"),
            Err(FramingError::NoTerminator)
        );
        assert_eq!(
            parse_request(b"admin.vm.List dom0 name\0"),
            Err(FramingError::FieldCount)
        );
        assert_eq!(
            parse_request(b"admin.vm.List dom0 uuid dom0\0"),
            Err(FramingError::DestType("uuid".into()))
        );
        assert_eq!(
            parse_request(b"admin.vm.List dom0 keyword other\0"),
            Err(FramingError::DestType("keyword".into()))
        );
        assert_eq!(
            parse_request("admin.vm.List dom0 name d\u{f6}m0\0".as_bytes()),
            Err(FramingError::NotAscii)
        );
        let mut big = b"admin.vm.List dom0 name dom0\0".to_vec();
        big.resize(MAX_REQUEST + 1, b'x');
        assert_eq!(parse_request(&big), Err(FramingError::TooLong));
        big.truncate(MAX_REQUEST);
        assert!(parse_request(&big).is_ok());
    }

    #[test]
    fn dest_keeps_extra_spaces_like_qubesd() {
        let r = parse_request(b"admin.vm.List dom0 name a b\0").unwrap();
        assert_eq!(r.dest, "a b");
    }

    #[test]
    fn encodes_replies_byte_for_byte() {
        assert_eq!(encode_ok(b"x"), b"0\0x");
        assert_eq!(
            encode_exception("QubesVMNotFoundError", "No such domain: 'x'"),
            b"2\0QubesVMNotFoundError\0\0No such domain: 'x'\0"
        );
        let ev = Event {
            subject: "work".into(),
            event: "tag-add:x".into(),
            kwargs: vec![("tag".into(), "x".into())],
        };
        assert_eq!(encode_event(&ev), b"1\0work\0tag-add:x\0tag\0x\0\0");
    }

    #[test]
    fn reply_round_trip() {
        assert_eq!(
            parse_reply(b"0\0hello").unwrap(),
            Reply::Ok(b"hello".to_vec())
        );
        assert_eq!(parse_reply(b"").unwrap(), Reply::Empty);
        assert_eq!(
            parse_reply(&encode_exception("QubesValueError", "bad")).unwrap(),
            Reply::Exception {
                class: "QubesValueError".into(),
                message: "bad".into()
            }
        );
        assert_eq!(parse_reply(b"9\0"), Err(ReplyError::UnknownType(b'9')));
        assert_eq!(parse_reply(b"0"), Err(ReplyError::Truncated));
    }

    #[test]
    fn event_stream_in_pieces() {
        let a = Event {
            subject: String::new(),
            event: "connection-established".into(),
            kwargs: vec![],
        };
        let b = Event {
            subject: "work".into(),
            event: "property-set:netvm".into(),
            kwargs: vec![
                ("name".into(), "netvm".into()),
                ("newvalue".into(), "".into()),
            ],
        };
        let mut bytes = encode_event(&a);
        bytes.extend(encode_event(&b));
        let mut s = EventStream::new();
        let mut got = Vec::new();
        for chunk in bytes.chunks(3) {
            s.feed(chunk);
            while let Some(ev) = s.next_event().unwrap() {
                got.push(ev);
            }
        }
        assert_eq!(got, vec![a, b]);
    }

    proptest! {
        #[test]
        fn request_round_trip(
            method in "[a-zA-Z.]{1,30}",
            arg in "[a-zA-Z0-9_.+-]{0,20}",
            src in "[a-z][a-z0-9-]{0,20}",
            dest in "[a-z][a-z0-9-]{0,20}",
            payload in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let bytes = encode_request(&method, &arg, &src, &dest, &payload);
            let r = parse_request(&bytes).unwrap();
            prop_assert_eq!(r.method, method);
            prop_assert_eq!(r.arg, arg);
            prop_assert_eq!(r.source, src);
            prop_assert_eq!(r.dest, dest);
            prop_assert_eq!(r.payload, payload);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_request(&bytes);
            let _ = parse_reply(&bytes);
            let mut s = EventStream::new();
            s.feed(&bytes);
            while let Ok(Some(_)) = s.next_event() {}
        }
    }
}
