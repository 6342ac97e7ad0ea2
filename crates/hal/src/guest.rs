//! The host's end of the guest channel: run a command in a qube through its
//! agent (`MSG_EXEC_CMDLINE` on the agent's socket), streaming stdio.
//!
//! The socket lives in a directory the qube can write, so it is opened
//! without following symlinks and must be a socket: a hostile qube cannot
//! point the host at another socket on the host.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use bulkhead_proto::qrexec::{self, max_chunk, Decoder, Message};

/// How long the agent may take to answer HELLO and accept the call.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Connects to a socket the guest controls, refusing symlinks and non-sockets.
pub fn connect_guest_socket(path: &Path) -> io::Result<UnixStream> {
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.file_type().is_socket() {
        return Err(bad(format!("{} is not a socket", path.display())));
    }
    // Connecting through the O_PATH descriptor names exactly the inode we
    // checked. Non-blocking, so a qube whose listen queue is full cannot
    // hold the caller in connect(): retried until a deadline.
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let addr = UnixAddr::new(format!("/proc/self/fd/{}", f.as_raw_fd()).as_str())
        .map_err(io::Error::from)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let deadline = std::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR)
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let s = UnixStream::from(fd);
    s.set_nonblocking(false)?;
    Ok(s)
}

use bulkhead_proto::qrexec_io::{recv, send};

/// Runs `user:command` in the qube behind `socket`; copies `stdin` to it and
/// its output to `stdout`/`stderr`; returns its exit code.
pub fn exec(
    socket: &Path,
    user: &str,
    command: &str,
    mut stdin: impl Read + Send + 'static,
    mut stdout: impl Write,
    mut stderr: impl Write,
) -> io::Result<i32> {
    let (mut s, mut dec, version) = handshake(socket)?;
    let cmdline = format!("{user}:{command}").into_bytes();
    send(
        &mut s,
        &Message::ExecCmdline {
            connect_domain: 0,
            connect_port: 0,
            cmdline,
        },
    )?;
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    let mut w = s.try_clone()?;
    let chunk = max_chunk(version);
    let feeder = std::thread::spawn(move || -> io::Result<()> {
        let mut buf = vec![0u8; chunk];
        loop {
            let n = stdin.read(&mut buf)?;
            send(&mut w, &Message::DataStdin(buf[..n].to_vec()))?;
            if n == 0 {
                return Ok(());
            }
        }
    });
    loop {
        match recv(&mut s, &mut dec)? {
            Some(Message::DataStdout(d)) => stdout.write_all(&d)?,
            Some(Message::DataStderr(d)) => stderr.write_all(&d)?,
            Some(Message::ExitCode(c)) => {
                stdout.flush()?;
                stderr.flush()?;
                // The command is done: whatever stdin was left is not needed.
                let _ = s.shutdown(std::net::Shutdown::Both);
                drop(feeder);
                return Ok(i32::try_from(c).unwrap_or(qrexec::EXIT_QREXEC_FAILED));
            }
            Some(other) => {
                return Err(bad(format!("unexpected message from the agent: {other:?}")))
            }
            None => return Err(bad("the agent closed the call without an exit code".into())),
        }
    }
}

/// Waits until the agent behind `socket` answers HELLO (the qube is ready
/// for calls), or `timeout` passes.
pub fn wait_ready(socket: &Path, timeout: std::time::Duration) -> io::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = io::Error::other("no attempt made");
    while std::time::Instant::now() < deadline {
        match hello(socket) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the agent did not answer within {timeout:?} ({last})"),
    ))
}

fn hello(socket: &Path) -> io::Result<()> {
    handshake(socket).map(|_| ())
}

/// Connects and exchanges HELLO; returns the stream (still with the
/// handshake deadline set), its decoder and the negotiated version.
pub fn handshake(socket: &Path) -> io::Result<(UnixStream, Decoder, u32)> {
    let mut s = connect_guest_socket(socket)?;
    // A qube that never answers must not hold a host thread forever: the
    // handshake has one deadline (the command itself may run as long as it
    // likes), and exactly one HELLO (12 bytes) is read: a qube cannot drip a
    // long message instead, and nothing after HELLO is lost.
    s.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    send(
        &mut s,
        &Message::Hello {
            version: qrexec::PROTOCOL_VERSION,
        },
    )?;
    let deadline = std::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut hello = [0u8; qrexec::HEADER_LEN + 4];
    let mut got = 0;
    while got < hello.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the agent did not say HELLO in time",
            ));
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut hello[got..])?;
        if n == 0 {
            return Err(bad("the agent closed the connection before HELLO".into()));
        }
        got += n;
    }
    let mut dec = Decoder::new(qrexec::MIN_PROTOCOL_VERSION);
    dec.feed(&hello);
    let version = match dec.next_message().map_err(|e| bad(e.to_string()))? {
        Some(Message::Hello { version }) => {
            qrexec::negotiate(qrexec::PROTOCOL_VERSION, version).map_err(|e| bad(e.to_string()))?
        }
        other => return Err(bad(format!("agent did not say HELLO: {other:?}"))),
    };
    dec.set_version(version);
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    Ok((s, dec, version))
}
