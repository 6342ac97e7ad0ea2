//! A blocking Admin API client: one connection per call, as Qubes' own client.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use bulkhead_proto::admin::{self, Event, EventStream, Reply};

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// The daemon raised a Qubes exception.
    Exception { class: String, message: String },
    /// The daemon closed without answering (permission or protocol refusal).
    Refused { method: String },
    /// The daemon could not be reached or the connection broke.
    Io {
        socket: PathBuf,
        err: std::io::Error,
    },
    /// The reply did not parse.
    BadReply(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Exception { message, .. } => write!(f, "{message}"),
            CallError::Refused { method } => write!(
                f,
                "bulkheadd refused {method} without an answer (not permitted, or a request it does not accept; see the daemon log)"
            ),
            CallError::Io { socket, err } => write!(
                f,
                "cannot talk to bulkheadd at {}: {err}. Is it running? Start it with 'bulkheadd --detach', or point --socket / BULKHEAD_SOCKET at it",
                socket.display()
            ),
            CallError::BadReply(e) => write!(f, "bulkheadd sent a malformed reply: {e}"),
        }
    }
}

impl std::error::Error for CallError {}

impl CallError {
    /// The Qubes exception class, if any.
    pub fn class(&self) -> Option<&str> {
        match self {
            CallError::Exception { class, .. } => Some(class),
            _ => None,
        }
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    fn io(&self, err: std::io::Error) -> CallError {
        CallError::Io {
            socket: self.socket.clone(),
            err,
        }
    }

    fn send(
        &self,
        method: &str,
        arg: &str,
        dest: &str,
        payload: &[u8],
    ) -> Result<UnixStream, CallError> {
        let mut s = UnixStream::connect(&self.socket).map_err(|e| self.io(e))?;
        s.write_all(&admin::encode_request(method, arg, "dom0", dest, payload))
            .map_err(|e| self.io(e))?;
        s.shutdown(Shutdown::Write).map_err(|e| self.io(e))?;
        Ok(s)
    }

    /// Calls a method; returns the OK body as text.
    pub fn call(
        &self,
        method: &str,
        arg: &str,
        dest: &str,
        payload: &[u8],
    ) -> Result<String, CallError> {
        let s = self.send(method, arg, dest, payload)?;
        let mut buf = Vec::new();
        s.take(admin::MAX_REPLY as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| self.io(e))?;
        match admin::parse_reply(&buf) {
            Ok(Reply::Ok(body)) => Ok(String::from_utf8_lossy(&body).into_owned()),
            Ok(Reply::Exception { class, message }) => Err(CallError::Exception { class, message }),
            Ok(Reply::Empty) => Err(CallError::Refused {
                method: method.to_string(),
            }),
            Err(e) => Err(CallError::BadReply(e.to_string())),
        }
    }

    /// Opens `admin.Events` and calls `f` for each event until it returns false.
    pub fn events(&self, dest: &str, mut f: impl FnMut(Event) -> bool) -> Result<(), CallError> {
        let mut s = self.send("admin.Events", "", dest, b"")?;
        let mut parser = EventStream::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = s.read(&mut chunk).map_err(|e| self.io(e))?;
            if n == 0 {
                return Ok(());
            }
            parser.feed(&chunk[..n]);
            while let Some(ev) = parser
                .next_event()
                .map_err(|e| CallError::BadReply(e.to_string()))?
            {
                if !f(ev) {
                    return Ok(());
                }
            }
        }
    }
}

/// One line of `property.GetAll`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prop {
    pub name: String,
    pub is_default: bool,
    pub ty: String,
    pub value: String,
}

/// Parses `default=<b> type=<t> <value>`.
pub fn parse_prop_value(name: &str, s: &str) -> Option<Prop> {
    let rest = s.strip_prefix("default=")?;
    let (d, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("type=")?;
    let (ty, value) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(Prop {
        name: name.to_string(),
        is_default: d == "True",
        ty: ty.to_string(),
        value: value.to_string(),
    })
}

/// Parses a `GetAll` body, undoing its `\\` and `\n` escapes.
pub fn parse_get_all(body: &str) -> Vec<Prop> {
    body.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(' ')?;
            let mut p = parse_prop_value(name, rest)?;
            p.value = unescape(&p.value);
            Some(p)
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `admin.vm.List` line.
#[derive(Debug, Clone)]
pub struct VmEntry {
    pub name: String,
    pub class: String,
    pub state: String,
}

impl VmEntry {
    /// The power state.
    pub fn state(&self) -> Option<&str> {
        Some(self.state.as_str()).filter(|s| !s.is_empty())
    }
}

pub fn parse_vm_list(body: &str) -> Vec<VmEntry> {
    body.lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            let name = parts.next()?.to_string();
            let mut e = VmEntry {
                name,
                class: String::new(),
                state: String::new(),
            };
            for kv in parts {
                match kv.split_once('=') {
                    Some(("class", v)) => e.class = v.to_string(),
                    Some(("state", v)) => e.state = v.to_string(),
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_get_all() {
        let body = "label default=False type=label red\nnetvm default=True type=vm \nnotes default=False type=str a\\nb\\\\c\n";
        let p = parse_get_all(body);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].value, "red");
        assert!(p[1].is_default);
        assert_eq!(p[1].value, "");
        assert_eq!(p[2].value, "a\nb\\c");
    }
}
