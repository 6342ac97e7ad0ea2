//! Idmapped bind mounts (`open_tree` + `mount_setattr(MOUNT_ATTR_IDMAP)` +
//! `move_mount`), kernel ≥ 5.12.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const AT_EMPTY_PATH: libc::c_uint = 0x1000;
const AT_SYMLINK_NOFOLLOW: libc::c_uint = 0x100;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` from `<linux/mount.h>`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} contains NUL", p.display()),
        )
    })
}

/// Bind-mounts `src` (recursively) at `dst`, with file ownership shifted
/// through the user namespace `userns` (a `/proc/<pid>/ns/user` fd): host uid
/// 0 appears as that namespace's root. Optionally read-only. A symlink as
/// `src`'s last component is not followed.
pub fn idmapped_bind(
    src: &Path,
    userns: BorrowedFd<'_>,
    dst: &Path,
    read_only: bool,
) -> io::Result<()> {
    let src_c = cpath(src)?;
    let dst_c = cpath(dst)?;
    // SAFETY: `src_c` is a valid NUL-terminated string that outlives the call;
    // open_tree reads only that string and returns a new fd or -1.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src_c.as_ptr(),
            // A source whose last component is a symlink is refused (ENOTDIR
            // on a later use, or a bind of the link itself), never followed:
            // it may sit in a volume a qube wrote.
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE | AT_SYMLINK_NOFOLLOW,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd returned by open_tree that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `tree` is an open detached mount fd; the empty path is a valid
    // C string; `attr` is a properly laid out mount_attr whose size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            AT_EMPTY_PATH | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `tree` is an open detached mount fd, both paths are valid C
    // strings that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
