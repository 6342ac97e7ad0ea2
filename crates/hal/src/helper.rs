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
