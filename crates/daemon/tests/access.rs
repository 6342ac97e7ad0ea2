//! Socket access: mode 0660, group as configured, others refused.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

/// A system interpreter every user may run (not a per-user shim).
const PY: &str = "/usr/bin/python3";

/// Runs a Python snippet as uid/gid 65534 with no groups; argv[1] is `socket`.
fn as_nobody(script: &str, socket: &std::path::Path) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(PY)
        .arg("-c")
        .arg(script)
        .arg(socket)
        .output()
        .unwrap()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn socket_is_0660_with_the_configured_group() {
    let d = common::Daemon::start();
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let gid = nix::unistd::Group::from_name(&common::own_group())
        .unwrap()
        .unwrap()
        .gid;
    assert_eq!(meta.gid(), gid.as_raw());
}

#[test]
fn a_user_outside_the_group_is_refused() {
    if !is_root() {
        println!("SKIPPED: needs root to run a client as another user");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err()
        || !std::path::Path::new(PY).exists()
    {
        println!("SKIPPED: setpriv (util-linux) or {PY} not installed");
        return;
    }
    let d = common::Daemon::start();
    // Let 'nobody' traverse to the socket so only the socket's own mode and
    // the daemon's peer check stand in the way.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = as_nobody(
            "import socket,sys\n\
             s=socket.socket(socket.AF_UNIX)\n\
             try:\n  s.connect(sys.argv[1])\nexcept PermissionError:\n  print('EACCES'); sys.exit(0)\n\
             s.sendall(b'admin.vm.List+ dom0 name dom0\\0'); s.shutdown(socket.SHUT_WR)\n\
             print('REPLY', len(s.recv(100)))",
        &d.socket,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "EACCES",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Even with the file mode opened up, the daemon's own peer check refuses.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(
            "import socket,sys\n\
             s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
             try:\n  s.sendall(b'admin.vm.List+ dom0 name dom0\\0'); s.shutdown(socket.SHUT_WR); n=len(s.recv(100))\n\
             except (ConnectionResetError, BrokenPipeError):\n  n=0\n\
             print('REPLY', n)",
        &d.socket,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "REPLY 0",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn default_group_bulkhead_is_created() {
    if !is_root() {
        println!("SKIPPED: needs root to create the 'bulkhead' group");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let mut child = Command::new(common::daemon_bin())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(&socket)
        .spawn()
        .unwrap();
    common::wait_for_socket(&socket);
    let group = nix::unistd::Group::from_name("bulkhead")
        .unwrap()
        .expect("group bulkhead exists");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().gid(),
        group.gid.as_raw()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs a daemon that is expected to refuse to start; returns its stderr.
fn refused_start(state: &std::path::Path, socket: &std::path::Path) -> String {
    let out = Command::new(common::daemon_bin())
        .arg("--state-dir")
        .arg(state)
        .arg("--socket")
        .arg(socket)
        .arg("--group")
        .arg(common::own_group())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "daemon started but should have refused"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_second_daemon_on_the_same_socket_or_state_is_refused() {
    let d = common::Daemon::start();
    let err = refused_start(&d.dir.path().join("other"), &d.socket);
    assert!(err.contains("already listening"), "{err}");
    let err = refused_start(&d.state_dir(), &d.dir.path().join("other.sock"));
    assert!(err.contains("in use by another bulkheadd"), "{err}");
}

#[test]
fn newer_schema_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("qubes.json"),
        br#"{"schema_version": 42, "app": {}}"#,
    )
    .unwrap();
    let err = refused_start(&state, &dir.path().join("s.sock"));
    assert!(
        err.contains("newer Bulkhead") && err.contains("schema 42"),
        "{err}"
    );
}
