//! What the daemon benchmarks share: the workspace's binaries, a real
//! `bulkheadd` on a throwaway dir (with a policy dir), the CLI, percentiles.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A binary built next to `bulkheadd`.
pub fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bulkheadd")).with_file_name(name)
}

/// The `p` quantile of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// For a bench that makes qrexec calls: checks root and the binaries it
/// needs (saying why it skips), and makes its throwaway dir with a policy
/// allowing `test.True` and `qubes.Filecopy` everywhere.
pub fn qrexec_bench_dir(name: &str, bins: &[&str]) -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        println!("{name} bench: needs root; skipped");
        return None;
    }
    for b in bins {
        if !bin(b).exists() {
            println!("{name} bench: {b} not built; run `cargo build --release --workspace` first");
            return None;
        }
    }
    let dir = std::env::temp_dir().join(format!("bulkhead-{name}-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("policy.d")).unwrap();
    std::fs::write(
        dir.join("policy.d/30-bench.policy"),
        "test.True * @anyvm @anyvm allow\nqubes.Filecopy * @anyvm @anyvm allow\n",
    )
    .unwrap();
    Some(dir)
}

/// Resident memory of a process, KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// One qrexec call from a qube's relay socket, as `qrexec-client-vm` makes
/// it (empty input); returns the service's exit code.
pub fn relay_call(relay: &Path, target: &str, service: &str) -> u32 {
    use bulkhead_proto::qrexec::Message;
    use bulkhead_proto::qrexec_io::{hello, recv, send};
    let mut s = UnixStream::connect(relay).unwrap();
    // A figure, not a hang: a call that takes this long fails the bench.
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let (mut dec, _) = hello(&mut s).unwrap();
    send(
        &mut s,
        &Message::TriggerService3 {
            target_domain: target.into(),
            ident: "SOCKET1".into(),
            service_name: service.into(),
        },
    )
    .unwrap();
    assert!(matches!(
        recv(&mut s, &mut dec).unwrap(),
        Some(Message::ServiceConnect { .. })
    ));
    send(&mut s, &Message::DataStdin(vec![])).unwrap();
    loop {
        match recv(&mut s, &mut dec).unwrap() {
            Some(Message::ExitCode(c)) => return c,
            Some(_) => {}
            None => panic!("no exit code"),
        }
    }
}

/// A running daemon; on drop its qubes are shut down, it is stopped and its
/// directory removed.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl Daemon {
    /// Starts `bulkheadd` with its state, socket and `policy.d` under `dir`,
    /// builds the minimal template as `template` and makes `ns` the default.
    pub fn start(dir: &Path, template: &str) -> Daemon {
        Self::start_mode(dir, template, "ns")
    }

    /// As [`Daemon::start`], with `mode` (`ns` or `vm`) the default virt_mode.
    pub fn start_mode(dir: &Path, template: &str, mode: &str) -> Daemon {
        std::fs::create_dir_all(dir.join("policy.d")).unwrap();
        let socket = dir.join("qubesd.sock");
        let child = Command::new(bin("bulkheadd"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(&socket)
            .arg("--policy-dir")
            .arg(dir.join("policy.d"))
            .args(["--group", "root"])
            .env("BULKHEAD_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let d = Daemon {
            child,
            socket,
            dir: dir.to_path_buf(),
        };
        d.cli(&["template", "build", "minimal", "--name", template]);
        d.cli(&["global-prefs", "default_virt_mode", mode]);
        d
    }

    /// Runs the `bulkhead` CLI against this daemon; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let o = Command::new(bin("bulkhead"))
            .args(args)
            .env("BULKHEAD_SOCKET", &self.socket)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.cli(&["shutdown", "--all", "--wait"]);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
