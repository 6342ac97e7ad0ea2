//! Services a qube calls in dom0 (the host), once policy allowed them with
//! `target=dom0` (or `@adminvm`):
//!
//! - `admin.*`: the Admin API, with the calling qube as source and the
//!   target it asked for as destination (`qrexec-client-vm work
//!   admin.vm.property.Get+label` → `admin.vm.property.Get+label` from the
//!   caller to `work`); stdin is the payload, stdout the qubesd-framed
//!   reply, exactly as Qubes' `admin.*` socket services give;
//! - executables in `/etc/bulkhead/qubes-rpc` (`SVC+ARG`, then `SVC`), run
//!   with Qubes' `QREXEC_*` environment;
//! - `qubes.GetDate` built in (`date -u -Iseconds`) when no file overrides it.
//!
//! The caller's bytes arrive as qrexec data messages from its relay and are
//! decoded by the checked decoder; stdin is capped.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;

use bulkhead_proto::qrexec::{self, max_chunk, Decoder, Message};
use bulkhead_proto::qrexec_io::{recv, send};

use crate::server::{Daemon, Reply};

/// Where dom0's qrexec services live (Qubes: `/etc/qubes-rpc`).
pub const RPC_DIR: &str = "/etc/bulkhead/qubes-rpc";
/// Most stdin an admin call may send (its payload).
const MAX_ADMIN_PAYLOAD: usize = bulkhead_proto::admin::MAX_REQUEST;

fn out_all(s: &mut UnixStream, data: &[u8], wrap: fn(Vec<u8>) -> Message) -> io::Result<()> {
    for c in data.chunks(max_chunk(qrexec::PROTOCOL_VERSION)) {
        send(s, &wrap(c.to_vec()))?;
    }
    Ok(())
}

fn finish(s: &mut UnixStream, stdout: &[u8], stderr: &[u8], code: i32) -> io::Result<()> {
    out_all(s, stdout, Message::DataStdout)?;
    send(s, &Message::DataStdout(vec![]))?;
    out_all(s, stderr, Message::DataStderr)?;
    send(s, &Message::DataStderr(vec![]))?;
    send(s, &Message::ExitCode(code as u32))
}

/// dom0 service calls served at once (each holds a host thread).
pub const MAX_DOM0_CALLS: usize = 32;
static ACTIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How long a caller may take to send its whole stdin to a dom0 service.
const STDIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the caller's stdin to EOF, at most `max` bytes, within
/// [`STDIN_DEADLINE`] overall.
fn read_stdin(s: &mut UnixStream, dec: &mut Decoder, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut v = Vec::new();
    let deadline = std::time::Instant::now() + STDIN_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "caller too slow"));
        }
        s.set_read_timeout(Some(left))?;
        match recv(s, dec)? {
            Some(Message::DataStdin(d)) if d.is_empty() => return Ok(Some(v)),
            Some(Message::DataStdin(d)) => {
                if v.len() + d.len() > max {
                    return Ok(None);
                }
                v.extend(d);
            }
            None => return Ok(Some(v)),
            Some(other) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected {other:?}"),
                ))
            }
        }
    }
}

/// Keeps the lines of an `admin.vm.List` reply whose qube the policy lets
/// `source` call `admin.vm.List` on (Qubes filters listings the same way).
fn filter_vm_list(d: &Arc<Daemon>, source: &str, arg: &str, body: &[u8]) -> String {
    let Some(rt) = d.runtime() else {
        return String::new();
    };
    let Ok(policy) = rt.policy.current() else {
        return String::new();
    };
    let sys = crate::qrexec::system(&d.snapshot());
    let argument = format!("+{arg}");
    String::from_utf8_lossy(body)
        .lines()
        .filter(|line| {
            let name = line.split(' ').next().unwrap_or("");
            let target = if name == crate::model::DOM0 {
                "@adminvm"
            } else {
                name
            };
            matches!(
                policy.decide(
                    &sys,
                    &bulkhead_policy::Request {
                        service: "admin.vm.List",
                        argument: &argument,
                        source,
                        target,
                    },
                ),
                bulkhead_policy::Decision::Allow { .. }
            )
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Serves one call from `source` to a dom0 service (at most
/// [`MAX_DOM0_CALLS`] at once; more are refused).
pub fn serve(
    d: &Arc<Daemon>,
    rt: &tokio::runtime::Handle,
    mut s: UnixStream,
    source: &str,
    service: &str,
    requested: &str,
) -> io::Result<()> {
    use std::sync::atomic::Ordering;
    if ACTIVE.fetch_add(1, Ordering::SeqCst) >= MAX_DOM0_CALLS {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
        return finish(
            &mut s,
            b"",
            b"dom0 is busy; try again\n",
            qrexec::EXIT_QREXEC_FAILED,
        );
    }
    let r = serve_one(d, rt, s, source, service, requested);
    ACTIVE.fetch_sub(1, Ordering::SeqCst);
    r
}

fn serve_one(
    d: &Arc<Daemon>,
    rt: &tokio::runtime::Handle,
    mut s: UnixStream,
    source: &str,
    service: &str,
    requested: &str,
) -> io::Result<()> {
    let mut dec = Decoder::new(qrexec::PROTOCOL_VERSION);
    let (svc, arg) = service.split_once('+').unwrap_or((service, ""));
    if svc.starts_with("admin.") {
        let Some(payload) = read_stdin(&mut s, &mut dec, MAX_ADMIN_PAYLOAD)? else {
            return finish(&mut s, b"", b"payload too large\n", 1);
        };
        let dest = match requested {
            "" | "@default" | "@adminvm" => "dom0",
            t => t,
        };
        let raw = bulkhead_proto::admin::encode_request(svc, arg, source, dest, &payload);
        let d2 = d.clone();
        let reply = rt.block_on(async move { d2.handle_request(&raw).await });
        return match reply {
            // As qubesd: a listing shows only the qubes the policy would let
            // this caller name in the same call.
            Some(Reply::Bytes(b)) if svc == "admin.vm.List" && b.starts_with(b"0\0") => {
                let kept = filter_vm_list(d, source, arg, &b[2..]);
                let mut out = b"0\0".to_vec();
                out.extend_from_slice(kept.as_bytes());
                finish(&mut s, &out, b"", 0)
            }
            Some(Reply::Bytes(b)) => finish(&mut s, &b, b"", 0),
            // Event streams are not offered over qrexec (yet).
            Some(Reply::Events(_)) => finish(
                &mut s,
                b"",
                b"admin.Events is not available over qrexec\n",
                1,
            ),
            None => finish(&mut s, b"", b"", 1),
        };
    }
    let full = format!("{svc}+{arg}");
    let file = [full.as_str(), svc]
        .iter()
        .map(|n| std::path::Path::new(RPC_DIR).join(n))
        .find(|p| p.is_file());
    let (keyword, target) = match requested {
        "" | "@default" => (true, "default".to_string()),
        "@adminvm" | "dom0" => (true, "adminvm".to_string()),
        t => (false, t.to_string()),
    };
    let Some(path) = file else {
        if svc == "qubes.GetDate" {
            // Nothing to read: the caller's input is not waited for.
            let _ = s.shutdown(std::net::Shutdown::Read);
            let out = Command::new("date").args(["-u", "-Iseconds"]).output()?;
            return finish(
                &mut s,
                &out.stdout,
                &out.stderr,
                out.status.code().unwrap_or(1),
            );
        }
        return finish(
            &mut s,
            b"",
            format!("no such service in dom0: {svc}\n").as_bytes(),
            qrexec::EXIT_NO_SERVICE,
        );
    };
    // argv[1] of a root process: never something that reads as an option.
    if arg.starts_with('-') {
        return finish(
            &mut s,
            b"",
            b"argument refused\n",
            qrexec::EXIT_QREXEC_FAILED,
        );
    }
    let mut cmd = Command::new(&path);
    if !arg.is_empty() {
        cmd.arg(arg);
    }
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("QREXEC_REMOTE_DOMAIN", source)
        .env("QREXEC_SERVICE_FULL_NAME", &full)
        .env(
            "QREXEC_REQUESTED_TARGET_TYPE",
            if keyword { "keyword" } else { "name" },
        )
        .env(
            if keyword {
                "QREXEC_REQUESTED_TARGET_KEYWORD"
            } else {
                "QREXEC_REQUESTED_TARGET"
            },
            &target,
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !arg.is_empty() {
        cmd.env("QREXEC_SERVICE_ARGUMENT", arg);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return finish(
                &mut s,
                b"",
                format!("cannot run {}: {e}\n", path.display()).as_bytes(),
                qrexec::EXIT_QREXEC_FAILED,
            )
        }
    };
    // The caller's stdin streams into the service; its output streams back.
    let mut stdin = child.stdin.take();
    let mut reader = s.try_clone()?;
    let feeder = std::thread::spawn(move || {
        while let Ok(Some(Message::DataStdin(d))) = recv(&mut reader, &mut dec) {
            if d.is_empty() {
                break;
            }
            if let Some(i) = stdin.as_mut() {
                if i.write_all(&d).is_err() {
                    stdin = None;
                }
            }
        }
    });
    let mut err = Vec::new();
    let mut stderr = child.stderr.take();
    let errs = std::thread::spawn(move || {
        if let Some(e) = stderr.as_mut() {
            let _ = e.take(1 << 20).read_to_end(&mut err);
        }
        err
    });
    let streamed = (|| -> io::Result<()> {
        if let Some(mut o) = child.stdout.take() {
            let mut buf = vec![0u8; max_chunk(qrexec::PROTOCOL_VERSION)];
            loop {
                let n = o.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                send(&mut s, &Message::DataStdout(buf[..n].to_vec()))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = streamed {
        // The caller is gone: no root process or zombie is left behind.
        let _ = child.kill();
        let _ = child.wait();
        let _ = s.shutdown(std::net::Shutdown::Both);
        return Err(e);
    }
    let status = child.wait()?;
    let err = errs.join().unwrap_or_default();
    drop(feeder);
    finish(
        &mut s,
        b"",
        &err,
        status.code().unwrap_or(qrexec::EXIT_QREXEC_FAILED),
    )
}
