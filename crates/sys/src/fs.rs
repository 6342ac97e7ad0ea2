//! File cloning: a reflink (`FICLONE`) where the file system shares blocks,
//! else a copy of only the data extents (`SEEK_DATA`/`SEEK_HOLE` +
//! `copy_file_range`), so a sparse image stays sparse.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

const FICLONE: libc::c_ulong = 0x4004_9409;

/// How a clone was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloned {
    /// Blocks shared: O(1) whatever the size.
    Reflink,
    /// Data extents copied.
    Copy,
}

/// Makes `dst` (open for writing, empty) a copy of `src`.
pub fn clone_file(src: &File, dst: &File) -> io::Result<Cloned> {
    // SAFETY: FICLONE takes the source fd by value; both fds are open for
    // the duration of the call and no memory is passed.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) };
    if r == 0 {
        return Ok(Cloned::Reflink);
    }
    copy_sparse(src, dst)?;
    Ok(Cloned::Copy)
}

/// Whether the file system holding `dir` supports reflinks (by trying).
pub fn supports_reflink(dir: &std::path::Path) -> bool {
    let (Ok(a), Ok(b)) = (tempfile_in(dir), tempfile_in(dir)) else {
        return false;
    };
    // SAFETY: as in `clone_file`.
    unsafe { libc::ioctl(b.as_raw_fd(), FICLONE, a.as_raw_fd()) == 0 }
}

fn tempfile_in(dir: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
}

fn copy_sparse(src: &File, dst: &File) -> io::Result<()> {
    use nix::unistd::{lseek, Whence};
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    let mut pos: i64 = 0;
    let end = len as i64;
    while pos < end {
        let data = match lseek(src.as_raw_fd(), pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole is left
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(src.as_raw_fd(), data, Whence::SeekHole)?.min(end);
        let mut off_in = data;
        let mut off_out = data;
        while off_in < hole {
            let want = (hole - off_in) as usize;
            let n =
                nix::fcntl::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source shrank while being copied",
                ));
            }
        }
        pos = hole;
    }
    Ok(())
}
