//! `vm` backend benchmark through the real daemon: start → qrexec-ready
//! (median, p95) with fixed memory and with Qubes' default memory/maxmem
//! (balloon), host memory of an idle qube (QEMU, channel helper, relay),
//! qrexec call latency and `qvm-copy` throughput over the guest channel.
//! Prints figures and the accelerator they were taken with; asserts nothing.
//! Under TCG (no usable KVM) the figures measure software emulation.
//!
//! Run (as root): `cargo build --release --workspace && cargo bench -p bulkheadd --bench vm`
//! (the kernel comes from `$BULKHEAD_KERNEL_DEB`, else `apt-get download`).

mod support;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{pct, relay_call, rss_kib, Daemon};

fn report(label: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{label:<52} n={:<3} median {:>8.1} ms   p95 {:>8.1} ms",
        v.len(),
        pct(&v, 0.5).as_secs_f64() * 1e3,
        pct(&v, 0.95).as_secs_f64() * 1e3,
    );
}

fn ready(d: &Daemon, q: &str) -> Duration {
    let t = Instant::now();
    d.cli(&["start", q]);
    let link = std::fs::read_link(d.dir.join(format!("qrexec.{q}"))).expect("qube started");
    let code = bulkhead_hal::guest::exec(
        &link,
        "user",
        "true",
        std::io::empty(),
        std::io::sink(),
        std::io::sink(),
    )
    .expect("exec");
    assert_eq!(code, 0);
    t.elapsed()
}

/// Pids of `name`'s processes whose command line starts with `prefix`.
fn pids(prefix: &str, qube: &str) -> Vec<u64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(prefix) && c.contains(&format!("/qubes/{qube}/"))
        })
        .collect()
}

fn main() {
    if !Path::new(bulkhead_hal::vm::QEMU).exists() {
        println!("vm bench: QEMU missing (apt-get install qemu-system-x86); skipped");
        return;
    }
    let Some(dir) = support::qrexec_bench_dir(
        "vm",
        &[
            "bulkhead",
            "bulkhead-agent",
            "bulkhead-vmm",
            "bulkhead-qrexec-relay",
        ],
    ) else {
        return;
    };
    let d = Daemon::start_mode(&dir, "minimal", "vm");
    let mut install = vec!["kernel", "install"];
    let deb = std::env::var("BULKHEAD_KERNEL_DEB").unwrap_or_default();
    if !deb.is_empty() {
        install.extend(["--deb", deb.as_str()]);
    }
    d.cli(&install);
    d.cli(&["prefs", "minimal", "memory", "256"]);
    d.cli(&["prefs", "minimal", "maxmem", "0"]);
    d.cli(&["create", "-t", "minimal", "-l", "red", "va"]);
    d.cli(&["create", "-t", "minimal", "-l", "red", "vb"]);

    // The first start after a host boot also runs the accelerator trial
    // (its verdict is then cached in /run for every daemon).
    let trial = !Path::new(bulkheadd::lifecycle::ACCEL_CACHE).exists();
    let t = Instant::now();
    d.cli(&["start", "va"]);
    println!(
        "first vm start ({}) {:.0} ms",
        if trial {
            "with the accelerator trial"
        } else {
            "accelerator verdict already cached"
        },
        t.elapsed().as_secs_f64() * 1e3
    );
    let state = d.cli(&["ls", "-O", "name,isolation", "va"]);
    println!("accelerator: {}", state.lines().last().unwrap_or("").trim());
    d.cli(&["shutdown", "--wait", "va"]);

    let mut starts = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..10 {
        starts.push(ready(&d, "va"));
        let t = Instant::now();
        d.cli(&["shutdown", "--wait", "va"]);
        stops.push(t.elapsed());
    }
    report("start -> qrexec-ready (memory 256, no balloon)", starts);
    report("shutdown --wait (agent poweroff + commit)", stops);
    d.cli(&["prefs", "vb", "memory", "400"]);
    d.cli(&["prefs", "vb", "maxmem", "4000"]);
    let mut starts = Vec::new();
    for _ in 0..5 {
        starts.push(ready(&d, "vb"));
        d.cli(&["shutdown", "--wait", "vb"]);
    }
    report(
        "start -> qrexec-ready (Qubes' 400/4000 MiB, balloon)",
        starts,
    );
    d.cli(&["prefs", "vb", "memory", "256"]);
    d.cli(&["prefs", "vb", "maxmem", "0"]);

    // Idle host memory.
    ready(&d, "va");
    std::thread::sleep(Duration::from_secs(5));
    let sum = |pfx: &str| {
        pids(pfx, "va")
            .iter()
            .map(|p| rss_kib(*p as u32))
            .sum::<u64>()
    };
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.dir.join("qubes/va/instance.json")).expect("instance record"),
    )
    .unwrap();
    let qemu = rss_kib(rec["data"]["qemu_pid"].as_u64().expect("qemu pid") as u32);
    let chan = sum("bulkhead-vmm chan");
    let relay = pids("bulkhead-qrexec-relay", "va")
        .iter()
        .map(|p| rss_kib(*p as u32))
        .sum::<u64>();
    println!(
        "idle qube host RSS: QEMU {:.1} MiB (guest RAM 256 MiB, touched pages count), channel helper {:.1} MiB, relay {:.1} MiB",
        qemu as f64 / 1024.0,
        chan as f64 / 1024.0,
        relay as f64 / 1024.0
    );

    // qrexec over the guest channel: from va's relay to vb's agent.
    d.cli(&[
        "run", "-u", "root", "vb", "--", "sh", "-c",
        "mkdir -p /usr/local/etc/qubes-rpc && printf '#!/bin/sh\\nexit 0\\n' > /usr/local/etc/qubes-rpc/test.True && chmod +x /usr/local/etc/qubes-rpc/test.True",
    ]);
    let relay = d.dir.join("qubes/va/run/channel/relay.sock");
    for _ in 0..10 {
        relay_call(&relay, "vb", "test.True");
    }
    let lat: Vec<Duration> = (0..100)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(relay_call(&relay, "vb", "test.True"), 0);
            t.elapsed()
        })
        .collect();
    report("qrexec call into a running vm qube", lat);
    let t = Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..256)
            .map(|_| s.spawn(|| relay_call(&relay, "vb", "test.True")))
            .collect();
        let ok = hs
            .into_iter()
            .filter_map(|h| h.join().ok())
            .filter(|c| *c == 0)
            .count();
        assert_eq!(ok, 256);
    });
    println!(
        "256 concurrent calls into vb                         {:.0} ms total",
        t.elapsed().as_secs_f64() * 1e3
    );
    // qvm-copy of 256 MiB, guest to guest through both channels.
    d.cli(&[
        "run",
        "va",
        "--",
        "sh",
        "-c",
        "head -c 268435456 /dev/zero > /tmp/big",
    ]);
    let mut times = vec![];
    for _ in 0..3 {
        d.cli(&["run", "vb", "--", "rm", "-rf", "/home/user/QubesIncoming"]);
        let t = Instant::now();
        d.cli(&["run", "va", "--", "qvm-copy-to-vm", "vb", "/tmp/big"]);
        times.push(t.elapsed());
    }
    times.sort();
    let med = times[1].as_secs_f64();
    println!(
        "qvm-copy-to-vm 256 MiB file, va -> vb               median of 3: {:.2} s ({:.0} MB/s)",
        med,
        (256u64 << 20) as f64 / med / 1e6
    );
    let _ = std::io::stdout().flush();
}
