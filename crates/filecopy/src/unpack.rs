//! The receiving side.

use std::collections::HashSet;
use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_proto::filecopy::{
    check_link, check_name, Crc32, FilecopyError, Header, Kind, HEADER_LEN,
};

/// Limits on one transfer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_files: u64,
    /// Accept symbolic links (that stay inside the copied item).
    pub allow_links: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 40,
            max_files: 1_000_000,
            allow_links: true,
        }
    }
}

/// What was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
    /// CRC32 of every byte of the stream, for the reply.
    pub crc32: u32,
}

/// A refused or failed transfer: an errno for the reply and a message.
#[derive(Debug)]
pub struct UnpackError {
    pub errno: i32,
    pub message: String,
    /// The record being processed, if any.
    pub last_name: Option<String>,
    /// CRC32 of the bytes read so far.
    pub crc32: u32,
}

impl std::fmt::Display for UnpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The name comes from the sender: escaped, so it cannot drive a terminal.
        match &self.last_name {
            Some(n) => write!(f, "{}: {}", n.escape_debug(), self.message.escape_debug()),
            None => write!(f, "{}", self.message.escape_debug()),
        }
    }
}

impl std::error::Error for UnpackError {}

struct Fail(i32, String);

impl From<FilecopyError> for Fail {
    fn from(e: FilecopyError) -> Self {
        Fail(libc::EINVAL, e.to_string())
    }
}

fn io_fail(what: &str, e: io::Error) -> Fail {
    Fail(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{what}: {e}"),
    )
}

/// Counts and checksums everything read from the sender.
struct Src<R> {
    inner: R,
    crc: Crc32,
}

impl<R: Read> Src<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), Fail> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Fail(
                    libc::EREMOTEIO,
                    "the stream ended in the middle of a record".into(),
                )
            } else {
                io_fail("reading the stream", e)
            }
        })?;
        self.crc.update(buf);
        Ok(())
    }
}

fn time(secs: u32, nsec: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(u64::from(secs), nsec)
}

fn times(h: &Header) -> FileTimes {
    FileTimes::new()
        .set_accessed(time(h.atime, h.atime_nsec))
        .set_modified(time(h.mtime, h.mtime_nsec))
}

/// A path naming `name` inside the directory open as `dir`: resolved
/// relative to that very directory (through its descriptor), whatever
/// happens to the path it was opened by.
fn at(dir: &File, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

/// The directory open as `dir` itself, by descriptor.
fn itself(dir: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// Opens a directory without following a symlink as its last component.
fn open_dir(path: &Path, shown: &str) -> Result<File, Fail> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            let errno = match e.raw_os_error() {
                // A symlink or a file where a directory should be.
                Some(libc::ELOOP) => libc::ENOTDIR,
                Some(n) => n,
                None => libc::EIO,
            };
            Fail(errno, format!("parent {shown}: {e}"))
        })
}

/// Walks `comps` below the destination one directory descriptor at a time,
/// never following a symlink: the result is the very directory that was
/// checked, even if another process in the receiving qube renames or
/// replaces parts of the tree meanwhile.
fn walk(base: &File, comps: &[String]) -> Result<File, Fail> {
    let mut cur = base.try_clone().map_err(|e| io_fail("dup", e))?;
    for c in comps {
        cur = open_dir(&at(&cur, c), c)?;
    }
    Ok(cur)
}

/// Writes the stream from `input` into `dest` (which must exist).
pub fn unpack(input: impl Read, dest: &Path, limits: Limits) -> Result<Stats, UnpackError> {
    let mut src = Src {
        inner: input,
        crc: Crc32::default(),
    };
    let mut last = None;
    let r = run(&mut src, dest, limits, &mut last);
    let crc32 = src.crc.value();
    match r {
        Ok((files, bytes)) => {
            if let Ok(d) = File::open(dest) {
                let _ = nix::unistd::syncfs(d.as_raw_fd());
            }
            Ok(Stats {
                files,
                bytes,
                crc32,
            })
        }
        Err(Fail(errno, message)) => Err(UnpackError {
            errno,
            message,
            last_name: last,
            crc32,
        }),
    }
}

fn run(
    src: &mut Src<impl Read>,
    dest: &Path,
    limits: Limits,
    last: &mut Option<String>,
) -> Result<(u64, u64), Fail> {
    let meta = fs::symlink_metadata(dest)
        .map_err(|e| io_fail(&format!("destination {}", dest.display()), e))?;
    if !meta.is_dir() {
        return Err(Fail(
            libc::ENOTDIR,
            format!("destination {} is not a directory", dest.display()),
        ));
    }
    // Directories this transfer created, by (device, inode): bounded memory.
    let mut made_dirs: HashSet<(u64, u64)> = HashSet::new();
    let base = open_dir(dest, &dest.display().to_string())?;
    // The last parent that `walk` opened (records usually share parents).
    let mut last_parent: Option<(Vec<String>, std::rc::Rc<File>)> = None;
    let (mut files, mut bytes) = (0u64, 0u64);
    // Large enough that a big file moves in few read/write calls.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let mut hb = [0u8; HEADER_LEN];
        src.exact(&mut hb)?;
        let h = Header::parse(&hb);
        if h.is_end() {
            return Ok((files, bytes));
        }
        let kind = h.check()?;
        let mut name = vec![0u8; h.namelen as usize];
        src.exact(&mut name)?;
        *last = Some(String::from_utf8_lossy(&name).into_owned());
        let comps = check_name(&name)?;
        files += 1;
        if files > limits.max_files {
            return Err(Fail(
                libc::EDQUOT,
                format!("more than {} files", limits.max_files),
            ));
        }
        let (leaf, parents) = comps
            .split_last()
            .ok_or(Fail(libc::EINVAL, "empty name".into()))?;
        let parent = match &last_parent {
            Some((comps, p)) if comps.as_slice() == parents => p.clone(),
            _ => {
                let p = std::rc::Rc::new(walk(&base, parents)?);
                last_parent = Some((parents.to_vec(), p.clone()));
                p
            }
        };
        let target = at(&parent, leaf);
        let shown = comps.join("/");
        match kind {
            Kind::File => {
                if h.filelen > limits.max_bytes.saturating_sub(bytes) {
                    return Err(Fail(
                        libc::EDQUOT,
                        format!("more than {} bytes in total", limits.max_bytes),
                    ));
                }
                let mut f = OpenOptions::new()
                    .write(true)
                    .mode(0o600)
                    .custom_flags(libc::O_TMPFILE)
                    .open(itself(&parent))
                    .map_err(|e| io_fail(&format!("creating {shown}"), e))?;
                let mut left = h.filelen;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    src.exact(&mut buf[..n])?;
                    f.write_all(&buf[..n]).map_err(|e| io_fail("writing", e))?;
                    left -= n as u64;
                }
                bytes += h.filelen;
                f.set_permissions(Permissions::from_mode(h.perms()))
                    .map_err(|e| io_fail("chmod", e))?;
                f.set_times(times(&h))
                    .map_err(|e| io_fail("setting times", e))?;
                // Appears under its name only now, complete; never replaces anything.
                let from = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
                nix::unistd::linkat(
                    None,
                    from.as_path(),
                    None,
                    target.as_path(),
                    nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
                )
                .map_err(|e| io_fail(&format!("creating {shown}"), io::Error::from(e)))?;
            }
            Kind::Dir => {
                let existing = fs::symlink_metadata(&target)
                    .ok()
                    .filter(|m| m.is_dir())
                    .map(|m| (m.dev(), m.ino()));
                if let Some(id) = existing.filter(|id| made_dirs.contains(id)) {
                    // Second record: the directory's real mode and times.
                    let d = OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                        .open(&target)
                        .map_err(|e| io_fail("opening directory", e))?;
                    let m = d.metadata().map_err(|e| io_fail("stat directory", e))?;
                    if (m.dev(), m.ino()) != id {
                        return Err(Fail(
                            libc::EINVAL,
                            format!("{shown} changed during the transfer"),
                        ));
                    }
                    d.set_times(times(&h))
                        .map_err(|e| io_fail("setting times", e))?;
                    d.set_permissions(Permissions::from_mode(h.perms()))
                        .map_err(|e| io_fail("chmod", e))?;
                } else {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&target)
                        .map_err(|e| io_fail(&format!("creating {shown}"), e))?;
                    let m = fs::symlink_metadata(&target)
                        .map_err(|e| io_fail("stat new directory", e))?;
                    made_dirs.insert((m.dev(), m.ino()));
                }
            }
            Kind::Symlink => {
                if !limits.allow_links {
                    return Err(Fail(libc::EINVAL, "symbolic links are not accepted".into()));
                }
                let mut t = vec![0u8; h.filelen as usize];
                src.exact(&mut t)?;
                let t = check_link(&comps, &t)?;
                symlink(&t, &target).map_err(|e| io_fail(&format!("creating link {shown}"), e))?;
            }
        }
    }
}
