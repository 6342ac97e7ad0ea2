//! The relay's seccomp allowlist: it parses hostile input, so once its
//! socket is bound it may only do what relaying needs. Anything else kills
//! it (a negative test proves that). Kept as data, one reason per call.
//! Not allowed on purpose: `sendmsg` (a compromised relay must not pass its
//! descriptors, such as its log, into the qube), any non-unix socket.

use bulkhead_sys::seccomp::{apply_allowlist, Call, NO_FILES, RUNTIME};

/// The relay's own calls (besides the threaded runtime's, [`RUNTIME`]).
pub const ALLOW: &[Call] = &[
    ("read", libc::SYS_read, "reading calls and daemon answers"),
    ("write", libc::SYS_write, "relaying data, logging to stderr"),
    ("recvfrom", libc::SYS_recvfrom, "socket reads"),
    ("sendto", libc::SYS_sendto, "socket writes"),
    (
        "recvmsg",
        libc::SYS_recvmsg,
        "receiving the target's connection from bulkheadd",
    ),
    ("accept4", libc::SYS_accept4, "taking the qube's calls"),
    (
        "connect",
        libc::SYS_connect,
        "reaching bulkheadd's policy socket",
    ),
    (
        "setsockopt",
        libc::SYS_setsockopt,
        "read timeouts on the caller's socket",
    ),
    ("shutdown", libc::SYS_shutdown, "ending a call"),
    ("close", libc::SYS_close, "closing sockets"),
    (
        "fcntl",
        libc::SYS_fcntl,
        "duplicating a socket for the second direction",
    ),
];

/// Installs the filters on this thread (threads created later inherit
/// them): [`ALLOW`] and [`RUNTIME`] allowed, file access ([`NO_FILES`])
/// refused, unix sockets and threads only, anything else kills.
pub fn apply() -> Result<(), String> {
    let allow: Vec<Call> = ALLOW.iter().chain(RUNTIME).copied().collect();
    apply_allowlist(&allow, NO_FILES)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_call_has_a_reason_and_the_filters_compile() {
        for (name, _, why) in super::ALLOW {
            assert!(!why.is_empty(), "{name}");
        }
        let allow: Vec<_> = super::ALLOW.iter().chain(super::RUNTIME).copied().collect();
        bulkhead_sys::seccomp::allow_program(&allow, super::NO_FILES).unwrap();
    }
}
