//! Packing real trees and unpacking them, plus hostile streams crafted by hand.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use bulkhead_filecopy::{pack, unpack, Limits};
use bulkhead_proto::filecopy::{mode_of, Header, Kind};

fn tree(root: &Path) -> std::path::PathBuf {
    let top = root.join("Report 2026");
    fs::create_dir_all(top.join("sub/deeper")).unwrap();
    fs::write(top.join("empty"), b"").unwrap();
    fs::write(top.join("sub/notes.txt"), b"hello\n").unwrap();
    fs::write(
        top.join("sub/deeper/big.bin"),
        (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    fs::write(top.join("Résumé.pdf"), b"%PDF").unwrap();
    fs::write(top.join("run.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(top.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("sub/notes.txt", top.join("link-to-notes")).unwrap();
    fs::set_permissions(top.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    top
}

fn same(a: &Path, b: &Path) {
    let (ma, mb) = (
        fs::symlink_metadata(a).unwrap(),
        fs::symlink_metadata(b).unwrap(),
    );
    assert_eq!(
        ma.file_type().is_dir(),
        mb.file_type().is_dir(),
        "{}",
        b.display()
    );
    if ma.file_type().is_symlink() {
        assert_eq!(fs::read_link(a).unwrap(), fs::read_link(b).unwrap());
        return;
    }
    assert_eq!(ma.mode() & 0o777, mb.mode() & 0o777, "{}", b.display());
    assert_eq!(ma.mtime(), mb.mtime(), "{}", b.display());
    if ma.is_dir() {
        let mut names: Vec<_> = fs::read_dir(a)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        let mut names_b: Vec<_> = fs::read_dir(b)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names_b.sort();
        assert_eq!(names, names_b);
        for n in names {
            same(&a.join(&n), &b.join(&n));
        }
    } else {
        assert_eq!(
            fs::read(a).unwrap(),
            fs::read(b).unwrap(),
            "{}",
            b.display()
        );
    }
}

#[test]
fn a_tree_round_trips_with_modes_times_and_links() {
    let src = tempfile::tempdir().unwrap();
    let top = tree(src.path());
    let file = src.path().join("single.txt");
    fs::write(&file, b"one file").unwrap();
    let mut stream = Vec::new();
    let crc = pack(&[&top, &file], &mut stream).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let stats = unpack(stream.as_slice(), dst.path(), Limits::default()).unwrap();
    assert_eq!(stats.crc32, crc);
    assert_eq!(stats.files, 13); // 3 dirs sent twice, 6 files, 1 link
    same(&top, &dst.path().join("Report 2026"));
    same(&file, &dst.path().join("single.txt"));
}

/// A stream built record by record.
struct S(Vec<u8>);

impl S {
    fn new() -> S {
        S(Vec::new())
    }
    fn rec(mut self, name: &[u8], kind: Kind, perms: u32, body: &[u8]) -> S {
        let h = Header {
            namelen: name.len() as u32,
            mode: mode_of(kind, perms),
            filelen: body.len() as u64,
            atime: 0,
            atime_nsec: 0,
            mtime: 0,
            mtime_nsec: 0,
        };
        self.0.extend_from_slice(&h.encode());
        self.0.extend_from_slice(name);
        self.0.extend_from_slice(body);
        self
    }
    fn raw_header(mut self, h: Header, name: &[u8]) -> S {
        self.0.extend_from_slice(&h.encode());
        self.0.extend_from_slice(name);
        self
    }
    fn end(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 32]);
        self.0
    }
}

fn refused(stream: Vec<u8>, limits: Limits) -> (i32, String, tempfile::TempDir) {
    let dst = tempfile::tempdir().unwrap();
    let e = unpack(stream.as_slice(), dst.path(), limits).unwrap_err();
    (e.errno, e.to_string(), dst)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn hostile_names_are_refused() {
    // (An empty name is the end marker, not a record.)
    for name in [
        &b"../escape"[..],
        b"/etc/passwd",
        b"a/../../x",
        b"dir//x",
        b"evil\x1b]0;pwned\x07",
    ] {
        let (errno, msg, dst) = refused(
            S::new().rec(name, Kind::File, 0o644, b"x").end(),
            Limits::default(),
        );
        assert!(
            errno == libc::EINVAL || errno == libc::EREMOTEIO,
            "{name:?}: {errno} {msg}"
        );
        assert!(
            entries(dst.path()).is_empty(),
            "{name:?} left {:?}",
            entries(dst.path())
        );
    }
    let long = vec![b'a'; 16385];
    let (errno, _, _) = refused(
        S::new().rec(&long, Kind::File, 0o644, b"").end(),
        Limits::default(),
    );
    assert_eq!(errno, libc::EINVAL);
}

#[test]
fn links_out_of_the_tree_and_special_files_are_refused() {
    let base = S::new().rec(b"top", Kind::Dir, 0o700, b"");
    let (errno, msg, _) = refused(
        base.rec(b"top/l", Kind::Symlink, 0o777, b"../../etc").end(),
        Limits::default(),
    );
    assert_eq!(errno, libc::EINVAL, "{msg}");
    assert!(msg.contains("outside"), "{msg}");
    let (errno, _, _) = refused(
        S::new()
            .rec(b"l", Kind::Symlink, 0o777, b"/etc/shadow")
            .end(),
        Limits::default(),
    );
    assert_eq!(errno, libc::EINVAL);
    let no_links = Limits {
        allow_links: false,
        ..Limits::default()
    };
    let (errno, msg, _) = refused(
        S::new()
            .rec(b"top", Kind::Dir, 0o700, b"")
            .rec(b"top/l", Kind::Symlink, 0o777, b"x")
            .end(),
        no_links,
    );
    assert_eq!(errno, libc::EINVAL, "{msg}");
    // A character device (mode 020644) is not a file, directory or link.
    let h = Header {
        namelen: 3,
        mode: 0o020_644,
        filelen: 0,
        atime: 0,
        atime_nsec: 0,
        mtime: 0,
        mtime_nsec: 0,
    };
    let (errno, msg, dst) = refused(S::new().raw_header(h, b"tty").end(), Limits::default());
    assert_eq!(errno, libc::EINVAL, "{msg}");
    assert!(entries(dst.path()).is_empty());
}

#[test]
fn links_cannot_chain_out_of_the_tree() {
    // Regression (security review): `top/a/b/up -> ../..` is fine alone, but
    // `top/rc -> a/b/up/../../../x` would climb out through it.
    let s = S::new()
        .rec(b"top", Kind::Dir, 0o700, b"")
        .rec(b"top/a", Kind::Dir, 0o700, b"")
        .rec(b"top/a/b", Kind::Dir, 0o700, b"")
        .rec(b"top/a/b/up", Kind::Symlink, 0o777, b"../..")
        .rec(b"top/rc", Kind::Symlink, 0o777, b"a/b/up/../../../outside")
        .end();
    let (errno, msg, dst) = refused(s, Limits::default());
    assert_eq!(errno, libc::EINVAL, "{msg}");
    assert!(
        !dst.path().join("top/rc").exists()
            && fs::symlink_metadata(dst.path().join("top/rc")).is_err()
    );
}

#[test]
fn error_text_escapes_hostile_names() {
    let (_, msg, _) = refused(
        S::new().rec(b"\x1b[2Jevil/x", Kind::File, 0o644, b"").end(),
        Limits::default(),
    );
    assert!(!msg.contains('\x1b'), "{msg:?}");
}

#[test]
fn a_link_inside_the_tree_is_never_walked_through() {
    // top/l -> sub is allowed, but writing top/l/x must not follow it.
    let s = S::new()
        .rec(b"top", Kind::Dir, 0o700, b"")
        .rec(b"top/sub", Kind::Dir, 0o700, b"")
        .rec(b"top/l", Kind::Symlink, 0o777, b"sub")
        .rec(b"top/l/x", Kind::File, 0o644, b"through the link")
        .end();
    let (errno, msg, dst) = refused(s, Limits::default());
    assert_eq!(errno, libc::ENOTDIR, "{msg}");
    assert!(entries(&dst.path().join("top/sub")).is_empty());
}

#[test]
fn existing_files_are_never_overwritten() {
    let dst = tempfile::tempdir().unwrap();
    fs::write(dst.path().join("keep.txt"), b"mine").unwrap();
    let s = S::new()
        .rec(b"keep.txt", Kind::File, 0o644, b"theirs")
        .end();
    let e = unpack(s.as_slice(), dst.path(), Limits::default()).unwrap_err();
    assert_eq!(e.errno, libc::EEXIST, "{e}");
    assert_eq!(fs::read(dst.path().join("keep.txt")).unwrap(), b"mine");
}

#[test]
fn a_truncated_stream_leaves_no_half_written_file() {
    let mut s = S::new()
        .rec(b"big", Kind::File, 0o644, &vec![7u8; 100_000])
        .end();
    s.truncate(32 + 3 + 50_000);
    let (errno, msg, dst) = refused(s, Limits::default());
    assert_eq!(errno, libc::EREMOTEIO, "{msg}");
    assert!(entries(dst.path()).is_empty(), "{:?}", entries(dst.path()));
    // No end marker at all is an error too.
    let mut s = S::new().rec(b"ok", Kind::File, 0o644, b"x").end();
    s.truncate(s.len() - 32);
    let (errno, _, dst) = refused(s, Limits::default());
    assert_eq!(errno, libc::EREMOTEIO);
    assert_eq!(entries(dst.path()), ["ok"], "complete files stay");
}

#[test]
fn limits_on_bytes_and_files() {
    let s = S::new().rec(b"a", Kind::File, 0o644, &[1u8; 1000]).end();
    let (errno, _, dst) = refused(
        s,
        Limits {
            max_bytes: 999,
            ..Limits::default()
        },
    );
    assert_eq!(errno, libc::EDQUOT);
    assert!(entries(dst.path()).is_empty());
    let s = S::new()
        .rec(b"a", Kind::File, 0o644, b"")
        .rec(b"b", Kind::File, 0o644, b"")
        .end();
    let (errno, _, _) = refused(
        s,
        Limits {
            max_files: 1,
            ..Limits::default()
        },
    );
    assert_eq!(errno, libc::EDQUOT);
}

#[test]
fn setuid_bits_are_dropped() {
    let dst = tempfile::tempdir().unwrap();
    let s = S::new().rec(b"suid", Kind::File, 0o755, b"x").end();
    // Set the setuid bit in the raw header.
    let mut s = s;
    s[4..8].copy_from_slice(&(0o104_755u32).to_le_bytes());
    unpack(s.as_slice(), dst.path(), Limits::default()).unwrap();
    assert_eq!(
        fs::metadata(dst.path().join("suid")).unwrap().mode() & 0o7777,
        0o755
    );
}

/// Reads a stream and, once `at` bytes have been handed out, runs `swap`
/// (another process of the receiving qube acting mid-transfer).
struct SwapAt<F: FnMut()> {
    data: std::io::Cursor<Vec<u8>>,
    at: u64,
    swap: Option<F>,
}

impl<F: FnMut()> std::io::Read for SwapAt<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let pos = self.data.position();
        if pos >= self.at {
            if let Some(mut f) = self.swap.take() {
                f();
            }
        }
        // Never hand out bytes past the swap point before it has happened.
        let limit = if pos < self.at {
            (self.at - pos) as usize
        } else {
            buf.len()
        };
        let n = buf.len().min(limit);
        std::io::Read::read(&mut self.data, &mut buf[..n])
    }
}

#[test]
fn a_parent_swapped_for_a_symlink_mid_transfer_is_not_followed() {
    // Regression: the walk used to re-resolve parents by path, so a local
    // process in the receiving qube could swap a checked directory for a
    // symlink between the check and the file's creation.
    let dst = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let first = S::new()
        .rec(b"d", Kind::Dir, 0o755, b"")
        .rec(b"d/a", Kind::File, 0o644, b"one");
    let cut = first.0.len() as u64;
    let stream = first.rec(b"d/b", Kind::File, 0o644, b"two").end();
    let (d, moved, out) = (
        dst.path().join("d"),
        dst.path().join("moved"),
        outside.path().to_path_buf(),
    );
    let input = SwapAt {
        data: std::io::Cursor::new(stream),
        at: cut,
        swap: Some(move || {
            fs::rename(&d, &moved).unwrap();
            std::os::unix::fs::symlink(&out, &d).unwrap();
        }),
    };
    let _ = unpack(input, dst.path(), Limits::default());
    assert!(
        !outside.path().join("b").exists(),
        "a file was written through the planted symlink"
    );
    // It landed in the directory that was checked (now named "moved").
    assert_eq!(fs::read(dst.path().join("moved/b")).unwrap(), b"two");
}
