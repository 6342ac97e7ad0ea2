//! qrexec benchmark through the real daemon, relay and agents (`ns`
//! backend): call latency into a running qube (median, p99), 256 calls at
//! once, and `qvm-copy` of one 1 GiB file and of 10,000 small files.
//! Prints figures; asserts nothing.
//!
//! Run (as root): `cargo build --release --workspace && cargo bench -p bulkheadd --bench qrexec`

use std::io::Write;
mod support;

use std::time::{Duration, Instant};
use support::{pct, relay_call, Daemon};

fn main() {
    let Some(dir) = support::qrexec_bench_dir(
        "qrexec",
        &[
            "bulkhead",
            "bulkhead-agent",
            "bulkhead-nsinit",
            "bulkhead-qrexec-relay",
        ],
    ) else {
        return;
    };
    let d = Daemon::start(&dir, "minimal");
    d.cli(&["create", "-t", "minimal", "-l", "red", "bqa"]);
    d.cli(&["create", "-t", "minimal", "-l", "red", "bqb"]);
    d.cli(&["prefs", "bqb", "maxmem", "2000"]);
    d.cli(&[
        "run", "-u", "root", "bqb", "--", "sh", "-c",
        "mkdir -p /usr/local/etc/qubes-rpc && printf '#!/bin/sh\\nexit 0\\n' > /usr/local/etc/qubes-rpc/test.True && chmod +x /usr/local/etc/qubes-rpc/test.True",
    ]);
    d.cli(&["start", "bqa"]);
    let relay = d.dir.join("qubes/bqa/run/channel/relay.sock");

    // Latency: one call at a time, from qa's relay socket to qb's agent.
    for _ in 0..20 {
        relay_call(&relay, "bqb", "test.True");
    }
    let mut lat: Vec<Duration> = (0..500)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(relay_call(&relay, "bqb", "test.True"), 0);
            t.elapsed()
        })
        .collect();
    lat.sort();
    println!(
        "call into a running qube (relay → policy → agent → service → exit)  n=500  median {:.2} ms  p99 {:.2} ms",
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3
    );
    // The same from inside qa, qrexec-client-vm included (busybox time).
    let t = Instant::now();
    d.cli(&[
        "run",
        "bqa",
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 200 ]; do qrexec-client-vm bqb test.True </dev/null; i=$((i+1)); done",
    ]);
    println!(
        "qrexec-client-vm in bqa, 200 calls in a shell loop           {:.2} ms per call",
        t.elapsed().as_secs_f64() * 1e3 / 200.0
    );
    // 256 at once.
    let t = Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..256)
            .map(|_| s.spawn(|| relay_call(&relay, "bqb", "test.True")))
            .collect();
        let ok = hs
            .into_iter()
            .filter_map(|h| h.join().ok())
            .filter(|c| *c == 0)
            .count();
        assert_eq!(ok, 256);
    });
    println!(
        "256 concurrent calls into qb                                {:.0} ms total",
        t.elapsed().as_secs_f64() * 1e3
    );
    // A disposable per call (no warm pool yet): create, start, run, kill, remove.
    d.cli(&["create", "-t", "minimal", "-l", "red", "bdvm"]);
    d.cli(&["prefs", "bdvm", "template_for_dispvms", "True"]);
    let mut disp: Vec<Duration> = (0..10)
        .map(|_| {
            let t = Instant::now();
            d.cli(&["run", "--dispvm=bdvm", "--", "true"]);
            t.elapsed()
        })
        .collect();
    disp.sort();
    println!(
        "bulkhead run --dispvm true (cold: create+start+run+remove)  median {:.1} ms",
        pct(&disp, 0.5).as_secs_f64() * 1e3
    );
    // qvm-copy: one 1 GiB file, then 10,000 files of 1 KiB.
    d.cli(&["run", "bqa", "--", "sh", "-c", "head -c 1073741824 /dev/zero > /tmp/big && mkdir /tmp/small && cd /tmp/small && head -c 1024 /dev/zero > /tmp/k && i=0 && while [ $i -lt 10000 ]; do cp /tmp/k f$i; i=$((i+1)); done && ls | wc -l"]);
    for (what, path, bytes) in [
        ("1 GiB file", "/tmp/big", 1u64 << 30),
        ("10,000 x 1 KiB files", "/tmp/small", 10_240_000),
    ] {
        let mut times = vec![];
        for _ in 0..3 {
            d.cli(&["run", "bqb", "--", "rm", "-rf", "/home/user/QubesIncoming"]);
            let t = Instant::now();
            d.cli(&["run", "bqa", "--", "qvm-copy-to-vm", "bqb", path]);
            times.push(t.elapsed());
        }
        times.sort();
        let med = times[1].as_secs_f64();
        println!(
            "qvm-copy-to-vm {what:<22} median of 3: {:.2} s  ({:.0} MB/s)",
            med,
            bytes as f64 / med / 1e6
        );
    }
    let _ = std::io::stdout().flush();
}
