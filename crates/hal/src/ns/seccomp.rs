//! The seccomp filter every `ns` qube runs under: system calls a qube never
//! needs, as data, each with the reason it is refused.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Refused by killing the process: kernel-level operations no qube program
/// has a legitimate use for.
pub const KILL: &[(&str, i64, &str)] = &[
    (
        "init_module",
        libc::SYS_init_module,
        "loads code into the host kernel",
    ),
    (
        "finit_module",
        libc::SYS_finit_module,
        "loads code into the host kernel",
    ),
    (
        "delete_module",
        libc::SYS_delete_module,
        "unloads host kernel modules",
    ),
    (
        "kexec_load",
        libc::SYS_kexec_load,
        "replaces the host kernel",
    ),
    (
        "kexec_file_load",
        libc::SYS_kexec_file_load,
        "replaces the host kernel",
    ),
    ("swapon", libc::SYS_swapon, "host memory management"),
    ("swapoff", libc::SYS_swapoff, "host memory management"),
    ("acct", libc::SYS_acct, "host process accounting"),
    ("iopl", libc::SYS_iopl, "raw I/O port access"),
    ("ioperm", libc::SYS_ioperm, "raw I/O port access"),
    ("uselib", libc::SYS_uselib, "obsolete loader interface"),
    (
        "lookup_dcookie",
        libc::SYS_lookup_dcookie,
        "kernel profiling interface",
    ),
    (
        "open_by_handle_at",
        libc::SYS_open_by_handle_at,
        "can escape mount namespaces (shocker)",
    ),
    (
        "name_to_handle_at",
        libc::SYS_name_to_handle_at,
        "pairs with open_by_handle_at",
    ),
    ("quotactl", libc::SYS_quotactl, "host file system quotas"),
    ("syslog", libc::SYS_syslog, "reads the host kernel log"),
];

/// Refused with EPERM: things programs probe for and handle failing.
pub const EPERM: &[(&str, i64, &str)] = &[
    ("bpf", libc::SYS_bpf, "large kernel attack surface"),
    (
        "perf_event_open",
        libc::SYS_perf_event_open,
        "kernel attack surface and side channels",
    ),
    (
        "keyctl",
        libc::SYS_keyctl,
        "kernel keyring is not namespaced",
    ),
    (
        "add_key",
        libc::SYS_add_key,
        "kernel keyring is not namespaced",
    ),
    (
        "request_key",
        libc::SYS_request_key,
        "kernel keyring is not namespaced",
    ),
    ("userfaultfd", libc::SYS_userfaultfd, "exploit primitive"),
    (
        "mount",
        libc::SYS_mount,
        "the qube's mounts are set up before it starts",
    ),
    (
        "umount2",
        libc::SYS_umount2,
        "the qube's mounts are set up before it starts",
    ),
    (
        "pivot_root",
        libc::SYS_pivot_root,
        "the qube's root is fixed",
    ),
    ("open_tree", libc::SYS_open_tree, "new mount API"),
    ("move_mount", libc::SYS_move_mount, "new mount API"),
    ("fsopen", libc::SYS_fsopen, "new mount API"),
    ("fsconfig", libc::SYS_fsconfig, "new mount API"),
    ("fsmount", libc::SYS_fsmount, "new mount API"),
    ("fspick", libc::SYS_fspick, "new mount API"),
    ("mount_setattr", libc::SYS_mount_setattr, "new mount API"),
    (
        "unshare",
        libc::SYS_unshare,
        "nested namespaces widen the kernel attack surface",
    ),
    ("setns", libc::SYS_setns, "joining other namespaces"),
];

fn program(list: &[(&str, i64, &str)], action: SeccompAction) -> Result<BpfProgram, String> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        list.iter().map(|(_, nr, _)| (*nr, vec![])).collect();
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, TargetArch::x86_64)
        .map_err(|e| format!("building seccomp filter: {e}"))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| format!("compiling seccomp filter: {e}"))
}

/// Installs both filters on the calling thread (inherited across exec).
pub fn apply() -> Result<(), String> {
    for (list, action) in [
        (KILL, SeccompAction::KillProcess),
        (EPERM, SeccompAction::Errno(libc::EPERM as u32)),
    ] {
        let prog = program(list, action)?;
        seccompiler::apply_filter(&prog).map_err(|e| format!("installing seccomp filter: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_refused_syscall_has_a_reason_and_filters_compile() {
        for (name, _, why) in super::KILL.iter().chain(super::EPERM) {
            assert!(!why.is_empty(), "{name}");
        }
        super::program(super::KILL, seccompiler::SeccompAction::KillProcess).unwrap();
        super::program(super::EPERM, seccompiler::SeccompAction::Errno(1)).unwrap();
    }
}
