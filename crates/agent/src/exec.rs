//! One qrexec call on one connection: HELLO, EXEC_CMDLINE, then data both
//! ways until the command exits.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bulkhead_proto::qrexec::{self, max_chunk, Decoder, Message};

use crate::reaper::Reaper;

/// A user from the qube's `/etc/passwd`.
struct User {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn lookup_user(name: &str) -> Option<User> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 6 || f[0] != name {
            return None;
        }
        Some(User {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_string(),
        })
    })
}

fn send(out: &Mutex<UnixStream>, m: &Message) -> io::Result<()> {
    bulkhead_proto::qrexec_io::send(&mut *out.lock().unwrap_or_else(|e| e.into_inner()), m)
}

use bulkhead_proto::qrexec_io::recv;

fn pump(
    mut from: impl Read,
    out: &Mutex<UnixStream>,
    chunk: usize,
    wrap: fn(Vec<u8>) -> Message,
) -> io::Result<()> {
    let ty = match wrap(Vec::new()) {
        Message::DataStderr(_) => qrexec::msg::DATA_STDERR,
        _ => qrexec::msg::DATA_STDOUT,
    };
    let mut buf = vec![0u8; chunk];
    loop {
        let n = from.read(&mut buf)?;
        // Header and body straight from the read buffer (no copies).
        bulkhead_proto::qrexec_io::write_data(
            &mut *out.lock().unwrap_or_else(|e| e.into_inner()),
            ty,
            &buf[..n],
        )?;
        if n == 0 {
            return Ok(());
        }
    }
}

/// Serves one call; errors are reported to the caller where possible.
pub fn serve(mut stream: UnixStream, reaper: &Reaper) -> io::Result<()> {
    let out = Arc::new(Mutex::new(stream.try_clone()?));
    send(
        &out,
        &Message::Hello {
            version: qrexec::PROTOCOL_VERSION,
        },
    )?;
    let mut dec = Decoder::new(qrexec::MIN_PROTOCOL_VERSION);
    let version = match recv(&mut stream, &mut dec)? {
        Some(Message::Hello { version }) => qrexec::negotiate(qrexec::PROTOCOL_VERSION, version)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected HELLO, got {other:?}"),
            ))
        }
    };
    dec.set_version(version);
    let (cmdline, just_exec) = match recv(&mut stream, &mut dec)? {
        Some(Message::ExecCmdline { cmdline, .. }) => (cmdline, false),
        Some(Message::JustExec { cmdline, .. }) => (cmdline, true),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected EXEC_CMDLINE, got {other:?}"),
            ))
        }
    };
    let fail = |code: i32, msg: &str| -> io::Result<()> {
        send(&out, &Message::DataStdout(vec![]))?;
        send(
            &out,
            &Message::DataStderr(format!("bulkhead-agent: {msg}\n").into_bytes()),
        )?;
        send(&out, &Message::DataStderr(vec![]))?;
        send(&out, &Message::ExitCode(code as u32))
    };
    let text = String::from_utf8_lossy(&cmdline).into_owned();
    let Some((user, command)) = text.split_once(':') else {
        return fail(
            qrexec::EXIT_QREXEC_FAILED,
            "command line has no 'user:' prefix",
        );
    };
    let roots: Vec<&std::path::Path> = crate::service::SERVICE_PATH
        .iter()
        .map(std::path::Path::new)
        .collect();
    let request = match crate::service::resolve(command, &roots) {
        Ok(r) => r,
        Err((code, msg)) => return fail(code, &msg),
    };
    if let crate::service::Request::Socket { .. } | crate::service::Request::Tcp { .. } = &request {
        return connect_service(stream, out, dec, version, &request);
    }
    // Qubes' "DEFAULT" user is the qube's default user; the host normally
    // substitutes it, but a bare DEFAULT means "user".
    let user = if user == "DEFAULT" { "user" } else { user };
    // A service may insist on its user (rpc-config `force-user`).
    let user = match &request {
        crate::service::Request::Service {
            force_user: Some(u),
            ..
        } => u.as_str(),
        _ => user,
    };
    let Some(u) = lookup_user(user) else {
        return fail(
            qrexec::EXIT_QREXEC_FAILED,
            &format!("no user '{user}' in this qube"),
        );
    };
    let mut cmd = match &request {
        crate::service::Request::Shell(c) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(c);
            cmd
        }
        crate::service::Request::Service { path, arg, .. } => {
            let mut cmd = Command::new(path);
            if !arg.is_empty() {
                cmd.arg(arg);
            }
            cmd
        }
        _ => {
            return fail(
                qrexec::EXIT_QREXEC_FAILED,
                "internal: unexpected service kind",
            )
        }
    };
    cmd.uid(u.uid)
        .gid(u.gid)
        .env_clear()
        .env("HOME", &u.home)
        .env("USER", &u.name)
        .env("LOGNAME", &u.name)
        .env("SHELL", "/bin/sh")
        .env(
            "PATH",
            "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        )
        .current_dir(if std::path::Path::new(&u.home).is_dir() {
            u.home.as_str()
        } else {
            "/"
        });
    if let crate::service::Request::Service {
        arg,
        full_name,
        source,
        ..
    } = &request
    {
        cmd.env("QREXEC_REMOTE_DOMAIN", source)
            .env("QREXEC_SERVICE_FULL_NAME", full_name);
        if !arg.is_empty() {
            cmd.env("QREXEC_SERVICE_ARGUMENT", arg);
        }
    }
    if just_exec {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        return match reaper.spawn(&mut cmd) {
            Ok(c) => {
                let pid = c.id();
                let r = reaper.clone();
                std::thread::spawn(move || r.wait(pid));
                Ok(())
            }
            Err(e) => Err(e),
        };
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match reaper.spawn(&mut cmd) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                qrexec::EXIT_QREXEC_FAILED,
                &format!("cannot run the command: {e}"),
            )
        }
    };
    let pid = child.id();
    // Bigger pipes: fewer wake-ups when a service streams a lot (qvm-copy).
    for fd in [
        child.stdin.as_ref().map(std::os::fd::AsFd::as_fd),
        child.stdout.as_ref().map(std::os::fd::AsFd::as_fd),
    ]
    .into_iter()
    .flatten()
    {
        let _ = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    }
    let chunk = max_chunk(version);
    let (o, e) = (out.clone(), out.clone());
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| io::Error::other("no stderr"))?;
    let t_out = std::thread::spawn(move || pump(stdout, &o, chunk, Message::DataStdout));
    let t_err = std::thread::spawn(move || pump(stderr, &e, chunk, Message::DataStderr));
    // Caller's stdin, until its empty DATA_STDIN (EOF) or the connection ends.
    // Each body is read once into a reused buffer and written to the
    // service (no decode copies); bytes that arrived behind the command
    // line are kept.
    let mut stdin = child.stdin.take();
    let mut reader = std::io::Cursor::new(dec.into_pending()).chain(stream.try_clone()?);
    std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(max_chunk(version));
        while let Ok(Some(ty)) =
            bulkhead_proto::qrexec_io::read_data(&mut reader, version, &mut buf)
        {
            if ty != qrexec::msg::DATA_STDIN || buf.is_empty() {
                break;
            }
            if let Some(s) = stdin.as_mut() {
                if s.write_all(&buf).is_err() {
                    stdin = None;
                }
            }
        }
        drop(stdin);
    });
    let _ = t_out.join();
    if let crate::service::Request::Service {
        exit_on_eof: true, ..
    } = &request
    {
        // The service closed its output: the call is over (rpc-config
        // exit-on-service-eof); the process may go on, reaped later.
        send(&out, &Message::DataStderr(vec![]))?;
        send(&out, &Message::ExitCode(0))?;
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let r = reaper.clone();
        std::thread::spawn(move || r.wait(pid));
        return Ok(());
    }
    let _ = t_err.join();
    let code = reaper.wait(pid);
    send(&out, &Message::ExitCode(code as u32))?;
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// Socket and `/dev/tcp` services: connect, send the descriptor (sockets),
/// then relay the caller's stdin to the connection and its output back,
/// until the service closes its end.
fn connect_service(
    stream: UnixStream,
    out: Arc<Mutex<UnixStream>>,
    mut dec: Decoder,
    version: u32,
    request: &crate::service::Request,
) -> io::Result<()> {
    use crate::service::Request;
    let conn: Box<dyn ReadWrite> = match request {
        Request::Socket { path, descriptor } => {
            let mut s = match UnixStream::connect(path) {
                Ok(s) => s,
                Err(e) => {
                    return fail_on(&out, &format!("cannot connect to {}: {e}", path.display()))
                }
            };
            if let Some(d) = descriptor {
                s.write_all(d.as_bytes())?;
                s.write_all(&[0])?;
            }
            Box::new(s)
        }
        Request::Tcp { host, port } => match std::net::TcpStream::connect((host.as_str(), *port)) {
            Ok(s) => Box::new(s),
            Err(e) => return fail_on(&out, &format!("cannot connect to {host}:{port}: {e}")),
        },
        _ => return fail_on(&out, "internal: not a connecting service"),
    };
    let (mut rd, mut wr) = conn.split()?;
    let mut reader = stream.try_clone()?;
    let feeder = std::thread::spawn(move || {
        while let Ok(Some(Message::DataStdin(d))) = recv(&mut reader, &mut dec) {
            if d.is_empty() || wr.write_all(&d).is_err() {
                break;
            }
        }
        wr.close_write();
    });
    let mut buf = vec![0u8; max_chunk(version)];
    loop {
        let n = rd.read(&mut buf).unwrap_or_default();
        send(&out, &Message::DataStdout(buf[..n].to_vec()))?;
        if n == 0 {
            break;
        }
    }
    send(&out, &Message::DataStderr(vec![]))?;
    send(&out, &Message::ExitCode(0))?;
    let _ = stream.shutdown(std::net::Shutdown::Both);
    drop(feeder);
    Ok(())
}

fn fail_on(out: &Mutex<UnixStream>, msg: &str) -> io::Result<()> {
    send(out, &Message::DataStdout(vec![]))?;
    send(
        out,
        &Message::DataStderr(format!("bulkhead-agent: {msg}\n").into_bytes()),
    )?;
    send(out, &Message::DataStderr(vec![]))?;
    send(out, &Message::ExitCode(qrexec::EXIT_QREXEC_FAILED as u32))
}

/// A connected byte stream that can be split into a reader and a writer.
trait ReadWrite: Read + Write + Send {
    fn split(self: Box<Self>) -> io::Result<(Box<dyn Read + Send>, Box<dyn HalfClose>)>;
}

/// The write half, which can signal end of input.
trait HalfClose: Write + Send {
    fn close_write(&mut self);
}

impl HalfClose for UnixStream {
    fn close_write(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl HalfClose for std::net::TcpStream {
    fn close_write(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl ReadWrite for UnixStream {
    fn split(self: Box<Self>) -> io::Result<(Box<dyn Read + Send>, Box<dyn HalfClose>)> {
        let w = self.try_clone()?;
        Ok((self, Box::new(w)))
    }
}

impl ReadWrite for std::net::TcpStream {
    fn split(self: Box<Self>) -> io::Result<(Box<dyn Read + Send>, Box<dyn HalfClose>)> {
        let w = self.try_clone()?;
        Ok((self, Box::new(w)))
    }
}
