//! Admin API benchmark: calls/s and latency percentiles of `property.Get`
//! (reads) and `feature.Set` (durable writes) at 1, 16 and 256 concurrent
//! clients, plus `bulkhead ls` with 100 qubes. Prints figures; asserts nothing.
//!
//! Run: `cargo build --release -p bulkhead-cli && cargo bench -p bulkheadd --bench admin_api`

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn call(socket: &Path, req: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.write_all(req).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut b = Vec::new();
    s.read_to_end(&mut b).unwrap();
    b
}

fn ok(socket: &Path, m: &str, arg: &str, dest: &str, payload: &[u8]) {
    let r = call(
        socket,
        &bulkhead_proto::admin::encode_request(m, arg, "dom0", dest, payload),
    );
    assert!(
        r.starts_with(b"0\0"),
        "{m}: {}",
        String::from_utf8_lossy(&r)
    );
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Runs `clients` threads, each doing `per_client` calls made by `req(i)`.
fn run(
    socket: &Path,
    label: &str,
    clients: usize,
    per_client: usize,
    req: impl Fn(usize, usize) -> Vec<u8> + Sync,
) {
    let start = Instant::now();
    let mut lat: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let req = &req;
                s.spawn(move || {
                    let mut v = Vec::with_capacity(per_client);
                    for i in 0..per_client {
                        let r = req(c, i);
                        let t = Instant::now();
                        let reply = call(socket, &r);
                        v.push(t.elapsed());
                        assert!(
                            reply.starts_with(b"0\0"),
                            "{}",
                            String::from_utf8_lossy(&reply)
                        );
                    }
                    v
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let wall = start.elapsed();
    lat.sort();
    println!(
        "{label:<28} clients={clients:<4} calls={:<7} {:>9.0} calls/s  p50={:>8.1?}  p99={:>8.1?}",
        lat.len(),
        lat.len() as f64 / wall.as_secs_f64(),
        pct(&lat, 0.50),
        pct(&lat, 0.99),
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qubesd.sock");
    let group = String::from_utf8(Command::new("id").arg("-gn").output().unwrap().stdout).unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_bulkheadd"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(&socket)
        .arg("--group")
        .arg(group.trim())
        .env("BULKHEAD_LOG", "error")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    while UnixStream::connect(&socket).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model()
    );
    ok(
        &socket,
        "admin.vm.Create.TemplateVM",
        "",
        "dom0",
        b"name=tpl label=black",
    );
    ok(
        &socket,
        "admin.property.Set",
        "default_template",
        "dom0",
        b"tpl",
    );
    for i in 0..99 {
        ok(
            &socket,
            "admin.vm.Create.AppVM",
            "",
            "dom0",
            format!("name=q{i:03} label=red").as_bytes(),
        );
    }
    let get = bulkhead_proto::admin::encode_request(
        "admin.vm.property.Get",
        "netvm",
        "dom0",
        "q050",
        b"",
    );
    for clients in [1, 16, 256] {
        let per = 60_000 / clients;
        run(&socket, "property.Get (read)", clients, per, |_, _| {
            get.clone()
        });
    }
    for clients in [1, 16, 256] {
        let per = (4_000 / clients).max(4);
        run(
            &socket,
            "feature.Set (durable write)",
            clients,
            per,
            |c, i| {
                bulkhead_proto::admin::encode_request(
                    "admin.vm.feature.Set",
                    &format!("c{c}"),
                    "dom0",
                    "q001",
                    i.to_string().as_bytes(),
                )
            },
        );
    }
    // The call sequence of qvm-ls for 100 qubes, in-process.
    let mut t = Vec::new();
    for _ in 0..20 {
        let s = Instant::now();
        let list = call(
            &socket,
            &bulkhead_proto::admin::encode_request("admin.vm.List", "", "dom0", "dom0", b""),
        );
        for line in String::from_utf8_lossy(&list[2..]).lines() {
            let name = line.split(' ').next().unwrap();
            call(
                &socket,
                &bulkhead_proto::admin::encode_request(
                    "admin.vm.property.GetAll",
                    "",
                    "dom0",
                    name,
                    b"",
                ),
            );
        }
        t.push(s.elapsed());
    }
    t.sort();
    println!(
        "ls call sequence, 101 qubes   median={:?}  max={:?}",
        pct(&t, 0.5),
        t[t.len() - 1]
    );
    let cli = PathBuf::from(env!("CARGO_BIN_EXE_bulkheadd")).with_file_name("bulkhead");
    if cli.exists() {
        let mut t = Vec::new();
        for _ in 0..20 {
            let s = Instant::now();
            let out = Command::new(&cli)
                .arg("ls")
                .env("BULKHEAD_SOCKET", &socket)
                .output()
                .unwrap();
            t.push(s.elapsed());
            assert!(out.status.success());
            assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 102);
        }
        t.sort();
        println!(
            "`bulkhead ls`, 101 qubes      median={:?}  max={:?}  (whole process)",
            pct(&t, 0.5),
            t[t.len() - 1]
        );
    } else {
        println!("`bulkhead ls`: skipped, build it first: cargo build --release -p bulkhead-cli");
    }
    let rss = std::fs::read_to_string(format!("/proc/{}/status", daemon.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .unwrap_or_default();
    println!("bulkheadd RSS with 101 qubes: {rss} KiB");
    let _ = daemon.kill();
    let _ = daemon.wait();
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}
