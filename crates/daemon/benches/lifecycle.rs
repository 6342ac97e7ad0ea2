//! Qube lifecycle benchmark through the real daemon (`ns` backend):
//! start → command-ready and stop times (median, p95), host memory per idle
//! qube, and the time to clone a volume holding 1 GiB, on the state dir's
//! file system and, when `mkfs.xfs` is installed, on a reflink-capable xfs.
//! Prints figures; asserts nothing.
//!
//! Run (as root): `cargo build --release --workspace && cargo bench -p bulkheadd --bench lifecycle`

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use std::time::{Duration, Instant};
use support::{bin, pct, rss_kib, Daemon};

fn call(socket: &Path, m: &str, arg: &str, dest: &str, payload: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.write_all(&bulkhead_proto::admin::encode_request(
        m, arg, "dom0", dest, payload,
    ))
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut b = Vec::new();
    s.read_to_end(&mut b).unwrap();
    assert!(
        b.starts_with(b"0\0"),
        "{m} {dest}: {}",
        String::from_utf8_lossy(&b)
    );
    String::from_utf8_lossy(&b[2..]).into_owned()
}

fn report(label: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{label:<44} n={:<3} median {:>8.2} ms   p95 {:>8.2} ms   max {:>8.2} ms",
        v.len(),
        pct(&v, 0.5).as_secs_f64() * 1e3,
        pct(&v, 0.95).as_secs_f64() * 1e3,
        v.last().unwrap().as_secs_f64() * 1e3
    );
}

fn daemon(dir: &Path) -> Daemon {
    Daemon::start(dir, "bench-tpl")
}

fn create(d: &Daemon, name: &str) {
    call(
        &d.socket,
        "admin.vm.Create.AppVM",
        "bench-tpl",
        "dom0",
        format!("name={name} label=red").as_bytes(),
    );
}

fn exec(d: &Daemon, name: &str, cmd: &str) -> i32 {
    let link = std::fs::read_link(d.dir.join(format!("qrexec.{name}"))).unwrap();
    bulkhead_hal::guest::exec(
        &link,
        "user",
        cmd,
        std::io::empty(),
        std::io::sink(),
        std::io::sink(),
    )
    .unwrap()
}

fn lifecycle(d: &Daemon) {
    const N: usize = 20;
    let names: Vec<String> = (0..N).map(|i| format!("bench-{i}")).collect();
    let (mut first, mut warm, mut stop, mut call_rt) = (vec![], vec![], vec![], vec![]);
    for n in &names {
        create(d, n);
        // First start: the private volume is created (mkfs) on the way.
        let t = Instant::now();
        call(&d.socket, "admin.vm.Start", "", n, b"");
        assert_eq!(exec(d, n, "true"), 0);
        first.push(t.elapsed());
        let t = Instant::now();
        call(&d.socket, "admin.vm.Shutdown", "wait", n, b"");
        stop.push(t.elapsed());
        let t = Instant::now();
        call(&d.socket, "admin.vm.Start", "", n, b"");
        assert_eq!(exec(d, n, "true"), 0);
        warm.push(t.elapsed());
        for _ in 0..5 {
            let t = Instant::now();
            exec(d, n, "true");
            call_rt.push(t.elapsed());
        }
    }
    report("start -> command-ready (first start, mkfs)", first);
    report("start -> command-ready (later starts)", warm);
    report("shutdown --wait (clean stop + commit)", stop);
    report("exec `true` round trip (running qube)", call_rt);

    std::thread::sleep(Duration::from_secs(1));
    let mut helper = 0u64;
    let mut agent = 0u64;
    let mut counted = 0u64;
    for n in &names {
        let rec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(d.dir.join(format!("qubes/{n}/instance.json"))).unwrap(),
        )
        .unwrap();
        let h = rec["data"]["helper_pid"].as_u64().unwrap() as u32;
        let a = rec["data"]["init_pid"].as_u64().unwrap() as u32;
        helper += rss_kib(h);
        agent += rss_kib(a);
        counted += 1;
    }
    println!(
        "idle qube, host side (nsinit helper RSS)     {:.2} MiB per qube (n={counted})",
        helper as f64 / 1024.0 / counted as f64
    );
    println!(
        "idle qube, inside (agent = PID 1 RSS)        {:.2} MiB per qube",
        agent as f64 / 1024.0 / counted as f64
    );
    println!(
        "daemon RSS with {counted} running qubes          {:.2} MiB",
        rss_kib(d.child.id()) as f64 / 1024.0
    );
    let t = Instant::now();
    let st = Command::new(bin("bulkhead"))
        .args(["shutdown", "--all", "--wait"])
        .env("BULKHEAD_SOCKET", &d.socket)
        .status()
        .unwrap();
    assert!(st.success());
    println!(
        "shutdown --all --wait of {counted} qubes           {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
}

fn clone_1g(d: &Daemon, label: &str) {
    create(d, "bench-big");
    call(&d.socket, "admin.vm.Start", "", "bench-big", b"");
    assert_eq!(
        exec(
            d,
            "bench-big",
            "head -c 1073741824 /dev/urandom > ~/big && sync"
        ),
        0
    );
    call(&d.socket, "admin.vm.Shutdown", "wait", "bench-big", b"");
    let mut times = vec![];
    for i in 0..3 {
        let to = format!("bench-copy{i}");
        create(d, &to);
        let t = Instant::now();
        let token = call(
            &d.socket,
            "admin.vm.volume.CloneFrom",
            "private",
            "bench-big",
            b"",
        );
        call(
            &d.socket,
            "admin.vm.volume.CloneTo",
            "private",
            &to,
            token.as_bytes(),
        );
        times.push(t.elapsed());
    }
    let reflink = call(&d.socket, "admin.pool.Info", "default", "dom0", b"")
        .lines()
        .any(|l| l == "reflink=True");
    report(
        &format!("clone 1 GiB private ({label}, reflink={reflink})"),
        times,
    );
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("lifecycle bench: needs root; skipped");
        return;
    }
    for b in ["bulkhead", "bulkhead-agent", "bulkhead-nsinit"] {
        if !bin(b).exists() {
            println!(
                "lifecycle bench: {b} not built; run `cargo build --release --workspace` first"
            );
            return;
        }
    }
    let base = std::env::temp_dir().join(format!("bulkhead-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    {
        let d = daemon(&base.join("ext4"));
        lifecycle(&d);
        clone_1g(&d, "state dir fs");
    }
    if Command::new("mkfs.xfs").arg("-V").output().is_ok() {
        let img = base.join("xfs.img");
        let mnt = base.join("xfs");
        std::fs::create_dir_all(&mnt).unwrap();
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(8 << 30).unwrap();
        drop(f);
        assert!(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img)
            .status()
            .unwrap()
            .success());
        assert!(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .status()
            .unwrap()
            .success());
        {
            let d = daemon(&mnt.join("d"));
            clone_1g(&d, "xfs pool");
        }
        let _ = Command::new("umount").arg(&mnt).status();
    } else {
        println!("(mkfs.xfs not installed: `apt-get install xfsprogs` to measure reflink clones)");
    }
    let _ = std::fs::remove_dir_all(&base);
}
