//! The vm channel helper's seccomp allowlist really holds: a forbidden
//! system call kills it.

#[test]
fn a_forbidden_syscall_kills_the_sandboxed_channel_helper() {
    use std::os::unix::process::ExitStatusExt;
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead-vmm"))
        .arg("selftest-seccomp")
        .status()
        .unwrap();
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st:?}");
    assert!(!std::path::Path::new("/tmp/bulkhead-vmm-selftest").exists());
}
