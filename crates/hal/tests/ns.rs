//! The `ns` backend against the real kernel: a busybox root, real namespaces,
//! cgroups and seccomp. Needs root and a static busybox (Debian's
//! `busybox-static`); says SKIPPED and why otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_hal::ns::NsBackend;
use bulkhead_hal::{Backend, Instance, QubeSpec, RootFs, RunState};

mod support;

use support::{install_binary, BUSYBOX};
const APPLETS: &[&str] = &[
    "sh", "id", "cat", "ls", "hostname", "echo", "touch", "swapon", "sleep", "mount", "head", "tr",
    "grep", "wc", "kill", "ps", "true",
];

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root".into());
    }
    let out = std::process::Command::new("ldd").arg(BUSYBOX).output();
    match out {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout).contains("not a dynamic")
                || String::from_utf8_lossy(&o.stderr).contains("not a dynamic") =>
        {
            None
        }
        Ok(_) => Some(format!(
            "{BUSYBOX} is not statically linked (apt-get install busybox-static)"
        )),
        Err(_) if Path::new(BUSYBOX).exists() => None,
        Err(_) => Some(format!(
            "{BUSYBOX} missing (apt-get install busybox-static)"
        )),
    }
}

macro_rules! require_ns {
    () => {
        if let Some(why) = skip_reason() {
            println!("SKIPPED: {why}");
            return;
        }
    };
}

/// A minimal root tree owned by host root, like a template's.
fn rootfs(dir: &Path) -> PathBuf {
    let root = support::busybox_root(dir, APPLETS);
    std::fs::write(root.join("etc/template-file"), "from the template\n").unwrap();
    root
}

struct Qube {
    dir: tempfile::TempDir,
    spec: QubeSpec,
    root: PathBuf,
    upper: PathBuf,
}

fn qube(name: &str, script: &str, memory_mib: u64) -> Qube {
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path());
    let upper = dir.path().join("upper");
    let spec = QubeSpec {
        name: name.into(),
        id: String::new(),
        root: RootFs::Overlay {
            lower: root.clone(),
            upper: upper.clone(),
            work: dir.path().join("work"),
        },
        binds: vec![],
        run_dir: dir.path().join("run"),
        init: vec!["/bin/sh".into(), "-c".into(), script.into()],
        uid_base: 200_000,
        uid_count: 65536,
        memory_mib,
        vcpus: 1,
        max_pids: 256,
        log: dir.path().join("console.log"),
        vm: None,
    };
    Qube {
        dir,
        spec,
        root,
        upper,
    }
}

fn backend() -> NsBackend {
    NsBackend::new(PathBuf::from(env!("CARGO_BIN_EXE_bulkhead-nsinit")))
}

fn wait_exit(i: &mut Box<dyn Instance>) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let RunState::Exited(c) = i.state() {
            return c;
        }
        assert!(Instant::now() < deadline, "qube did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn log(q: &Qube) -> String {
    std::fs::read_to_string(&q.spec.log).unwrap_or_default()
}

#[test]
fn qube_runs_as_pid1_root_mapped_to_its_own_range() {
    require_ns!();
    let q = qube(
        "nstest1",
        "echo uid=$(id -u); cat /proc/self/uid_map; echo pid=$$; hostname; \
         echo procs=$(ls /proc | grep -c '^[0-9]'); ls /dev | tr '\\n' ' '; echo; \
         echo written > /etc/new-file; cat /etc/template-file; \
         echo hostfs=$(ls / | tr '\\n' ' ')",
        128,
    );
    let mut i = backend().start(&q.spec).expect("start");
    assert_eq!(wait_exit(&mut i), 0, "{}", log(&q));
    let out = log(&q);
    assert!(out.contains("uid=0\n"), "{out}");
    assert!(out.contains("0     200000      65536"), "{out}");
    assert!(out.contains("pid=1\n"), "{out}");
    assert!(out.contains("nstest1\n"), "{out}");
    // Only the qube's own processes (sh, ls, grep) are visible.
    let procs: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(procs <= 4, "saw {procs} processes: {out}");
    assert!(
        out.contains("full null ptmx pts random shm tty urandom zero"),
        "{out}"
    );
    assert!(out.contains("from the template"), "{out}");
    // The write went to the qube's upper layer, owned by its range; the
    // shared root is untouched.
    let up = q.upper.join("etc/new-file");
    assert_eq!(std::fs::read_to_string(&up).unwrap(), "written\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&up).unwrap().uid(), 200_000);
    assert!(!q.root.join("etc/new-file").exists());
    drop(q.dir);
}

#[test]
fn forbidden_syscalls_kill_or_fail() {
    require_ns!();
    let q = qube(
        "nstest2",
        "swapon /etc/passwd; echo swapon=$?; mount -t tmpfs none /tmp; echo mount=$?; \
         echo x > /dev/tty; echo tty=$?; head -c 200000 /dev/zero > /run/bulkhead/fill; echo fill=$?",
        128,
    );
    let mut i = backend().start(&q.spec).expect("start");
    assert_eq!(wait_exit(&mut i), 0, "{}", log(&q));
    let out = log(&q);
    // swapon is on the kill list: SIGSYS (31) → status 159.
    assert!(out.contains("swapon=159"), "{out}");
    assert!(out.contains("mount=") && !out.contains("mount=0"), "{out}");
    // No controlling terminal: the host's terminal is out of reach.
    assert!(out.contains("tty=") && !out.contains("tty=0"), "{out}");
    // The guest channel is a tiny tmpfs: it cannot be used to fill the host.
    assert!(out.contains("fill=") && !out.contains("fill=0"), "{out}");
}

#[test]
fn a_symlink_planted_in_the_persistent_layer_is_not_followed() {
    require_ns!();
    let q = qube("nstest6", "echo should-not-run", 64);
    // A template's persistent upper layer with /run pointing at the host's /tmp.
    std::fs::create_dir_all(&q.upper).unwrap();
    std::os::unix::fs::symlink("/tmp", q.upper.join("run")).unwrap();
    let err = backend().start(&q.spec).err().expect("start must refuse");
    assert!(err.to_string().contains("not a real directory"), "{err}");
}

#[test]
fn uid_ranges_overlapping_host_users_are_refused() {
    require_ns!();
    let mut q = qube("nstest7", "true", 64);
    q.spec.uid_base = 0;
    let err = backend().start(&q.spec).err().expect("start must refuse");
    assert!(err.to_string().contains("uid range"), "{err}");
}

#[test]
fn kill_pause_unpause_and_shutdown() {
    require_ns!();
    let q = qube("nstest3", "while true; do echo tick; sleep 0.05; done", 128);
    let mut i = backend().start(&q.spec).expect("start");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(i.state(), RunState::Running);
    i.pause().unwrap();
    assert_eq!(i.state(), RunState::Paused);
    std::thread::sleep(Duration::from_millis(100));
    let frozen = log(&q).len();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(log(&q).len(), frozen, "output while paused");
    i.unpause().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(log(&q).len() > frozen, "no output after unpause");
    // sh as PID 1 ignores SIGTERM, so shutdown falls back to kill.
    let st = i.shutdown(Duration::from_millis(300)).unwrap();
    assert_eq!(st, RunState::Exited(137));
    let pid = i.init_pid();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "init still exists"
    );
}

#[test]
fn memory_limit_contains_a_hog() {
    require_ns!();
    // Builds a 200 MB shell variable inside a 64 MiB qube.
    let q = qube(
        "nstest4",
        "v=$(head -c 200000000 /dev/zero | tr '\\000' a); echo survived ${#v}",
        64,
    );
    let mut i = backend().start(&q.spec).expect("start");
    let code = wait_exit(&mut i);
    let stats = i.stats();
    let out = log(&q);
    assert!(
        !out.contains("survived 200000000"),
        "the hog got all its memory: {out}"
    );
    if let Some(peak) = stats.memory_peak {
        assert!(peak <= 64 * 1024 * 1024, "peak {peak} over the limit");
    }
    println!("memory hog: exit {code}, {stats:?}, console: {out:?}");
    assert!(
        code != 0 || stats.memory_limit_hits > 0,
        "exit {code}, {stats:?}: {out}"
    );
}

fn agent_bin() -> Option<PathBuf> {
    support::agent_bin(Path::new(env!("CARGO_BIN_EXE_bulkhead-nsinit")))
}

fn exec(i: &dyn Instance, user: &str, cmd: &str, stdin: Vec<u8>) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = bulkhead_hal::guest::exec(
        &i.agent_socket(),
        user,
        cmd,
        std::io::Cursor::new(stdin),
        &mut out,
        &mut err,
    )
    .expect("exec through the agent");
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

#[test]
fn commands_run_through_the_agent_over_the_guest_channel() {
    require_ns!();
    let Some(agent) = agent_bin() else {
        println!("SKIPPED: bulkhead-agent not built (run cargo test --workspace)");
        return;
    };
    let mut q = qube("nstest5", "", 256);
    install_binary(&q.root, &agent, "/usr/bin/bulkhead-agent");
    q.spec.init = vec!["/usr/bin/bulkhead-agent".into()];
    let mut i = backend().start(&q.spec).expect("start");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !i.agent_socket().exists() {
        assert!(
            Instant::now() < deadline,
            "agent never listened: {}",
            log(&q)
        );
        assert_eq!(i.state(), RunState::Running, "{}", log(&q));
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, out, err) = exec(&*i, "user", "id -u; echo out; echo err >&2; exit 3", vec![]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (3, "1000\nout\n", "err\n")
    );
    let (code, out, _) = exec(&*i, "root", "id -u; hostname; echo $$", vec![]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["0", "nstest5"]);
    // stdin streams in; large output streams out.
    let (code, out, _) = exec(&*i, "user", "wc -c", vec![b'x'; 1_000_000]);
    assert_eq!((code, out.trim()), (0, "1000000"));
    let (code, out, _) = exec(
        &*i,
        "user",
        "head -c 3000000 /dev/zero | tr '\\000' y",
        vec![],
    );
    assert_eq!(code, 0);
    assert_eq!(out.len(), 3_000_000);
    assert!(out.bytes().all(|b| b == b'y'));
    let (code, _, err) = exec(&*i, "nobody-here", "true", vec![]);
    assert_eq!(code, 125);
    assert!(err.contains("no user 'nobody-here'"), "{err}");
    // Many calls at once.
    let socket = i.agent_socket();
    let handles: Vec<_> = (0..32)
        .map(|n| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let code = bulkhead_hal::guest::exec(
                    &socket,
                    "user",
                    &format!("echo {n}"),
                    std::io::empty(),
                    &mut out,
                    std::io::sink(),
                )
                .unwrap();
                (n, code, String::from_utf8(out).unwrap())
            })
        })
        .collect();
    for h in handles {
        let (n, code, out) = h.join().unwrap();
        assert_eq!((code, out), (0, format!("{n}\n")));
    }
    assert_eq!(i.kill().unwrap(), RunState::Exited(137));
}

#[test]
fn a_symlinked_agent_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("qrexec.sock");
    std::os::unix::fs::symlink("/run/bulkhead/qubesd.sock", &link).unwrap();
    // O_PATH|O_NOFOLLOW opens the link itself, which is not a socket.
    let err = bulkhead_hal::guest::connect_guest_socket(&link).unwrap_err();
    assert!(err.to_string().contains("is not a socket"), "{err}");
    let file = dir.path().join("plain");
    std::fs::write(&file, b"").unwrap();
    assert!(bulkhead_hal::guest::connect_guest_socket(&file).is_err());
}

#[test]
fn a_silent_agent_cannot_hold_the_host_forever() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qrexec.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // Accepts, then never says HELLO.
    let holder = std::thread::spawn(move || {
        let conn = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(20));
        drop(conn);
    });
    let t = Instant::now();
    let r = bulkhead_hal::guest::exec(
        &path,
        "user",
        "true",
        std::io::empty(),
        std::io::sink(),
        std::io::sink(),
    );
    assert!(r.is_err(), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    drop(holder);
}
