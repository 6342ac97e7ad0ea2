//! Bringing up a network namespace's loopback interface (`lo` starts down
//! in a fresh namespace; services on 127.0.0.1 need it).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;

/// `struct ifreq` with the `ifr_flags` member of its union (40 bytes).
#[repr(C)]
struct IfReqFlags {
    name: [u8; 16],
    flags: libc::c_short,
    pad: [u8; 22],
}

/// Sets IFF_UP on `lo` in the caller's network namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReqFlags {
        name: [0; 16],
        flags: 0,
        pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: `req` is a properly sized, initialised ifreq that outlives
    // both calls; the kernel reads the name and reads/writes the flags.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), SIOCGIFFLAGS, &mut req as *mut IfReqFlags) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), SIOCSIFFLAGS, &req as *const IfReqFlags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
