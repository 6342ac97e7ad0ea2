//! A backend's host process for one qube (the `ns` helper, the `vm`
//! backend's QEMU): our child, or one an earlier daemon started and this
//! one re-adopted through a pidfd.

use std::fs;
use std::os::fd::AsFd;
use std::process::Child;

/// This boot's id: pids in a record from an earlier boot mean nothing.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The helper process: our child, or one a previous daemon started.
pub enum Helper {
    Child(Child),
    Adopted {
        pid: u32,
        pidfd: std::os::fd::OwnedFd,
    },
}

impl Helper {
    pub fn id(&self) -> u32 {
        match self {
            Helper::Child(c) => c.id(),
            Helper::Adopted { pid, .. } => *pid,
        }
    }

    /// The exit status if it has exited (-1 when not ours to reap).
    pub fn try_wait(&mut self) -> Option<i32> {
        match self {
            Helper::Child(c) => match c.try_wait() {
                Ok(Some(status)) => {
                    use std::os::unix::process::ExitStatusExt;
                    Some(
                        status
                            .code()
                            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                    )
                }
                _ => None,
            },
            Helper::Adopted { pidfd, .. } => {
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::ZERO) {
                    Ok(n) if n > 0 => Some(-1),
                    _ => None,
                }
            }
        }
    }
}

/// Polls `exited` every 5 ms until it reports an exit status or `timeout`
/// passes.
pub fn wait_for(
    timeout: std::time::Duration,
    mut exited: impl FnMut() -> Option<i32>,
) -> Option<i32> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(c) = exited() {
            return Some(c);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Opens a qube's console log for appending (one log per qube, kept to the
/// last runs: past 64 MiB it is rotated first).
pub fn open_console_log(log: &std::path::Path) -> Result<fs::File, String> {
    if fs::metadata(log).is_ok_and(|m| m.len() > 64 << 20) {
        let _ = fs::rename(log, log.with_extension("log.old"));
    }
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("open console log {}: {e}", log.display()))
}
