//! The host end of a `vm` qube's guest channel (`bulkhead-vmm chan`),
//! jailed like QEMU and running as the qube's own uid (the uid of its
//! qrexec relay): it connects to QEMU's virtio-serial chardev socket and
//! multiplexes streams over it with [`bulkhead_vmchan`]:
//!
//! - connections to `/channel/qrexec.sock` (the qube's agent socket, as
//!   on `ns`) become streams to the guest agent;
//! - connections to `/vmm/control.sock` become control streams (`shutdown`);
//! - streams the guest opens reach the relay at `/channel/relay.sock`.
//!
//! Everything the guest sends is parsed here, never in bulkheadd, under a
//! seccomp allowlist ([`ALLOW`]) installed once the sockets are set up. The
//! helper ends when QEMU closes the chardev (the qube stopped).

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::jail::{self, JailSpec};
use bulkhead_sys::seccomp::{apply_allowlist, Call, NO_FILES, RUNTIME};
use bulkhead_vmchan::{port, Mux, Side};

/// Inside the jail: QEMU's sockets and the qube's channel directory.
pub const VMM_DIR: &str = "/vmm";
pub const CHANNEL_DIR: &str = "/channel";
/// QEMU's end of the virtio-serial port, relative to the vmm dir.
pub const CHARDEV_SOCKET: &str = "chan.sock";
/// QEMU's end of the serial console, relative to the vmm dir.
pub const CONSOLE_SOCKET: &str = "console.sock";
/// Most console output kept per run (as the `ns` helper's cap).
pub const CONSOLE_CAP: u64 = 64 << 20;
/// Power control, relative to the vmm dir.
pub const CONTROL_SOCKET: &str = "control.sock";
/// The relay's listening socket, relative to the channel dir.
pub const RELAY_SOCKET: &str = "relay.sock";

/// The helper's own calls once running (besides the threaded runtime's).
/// Not allowed: `sendmsg`/`recvmsg` (no descriptor passing), non-unix
/// sockets, files.
pub const ALLOW: &[Call] = &[
    ("read", libc::SYS_read, "the link and local sockets"),
    ("write", libc::SYS_write, "the link, local sockets, the log"),
    ("recvfrom", libc::SYS_recvfrom, "socket reads"),
    ("sendto", libc::SYS_sendto, "socket writes"),
    (
        "accept4",
        libc::SYS_accept4,
        "connections to the agent and control sockets",
    ),
    (
        "connect",
        libc::SYS_connect,
        "streams the guest opens reach the relay",
    ),
    ("shutdown", libc::SYS_shutdown, "half-closing a stream"),
    ("close", libc::SYS_close, "closing sockets"),
    (
        "fcntl",
        libc::SYS_fcntl,
        "duplicating a socket for the second direction",
    ),
];

/// Installs the helper's seccomp filters (also used by the self-test).
pub fn sandbox() -> Result<(), String> {
    let allow: Vec<Call> = ALLOW.iter().chain(RUNTIME).copied().collect();
    apply_allowlist(&allow, NO_FILES)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChanConfig {
    pub jail: JailSpec,
}

fn listen(path: &Path) -> Result<UnixListener, String> {
    // Bound under a temporary name and renamed: the path only appears once
    // it accepts connections.
    let tmp = path.with_extension("sock.tmp");
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp).map_err(|e| format!("bind {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))?;
    Ok(l)
}

fn serve(listener: UnixListener, mux: Mux, to: u32) {
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            if let Err(e) = mux.open(to, c) {
                eprintln!("bulkhead-vmm chan: {e}");
            }
        }
    });
}

/// Copies `from` into `to` up to `cap` bytes, then notes the cut once and
/// keeps reading (discarding), so the guest never blocks on its console.
pub fn copy_capped(
    mut from: impl std::io::Read,
    mut to: impl std::io::Write,
    cap: u64,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut kept = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(kept);
        }
        let room = cap.saturating_sub(kept) as usize;
        if room > 0 {
            let take = n.min(room);
            to.write_all(&buf[..take])?;
            kept += take as u64;
            if kept == cap {
                to.write_all(b"\n[bulkhead: console output beyond this point discarded]\n")?;
            }
            to.flush()?;
        }
    }
}

/// Runs the helper; returns the process exit code.
pub fn run(cfg: &ChanConfig) -> i32 {
    match run_inner(cfg) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bulkhead-vmm chan: {e}");
            1
        }
    }
}

fn run_inner(cfg: &ChanConfig) -> Result<(), String> {
    jail::enter(&cfg.jail)?;
    let vmm = Path::new(VMM_DIR);
    // QEMU creates its sockets a few milliseconds after it starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    let connect = |name: &str| loop {
        let path = vmm.join(name);
        match UnixStream::connect(&path) {
            Ok(s) => break Ok(s),
            Err(e) if Instant::now() > deadline => {
                break Err(format!("connect {}: {e}", path.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    // The console first: QEMU drops what the guest prints while nobody listens.
    let console = connect(CONSOLE_SOCKET)?;
    std::thread::spawn(move || {
        let _ = copy_capped(console, std::io::stdout(), CONSOLE_CAP);
    });
    let link = connect(CHARDEV_SOCKET)?;
    let writer = link.try_clone().map_err(|e| e.to_string())?;
    let relay = Path::new(CHANNEL_DIR).join(RELAY_SOCKET);
    let mux = Mux::new(
        Box::new(writer),
        Side::Host,
        Box::new(move |p| match p {
            port::RELAY => UnixStream::connect(&relay),
            _ => Err(std::io::Error::other("the host offers only the relay port")),
        }),
    );
    serve(
        listen(&Path::new(CHANNEL_DIR).join(crate::AGENT_SOCKET))?,
        mux.clone(),
        port::AGENT,
    );
    serve(
        listen(&vmm.join(CONTROL_SOCKET))?,
        mux.clone(),
        port::CONTROL,
    );
    sandbox()?;
    mux.run(link)
        .map_err(|e| format!("the guest broke the channel protocol: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn console_output_is_capped_and_the_guest_never_blocks() {
        let input = vec![b'x'; 100_000];
        let mut out = Vec::new();
        let kept = super::copy_capped(&input[..], &mut out, 4096).unwrap();
        assert_eq!(kept, 4096);
        assert!(out.starts_with(&[b'x'; 4096]));
        assert!(String::from_utf8_lossy(&out[4096..]).contains("discarded"));
        let mut out = Vec::new();
        assert_eq!(
            super::copy_capped(&b"short"[..], &mut out, 4096).unwrap(),
            5
        );
        assert_eq!(out, b"short");
    }
}
