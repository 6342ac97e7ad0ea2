//! Seccomp allowlists kept as data — `(name, number, reason)` tables — for
//! Bulkhead's host helpers that parse what qubes send (the qrexec relay, a
//! vm qube's guest-channel helper). [`apply_allowlist`] turns a helper's
//! tables into filters and installs them:
//!
//! - `allow`: permitted;
//! - `refuse`: fail with `EACCES` (harmless probes the runtime may make);
//! - `socket` only for `AF_UNIX`, `clone` only for threads, `clone3` fails
//!   with `ENOSYS` (its flags are unreadable by a filter, glibc then falls
//!   back to `clone`);
//! - anything else kills the process.
//!
//! (No `unsafe` here: `seccompiler` does the installing.)

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// One system call of a table: name, number, why the helper needs it.
pub type Call = (&'static str, i64, &'static str);

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

fn compile(f: Result<SeccompFilter, seccompiler::BackendError>) -> Result<BpfProgram, String> {
    f.map_err(|e| format!("building the seccomp filter: {e}"))?
        .try_into()
        .map_err(|e: seccompiler::BackendError| format!("compiling the seccomp filter: {e}"))
}

/// The allowlist proper: `allow` and `refuse` pass (the refusal filter
/// answers those), unix sockets, threads; everything else kills.
pub fn allow_program(allow: &[Call], refuse: &[Call]) -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr, _) in allow.iter().chain(refuse) {
        rules.insert(*nr, vec![]);
    }
    rules.insert(libc::SYS_clone3, vec![]);
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
    compile(SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    ))
}

/// `refuse` (and `clone3`) fail with an error instead of killing.
pub fn refusal_programs(refuse: &[Call]) -> Result<Vec<BpfProgram>, String> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        refuse.iter().map(|(_, nr, _)| (*nr, vec![])).collect();
    Ok(vec![
        compile(SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
            TargetArch::x86_64,
        ))?,
        compile(SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, vec![])]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            TargetArch::x86_64,
        ))?,
    ])
}

/// Installs the filters on this thread (threads created later inherit
/// them); sets `no_new_privs`. The kernel runs every filter and applies the
/// strictest answer; the allowlist goes last because installing a filter
/// needs `prctl` and `seccomp`, which it does not allow.
pub fn apply_allowlist(allow: &[Call], refuse: &[Call]) -> Result<(), String> {
    let mut programs = refusal_programs(refuse)?;
    programs.push(allow_program(allow, refuse)?);
    for p in &programs {
        seccompiler::apply_filter(p).map_err(|e| format!("installing seccomp: {e}"))?;
    }
    Ok(())
}

/// The calls every threaded Rust helper needs (memory, threads, signals,
/// time, exit), for the helpers' tables to extend.
pub const RUNTIME: &[Call] = &[
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
    ("exit", libc::SYS_exit, "a thread ends"),
    ("exit_group", libc::SYS_exit_group, "the helper ends"),
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

/// No file access once running: refused (an error, not a kill).
pub const NO_FILES: &[Call] = &[
    ("openat", libc::SYS_openat, "no file access once running"),
    ("open", libc::SYS_open, "no file access once running"),
    (
        "newfstatat",
        libc::SYS_newfstatat,
        "no file access once running",
    ),
    ("statx", libc::SYS_statx, "no file access once running"),
];

#[cfg(test)]
mod tests {
    #[test]
    fn the_shared_tables_have_reasons_and_compile() {
        for (name, _, why) in super::RUNTIME.iter().chain(super::NO_FILES) {
            assert!(!why.is_empty(), "{name}");
        }
        super::allow_program(super::RUNTIME, super::NO_FILES).unwrap();
        super::refusal_programs(super::NO_FILES).unwrap();
    }
}
