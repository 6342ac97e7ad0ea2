//! `bulkhead-vmm qemu|chan CONFIG_JSON`: the jailed host processes of a
//! `vm` qube. Only `bulkheadd` (through `bulkhead-hal`) runs it; see
//! `vm::jail`, `vm::chan` and `vm::exec_qemu`.
#![forbid(unsafe_code)]

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Proof for the tests that the channel helper's sandbox holds: install
    // it, then try something it forbids (creating a directory).
    if args.get(1).map(String::as_str) == Some("selftest-seccomp") {
        if let Err(e) = bulkhead_hal::vm::chan::sandbox() {
            eprintln!("{e}");
            std::process::exit(2);
        }
        let _ = std::fs::create_dir("/tmp/bulkhead-vmm-selftest");
        std::process::exit(0);
    }
    let (Some(mode), Some(cfg)) = (args.get(1), args.get(2)) else {
        eprintln!(
            "bulkhead-vmm: run by bulkheadd only (usage: bulkhead-vmm qemu|chan CONFIG_JSON)"
        );
        std::process::exit(2);
    };
    let code = match mode.as_str() {
        "qemu" => match serde_json::from_str(cfg) {
            Ok(c) => bulkhead_hal::vm::exec_qemu(&c),
            Err(e) => {
                eprintln!("bulkhead-vmm: bad configuration: {e}");
                2
            }
        },
        "chan" => match serde_json::from_str(cfg) {
            Ok(c) => bulkhead_hal::vm::chan::run(&c),
            Err(e) => {
                eprintln!("bulkhead-vmm: bad configuration: {e}");
                2
            }
        },
        other => {
            eprintln!("bulkhead-vmm: unknown mode '{other}'");
            2
        }
    };
    std::process::exit(code);
}
