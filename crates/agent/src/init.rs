//! PID 1 duties besides reaping: first-boot setup of users' homes on the
//! private volume, and an orderly stop when the host asks (SIGTERM).

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long processes get to exit after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Raises PID 1's descriptor limit (inherited by services): each call in
/// flight holds a socket and three pipes (and, in a vm qube, a channel
/// stream), so the default soft limit of 1024 would cap a qube at a couple
/// of hundred concurrent calls. In a VM the guest's root may go higher than
/// the hard limit; in a namespace only up to it.
pub fn raise_fd_limit(vm: bool) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const WANT: u64 = 65536;
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if vm && hard < WANT && setrlimit(Resource::RLIMIT_NOFILE, WANT, WANT).is_ok() {
        return;
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(WANT.max(1024)), hard);
}

/// Boot-time setup: every regular user (uid ≥ 1000) whose home under
/// `/home` is missing gets one, filled from `/etc/skel` (as Qubes does when
/// a private volume is first used).
pub fn boot() {
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
        return;
    };
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        let (Some(uid), Some(gid), Some(home)) = (
            f.get(2).and_then(|u| u.parse::<u32>().ok()),
            f.get(3).and_then(|g| g.parse::<u32>().ok()),
            f.get(5),
        ) else {
            continue;
        };
        // Only /home/<name> (one component): nothing nested that could
        // route through a link.
        let Some(leaf) = home.strip_prefix("/home/") else {
            continue;
        };
        if !(1000..65534).contains(&uid)
            || leaf.is_empty()
            || leaf.contains('/')
            || leaf.starts_with('.')
        {
            continue;
        }
        let home = std::path::Path::new(home);
        if std::fs::symlink_metadata(home).is_ok() {
            continue;
        }
        if let Err(e) = make_home(home, uid, gid) {
            eprintln!("bulkhead-agent: cannot create {}: {e}", home.display());
        }
    }
}

fn make_home(home: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::fs::create_dir(home)?;
    copy_skel(std::path::Path::new("/etc/skel"), home, uid, gid)?;
    std::os::unix::fs::lchown(home, Some(uid), Some(gid))
}

fn copy_skel(
    from: &std::path::Path,
    to: &std::path::Path,
    uid: u32,
    gid: u32,
) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let t = to.join(e.file_name());
        let ft = e.file_type()?;
        if ft.is_dir() {
            std::fs::create_dir_all(&t)?;
            copy_skel(&e.path(), &t, uid, gid)?;
        } else if ft.is_file() {
            std::fs::copy(e.path(), &t)?;
        } else {
            continue;
        }
        std::os::unix::fs::lchown(&t, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// On SIGTERM (the host's shutdown request): SIGTERM to every process,
/// SIGKILL to what is left after a grace period, sync, exit. PID 1 of a PID
/// namespace only receives signals it handles, hence the handler.
pub fn on_shutdown_signal() {
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "bulkhead-agent: cannot handle SIGTERM ({e}); the host will have to kill this qube"
            );
            return;
        }
    };
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            eprintln!("bulkhead-agent: shutting down");
            // kill(-1) from PID 1 reaches every other process of the qube.
            let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while others_alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            nix::unistd::sync();
            if crate::vm::is_vm() {
                crate::vm::power_off();
            }
            std::process::exit(0);
        }
    });
}

/// Whether any process besides PID 1 is left (from `/proc`). In a `vm`
/// qube the kernel's own threads (kthreadd, pid 2, and its children) are
/// listed too and never exit: they do not count.
fn others_alive() -> bool {
    std::fs::read_dir("/proc").is_ok_and(|d| {
        d.flatten().any(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|pid| pid != 1 && pid != 2 && parent(pid) != Some(2))
        })
    })
}

/// A process's parent pid (field 4 of `/proc/<pid>/stat`).
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The `qubes.VMExec` service: decode the argument and exec it.
pub fn vmexec(arg: String) -> i32 {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let argv = match bulkhead_proto::vmexec::decode(&arg) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("qubes.VMExec: {e}");
            return 2;
        }
    };
    let mut it = argv.into_iter().map(OsString::from_vec);
    let Some(prog) = it.next() else {
        eprintln!("qubes.VMExec: empty command");
        return 2;
    };
    let err = std::process::Command::new(&prog).args(it).exec();
    eprintln!("qubes.VMExec: cannot run {prog:?}: {err}");
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}
