//! The relay's own namespaces: a user namespace (so it may build the
//! rest), no network (no host interfaces, no abstract unix sockets), and a
//! mount namespace whose root is an empty tmpfs holding only bulkheadd's
//! policy socket. A compromised relay — which is the qube's root on the
//! host — can then reach nothing of the host by path either (no D-Bus, no
//! journald, no world-writable sockets), only its listening socket (already
//! bound) and the policy socket.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Where the policy socket is inside the jail.
pub const POLICY: &str = "/policy.sock";

fn ctx<T>(r: nix::Result<T>, what: &str) -> io::Result<T> {
    r.map_err(|e| io::Error::other(format!("{what}: {e}")))
}

/// Enters the jail, using the (empty) directory `root` as the mount point
/// of its new root; returns the policy socket's path inside it.
pub fn enter(root: &Path, policy: &Path) -> io::Result<PathBuf> {
    let none = None::<&str>;
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    ctx(
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS),
        "unshare(user, net, mount)",
    )?;
    // Our own uid, and only it, mapped (to the namespace's root), so files
    // can be created in the jail; an unprivileged process may map only itself.
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    ctx(
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none),
        "make mounts private",
    )?;
    ctx(
        mount(
            Some("tmpfs"),
            root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=16k,nr_inodes=8,mode=0755"),
        ),
        "mount the jail's tmpfs",
    )?;
    let inside = root.join(POLICY.trim_start_matches('/'));
    std::fs::File::create(&inside)?;
    ctx(
        mount(Some(policy), &inside, none, MsFlags::MS_BIND, none),
        "bind the policy socket",
    )?;
    ctx(nix::unistd::chdir(root), "chdir to the jail")?;
    ctx(nix::unistd::pivot_root(".", "."), "pivot_root")?;
    ctx(umount2(".", MntFlags::MNT_DETACH), "detach the host's root")?;
    ctx(nix::unistd::chdir("/"), "chdir /")?;
    Ok(PathBuf::from(POLICY))
}
