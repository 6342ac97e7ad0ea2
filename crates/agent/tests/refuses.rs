//! The agent binary builds and refuses to run where it cannot listen.

#[test]
fn agent_reports_an_unusable_socket_path() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead-agent"))
        .arg("/nonexistent-dir/qrexec.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot listen on /nonexistent-dir/qrexec.sock"));
}
