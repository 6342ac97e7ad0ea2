//! Durable state: one JSON file, replaced atomically.
//!
//! Every acknowledged change is on disk before the reply goes out: the new
//! state is written to a temporary file, fsynced, renamed over the old one and
//! the directory is fsynced. A crash at any instant leaves either the old or
//! the new file, never a mix. A lock file keeps two daemons off one state dir.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{check_consistency, App, HostInfo};

/// Version of the on-disk schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
/// The state file inside the state dir.
pub const STATE_FILE: &str = "qubes.json";
const TMP_FILE: &str = "qubes.json.tmp";
const LOCK_FILE: &str = "bulkheadd.lock";

/// Failure to open, load or save the state.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state dir {0} is in use by another bulkheadd (lock file held); stop it first")]
    Locked(PathBuf),
    #[error("state file {path} was written by a newer Bulkhead (schema {found}; this build reads up to {SCHEMA_VERSION}); run a newer bulkheadd or restore a backup")]
    NewerSchema { path: PathBuf, found: u64 },
    #[error("state file {path} is not valid ({reason}); restore it from a backup or move it aside to start empty")]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Serialize)]
struct StateOut<'a> {
    schema_version: u32,
    app: &'a App,
}

#[derive(Deserialize)]
struct StateIn {
    app: App,
}

/// The state directory, locked for this process.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// Opens (creating if needed) the state dir and loads the state, or a fresh
    /// one if there is none yet.
    pub fn open(dir: &Path, host: HostInfo) -> Result<(Store, App), StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create state dir", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open lock file", &lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| StoreError::Locked(dir.to_path_buf()))?;
        let store = Store {
            dir: dir.to_path_buf(),
            _lock: lock,
        };
        let path = dir.join(STATE_FILE);
        let app = match fs::read(&path) {
            Ok(bytes) => {
                let mut app = parse_state(&path, &bytes)?;
                app.set_runtime(host);
                app
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let app = App::new(host);
                store.save(&app)?;
                app
            }
            Err(e) => return Err(io_err("read state file", &path)(e)),
        };
        // A leftover temp file is an unacknowledged write: drop it.
        let _ = fs::remove_file(dir.join(TMP_FILE));
        Ok((store, app))
    }

    /// The state file path.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Writes the whole state durably (temp file, fsync, rename, fsync dir).
    pub fn save(&self, app: &App) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(&StateOut {
            schema_version: SCHEMA_VERSION,
            app,
        })
        .map_err(|e| StoreError::Corrupt {
            path: self.state_path(),
            reason: e.to_string(),
        })?;
        let tmp = self.dir.join(TMP_FILE);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(&bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(f);
        let dst = self.state_path();
        fs::rename(&tmp, &dst).map_err(io_err("rename into place", &dst))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync state dir", &self.dir))?;
        Ok(())
    }
}

/// The bytes of a state file for `app`.
pub fn encode_state(app: &App) -> Vec<u8> {
    // Serializing plain maps, strings and integers cannot fail.
    serde_json::to_vec_pretty(&StateOut {
        schema_version: SCHEMA_VERSION,
        app,
    })
    .unwrap_or_default()
}

/// Parses a state file, refusing newer schemas and inconsistent content.
pub fn parse_state(path: &Path, bytes: &[u8]) -> Result<App, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let raw: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let version = raw
        .get("schema_version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| corrupt("no schema_version".into()))?;
    if version > u64::from(SCHEMA_VERSION) {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let st: StateIn = serde_json::from_value(raw).map_err(|e| corrupt(e.to_string()))?;
    if !st.app.qubes.contains_key(crate::model::DOM0) {
        return Err(corrupt("dom0 is missing".into()));
    }
    check_consistency(&st.app).map_err(|e| corrupt(e.message))?;
    Ok(st.app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut app) = Store::open(dir.path(), HostInfo::default()).unwrap();
        app.global_props
            .insert("stats_interval".into(), crate::model::Value::Int(Some(7)));
        store.save(&app).unwrap();
        assert!(matches!(
            Store::open(dir.path(), HostInfo::default()),
            Err(StoreError::Locked(_))
        ));
        drop(store);
        let (_s, loaded) = Store::open(dir.path(), HostInfo::default()).unwrap();
        assert_eq!(loaded, app);
    }

    #[test]
    fn refuses_newer_schema_with_a_clear_message() {
        let err = parse_state(
            Path::new("/x/qubes.json"),
            br#"{"schema_version": 99, "app": {}}"#,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("newer Bulkhead")
                && msg.contains("schema 99")
                && msg.contains("/x/qubes.json"),
            "{msg}"
        );
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(
            parse_state(Path::new("f"), b"{not json"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            parse_state(Path::new("f"), b"{}"),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
