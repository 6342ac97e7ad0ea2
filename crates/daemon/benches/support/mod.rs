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
