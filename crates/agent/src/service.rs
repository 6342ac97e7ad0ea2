//! What a qrexec command line asks for, resolved inside the qube.
//!
//! `user:QUBESRPC SVC+ARG SOURCE [TYPE TARGET]` runs a service found as Qubes
//! does (`SVC+ARG` before `SVC`, in each directory of the service path in
//! turn); anything else after `user:` is a shell command (the host only sends
//! those on the user's behalf).

use std::path::{Path, PathBuf};

use bulkhead_proto::qrexec;

/// Where services are looked up, in order (Qubes' compiled-in path).
pub const SERVICE_PATH: [&str; 3] = [
    "/run/qubes-rpc",
    "/usr/local/etc/qubes-rpc",
    "/etc/qubes-rpc",
];

/// A resolved request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Run `/bin/sh -c` this.
    Shell(String),
    /// Run this executable service.
    Service {
        path: PathBuf,
        /// argv[1] when the argument is not empty.
        arg: String,
        full_name: String,
        source: String,
    },
}

/// Why a request cannot run: (qrexec exit code, message).
pub type Refusal = (i32, String);

/// Longest service name with its argument (Qubes' `MAX_SERVICE_NAME_LEN`).
pub const MAX_SERVICE_NAME: usize = 65000;

fn valid_service_part(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

/// Resolves the part of a command line after `user:`, looking services up
/// under `roots` (the service path, overridable for tests).
pub fn resolve(command: &str, roots: &[&Path]) -> Result<Request, Refusal> {
    let Some(rest) = command.strip_prefix("QUBESRPC ") else {
        return Ok(Request::Shell(command.to_string()));
    };
    let mut words = rest.split(' ');
    let full = words.next().unwrap_or_default();
    let source = words.next().unwrap_or_default().to_string();
    if full.len() > MAX_SERVICE_NAME || !valid_service_part(full) {
        return Err((
            qrexec::EXIT_QREXEC_FAILED,
            format!("invalid service name {full:?}"),
        ));
    }
    let (svc, arg) = full.split_once('+').unwrap_or((full, ""));
    if svc.is_empty() || svc.contains('+') {
        return Err((
            qrexec::EXIT_QREXEC_FAILED,
            format!("invalid service name {full:?}"),
        ));
    }
    let with_arg = format!("{svc}+{arg}");
    for root in roots {
        for name in [with_arg.as_str(), svc] {
            let p = root.join(name);
            if let Ok(m) = std::fs::metadata(&p) {
                use std::os::unix::fs::PermissionsExt;
                if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                    return Ok(Request::Service {
                        path: p,
                        arg: arg.to_string(),
                        full_name: with_arg.clone(),
                        source,
                    });
                }
                return Err((
                    qrexec::EXIT_QREXEC_FAILED,
                    format!("service {} is not an executable file (other kinds come with qube-to-qube RPC)", p.display()),
                ));
            }
        }
    }
    Err((qrexec::EXIT_NO_SERVICE, format!("no such service: {svc}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_prefers_svc_arg_then_svc_and_refuses_traversal() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let exe = |name: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let plain = exe("my.Svc");
        let special = exe("my.Svc+x");
        let roots = [d.path()];
        let r = |c: &str| resolve(c, &roots);
        assert!(
            matches!(r("QUBESRPC my.Svc+x dom0"), Ok(Request::Service { path, .. }) if path == special)
        );
        match r("QUBESRPC my.Svc+y work").unwrap() {
            Request::Service {
                path,
                arg,
                full_name,
                source,
            } => {
                assert_eq!(
                    (path, arg.as_str(), full_name.as_str(), source.as_str()),
                    (plain, "y", "my.Svc+y", "work")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r("QUBESRPC none.Such dom0").unwrap_err().0,
            qrexec::EXIT_NO_SERVICE
        );
        assert_eq!(
            r("QUBESRPC ../etc/passwd dom0").unwrap_err().0,
            qrexec::EXIT_QREXEC_FAILED
        );
        assert_eq!(
            r("QUBESRPC a/b dom0").unwrap_err().0,
            qrexec::EXIT_QREXEC_FAILED
        );
        assert_eq!(r("echo hi").unwrap(), Request::Shell("echo hi".into()));
    }
}
