//! `ns` backend figures: start → agent ready, one `exec` round trip, stop,
//! and host memory of the helper per idle qube. Prints; asserts nothing.
//! Needs root, busybox-static and a built agent:
//!
//!     cargo build --release -p bulkhead-agent && cargo bench -p bulkhead-hal --bench ns_start

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_hal::ns::NsBackend;
use bulkhead_hal::{Backend, QubeSpec};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn install(root: &Path, bin: &Path, dest: &str) {
    let t = root.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(t.parent().unwrap()).unwrap();
    std::fs::copy(bin, &t).unwrap();
    let out = std::process::Command::new("ldd").arg(bin).output().unwrap();
    for lib in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
    {
        let t = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(t.parent().unwrap()).unwrap();
        std::fs::copy(lib, &t).unwrap();
    }
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
    let agent = nsinit.with_file_name("bulkhead-agent");
    if !nix::unistd::geteuid().is_root() || !agent.exists() || !Path::new("/bin/busybox").exists() {
        println!(
            "skipped: needs root, /bin/busybox (busybox-static) and {}",
            agent.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for d in ["bin", "etc", "home/user", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "true", "echo"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
    )
    .unwrap();
    install(&root, &agent, "/usr/bin/bulkhead-agent");
    let backend = NsBackend::new(nsinit);
    let (mut start, mut ready, mut call, mut stop) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut mem = Vec::new();
    for n in 0..20 {
        let run = dir.path().join(format!("run{n}"));
        let spec = QubeSpec {
            name: format!("bench{n}"),
            root: root.clone(),
            upper: run.join("upper"),
            work: run.join("work"),
            run_dir: run.join("run"),
            init: vec!["/usr/bin/bulkhead-agent".into()],
            uid_base: 300_000,
            uid_count: 65536,
            memory_mib: 256,
            vcpus: 1,
            max_pids: 256,
            log: run.join("console.log"),
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
    println!(
        "backend.start() returns     median {:?}  p95 {:?}",
        pct(&mut start.clone(), 0.5),
        pct(&mut start, 0.95)
    );
    println!(
        "start → agent answers call  median {:?}  p95 {:?}",
        pct(&mut ready.clone(), 0.5),
        pct(&mut ready, 0.95)
    );
    println!(
        "exec 'true' round trip      median {:?}  p99 {:?}",
        pct(&mut call.clone(), 0.5),
        pct(&mut call, 0.99)
    );
    println!(
        "kill → exited               median {:?}  p95 {:?}",
        pct(&mut stop.clone(), 0.5),
        pct(&mut stop, 0.95)
    );
    let (h, a): (Vec<u64>, Vec<u64>) = mem.into_iter().unzip();
    println!(
        "idle qube RSS: helper (host side) {} KiB, agent (inside, counted against the qube) {} KiB",
        h.iter().sum::<u64>() / h.len() as u64,
        a.iter().sum::<u64>() / a.len() as u64
    );
}
