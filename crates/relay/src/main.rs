//! `bulkhead-qrexec-relay`: one per running qube, on the host, as that
//! qube's own unprivileged host uid (so compromising it gains nothing the
//! qube's root does not already have).
//!
//! It listens in the qube's guest channel (`/run/bulkhead/relay.sock` inside
//! the qube). Each connection is one call the qube makes with
//! `qrexec-client-vm`: HELLO, then `MSG_TRIGGER_SERVICE3` (or 4) naming the
//! target and service. Everything the qube sends is parsed here, by the
//! checked decoder of `bulkhead-proto`, never by the root daemon. The relay
//! asks `bulkheadd` (policy socket) for a decision; the daemon identifies the
//! caller by this process's uid, decides, and on allow connects to the
//! target's agent itself and hands the connection over. The relay then
//! answers `SERVICE_CONNECT` (or `SERVICE_REFUSED`) and relays the call's
//! data messages both ways, re-chunked for each side's protocol version,
//! until the target's exit code.
//!
//! It must never depend on a host crate other than `bulkhead-sys`.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

mod jail;
mod sandbox;

use bulkhead_proto::qrexec::{self, max_chunk, msg, Message};
use bulkhead_proto::qrexec_io::{hello, read_data, recv, send, write_chunked, write_data};

/// Calls served at once; more wait in the listen backlog.
const MAX_CALLS: usize = 1024;

struct Opts {
    listen: PathBuf,
    policy: PathBuf,
    qube: String,
    /// Empty directory to build the relay's own root on (see `jail`).
    jail: PathBuf,
}

fn opts() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut policy, mut qube, mut jail) = (None, None, None, None);
    while let Some(a) = args.next() {
        let v = args.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--listen" => listen = Some(PathBuf::from(v)),
            "--policy" => policy = Some(PathBuf::from(v)),
            "--qube" => qube = Some(v),
            "--jail" => jail = Some(PathBuf::from(v)),
            _ => return Err(format!("unknown option {a}")),
        }
    }
    Ok(Opts {
        listen: listen.ok_or("--listen is required")?,
        policy: policy.ok_or("--policy is required")?,
        qube: qube.unwrap_or_default(),
        jail: jail.ok_or("--jail is required")?,
    })
}

fn main() {
    // Proof for the tests that the sandbox holds: install it, then try
    // something it forbids (creating a directory). The kernel kills us.
    if std::env::args().nth(1).as_deref() == Some("--selftest-seccomp") {
        if let Err(e) = sandbox::apply() {
            eprintln!("{e}");
            std::process::exit(2);
        }
        let _ = std::fs::create_dir("/tmp/bulkhead-relay-selftest");
        std::process::exit(0);
    }
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bulkhead-qrexec-relay: {e}");
            std::process::exit(2);
        }
    };
    let tmp = o.listen.with_extension("sock.tmp");
    let _ = std::fs::remove_file(&tmp);
    let listener = match UnixListener::bind(&tmp).and_then(|l| {
        use std::os::unix::fs::PermissionsExt;
        // The qube's agent (its root) connects; nobody else can reach the
        // channel directory.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, &o.listen)?;
        Ok(l)
    }) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "bulkhead-qrexec-relay[{}]: cannot listen on {}: {e}",
                o.qube,
                o.listen.display()
            );
            std::process::exit(1);
        }
    };
    // Its own namespaces (no network, no host paths), then the syscall
    // allowlist.
    let policy = match jail::enter(&o.jail, &o.policy) {
        Ok(p) => p,
        Err(e) => {
            // Hosts that forbid unprivileged user namespaces (e.g. by
            // AppArmor) still get qrexec, under the seccomp filter only;
            // said loudly in the log.
            log(
                &o.qube,
                &format!("WARNING: running WITHOUT its namespace jail (cannot enter it: {e}); only seccomp confines this relay"),
            );
            o.policy.clone()
        }
    };
    if let Err(e) = sandbox::apply() {
        log(&o.qube, &e);
        std::process::exit(1);
    }
    let active = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if active.load(std::sync::atomic::Ordering::Relaxed) >= MAX_CALLS {
            continue; // dropped: the caller sees a closed connection (125)
        }
        active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (policy, qube, active) = (policy.clone(), o.qube.clone(), active.clone());
        std::thread::spawn(move || {
            if let Err(e) = call(conn, &policy) {
                log(&qube, &format!("call failed: {e}"));
            }
            active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

/// Logs a line: at most 200 characters, at most 20 lines a second (a qube
/// decides what fails here; it must not be able to fill the host's disk).
fn log(qube: &str, msg: &str) {
    use std::sync::Mutex;
    static WINDOW: Mutex<(u64, u32)> = Mutex::new((0, 0));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut w = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
    if w.0 != now {
        *w = (now, 0);
    }
    w.1 += 1;
    if w.1 > 20 {
        return;
    }
    let short: String = msg.chars().take(200).collect();
    eprintln!("bulkhead-qrexec-relay[{qube}]: {}", short.escape_debug());
}

/// What kind of message it was, never its content.
fn kind(m: &Option<Message>) -> String {
    match m {
        None => "end of stream".into(),
        Some(m) => {
            let d = format!("{m:?}");
            d.split([' ', '(', '{']).next().unwrap_or("?").to_string()
        }
    }
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The daemon's answer: Ok((target version, target connection)) or Err(code).
fn ask(
    policy: &PathBuf,
    service: &str,
    target: &str,
) -> io::Result<Result<(u32, UnixStream), i32>> {
    let mut s = UnixStream::connect(policy)?;
    s.write_all(format!("service={service}\ntarget={target}\n\n").as_bytes())?;
    let mut buf = vec![0u8; 4096];
    let (n, fd) = bulkhead_sys::fdpass::recv_with_fd(&s, &mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .map(str::to_string)
    };
    match field("result").as_deref() {
        Some("allow") => {
            let version = field("version")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("daemon sent no version"))?;
            let fd = fd.ok_or_else(|| bad("daemon sent no connection"))?;
            Ok(Ok((version, UnixStream::from(fd))))
        }
        Some("deny") => {
            let code = field("code")
                .and_then(|c| c.parse().ok())
                .unwrap_or(qrexec::EXIT_REFUSED);
            if let Some(r) = field("reason") {
                let svc: String = service.chars().take(80).collect();
                log("", &format!("{svc} to {target}: {r}"));
            }
            Ok(Err(code))
        }
        _ => Err(bad(format!("unexpected daemon answer {text:?}"))),
    }
}

fn call(mut client: UnixStream, policy: &PathBuf) -> io::Result<()> {
    // A caller that never finishes its request must not hold a thread.
    client.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let (mut cdec, cver) = hello(&mut client)?;
    let (target, ident, service) = match recv(&mut client, &mut cdec)? {
        Some(Message::TriggerService3 {
            target_domain,
            ident,
            service_name,
        }) => (target_domain, ident, service_name),
        Some(Message::TriggerService4 {
            target_domain,
            ident,
            service_name,
            ..
        }) => (target_domain, ident, service_name),
        other => {
            return Err(bad(format!(
                "expected a service trigger, got {}",
                kind(&other)
            )))
        }
    };
    client.set_read_timeout(None)?;
    let (tver, mut tgt) = match ask(policy, &service, &target)? {
        Ok(t) => t,
        Err(code) => {
            send(&mut client, &Message::ServiceRefused { ident })?;
            let _ = send(&mut client, &Message::ExitCode(code as u32));
            return Ok(());
        }
    };
    send(
        &mut client,
        &Message::ServiceConnect {
            domain: 0,
            port: 0,
            ident,
        },
    )?;
    let (to_target, to_client) = (max_chunk(tver), max_chunk(cver));
    // From here on only data messages: each header is checked, each body is
    // read once into a reused buffer and written on (re-chunked for the
    // other side's version), with no decode/encode copies. Bytes the caller
    // sent right behind its trigger are not lost.
    let mut c_in = io::Cursor::new(cdec.into_pending()).chain(client.try_clone()?);
    let mut t_out = tgt.try_clone()?;
    let feeder = std::thread::spawn(move || -> io::Result<()> {
        let mut buf = Vec::with_capacity(to_target.max(to_client));
        loop {
            match read_data(&mut c_in, cver, &mut buf)? {
                Some(msg::DATA_STDIN) if buf.is_empty() => {
                    return write_data(&mut t_out, msg::DATA_STDIN, &[]);
                }
                Some(msg::DATA_STDIN) => {
                    write_chunked(&mut t_out, msg::DATA_STDIN, &buf, to_target)?
                }
                // Caller gone (or the call over): so is the call.
                None => {
                    let _ = t_out.shutdown(std::net::Shutdown::Both);
                    return Ok(());
                }
                Some(other) => {
                    let _ = t_out.shutdown(std::net::Shutdown::Both);
                    return Err(bad(format!("caller sent message type {other:#x} mid-call")));
                }
            }
        }
    });
    // Target's output → caller, until its exit code.
    let mut buf = Vec::with_capacity(to_target.max(to_client));
    let result = loop {
        match read_data(&mut tgt, tver, &mut buf) {
            Ok(Some(t @ (msg::DATA_STDOUT | msg::DATA_STDERR))) if buf.is_empty() => {
                write_data(&mut client, t, &[])?
            }
            Ok(Some(t @ (msg::DATA_STDOUT | msg::DATA_STDERR))) => {
                write_chunked(&mut client, t, &buf, to_client)?
            }
            Ok(Some(msg::DATA_EXIT_CODE)) => {
                break write_data(&mut client, msg::DATA_EXIT_CODE, &buf)
            }
            Ok(None) => {
                break send(
                    &mut client,
                    &Message::ExitCode(qrexec::EXIT_QREXEC_FAILED as u32),
                )
            }
            Ok(Some(other)) => {
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = tgt.shutdown(std::net::Shutdown::Both);
                return Err(bad(format!("target sent message type {other:#x}")));
            }
            Err(e) => {
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = tgt.shutdown(std::net::Shutdown::Both);
                return Err(e);
            }
        }
    };
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = tgt.shutdown(std::net::Shutdown::Both);
    drop(feeder);
    result
}
