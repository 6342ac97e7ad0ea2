//! The relay's seccomp allowlist: it parses hostile input, so once its
//! socket is bound it may only do what relaying needs. Anything else kills
//! it (a negative test proves that). Kept as data, one reason per call.
//! Not allowed on purpose: `sendmsg` (a compromised relay must not pass its
//! descriptors, such as its log, into the qube), any non-unix socket.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Allowed without conditions.
pub const ALLOW: &[(&str, i64, &str)] = &[
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
    ("futex", libc::SYS_futex, "thread synchronisation"),
    ("brk", libc::SYS_brk, "memory allocation"),
    ("mmap", libc::SYS_mmap, "memory allocation, thread stacks"),
    ("munmap", libc::SYS_munmap, "memory release"),
    ("mprotect", libc::SYS_mprotect, "thread stack guard pages"),
    ("madvise", libc::SYS_madvise, "memory release"),
    ("mremap", libc::SYS_mremap, "growing buffers"),
    ("gettid", libc::SYS_gettid, "thread start-up"),
    ("rseq", libc::SYS_rseq, "thread start-up (glibc)"),
    (
        "set_robust_list",
        libc::SYS_set_robust_list,
        "thread start-up (glibc)",
    ),
    (
        "sigaltstack",
        libc::SYS_sigaltstack,
        "thread start-up (Rust's stack-overflow guard)",
    ),
    ("rt_sigaction", libc::SYS_rt_sigaction, "thread start-up"),
    (
        "rt_sigprocmask",
        libc::SYS_rt_sigprocmask,
        "thread start-up",
    ),
    (
        "rt_sigreturn",
        libc::SYS_rt_sigreturn,
        "returning from a signal handler",
    ),
    (
        "sched_getaffinity",
        libc::SYS_sched_getaffinity,
        "thread start-up",
    ),
    ("sched_yield", libc::SYS_sched_yield, "lock contention"),
    ("exit", libc::SYS_exit, "a call's thread ends"),
    ("exit_group", libc::SYS_exit_group, "the relay ends"),
    ("nanosleep", libc::SYS_nanosleep, "sleeping"),
    ("clock_nanosleep", libc::SYS_clock_nanosleep, "sleeping"),
    (
        "clock_gettime",
        libc::SYS_clock_gettime,
        "time (when the vDSO is not used)",
    ),
    ("getrandom", libc::SYS_getrandom, "hash seeds"),
    (
        "restart_syscall",
        libc::SYS_restart_syscall,
        "interrupted calls",
    ),
];

/// Refused with an error (not killed): harmless probes the runtime may make.
pub const REFUSE: &[(&str, i64, &str)] = &[
    ("openat", libc::SYS_openat, "no file access once running"),
    ("open", libc::SYS_open, "no file access once running"),
    (
        "newfstatat",
        libc::SYS_newfstatat,
        "no file access once running",
    ),
    ("statx", libc::SYS_statx, "no file access once running"),
    (
        "clone3",
        libc::SYS_clone3,
        "flags unreadable by a filter: ENOSYS makes glibc use clone",
    ),
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

fn program() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // The refused calls pass this filter so that the stricter answer of
    // the refusal filters (an error) is what the kernel applies, not a kill.
    for (_, nr, _) in ALLOW.iter().chain(REFUSE) {
        rules.insert(*nr, vec![]);
    }
    // Unix sockets only: no network, ever.
    rules.insert(
        libc::SYS_socket,
        vec![
            SeccompRule::new(vec![cond(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)?])
                .map_err(|e| e.to_string())?,
        ],
    );
    // Threads only: no fork, no namespaces.
    let t = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![
            SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(t), t)?])
                .map_err(|e| e.to_string())?,
        ],
    );
    let allow: BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| format!("building the seccomp filter: {e}"))?
    .try_into()
    .map_err(|e: seccompiler::BackendError| format!("compiling the seccomp filter: {e}"))?;
    Ok(allow)
}

fn refusals() -> Result<BpfProgram, String> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = REFUSE
        .iter()
        .filter(|(_, nr, _)| *nr != libc::SYS_clone3)
        .map(|(_, nr, _)| (*nr, vec![]))
        .collect();
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| format!("building the seccomp filter: {e}"))?
    .try_into()
    .map_err(|e: seccompiler::BackendError| format!("compiling the seccomp filter: {e}"))
}

fn clone3_enosys() -> Result<BpfProgram, String> {
    SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| format!("building the seccomp filter: {e}"))?
    .try_into()
    .map_err(|e: seccompiler::BackendError| format!("compiling the seccomp filter: {e}"))
}

/// Installs the filters on this thread (threads created later inherit
/// them). Sets no_new_privs.
pub fn apply() -> Result<(), String> {
    // The kernel runs every filter and takes the strictest answer; the
    // allowlist lets the refused calls through so their errors apply.
    // The allowlist goes last: installing a filter needs prctl and seccomp,
    // which it does not allow.
    for p in [refusals()?, clone3_enosys()?, program()?] {
        seccompiler::apply_filter(&p).map_err(|e| format!("installing seccomp: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_call_has_a_reason_and_the_filters_compile() {
        for (name, _, why) in super::ALLOW.iter().chain(super::REFUSE) {
            assert!(!why.is_empty(), "{name}");
        }
        super::program().unwrap();
        super::refusals().unwrap();
        super::clone3_enosys().unwrap();
    }
}
