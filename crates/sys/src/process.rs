//! `fork`, allowed only where it is sound: in a single-threaded process.

use std::io;

pub use nix::unistd::ForkResult;

/// Number of threads of this process, from `/proc/self/status`.
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// Forks, after checking that this process has exactly one thread.
pub fn fork_single_threaded() -> io::Result<ForkResult> {
    let n = thread_count()?;
    if n != 1 {
        return Err(io::Error::other(format!(
            "refusing to fork a process with {n} threads"
        )));
    }
    // SAFETY: the process has a single thread (checked just above, and this
    // crate's callers create none in between), so the child cannot inherit a
    // lock held by another thread; both sides continue as ordinary processes.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// A pidfd for `pid` (kernel ≥ 5.3): readable once the process exits, and
/// never confused with a later process that reuses the pid.
pub fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new fd
    // or -1; no memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor returned by the kernel, owned by no one else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as std::os::fd::RawFd) })
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_harness_threads_are_counted() {
        // The test harness runs tests on worker threads, so there are at
        // least two here and fork must refuse.
        let n = super::thread_count().unwrap();
        assert!(n >= 1);
        if n > 1 {
            assert!(super::fork_single_threaded().is_err());
        }
    }
}
