//! The seccomp filter every `ns` qube runs under: system calls a qube never
//! needs, as data, each with the reason it is refused.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

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

/// Namespace-creating `clone` flags (`unshare` is refused outright; the same
/// rule must hold for `clone`).
const CLONE_NS_FLAGS: [u64; 7] = [
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];

fn program(list: &[(&str, i64, &str)], action: SeccompAction) -> Result<BpfProgram, String> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        list.iter().map(|(_, nr, _)| (*nr, vec![])).collect();
    compile(rules, action)
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    action: SeccompAction,
) -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, TargetArch::x86_64)
        .map_err(|e| format!("building seccomp filter: {e}"))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| format!("compiling seccomp filter: {e}"))
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

/// Argument-dependent refusals (EPERM): `clone` creating namespaces, and
/// terminal ioctls that push input into someone else's terminal.
fn conditional() -> Result<BpfProgram, String> {
    let mut rules = BTreeMap::new();
    let clone_rules = CLONE_NS_FLAGS
        .iter()
        .map(|f| {
            SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(*f), *f)?])
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let tty_rules = [libc::TIOCSTI, libc::TIOCLINUX]
        .iter()
        .map(|req| {
            SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, *req)?]).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    rules.insert(libc::SYS_ioctl, tty_rules);
    compile(rules, SeccompAction::Errno(libc::EPERM as u32))
}

/// `clone3` hides its flags in memory a filter cannot read: ENOSYS makes libc
/// fall back to `clone`, whose flags the filter above checks.
fn clone3() -> Result<BpfProgram, String> {
    let rules = BTreeMap::from([(libc::SYS_clone3, vec![])]);
    compile(rules, SeccompAction::Errno(libc::ENOSYS as u32))
}

/// x32 system calls carry the x86-64 audit arch with bit 30 set in the
/// number, so they would slip past number-based rules: kill them all.
fn no_x32() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        // seccomp_data.nr is at offset 0.
        ins(LD_W_ABS, 0, 0, 0),
        ins(JGE_K, 0, 1, 0x4000_0000),
        ins(RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        ins(RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
}

/// Installs every filter on the calling thread (inherited across exec).
/// Note: this sets no_new_privs, so setuid programs (sudo) do not elevate
/// inside `ns` qubes; root commands go through the agent instead.
pub fn apply() -> Result<(), String> {
    let programs = [
        program(KILL, SeccompAction::KillProcess)?,
        program(EPERM, SeccompAction::Errno(libc::EPERM as u32))?,
        conditional()?,
        clone3()?,
        no_x32(),
    ];
    for prog in programs {
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
        super::conditional().unwrap();
        super::clone3().unwrap();
        assert_eq!(super::no_x32().len(), 4);
    }
}
