//! `ns` backend figures: start → agent ready, one `exec` round trip, stop,
//! and host memory of the helper per idle qube. Prints; asserts nothing.
//! Needs root, busybox-static and a built agent:
//!
//!     cargo build --release -p bulkhead-agent && cargo bench -p bulkhead-hal --bench ns_start

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_hal::ns::NsBackend;
use bulkhead_hal::{Backend, QubeSpec, RootFs};

#[path = "../tests/support/mod.rs"]
mod support;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `label  median X  pNN Y` for samples `v`.
fn report(label: &str, mut v: Vec<Duration>, tail: f64) {
    v.sort();
    let name = if tail >= 0.99 { "p99" } else { "p95" };
    println!(
        "{label:<28}median {:?}  {name} {:?}",
        pct(&v, 0.5),
        pct(&v, tail)
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let nsinit = PathBuf::from(env!("CARGO_BIN_EXE_bulkhead-nsinit"));
    let agent = support::agent_bin(&nsinit);
    let Some(agent) =
        agent.filter(|_| nix::unistd::geteuid().is_root() && Path::new(support::BUSYBOX).exists())
    else {
        println!(
            "skipped: needs root, {} (busybox-static) and a built bulkhead-agent",
            support::BUSYBOX
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = support::busybox_root(dir.path(), &["sh", "true", "echo"]);
    support::install_binary(&root, &agent, "/usr/bin/bulkhead-agent");
    let backend = NsBackend::new(nsinit);
    let (mut start, mut ready, mut call, mut stop) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut mem = Vec::new();
    for n in 0..20 {
        let run = dir.path().join(format!("run{n}"));
        let spec = QubeSpec {
            name: format!("bench{n}"),
            id: String::new(),
            root: RootFs::Overlay {
                lower: root.clone(),
                upper: run.join("upper"),
                work: run.join("work"),
            },
            binds: vec![],
            run_dir: run.join("run"),
            init: vec!["/usr/bin/bulkhead-agent".into()],
            uid_base: 300_000,
            uid_count: 65536,
            memory_mib: 256,
            vcpus: 1,
            max_pids: 256,
            log: run.join("console.log"),
            vm: None,
        };
        let t = Instant::now();
        let mut i = backend.start(&spec).expect("start");
        start.push(t.elapsed());
        while !i.agent_socket().exists() {
            std::thread::sleep(Duration::from_micros(200));
        }
        // Ready = the agent answers a call.
        let code = bulkhead_hal::guest::exec(
            &i.agent_socket(),
            "user",
            "true",
            std::io::empty(),
            std::io::sink(),
            std::io::sink(),
        )
        .unwrap();
        assert_eq!(code, 0);
        ready.push(t.elapsed());
        for _ in 0..20 {
            let t = Instant::now();
            bulkhead_hal::guest::exec(
                &i.agent_socket(),
                "user",
                "true",
                std::io::empty(),
                std::io::sink(),
                std::io::sink(),
            )
            .unwrap();
            call.push(t.elapsed());
        }
        // Host-side processes per idle qube: the helper (outside the qube).
        std::thread::sleep(Duration::from_millis(50));
        let helper = std::fs::read_to_string(format!("/proc/{}/stat", i.init_pid()))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u32>()
                    .ok()
            })
            .unwrap_or(0);
        mem.push((rss_kib(helper), rss_kib(i.init_pid())));
        let t = Instant::now();
        i.kill().unwrap();
        stop.push(t.elapsed());
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("ns backend, busybox root + bulkhead-agent, {cores} cores, 20 qubes");
    report("backend.start() returns", start, 0.95);
    report("start → agent answers call", ready, 0.95);
    report("exec 'true' round trip", call, 0.99);
    report("kill → exited", stop, 0.95);
    let (h, a): (Vec<u64>, Vec<u64>) = mem.into_iter().unzip();
    println!(
        "idle qube RSS: helper (host side) {} KiB, agent (inside, counted against the qube) {} KiB",
        h.iter().sum::<u64>() / h.len() as u64,
        a.iter().sum::<u64>() / a.len() as u64
    );
}
