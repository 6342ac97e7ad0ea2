//! The jail of a `vm` qube's host processes (QEMU and the guest channel
//! helper), set up by `bulkhead-vmm` as root just before it drops to the
//! qube's own unprivileged uid:
//!
//! - new mount, network, IPC and UTS namespaces: no host network (not even
//!   a loopback that is up), no abstract unix sockets of the host;
//! - the root is a fresh read-only tmpfs holding only the host's programs
//!   and libraries (read-only), `/dev/{null,zero,urandom}` (and `/dev/kvm`
//!   when KVM is used), and this qube's own directories: its kernel
//!   (read-only) and its socket directory. No volume file is visible: QEMU
//!   gets the qube's disks as already open descriptors, so it cannot open
//!   another qube's volume, or even its own by path;
//! - all groups dropped, uid/gid switched (which clears every capability),
//!   `no_new_privs` set.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use serde::{Deserialize, Serialize};

/// A host path made visible inside the jail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JailBind {
    pub src: PathBuf,
    /// Absolute path inside the jail.
    pub dst: String,
    pub writable: bool,
}

/// What the jail holds besides the host's programs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JailSpec {
    /// Empty host directory the jail's tmpfs root is mounted on.
    pub root: PathBuf,
    pub binds: Vec<JailBind>,
    /// `/dev/kvm` is needed (KVM acceleration).
    pub kvm: bool,
    pub uid: u32,
    pub gid: u32,
}

/// Host directories with the programs and libraries QEMU and the helper
/// run from (read-only). Symlinks among them (merged-/usr hosts) are
/// recreated as symlinks.
const SYSTEM: &[&str] = &["/usr", "/lib", "/lib64", "/bin", "/sbin"];
/// Single files needed from `/etc`.
const ETC_FILES: &[&str] = &["/etc/ld.so.cache"];
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/urandom"];

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn bind(src: &Path, dst: &Path, writable: bool) -> Result<(), String> {
    let none = None::<&str>;
    let meta = ctx(fs::metadata(src), &format!("{}", src.display()))?;
    if meta.is_dir() {
        ctx(fs::create_dir_all(dst), &format!("mkdir {}", dst.display()))?;
    } else {
        if let Some(p) = dst.parent() {
            ctx(fs::create_dir_all(p), &format!("mkdir {}", p.display()))?;
        }
        ctx(fs::File::create(dst), &format!("create {}", dst.display()))?;
    }
    ctx(
        mount(
            Some(src),
            dst,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        ),
        &format!("bind {} on {}", src.display(), dst.display()),
    )?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID;
    if !writable {
        flags |= MsFlags::MS_RDONLY;
    }
    if !src.starts_with("/dev") {
        flags |= MsFlags::MS_NODEV;
    }
    ctx(
        mount(none, dst, none, flags, none),
        &format!("restrict {}", dst.display()),
    )
}

/// Enters the jail (namespaces, root, credentials). Run as root, single
/// threaded, before anything of the qube is touched.
pub fn enter(spec: &JailSpec) -> Result<(), String> {
    let none = None::<&str>;
    if spec.uid == 0 || spec.gid == 0 {
        return Err("refusing to run a qube's process as root".into());
    }
    ctx(
        unshare(
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS,
        ),
        "unshare(mount, net, ipc, uts)",
    )?;
    ctx(
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none),
        "make mounts private",
    )?;
    let root = &spec.root;
    ctx(
        fs::create_dir_all(root),
        &format!("mkdir {}", root.display()),
    )?;
    ctx(
        mount(
            Some("tmpfs"),
            root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=1m,nr_inodes=256,mode=0755"),
        ),
        "mount the jail's tmpfs",
    )?;
    let inside = |p: &str| root.join(p.trim_start_matches('/'));
    for s in SYSTEM {
        let p = Path::new(s);
        match fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = ctx(fs::read_link(p), s)?;
                ctx(
                    std::os::unix::fs::symlink(&target, inside(s)),
                    &format!("symlink {s}"),
                )?;
            }
            Ok(_) => bind(p, &inside(s), false)?,
            Err(_) => {}
        }
    }
    for f in ETC_FILES {
        if Path::new(f).exists() {
            bind(Path::new(f), &inside(f), false)?;
        }
    }
    let mut devices: Vec<&str> = DEVICES.to_vec();
    if spec.kvm {
        devices.push("/dev/kvm");
    }
    for d in devices {
        bind(Path::new(d), &inside(d), true)?;
    }
    for b in &spec.binds {
        bind(&b.src, &inside(&b.dst), b.writable)?;
    }
    ctx(nix::unistd::chdir(root.as_path()), "chdir to the jail")?;
    ctx(nix::unistd::pivot_root(".", "."), "pivot_root")?;
    ctx(umount2(".", MntFlags::MNT_DETACH), "detach the host's root")?;
    ctx(nix::unistd::chdir("/"), "chdir /")?;
    ctx(
        mount(
            none,
            "/",
            none,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=1m,nr_inodes=256,mode=0755"),
        ),
        "make the jail's root read-only",
    )?;
    let _ = nix::unistd::sethostname("bulkhead-vmm");
    drop_privileges(spec.uid, spec.gid)
}

/// Switches to `uid`/`gid` for good: no groups, no capabilities, no way
/// back (`no_new_privs`).
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), String> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    ctx(setgroups(&[]), "setgroups")?;
    let (g, u) = (Gid::from_raw(gid), Uid::from_raw(uid));
    ctx(setresgid(g, g, g), "setresgid")?;
    ctx(setresuid(u, u, u), "setresuid")?;
    ctx(nix::sys::prctl::set_no_new_privs(), "no_new_privs")?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err("could regain root after dropping it".into());
    }
    Ok(())
}
