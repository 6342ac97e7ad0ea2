//! `bulkhead-nsinit`: the helper that builds an `ns` qube from the inside.
//!
//! Started by [`super::NsBackend`] as host root, single-threaded. It speaks a
//! line protocol with the backend on stdin/stdout:
//!
//! 1. creates a user namespace, says `userns`, waits for `go` (meanwhile the
//!    backend writes the uid/gid maps and prepares the idmapped root);
//! 2. creates mount, UTS, IPC, network, cgroup and PID namespaces, becomes
//!    root of the user namespace, forks the qube's PID 1 and says `pid <n>`;
//! 3. the child mounts the root overlay, `/proc` and a minimal `/dev`,
//!    pivots into it, installs the seccomp filter, says `ready` and execs the
//!    qube's init with output to the console log;
//! 4. the helper waits for PID 1 and exits with its status.
//!
//! Any failure is reported as `error <what>` before exiting.

use std::ffi::CString;
use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, dup2, execvp, pivot_root, sethostname, setresgid, setresuid, Gid, Uid};
use serde::{Deserialize, Serialize};

use super::seccomp;

/// What the backend hands the helper (as JSON in argv[1]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    pub hostname: String,
    /// Idmapped view of the root, prepared by the backend: read-only under
    /// an overlay, or the writable root itself when `overlay` is `None`.
    pub lower: PathBuf,
    /// Overlay (upper, work) dirs.
    pub overlay: Option<(PathBuf, PathBuf)>,
    /// Idmapped host dirs prepared by the backend: (dir, path in the qube, read-only).
    pub binds: Vec<(PathBuf, String, bool)>,
    /// Empty dir where the overlay is assembled.
    pub merged: PathBuf,
    /// Host dir bound at [`crate::GUEST_CHANNEL_DIR`] inside the qube.
    pub channel: PathBuf,
    pub init: Vec<String>,
}

/// Device nodes a qube gets, bound from the host.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the helper; returns its exit status.
pub fn run(cfg: &InitConfig) -> i32 {
    match outer(cfg) {
        Ok(code) => code,
        Err(e) => {
            say(&format!("error {e}"));
            1
        }
    }
}

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn outer(cfg: &InitConfig) -> Result<i32, String> {
    // No controlling terminal: a qube must never reach the terminal of
    // whoever started the daemon (keystroke reading or TIOCSTI injection).
    ctx(nix::unistd::setsid(), "setsid")?;
    // Pin nothing of the host's mount tree once the old root is detached.
    ctx(chdir("/"), "chdir /")?;
    // The helper shares the qube's memory limit; shield it from the OOM killer
    // (PID 1 resets its own score to 0). Best effort: it needs
    // CAP_SYS_RESOURCE, which some hosts drop. Either way the qube cannot
    // outlive the helper: PID 1 has a parent-death SIGKILL, and the backend
    // kills the whole cgroup when the helper is gone.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    ctx(unshare(CloneFlags::CLONE_NEWUSER), "unshare(user)")?;
    say("userns");
    let mut line = String::new();
    ctx(std::io::stdin().lock().read_line(&mut line), "reading go")?;
    if line.trim() != "go" {
        return Err(format!("expected 'go', got {:?}", line.trim()));
    }
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWCGROUP
        | CloneFlags::CLONE_NEWPID;
    ctx(unshare(flags), "unshare(mount, uts, ipc, net, cgroup, pid)")?;
    // Become the namespace's root (host uid_base); until now we still carried
    // host root's (unmapped) credentials.
    ctx(
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)),
        "setresgid(0)",
    )?;
    ctx(nix::unistd::setgroups(&[]), "setgroups([])")?;
    ctx(
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)),
        "setresuid(0)",
    )?;
    // The qube's console is a pipe the helper copies into the log (capped),
    // never a host file the qube could truncate or grow without bound.
    let (console_r, console_w) = ctx(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC), "pipe")?;
    match ctx(bulkhead_sys::process::fork_single_threaded(), "fork")? {
        nix::unistd::ForkResult::Child => {
            drop(console_r);
            let err = inner(cfg, console_w).unwrap_err();
            say(&format!("error {err}"));
            std::process::exit(1);
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(console_w);
            say(&format!("pid {child}"));
            // No threads after unshare(CLONE_NEWPID) (clone would fail with
            // EINVAL): copy the console until every writer is gone (the PID
            // namespace dies with its PID 1), then reap PID 1.
            copy_console(std::fs::File::from(console_r));
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(format!("waitpid: {e}")),
                }
            }
        }
    }
}

/// Most console output kept per run; the rest is read and dropped.
const MAX_CONSOLE: u64 = 64 << 20;

fn copy_console(mut from: std::fs::File) {
    use std::io::Read;
    let mut log = std::io::stderr();
    let mut buf = [0u8; 16384];
    let mut written = 0u64;
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) if written < MAX_CONSOLE => {
                let n = n.min((MAX_CONSOLE - written) as usize);
                let _ = log.write_all(&buf[..n]);
                written += n as u64;
                if written >= MAX_CONSOLE {
                    let _ = log.write_all(b"\n[bulkhead: console output over 64 MiB dropped]\n");
                }
            }
            Ok(_) => {}
        }
    }
}

/// Makes `base/rel...` a real directory (creating what is missing), never
/// following a symlink the qube may have left in its persistent layer.
fn real_dir(base: &Path, rel: &[&str]) -> Result<PathBuf, String> {
    let mut p = base.to_path_buf();
    for c in rel {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "{} in the qube's root is not a real directory",
                    p.display()
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ctx(std::fs::create_dir(&p), &format!("mkdir {}", p.display()))?;
            }
            Err(e) => return Err(format!("{}: {e}", p.display())),
        }
    }
    Ok(p)
}

fn bind_dev(dev: &Path, name: &str) -> Result<(), String> {
    let target = dev.join(name);
    ctx(
        std::fs::File::create(&target),
        &format!("create {}", target.display()),
    )?;
    let src = Path::new("/dev").join(name);
    ctx(
        mount(
            Some(&src),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ),
        &format!("bind {}", src.display()),
    )
}

/// PID 1's side: build the root, enter it, lock it down, exec init.
fn inner(
    cfg: &InitConfig,
    console: std::os::fd::OwnedFd,
) -> Result<std::convert::Infallible, String> {
    let none = None::<&str>;
    // Die with the helper: a qube must never outlive its supervisor.
    ctx(
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL),
        "set parent-death signal",
    )?;
    // (If the helper died before that call, the backend sees it exit and
    // kills the whole cgroup; getppid() cannot tell here: PID 1's parent is
    // outside its PID namespace.)
    // The helper is shielded from the OOM killer (set by the backend); the
    // qube's own processes are not.
    let _ = std::fs::write("/proc/self/oom_score_adj", "0");
    ctx(
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none),
        "make mounts private",
    )?;
    match &cfg.overlay {
        Some((upper, work)) => {
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                cfg.lower.display(),
                upper.display(),
                work.display()
            );
            ctx(
                mount(
                    Some("overlay"),
                    &cfg.merged,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(opts.as_str()),
                ),
                "mount root overlay",
            )?;
        }
        None => ctx(
            mount(
                Some(&cfg.lower),
                &cfg.merged,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            ),
            "bind the root",
        )?,
    }
    let m = &cfg.merged;
    let proc_dir = real_dir(m, &["proc"])?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    ctx(
        mount(Some("proc"), &proc_dir, Some("proc"), nosuid, none),
        "mount /proc",
    )?;
    let dev = real_dir(m, &["dev"])?;
    ctx(
        mount(
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=755,size=1m"),
        ),
        "mount /dev",
    )?;
    for d in DEVICES {
        bind_dev(&dev, d)?;
    }
    ctx(std::fs::create_dir_all(dev.join("pts")), "mkdir /dev/pts")?;
    ctx(
        mount(
            Some("devpts"),
            &dev.join("pts"),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=620"),
        ),
        "mount /dev/pts",
    )?;
    ctx(
        std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx")),
        "link /dev/ptmx",
    )?;
    ctx(std::fs::create_dir_all(dev.join("shm")), "mkdir /dev/shm")?;
    ctx(
        mount(
            Some("tmpfs"),
            &dev.join("shm"),
            Some("tmpfs"),
            nosuid,
            Some("mode=1777,size=64m"),
        ),
        "mount /dev/shm",
    )?;
    let chan_rel: Vec<&str> = crate::GUEST_CHANNEL_DIR
        .trim_start_matches('/')
        .split('/')
        .collect();
    let chan = real_dir(m, &chan_rel)?;
    ctx(
        mount(Some(&cfg.channel), &chan, none, MsFlags::MS_BIND, none),
        "bind the guest channel",
    )?;
    // Bind mounts ignore these flags on the first call; a remount applies them.
    ctx(
        mount(
            none,
            &chan,
            none,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            none,
        ),
        "restrict the guest channel",
    )?;
    for (src, dst, ro) in &cfg.binds {
        let rel: Vec<&str> = dst.trim_start_matches('/').split('/').collect();
        if rel.iter().any(|c| c.is_empty() || *c == "." || *c == "..") {
            return Err(format!("bind target {dst:?} is not a clean absolute path"));
        }
        let target = real_dir(m, &rel)?;
        ctx(
            mount(Some(src), &target, none, MsFlags::MS_BIND, none),
            &format!("bind {dst}"),
        )?;
        let mut flags =
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if *ro {
            flags |= MsFlags::MS_RDONLY;
        }
        ctx(
            mount(none, &target, none, flags, none),
            &format!("restrict {dst}"),
        )?;
    }
    ctx(sethostname(&cfg.hostname), "sethostname")?;
    // The qube's own loopback (a fresh network namespace starts with it down).
    ctx(bulkhead_sys::net::loopback_up(), "bring up lo")?;
    ctx(chdir(m), "chdir to new root")?;
    ctx(pivot_root(".", "."), "pivot_root")?;
    ctx(umount2(".", MntFlags::MNT_DETACH), "detach old root")?;
    ctx(chdir("/"), "chdir /")?;
    seccomp::apply()?;
    let argv: Vec<CString> = cfg
        .init
        .iter()
        .map(|a| {
            CString::new(a.as_bytes()).map_err(|_| format!("init argument {a:?} contains NUL"))
        })
        .collect::<Result<_, _>>()?;
    let Some(prog) = argv.first() else {
        return Err("empty init command".into());
    };
    say("ready");
    // The control pipe and the host's log file must not reach the qube:
    // stdin from /dev/null, stdout and stderr to the console pipe.
    let null = ctx(std::fs::File::open("/dev/null"), "open /dev/null")?;
    ctx(dup2(null.as_raw_fd(), 0), "redirect stdin")?;
    ctx(dup2(console.as_raw_fd(), 1), "redirect stdout")?;
    ctx(dup2(console.as_raw_fd(), 2), "redirect stderr")?;
    drop(console);
    std::env::vars().for_each(|(k, _)| std::env::remove_var(k));
    std::env::set_var(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    std::env::set_var("HOME", "/root");
    let e = execvp(prog, &argv).unwrap_err();
    Err(format!("exec {:?}: {e}", cfg.init[0]))
}
