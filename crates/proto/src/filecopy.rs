//! The `qubes.Filecopy` stream (what `qvm-copy` sends and the receiving
//! qube's unpacker reads), pure parts: record headers, name and link-target
//! rules, the final reply, CRC32. Everything here reads hostile bytes.
//! Layout: `shared/reference/qubes-compat.md` §5.8.

use thiserror::Error;

/// Size of a record header.
pub const HEADER_LEN: usize = 32;
/// Longest relative path accepted.
pub const MAX_PATH: usize = 16384;
/// Longest symlink target accepted.
pub const MAX_LINK: usize = 16383;
/// Reply code for "the sender hit EOF".
pub const LEGAL_EOF: u32 = 31_415_926;

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// One record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub namelen: u32,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    pub filelen: u64,
    pub atime: u32,
    pub atime_nsec: u32,
    pub mtime: u32,
    pub mtime_nsec: u32,
}

/// What a record creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// Why a record or name was refused (mapped to an errno in the reply).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilecopyError {
    #[error("name of {0} bytes is longer than {MAX_PATH}")]
    NameTooLong(u32),
    #[error("unsupported file type (mode {0:o}): only files, directories and links are copied")]
    BadType(u32),
    #[error("nanoseconds above 999999999")]
    BadTime,
    #[error("link target of {0} bytes is longer than {MAX_LINK}")]
    LinkTooLong(u64),
    #[error("unsafe name {0:?}: {1}")]
    BadName(String, &'static str),
    #[error("link {0:?} points outside the copied tree")]
    LinkEscapes(String),
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[8..16]);
        Header {
            namelen: u32_at(0),
            mode: u32_at(4),
            filelen: u64::from_le_bytes(len),
            atime: u32_at(16),
            atime_nsec: u32_at(20),
            mtime: u32_at(24),
            mtime_nsec: u32_at(28),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.namelen.to_le_bytes());
        b[4..8].copy_from_slice(&self.mode.to_le_bytes());
        b[8..16].copy_from_slice(&self.filelen.to_le_bytes());
        b[16..20].copy_from_slice(&self.atime.to_le_bytes());
        b[20..24].copy_from_slice(&self.atime_nsec.to_le_bytes());
        b[24..28].copy_from_slice(&self.mtime.to_le_bytes());
        b[28..32].copy_from_slice(&self.mtime_nsec.to_le_bytes());
        b
    }

    /// The end-of-transfer marker.
    pub fn is_end(&self) -> bool {
        self.namelen == 0
    }

    /// Checks the header before anything is read after it.
    pub fn check(&self) -> Result<Kind, FilecopyError> {
        if self.namelen as usize > MAX_PATH {
            return Err(FilecopyError::NameTooLong(self.namelen));
        }
        if self.atime_nsec > 999_999_999 || self.mtime_nsec > 999_999_999 {
            return Err(FilecopyError::BadTime);
        }
        let kind = match self.mode & S_IFMT {
            S_IFREG => Kind::File,
            S_IFDIR => Kind::Dir,
            S_IFLNK => Kind::Symlink,
            _ => return Err(FilecopyError::BadType(self.mode)),
        };
        if kind == Kind::Symlink && self.filelen > MAX_LINK as u64 {
            return Err(FilecopyError::LinkTooLong(self.filelen));
        }
        Ok(kind)
    }

    /// Permission bits to apply: no setuid, setgid or sticky from a sender.
    pub fn perms(&self) -> u32 {
        self.mode & 0o777
    }
}

/// Mode bits for a header of `kind` with permissions `perms`.
pub fn mode_of(kind: Kind, perms: u32) -> u32 {
    let t = match kind {
        Kind::File => S_IFREG,
        Kind::Dir => S_IFDIR,
        Kind::Symlink => S_IFLNK,
    };
    t | (perms & 0o777)
}

/// Characters a received name may contain: printable, visible, no bidi or
/// layout controls, no private-use or non-characters, no slash look-alikes.
fn char_ok(c: char) -> bool {
    let u = c as u32;
    if c.is_control() {
        return false;
    }
    let refused = matches!(u,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x2028..=0x202E | 0x2044 | 0x205F..=0x206F | 0x2215 | 0x2800
        | 0x29F8 | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFF0F | 0xFFA0 | 0xFFF0..=0xFFFF
        | 0xE000..=0xF8FF | 0xFDD0..=0xFDEF | 0xE0000..=0xE0FFF | 0xF0000..=0x10FFFF);
    // U+xFFFE and U+xFFFF are non-characters in every plane.
    !refused && (u & 0xFFFE) != 0xFFFE
}

/// Validates a relative path from the stream; returns its components.
pub fn check_name(raw: &[u8]) -> Result<Vec<String>, FilecopyError> {
    let bad = |why| FilecopyError::BadName(String::from_utf8_lossy(raw).into_owned(), why);
    let s = std::str::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.starts_with('/') {
        return Err(bad("absolute path"));
    }
    if !s.chars().all(char_ok) {
        return Err(bad(
            "control, invisible or bidirectional-override characters",
        ));
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" => return Err(bad("empty component")),
            "." | ".." => return Err(bad("'.' or '..' component")),
            c if c.len() > 255 => return Err(bad("component longer than 255 bytes")),
            c => parts.push(c.to_string()),
        }
    }
    Ok(parts)
}

/// Checks that a link at `name` (components) with `target` stays inside the
/// top-level item being copied (the first component of `name`).
///
/// `..` is allowed only as leading components: after a normal component the
/// path goes down only. Counting `..` lexically is not enough, because a
/// normal component may itself be a link pointing upwards (`a/up/../..`).
/// Leading `..` climb from the link's own directory, whose parents the
/// unpacker checked are real directories, so links inside links stay inside.
pub fn check_link(name: &[String], target: &[u8]) -> Result<String, FilecopyError> {
    let t = std::str::from_utf8(target).map_err(|_| {
        FilecopyError::BadName(String::from_utf8_lossy(target).into_owned(), "not UTF-8")
    })?;
    let escapes = || FilecopyError::LinkEscapes(name.join("/"));
    if t.is_empty() || t.starts_with('/') || t.contains('\0') || !t.chars().all(char_ok) {
        return Err(escapes());
    }
    // How far up the link may climb: to the top-level item, not above it.
    let mut up_left = name.len() as i64 - 2;
    if up_left < 0 {
        // A top-level link has nothing inside to point at.
        return Err(escapes());
    }
    let mut seen_normal = false;
    for c in t.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if seen_normal {
                    return Err(escapes());
                }
                up_left -= 1;
                if up_left < 0 {
                    return Err(escapes());
                }
            }
            _ => seen_normal = true,
        }
    }
    Ok(t.to_string())
}

/// The receiver's one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// errno, 0 for success.
    pub error_code: u32,
    pub crc32: u64,
    pub last_name: Option<String>,
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16);
        b.extend_from_slice(&self.error_code.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.crc32.to_le_bytes());
        if let Some(n) = &self.last_name {
            b.extend_from_slice(&(n.len() as u32).to_le_bytes());
            b.extend_from_slice(n.as_bytes());
        }
        b
    }

    /// Parses a reply (the optional name is bounded by [`MAX_PATH`]).
    pub fn parse(b: &[u8]) -> Option<Reply> {
        if b.len() < 16 {
            return None;
        }
        let error_code = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&b[8..16]);
        let last_name = if b.len() >= 20 {
            let n = u32::from_le_bytes([b[16], b[17], b[18], b[19]]) as usize;
            if n > MAX_PATH || b.len() < 20 + n {
                return None;
            }
            Some(String::from_utf8_lossy(&b[20..20 + n]).into_owned())
        } else {
            None
        };
        Some(Reply {
            error_code,
            crc32: u64::from_le_bytes(c),
            last_name,
        })
    }
}

/// CRC-32 (IEEE 802.3, as zlib's `crc32`), incrementally.
#[derive(Debug, Clone, Default)]
pub struct Crc32(crc32fast::Hasher);

impl Crc32 {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn value(&self) -> u32 {
        self.0.clone().finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc32_matches_zlib() {
        let mut c = Crc32::default();
        c.update(b"123456789");
        assert_eq!(c.value(), 0xcbf4_3926);
    }

    #[test]
    fn names() {
        assert_eq!(check_name(b"dir/file.txt").unwrap(), ["dir", "file.txt"]);
        assert_eq!(
            check_name("Résumé 2026.pdf".as_bytes()).unwrap(),
            ["Résumé 2026.pdf"]
        );
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"a/../b",
            b"..",
            b"a//b",
            b"a/./b",
            b"a\nb",
            b"x\x1b[31m",
            b"\xff",
        ] {
            assert!(
                check_name(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(check_name("evil\u{202e}fdp.exe".as_bytes()).is_err());
    }

    #[test]
    fn links_stay_inside_the_top_level_item() {
        let n = |s: &str| check_name(s.as_bytes()).unwrap();
        assert!(check_link(&n("top/a"), b"b").is_ok());
        assert!(check_link(&n("top/sub/a"), b"../b").is_ok());
        assert!(check_link(&n("top/a"), b"../b").is_err());
        assert!(check_link(&n("top/a"), b"/etc/passwd").is_err());
        assert!(check_link(&n("top/sub/a"), b"x/../../..").is_err());
        assert!(check_link(&n("a"), b"b").is_err());
        // Regression (review finding): `..` after a normal component could
        // climb out through another link (`top/a/b/up -> ../..`).
        assert!(check_link(&n("top/a/b/up"), b"../..").is_ok());
        assert!(check_link(&n("top/rc"), b"a/b/up/../../../.bashrc").is_err());
        assert!(check_link(&n("top/x"), b"sub/../y").is_err());
    }

    #[test]
    fn invisible_and_lookalike_characters_are_refused() {
        for bad in [
            "a\u{061C}b",
            "a\u{2028}b",
            "a\u{FEFF}b",
            "a\u{00AD}b",
            "Documents\u{2215}x",
            "a\u{E0041}",
            "a\u{F8FF}",
            "a\u{FFFE}",
            "a\u{3164}b",
        ] {
            assert!(check_name(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(check_name("日本語 ñ ü €.txt".as_bytes()).is_ok());
    }

    #[test]
    fn headers() {
        let h = Header {
            namelen: 3,
            mode: 0o104_755,
            filelen: 9,
            atime: 1,
            atime_nsec: 2,
            mtime: 3,
            mtime_nsec: 4,
        };
        assert_eq!(Header::parse(&h.encode()), h);
        assert_eq!(h.check(), Ok(Kind::File));
        assert_eq!(h.perms(), 0o755, "setuid dropped");
        assert!(
            Header {
                mode: 0o020_644,
                ..h
            }
            .check()
            .is_err(),
            "char device"
        );
        assert!(Header {
            mtime_nsec: 1_000_000_000,
            ..h
        }
        .check()
        .is_err());
        assert!(Header {
            namelen: 20000,
            ..h
        }
        .check()
        .is_err());
        assert!(Header {
            mode: 0o120_777,
            filelen: 20000,
            ..h
        }
        .check()
        .is_err());
        let r = Reply {
            error_code: 17,
            crc32: 5,
            last_name: Some("x".into()),
        };
        assert_eq!(Reply::parse(&r.encode()), Some(r));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = check_name(&bytes);
            let _ = check_link(&["a".into(), "b".into()], &bytes);
            let _ = Reply::parse(&bytes);
            if bytes.len() >= HEADER_LEN {
                let mut h = [0u8; HEADER_LEN];
                h.copy_from_slice(&bytes[..HEADER_LEN]);
                let _ = Header::parse(&h).check();
            }
        }

        #[test]
        fn accepted_names_are_relative_and_clean(s in "[a-z./ é]{1,30}") {
            if let Ok(parts) = check_name(s.as_bytes()) {
                prop_assert!(!s.starts_with('/'));
                prop_assert!(parts.iter().all(|p| !p.is_empty() && p != "." && p != ".."));
            }
        }
    }
}
