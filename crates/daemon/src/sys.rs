//! The few host facts and OS calls the daemon needs: the socket's group,
//! file ownership and modes, peer group membership, fd limits, host memory.
//! Kept here so the rest of the crate stays free of OS specifics.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::{chown, Gid, Group};

use crate::model::HostInfo;

/// Looks up `name`, creating it as a system group if missing. Returns its gid.
pub fn ensure_group(name: &str) -> io::Result<Gid> {
    if let Some(g) = Group::from_name(name).map_err(io::Error::from)? {
        return Ok(g.gid);
    }
    let status = Command::new("groupadd")
        .arg("--system")
        .arg(name)
        .status()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("group '{name}' does not exist and groupadd could not run: {e}"),
            )
        })?;
    if !status.success() {
        // Lost a race with another creator? Look again before failing.
        if let Some(g) = Group::from_name(name).map_err(io::Error::from)? {
            return Ok(g.gid);
        }
        return Err(io::Error::other(format!(
            "groupadd --system {name} failed ({status})"
        )));
    }
    Group::from_name(name)
        .map_err(io::Error::from)?
        .map(|g| g.gid)
        .ok_or_else(|| io::Error::other(format!("group '{name}' still missing after groupadd")))
}

/// `chown root:<gid>` and `chmod <mode>`.
pub fn set_owner_mode(path: &Path, gid: Gid, mode: u32) -> io::Result<()> {
    chown(path, None, Some(gid)).map_err(io::Error::from)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Whether a process (by pid) has `gid` among its groups (from /proc).
pub fn process_in_group(pid: i32, gid: u32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .filter(|l| l.starts_with("Groups:") || l.starts_with("Gid:"))
        .flat_map(|l| l.split_whitespace().skip(1))
        .any(|g| g.parse::<u32>().ok() == Some(gid))
}

/// Raises the soft open-files limit to the hard limit (many clients at once).
pub fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Host memory, from /proc/meminfo.
pub fn host_info() -> HostInfo {
    let total = fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    });
    HostInfo {
        mem_total_kib: total.unwrap_or(HostInfo::default().mem_total_kib),
    }
}
