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
        /// `force-user` from the service's rpc-config: run as this user.
        force_user: Option<String>,
        /// `exit-on-service-eof`: the call ends when the service closes its
        /// output, even if the process keeps running.
        exit_on_eof: bool,
    },
    /// Connect to this unix socket, send the service descriptor (unless
    /// configured off), then relay data (Qubes' socket services).
    Socket {
        path: PathBuf,
        descriptor: Option<String>,
    },
    /// Connect to this TCP address (a `/dev/tcp/…` link), then relay data.
    Tcp { host: String, port: u16 },
}

/// Where per-service settings live (Qubes' `rpc-config`).
pub const CONFIG_DIR: &str = "/etc/qubes/rpc-config";

/// A per-service setting (`key=value` lines in `CONFIG_DIR/SVC+ARG` or
/// `CONFIG_DIR/SVC`), if set.
fn config(svc: &str, with_arg: &str, key: &str) -> Option<String> {
    [with_arg, svc].iter().find_map(|n| {
        let text = std::fs::read_to_string(Path::new(CONFIG_DIR).join(n)).ok()?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('\'').trim_matches('"').to_string())
        })
    })
}

/// Parses a `/dev/tcp/HOST/PORT` link target, taking what is missing from
/// the service argument (`PORT`, or `HOST+PORT`).
fn tcp_target(link: &str, arg: &str) -> Option<(String, u16)> {
    let rest = link.strip_prefix("/dev/tcp")?;
    let parts: Vec<&str> = rest
        .trim_start_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let (host, port) = match parts.as_slice() {
        [h, p] => (h.to_string(), p.to_string()),
        [h] => (h.to_string(), arg.to_string()),
        [] => {
            let (h, p) = arg.split_once('+')?;
            (h.to_string(), p.to_string())
        }
        _ => return None,
    };
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    valid_host.then_some((host, port))
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
            if let Ok(target) = std::fs::read_link(&p) {
                if target.starts_with("/dev/tcp") {
                    return match tcp_target(&target.to_string_lossy(), arg) {
                        Some((host, port)) => Ok(Request::Tcp { host, port }),
                        None => Err((
                            qrexec::EXIT_QREXEC_FAILED,
                            format!("service {} names no valid TCP address", p.display()),
                        )),
                    };
                }
            }
            if let Ok(m) = std::fs::metadata(&p) {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                if m.file_type().is_socket() {
                    let skip = config(svc, &with_arg, "skip-service-descriptor")
                        .is_some_and(|v| v == "true" || v == "1");
                    return Ok(Request::Socket {
                        path: p,
                        descriptor: (!skip).then(|| format!("{with_arg} {source}")),
                    });
                }
                if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                    return Ok(Request::Service {
                        path: p,
                        arg: arg.to_string(),
                        full_name: with_arg.clone(),
                        source,
                        force_user: config(svc, &with_arg, "force-user").filter(|u| !u.is_empty()),
                        exit_on_eof: config(svc, &with_arg, "exit-on-service-eof")
                            .is_some_and(|v| v == "true" || v == "1"),
                    });
                }
                return Err((
                    qrexec::EXIT_QREXEC_FAILED,
                    format!(
                        "service {} is not an executable, a socket or a /dev/tcp link",
                        p.display()
                    ),
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
                ..
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

    #[test]
    fn dev_tcp_links_take_what_is_missing_from_the_argument() {
        assert_eq!(
            tcp_target("/dev/tcp/127.0.0.1/22", "x"),
            Some(("127.0.0.1".into(), 22))
        );
        assert_eq!(
            tcp_target("/dev/tcp/127.0.0.1", "8082"),
            Some(("127.0.0.1".into(), 8082))
        );
        assert_eq!(
            tcp_target("/dev/tcp", "10.0.0.1+443"),
            Some(("10.0.0.1".into(), 443))
        );
        for (link, arg) in [
            ("/dev/tcp/h", "0"),
            ("/dev/tcp/h", "x"),
            ("/dev/tcp", "h"),
            ("/dev/tcp/a/b/c", ""),
            ("/dev/tcp/h;rm/1", ""),
        ] {
            assert_eq!(tcp_target(link, arg), None, "{link} {arg}");
        }
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/tcp/127.0.0.1", d.path().join("qubes.ConnectTCP"))
            .unwrap();
        let roots = [d.path()];
        assert_eq!(
            resolve("QUBESRPC qubes.ConnectTCP+22 work", &roots).unwrap(),
            Request::Tcp {
                host: "127.0.0.1".into(),
                port: 22
            }
        );
        let l = std::os::unix::net::UnixListener::bind(d.path().join("my.Sock")).unwrap();
        assert_eq!(
            resolve("QUBESRPC my.Sock+a work", &roots).unwrap(),
            Request::Socket {
                path: d.path().join("my.Sock"),
                descriptor: Some("my.Sock+a work".into())
            }
        );
        drop(l);
    }
}
