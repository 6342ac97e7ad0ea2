//! The sending side (`qvm-copy`).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use bulkhead_proto::filecopy::{mode_of, Crc32, Header, Kind, MAX_LINK};

struct Out<'a, W> {
    w: &'a mut W,
    crc: Crc32,
}

impl<W: Write> Out<'_, W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc.update(b);
        self.w.write_all(b)
    }
}

fn clamp(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

fn header(name: &[u8], kind: Kind, perms: u32, len: u64, m: &fs::Metadata) -> Header {
    Header {
        namelen: name.len() as u32,
        mode: mode_of(kind, perms),
        filelen: len,
        atime: clamp(m.atime()),
        atime_nsec: clamp(m.atime_nsec()),
        mtime: clamp(m.mtime()),
        mtime_nsec: clamp(m.mtime_nsec()),
    }
}

fn one(out: &mut Out<'_, impl Write>, path: &Path, name: &Path) -> io::Result<()> {
    let m = fs::symlink_metadata(path)?;
    let nb = name.as_os_str().as_bytes();
    let perms = m.permissions().mode() & 0o777;
    let ft = m.file_type();
    if ft.is_dir() {
        // Created first (0700), then its real mode and times after its content.
        out.put(&header(nb, Kind::Dir, 0o700, 0, &m).encode())?;
        out.put(nb)?;
        let mut entries: Vec<_> = fs::read_dir(path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            one(out, &e.path(), &name.join(e.file_name()))?;
        }
        out.put(&header(nb, Kind::Dir, perms, 0, &m).encode())?;
        out.put(nb)
    } else if ft.is_file() {
        out.put(&header(nb, Kind::File, perms, m.len(), &m).encode())?;
        out.put(nb)?;
        // Open exactly what was stat'ed: no symlink swapped in, no FIFO to hang on.
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        let fm = f.metadata()?;
        if !fm.is_file() || (fm.dev(), fm.ino()) != (m.dev(), m.ino()) {
            return Err(io::Error::other(format!(
                "{} changed while being sent",
                path.display()
            )));
        }
        let mut buf = vec![0u8; 1 << 20];
        let mut left = m.len();
        while left > 0 {
            let n = match f.read(&mut buf[..left.min(1 << 20) as usize]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while being sent", path.display()),
                ));
            }
            out.put(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    } else if ft.is_symlink() {
        let t = fs::read_link(path)?;
        let tb = t.as_os_str().as_bytes();
        if tb.len() > MAX_LINK {
            return Err(io::Error::other(format!(
                "link target of {} is too long",
                path.display()
            )));
        }
        out.put(&header(nb, Kind::Symlink, 0o777, tb.len() as u64, &m).encode())?;
        out.put(nb)?;
        out.put(tb)
    } else {
        Err(io::Error::other(format!(
            "{} is not a file, directory or link; not sent",
            path.display()
        )))
    }
}

/// Writes `paths` (each sent under its own file name) and the end marker;
/// returns the CRC32 of everything written, to compare with the reply.
pub fn pack(paths: &[&Path], w: &mut impl Write) -> io::Result<u32> {
    let mut out = Out {
        w,
        crc: Crc32::default(),
    };
    for p in paths {
        let name = p.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no file name", p.display()),
            )
        })?;
        one(&mut out, p, Path::new(name))?;
    }
    let end = Header {
        namelen: 0,
        mode: 0,
        filelen: 0,
        atime: 0,
        atime_nsec: 0,
        mtime: 0,
        mtime_nsec: 0,
    };
    out.put(&end.encode())?;
    out.w.flush()?;
    Ok(out.crc.value())
}
