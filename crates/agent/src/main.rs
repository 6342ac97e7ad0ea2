//! `bulkhead-agent`: runs inside every qube, as PID 1 or started by it.
//!
//! Today it reaps orphaned processes (PID 1's duty) and serves qrexec
//! `MSG_EXEC_CMDLINE` calls on the guest channel socket: `user:command` runs
//! `/bin/sh -c command` as that user, with stdin, stdout, stderr and the exit
//! code carried in qrexec data messages. Services (`QUBESRPC …`), policy and
//! qube-to-qube calls come with the qrexec issue.
//!
//! It trusts only the host on the other end of its socket, and must never
//! depend on a host crate (checked by `crates/daemon/tests/deps.rs`).
#![forbid(unsafe_code)]

mod client;
mod exec;
mod filecopy;
mod init;
mod open;
mod reaper;
mod service;
mod vm;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    // Called as the qubes.VMExec service (a link to this binary).
    if argv0.rsplit('/').next() == Some("qubes.VMExec") {
        std::process::exit(init::vmexec(std::env::args().nth(1).unwrap_or_default()));
    }
    let base = argv0.rsplit('/').next().unwrap_or_default().to_string();
    // PID 1 of a vm qube's initramfs.
    if base == "init" && std::process::id() == 1 && !vm::is_vm() {
        vm::stage1();
    }
    match base.as_str() {
        "qrexec-client-vm" => std::process::exit(client::main(std::env::args().collect())),
        "qvm-connect-tcp" => std::process::exit(client::connect_tcp(std::env::args().collect())),
        "qubes.OpenURL" => std::process::exit(open::open_url_service()),
        "qubes.OpenInVM" => std::process::exit(open::open_file_service()),
        "qvm-open-in-vm" | "qvm-open-in-dvm" => {
            std::process::exit(open::sender(&base, std::env::args().skip(1).collect()))
        }
        "qubes.Filecopy" => std::process::exit(filecopy::receiver()),
        "qvm-copy" | "qvm-copy-to-vm" | "qvm-move" | "qvm-move-to-vm" => {
            std::process::exit(filecopy::sender(&base, std::env::args().skip(1).collect()))
        }
        _ => {}
    }
    let socket = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/bulkhead/qrexec.sock"));
    let in_vm = vm::is_vm() && std::process::id() == 1;
    if in_vm {
        vm::stage2_setup();
    }
    if std::process::id() == 1 {
        init::raise_fd_limit(in_vm);
        init::boot();
    }
    let reaper = reaper::Reaper::start();
    if std::process::id() == 1 {
        init::on_shutdown_signal();
        client::serve_local_socket();
    }
    // Bind under a temporary name and rename: the socket appears only once it
    // is listening, so the host never sees a path that refuses connections.
    let tmp = socket.with_extension("sock.tmp");
    let _ = std::fs::remove_file(&tmp);
    let listener =
        match UnixListener::bind(&tmp).and_then(|l| std::fs::rename(&tmp, &socket).map(|()| l)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bulkhead-agent: cannot listen on {}: {e}", socket.display());
                // As PID 1, exiting would end the qube; that is the right outcome
                // for a qube the host cannot talk to.
                std::process::exit(1);
            }
        };
    eprintln!("bulkhead-agent: listening on {}", socket.display());
    if in_vm {
        if let Err(e) =
            vm::start_channel(socket.clone(), std::path::Path::new(client::RELAY_SOCKET))
        {
            eprintln!("bulkhead-agent: no guest channel: {e}");
            vm::power_off();
        }
    }
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let reaper = reaper.clone();
                std::thread::spawn(move || {
                    if let Err(e) = exec::serve(stream, &reaper) {
                        eprintln!("bulkhead-agent: call failed: {e}");
                    }
                });
            }
            Err(e) => {
                // Out of descriptors (or memory): wait instead of spinning.
                eprintln!("bulkhead-agent: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}
