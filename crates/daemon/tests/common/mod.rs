//! Test helpers: start a real `bulkheadd` on a temp state dir and talk raw bytes to it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

/// Name of the current user's primary group, so tests need no groupadd.
pub fn own_group() -> String {
    let out = Command::new("id").arg("-gn").output().expect("run id -gn");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn daemon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bulkheadd"))
}

impl Daemon {
    pub fn start() -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir)
    }

    pub fn start_in(dir: tempfile::TempDir) -> Daemon {
        let socket = dir.path().join("qubesd.sock");
        let child = spawn(&dir.path().join("state"), &socket);
        let d = Daemon { child, dir, socket };
        d.wait_ready();
        d
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn wait_ready(&self) {
        wait_for_socket(&self.socket);
    }

    pub fn call(&self, req: &[u8]) -> Vec<u8> {
        raw_call(&self.socket, req)
    }

    /// Calls with the Python client's framing and returns the reply bytes.
    pub fn req(&self, method: &str, arg: &str, dest: &str, payload: &[u8]) -> Vec<u8> {
        self.call(&bulkhead_proto::admin::encode_request(
            method, arg, "dom0", dest, payload,
        ))
    }

    /// Like `req` but asserts success and returns the body as text.
    pub fn ok(&self, method: &str, arg: &str, dest: &str, payload: &[u8]) -> String {
        let r = self.req(method, arg, dest, payload);
        assert!(
            r.starts_with(b"0\0"),
            "{method}+{arg} on {dest} failed: {:?}",
            String::from_utf8_lossy(&r)
        );
        String::from_utf8_lossy(&r[2..]).into_owned()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.child = spawn(&self.state_dir(), &self.socket);
        self.wait_ready();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn spawn(state: &Path, socket: &Path) -> Child {
    Command::new(daemon_bin())
        .arg("--state-dir")
        .arg(state)
        .arg("--socket")
        .arg(socket)
        .arg("--group")
        .arg(own_group())
        .arg("--policy-dir")
        .arg(state.parent().unwrap_or(state).join("policy.d"))
        .env("BULKHEAD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn bulkheadd")
}

pub fn wait_for_socket(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        // Probe with a real request so a stale socket file does not count.
        if let Ok(mut s) = UnixStream::connect(socket) {
            let _ = s.write_all(b"admin.vm.List+ dom0 name dom0\0");
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut b = Vec::new();
            if s.read_to_end(&mut b).is_ok() && b.starts_with(b"0\0") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("bulkheadd did not come up on {}", socket.display());
}

pub fn raw_call(socket: &Path, req: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.write_all(req).expect("write request");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut b = Vec::new();
    // An aborted connection may surface as ECONNRESET: that is "no reply".
    let _ = s.read_to_end(&mut b);
    b
}

pub fn exc(class: &str, msg: &str) -> Vec<u8> {
    format!("2\0{class}\0\0{msg}\0").into_bytes()
}
