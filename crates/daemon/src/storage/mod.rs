//! Storage: pools of volumes with Qubes' semantics (`root`, `private`,
//! `volatile`; `snap_on_start`, `save_on_stop`, `rw`, `revisions_to_keep`).
//!
//! One pool driver today, `file-reflink`: each volume is a raw ext4 image in
//! `<pool>/{appvms,vm-templates}/<qube>/`, the format both backends use (the
//! `ns` backend loop-mounts it; `vm` hands it to QEMU). Copies are reflinks
//! where the file system shares blocks (xfs, btrfs), else copies of the data
//! extents only. File roles, as Qubes' reflink driver:
//!
//! - `<vol>.img`: the committed ("clean") image;
//! - `<vol>-dirty.img`: what a running qube writes (save_on_stop with
//!   revisions), committed at stop;
//! - `<vol>.img.<N>`: older revisions, `N` increasing, at most
//!   `revisions_to_keep` of them;
//! - `<vol>-import.img`: an import in progress.
//!
//! An AppVM's root is a hard link to its template's clean root taken at start
//! (so a template committing a new root does not change a running AppVM),
//! mounted read-only under an overlay whose upper layer lives on the fresh
//! volatile volume. Nothing here is ever half-written: images become clean
//! by rename after fsync.

mod file;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::model::props::{self, Holder};
use crate::model::{App, Class, Qube};

pub use file::{Prepared, Storage};

const GIB: u64 = 1 << 30;
/// Default sizes (Qubes' defaults).
pub const ROOT_SIZE: u64 = 10 * GIB;
pub const PRIVATE_SIZE: u64 = 2 * GIB;
pub const VOLATILE_SIZE: u64 = 10 * GIB;
/// Default revisions kept by the default pool (Qubes' reflink default).
pub const DEFAULT_REVISIONS: i64 = 1;
/// Largest volume size accepted (16 TiB).
pub const MAX_SIZE: u64 = 16 << 40;

/// A storage failure, naming the qube and volume.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("volume {qube}:{volume}: cannot {what} {path}: {source}")]
    Io {
        qube: String,
        volume: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {qube}:{volume}: {message}")]
    Invalid {
        qube: String,
        volume: String,
        message: String,
    },
}

/// One volume of a qube, resolved from its class and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeConf {
    pub name: &'static str,
    pub pool: String,
    pub size: u64,
    pub rw: bool,
    pub snap_on_start: bool,
    pub save_on_stop: bool,
    pub revisions_to_keep: i64,
    /// (qube, volume) whose clean image a snap_on_start volume starts from.
    pub source: Option<(String, &'static str)>,
}

/// The volumes a qube has, in Qubes' order, with `source` resolved along
/// the template chain to the volume that has none.
pub fn volumes(app: &App, q: &Qube) -> Vec<VolumeConf> {
    let vol = |name: &'static str, size: u64, snap: bool, save: bool| {
        let s = q.volumes.get(name).cloned().unwrap_or_default();
        let pool = q
            .pools
            .get(name)
            .or_else(|| q.pools.get("*"))
            .cloned()
            .unwrap_or_else(|| "default".into());
        VolumeConf {
            name,
            pool,
            size: s.size.unwrap_or(size),
            rw: s.rw.unwrap_or(true),
            snap_on_start: snap,
            save_on_stop: save,
            revisions_to_keep: s.revisions_to_keep.unwrap_or(DEFAULT_REVISIONS),
            source: None,
        }
    };
    let mut v = match q.class {
        Class::AdminVM => return Vec::new(),
        Class::TemplateVM | Class::StandaloneVM => vec![
            vol("root", ROOT_SIZE, false, true),
            vol("private", PRIVATE_SIZE, false, true),
            vol("volatile", VOLATILE_SIZE, false, false),
        ],
        Class::AppVM => vec![
            vol("root", ROOT_SIZE, true, false),
            vol("private", PRIVATE_SIZE, false, true),
            vol("volatile", VOLATILE_SIZE, false, false),
        ],
        Class::DispVM => vec![
            vol("root", ROOT_SIZE, true, false),
            vol("private", PRIVATE_SIZE, true, false),
            vol("volatile", VOLATILE_SIZE, false, false),
        ],
    };
    for c in v.iter_mut().filter(|c| c.snap_on_start) {
        c.source = source_of(app, q, c.name);
        // A snapshot has the size of what it snapshots.
        if let Some((sq, _)) = &c.source {
            if let Some(sc) = app
                .qubes
                .get(sq)
                .and_then(|s| volumes(app, s).into_iter().find(|x| x.name == c.name))
            {
                c.size = sc.size;
            }
        }
    }
    v
}

/// Follows the template chain to the qube whose `vol` has no source.
fn source_of(app: &App, q: &Qube, vol: &'static str) -> Option<(String, &'static str)> {
    let mut cur = q;
    for _ in 0..8 {
        let t = props::value(app, Holder::Vm(&cur.name), "template")
            .ok()?
            .as_vm()?
            .to_string();
        let tq = app.qubes.get(&t)?;
        let snaps = match tq.class {
            Class::AppVM => vol == "root",
            Class::DispVM => true,
            _ => false,
        };
        if !snaps {
            return Some((t, vol));
        }
        cur = tq;
    }
    None
}

/// The pool drivers this build has, with their parameters (`admin.pool.ListDrivers`).
pub const DRIVERS: [(&str, &[&str]); 2] = [
    (
        "file-reflink",
        &["dir_path", "revisions_to_keep", "ephemeral_volatile"],
    ),
    ("linux-kernel", &["dir_path"]),
];

/// Where a pool keeps its files.
pub fn pool_dir(state_dir: &Path, pool: &str) -> PathBuf {
    state_dir.join("pools").join(pool)
}
