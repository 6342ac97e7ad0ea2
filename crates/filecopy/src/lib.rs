//! `bulkhead-filecopy`: both ends of `qubes.Filecopy` (`qvm-copy`).
//!
//! [`pack`] turns files and directory trees into the Qubes Filecopy stream;
//! [`unpack`] writes such a stream into a directory (the receiving qube's
//! `~/QubesIncoming/<source>/`). The stream comes from another qube and is
//! hostile: the unpacker refuses path traversal, absolute paths, links that
//! leave the copied item, special files, overlong names and streams over its
//! limits; it never follows a symlink while walking, never overwrites, and
//! writes each file as an anonymous `O_TMPFILE` that is linked under its name
//! only when complete, so a half-written file never appears.
//!
//! Guest-side code: it must never depend on a host crate.
#![forbid(unsafe_code)]

mod pack;
mod unpack;

pub use pack::pack;
pub use unpack::{unpack, Limits, Stats, UnpackError};
