//! Calls from inside a qube: `qrexec-client-vm` (the agent binary under that
//! name) and the agent's local socket that carries them to the host.
//!
//! `qrexec-client-vm [options] TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS…]]`
//! connects to [`AGENT_SOCKET`], which the agent (PID 1, qube root) forwards
//! byte for byte to the qube's relay on the host (`/run/bulkhead/relay.sock`
//! in the guest channel). It asks for the call with `MSG_TRIGGER_SERVICE3`;
//! the host checks policy and answers `SERVICE_CONNECT` or
//! `SERVICE_REFUSED`. Exit codes as Qubes: 126 refused, 127 no such service
//! (from the target), 125 qrexec failure, else the service's exit code —
//! or, with a local program, that program's.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};

use bulkhead_proto::qrexec::{self, max_chunk, Decoder, Message};
use bulkhead_proto::qrexec_io::{hello, recv, send};

/// Where `qrexec-client-vm` connects (Qubes' path).
pub const AGENT_SOCKET: &str = "/run/qubes/qrexec-agent";
/// The relay's socket in the guest channel.
pub const RELAY_SOCKET: &str = "/run/bulkhead/relay.sock";

/// Serves [`AGENT_SOCKET`]: each connection is spliced to the relay.
pub fn serve_local_socket() {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::create_dir_all("/run/qubes");
    let _ = std::fs::set_permissions("/run/qubes", std::fs::Permissions::from_mode(0o755));
    let _ = std::fs::remove_file(AGENT_SOCKET);
    let listener = match UnixListener::bind(AGENT_SOCKET) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bulkhead-agent: cannot listen on {AGENT_SOCKET}: {e}");
            return;
        }
    };
    // Any user of the qube may make calls; policy on the host decides.
    let _ = std::fs::set_permissions(AGENT_SOCKET, std::fs::Permissions::from_mode(0o666));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(relay) = UnixStream::connect(RELAY_SOCKET) else {
                    return; // the caller sees the connection close: 125
                };
                splice(conn, relay);
            });
        }
    });
}

/// Copies one direction with a buffer sized for whole qrexec messages.
fn copy(from: &mut UnixStream, to: &mut UnixStream) -> io::Result<()> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

/// Copies bytes both ways until each side is done.
fn splice(a: UnixStream, b: UnixStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let (mut a, mut b) = (a, b);
    let t = std::thread::spawn(move || {
        let _ = copy(&mut a2, &mut b2);
        let _ = b2.shutdown(std::net::Shutdown::Write);
    });
    let _ = copy(&mut b, &mut a);
    let _ = a.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}

fn usage() -> i32 {
    eprintln!("usage: qrexec-client-vm [options] TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]");
    2
}

/// `qrexec-client-vm`; returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    let mut it = args.into_iter().skip(1).peekable();
    // Terminal escape filtering as Qubes: on by default where the output
    // is a terminal (a hostile service must not drive the caller's tty).
    let mut filter = Filter {
        stdout: io::IsTerminal::is_terminal(&io::stdout()),
        stderr: io::IsTerminal::is_terminal(&io::stderr()),
    };
    while let Some(a) = it.peek().cloned() {
        match a.as_str() {
            "--" => {
                it.next();
                break;
            }
            "-h" | "--help" => return usage(),
            "--no-filter-escape-chars-stdout" => {
                filter.stdout = false;
                it.next();
            }
            "--no-filter-escape-chars-stderr" => {
                filter.stderr = false;
                it.next();
            }
            "-t" | "--filter-escape-chars-stdout" => {
                filter.stdout = true;
                it.next();
            }
            "-T" | "--filter-escape-chars-stderr" => {
                filter.stderr = true;
                it.next();
            }
            s if s.starts_with("--buffer-size") || s.starts_with("--agent-socket") => {
                it.next();
                if !s.contains('=') {
                    it.next();
                }
            }
            s if s.starts_with('-') => {
                eprintln!("qrexec-client-vm: unknown option {s}");
                return usage();
            }
            _ => break,
        }
    }
    let (Some(target), Some(service)) = (it.next(), it.next()) else {
        return usage();
    };
    let local: Vec<String> = it.collect();
    match run(&target, &service, &local, filter) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qrexec-client-vm: {e}");
            qrexec::EXIT_QREXEC_FAILED
        }
    }
}

/// A call the host accepted: the stream, its decoder and the version.
pub struct Call {
    pub stream: UnixStream,
    pub dec: Decoder,
    pub version: u32,
}

/// Asks the host for a call to `service` in `target`; `Ok(None)` if the
/// policy refused it (already reported on stderr).
pub fn connect(target: &str, service: &str) -> io::Result<Option<Call>> {
    let mut s = UnixStream::connect(AGENT_SOCKET)?;
    let (mut dec, version) = hello(&mut s)?;
    send(
        &mut s,
        &Message::TriggerService3 {
            target_domain: target.to_string(),
            ident: format!("SOCKET{}", std::process::id()),
            service_name: service.to_string(),
        },
    )?;
    match recv(&mut s, &mut dec)? {
        Some(Message::ServiceConnect { .. }) => Ok(Some(Call {
            stream: s,
            dec,
            version,
        })),
        Some(Message::ServiceRefused { .. }) => {
            eprintln!("Request refused");
            Ok(None)
        }
        other => Err(io::Error::other(format!("unexpected answer {other:?}"))),
    }
}

/// Which outputs get terminal control characters replaced.
#[derive(Clone, Copy)]
struct Filter {
    stdout: bool,
    stderr: bool,
}

/// Replaces control characters (except tab, newline, carriage return) and
/// DEL with `_`, as Qubes' escape filter does.
fn sanitize(d: &[u8]) -> Vec<u8> {
    d.iter()
        .map(|&b| match b {
            b'\t' | b'\n' | b'\r' => b,
            0..=0x1f | 0x7f => b'_',
            b => b,
        })
        .collect()
}

/// What came back from a call whose input is all sent.
pub struct Output {
    /// The service's stdout, at most the limit given to [`collect`].
    pub stdout: Vec<u8>,
    /// More stdout came than was kept.
    pub overflow: bool,
    pub code: i32,
}

/// Reads a call to its end: keeps up to `max` bytes of the service's stdout,
/// copies its stderr to ours, returns the exit code (125 if the call broke).
pub fn collect(s: &mut UnixStream, dec: &mut Decoder, max: u64) -> io::Result<Output> {
    let mut out = Output {
        stdout: Vec::new(),
        overflow: false,
        code: qrexec::EXIT_QREXEC_FAILED,
    };
    loop {
        match recv(s, dec)? {
            Some(Message::DataStdout(d)) => {
                if (out.stdout.len() + d.len()) as u64 > max {
                    out.overflow = true;
                } else {
                    out.stdout.extend(d);
                }
            }
            Some(Message::DataStderr(d)) => io::stderr().write_all(&d)?,
            Some(Message::ExitCode(c)) => {
                out.code = i32::try_from(c).unwrap_or(qrexec::EXIT_QREXEC_FAILED);
                return Ok(out);
            }
            Some(_) => {}
            None => return Ok(out),
        }
    }
}

fn run(target: &str, service: &str, local: &[String], filter: Filter) -> io::Result<i32> {
    let Some(Call {
        stream: mut s,
        mut dec,
        version,
    }) = connect(target, service)?
    else {
        return Ok(qrexec::EXIT_REFUSED);
    };
    let chunk = max_chunk(version);
    // The service's input: our stdin, or the local program's stdout.
    let mut child = None;
    let input: Box<dyn Read + Send> = if let Some((prog, args)) = local.split_first() {
        let mut c = Command::new(prog)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let out = c
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        child = Some(c);
        Box::new(out)
    } else {
        Box::new(io::stdin())
    };
    let mut w = s.try_clone()?;
    let feeder = std::thread::spawn(move || -> io::Result<()> {
        let mut input = input;
        let mut buf = vec![0u8; chunk];
        loop {
            let n = input.read(&mut buf)?;
            send(&mut w, &Message::DataStdin(buf[..n].to_vec()))?;
            if n == 0 {
                return Ok(());
            }
        }
    });
    let mut local_in = child.as_mut().and_then(|c| c.stdin.take());
    let mut stdout = io::stdout();
    let mut stderr = io::stderr();
    let code = loop {
        match recv(&mut s, &mut dec)? {
            Some(Message::DataStdout(d)) if d.is_empty() => {
                local_in = None; // EOF to the local program
            }
            Some(Message::DataStdout(d)) => match local_in.as_mut() {
                Some(li) => {
                    if li.write_all(&d).is_err() {
                        local_in = None;
                    }
                }
                None if child.is_some() => {}
                None => {
                    if filter.stdout {
                        stdout.write_all(&sanitize(&d))?;
                    } else {
                        stdout.write_all(&d)?;
                    }
                    stdout.flush()?;
                }
            },
            Some(Message::DataStderr(d)) => {
                if filter.stderr {
                    stderr.write_all(&sanitize(&d))?;
                } else {
                    stderr.write_all(&d)?;
                }
            }
            Some(Message::ExitCode(c)) => {
                break i32::try_from(c).unwrap_or(qrexec::EXIT_QREXEC_FAILED)
            }
            None => break qrexec::EXIT_QREXEC_FAILED,
            Some(other) => return Err(io::Error::other(format!("unexpected message {other:?}"))),
        }
    };
    drop(local_in);
    let _ = s.shutdown(std::net::Shutdown::Both);
    drop(feeder);
    if let Some(mut c) = child {
        let status = c.wait()?;
        return Ok(status.code().unwrap_or(qrexec::EXIT_QREXEC_FAILED));
    }
    Ok(code)
}

/// `qvm-connect-tcp [LOCALPORT]:[TARGET]:PORT`: listens on
/// 127.0.0.1:LOCALPORT and carries each connection to PORT on the target's
/// loopback through `qubes.ConnectTCP+PORT` (policy decides; the default
/// policy denies until the user adds an allow rule).
pub fn connect_tcp(args: Vec<String>) -> i32 {
    let Some(spec) = args.get(1) else {
        eprintln!("usage: qvm-connect-tcp [LOCALPORT]:[TARGET]:PORT");
        return 2;
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (local, target, port) = match parts.as_slice() {
        [l, t, p] => (*l, *t, *p),
        _ => {
            eprintln!("qvm-connect-tcp: expected [LOCALPORT]:[TARGET]:PORT, got {spec:?}");
            return 2;
        }
    };
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("qvm-connect-tcp: invalid port {port:?}");
        return 2;
    };
    let local: u16 = if local.is_empty() {
        port
    } else {
        match local.parse() {
            Ok(l) => l,
            Err(_) => {
                eprintln!("qvm-connect-tcp: invalid local port {local:?}");
                return 2;
            }
        }
    };
    let target = if target.is_empty() {
        "@default"
    } else {
        target
    }
    .to_string();
    let listener = match std::net::TcpListener::bind(("127.0.0.1", local)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("qvm-connect-tcp: cannot listen on 127.0.0.1:{local}: {e}");
            return 1;
        }
    };
    eprintln!("qvm-connect-tcp: 127.0.0.1:{local} -> {target}:{port}");
    for conn in listener.incoming().flatten() {
        let target = target.clone();
        std::thread::spawn(move || {
            if let Err(e) = tcp_call(conn, &target, port) {
                eprintln!("qvm-connect-tcp: {e}");
            }
        });
    }
    0
}

fn tcp_call(tcp: std::net::TcpStream, target: &str, port: u16) -> io::Result<()> {
    let Some(Call {
        stream: mut s,
        mut dec,
        version,
    }) = connect(target, &format!("qubes.ConnectTCP+{port}"))?
    else {
        return Ok(());
    };
    let mut tcp_in = tcp.try_clone()?;
    let mut w = s.try_clone()?;
    let chunk = max_chunk(version);
    let feeder = std::thread::spawn(move || -> io::Result<()> {
        let mut buf = vec![0u8; chunk];
        loop {
            let n = tcp_in.read(&mut buf).unwrap_or(0);
            send(&mut w, &Message::DataStdin(buf[..n].to_vec()))?;
            if n == 0 {
                return Ok(());
            }
        }
    });
    let mut tcp_out = tcp;
    loop {
        match recv(&mut s, &mut dec)? {
            Some(Message::DataStdout(d)) if d.is_empty() => {
                let _ = tcp_out.shutdown(std::net::Shutdown::Write);
            }
            Some(Message::DataStdout(d)) => tcp_out.write_all(&d)?,
            Some(Message::ExitCode(_)) | None => break,
            Some(_) => {}
        }
    }
    let _ = tcp_out.shutdown(std::net::Shutdown::Both);
    drop(feeder);
    Ok(())
}
