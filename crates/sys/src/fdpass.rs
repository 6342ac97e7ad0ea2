//! Passing one file descriptor over a unix socket (`SCM_RIGHTS`).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Sends `data` (at least one byte) with `fd` attached.
pub fn send_with_fd(sock: &UnixStream, data: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let iov = [IoSlice::new(data)];
    let fds;
    let cmsgs: Vec<ControlMessage<'_>> = match fd {
        Some(f) => {
            fds = [f];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => vec![],
    };
    let n = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    if n != data.len() {
        return Err(io::Error::other("short write while passing a descriptor"));
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes and at most one descriptor. Extra
/// descriptors are closed; a truncated control message is an error.
pub fn recv_with_fd(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut got = None;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let n = msg.bytes;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for f in fds {
                // SAFETY: the kernel just installed `f` in our table for
                // this message; nothing else owns it yet.
                let owned = unsafe { OwnedFd::from_raw_fd(f) };
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
    }
    if truncated {
        return Err(io::Error::other("control message truncated"));
    }
    Ok((n, got))
}
