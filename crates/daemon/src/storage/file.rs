//! The `file-reflink` driver: images, revisions, start/stop, import, clone.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use bulkhead_hal::{Bind, RootFs};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{volumes, StorageError, VolumeConf};
use crate::model::{App, Class, Qube};

/// The default pool and where running qubes' volumes are mounted.
#[derive(Debug, Clone)]
pub struct Storage {
    pool: PathBuf,
    /// `<run_dir>/qubes`: per-qube mount points.
    mounts: PathBuf,
    reflink: bool,
}

/// A started qube's file systems, as the backend wants them.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub root: RootFs,
    pub binds: Vec<Bind>,
    /// The volumes as disk images, for a `vm` qube (whose volumes are
    /// never mounted on the host): root, private, volatile.
    pub disks: Vec<bulkhead_hal::Disk>,
    /// Images this start created: what [`Storage::abort_start`] removes if
    /// the qube never runs.
    pub created: Vec<PathBuf>,
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames `from` over `to` durably (file fsynced before, dir after).
fn commit_rename(from: &Path, to: &Path) -> io::Result<()> {
    OpenOptions::new().write(true).open(from)?.sync_all()?;
    fs::rename(from, to)?;
    fsync_dir(to.parent().unwrap_or(Path::new("/")))
}

/// Decodes mountinfo's octal escapes (`\040` for a space…).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_mounted(path: &Path) -> bool {
    let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    mi.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape_mountinfo(m) == want)
    })
}

impl Storage {
    /// Opens (creating) the default pool under `state_dir` and the mount area
    /// under `run_dir`.
    pub fn open(state_dir: &Path, run_dir: &Path) -> io::Result<Storage> {
        let pool = super::pool_dir(state_dir, "default");
        for d in ["appvms", "vm-templates"] {
            fs::create_dir_all(pool.join(d))?;
        }
        let mounts = run_dir.join("qubes");
        fs::create_dir_all(&mounts)?;
        let reflink = bulkhead_sys::fs::supports_reflink(&pool);
        Ok(Storage {
            pool,
            mounts,
            reflink,
        })
    }

    /// The default pool's directory.
    pub fn pool_path(&self) -> &Path {
        &self.pool
    }

    /// Whether clones and snapshots share blocks here.
    pub fn reflink(&self) -> bool {
        self.reflink
    }

    /// `appvms/<name>` or `vm-templates/<name>` (Qubes' vid prefix).
    pub fn vid_dir(q: &Qube) -> String {
        let kind = if q.class == Class::TemplateVM {
            "vm-templates"
        } else {
            "appvms"
        };
        format!("{kind}/{}", q.name)
    }

    pub fn qube_dir(&self, q: &Qube) -> PathBuf {
        self.pool.join(Self::vid_dir(q))
    }

    /// The committed image of a volume.
    pub fn clean(&self, q: &Qube, vol: &str) -> PathBuf {
        self.qube_dir(q).join(format!("{vol}.img"))
    }

    fn dirty(&self, q: &Qube, vol: &str) -> PathBuf {
        self.qube_dir(q).join(format!("{vol}-dirty.img"))
    }

    fn import_path(&self, q: &Qube, vol: &str) -> PathBuf {
        self.qube_dir(q).join(format!("{vol}-import.img"))
    }

    /// A scratch image for one operation (never the import path, so an
    /// import in progress is not clobbered).
    fn tmp_path(&self, q: &Qube, vol: &str, what: &str) -> PathBuf {
        self.qube_dir(q).join(format!("{vol}-{what}.tmp"))
    }

    /// Where a running qube's volume is mounted on the host: under the
    /// private `vol/`, except volatile (see [`Storage::prepare_mount_dirs`]).
    pub fn mount_point(&self, name: &str, vol: &str) -> PathBuf {
        if vol == "volatile" {
            self.mounts.join(name).join("volatile")
        } else {
            self.mounts.join(name).join("vol").join(vol)
        }
    }

    /// Per-qube runtime dir (backend scratch space, instance record).
    pub fn runtime_dir(&self, name: &str) -> PathBuf {
        self.mounts.join(name)
    }

    /// Revision numbers of a volume, oldest first.
    pub fn revisions(&self, q: &Qube, vol: &str) -> Vec<u64> {
        let prefix = format!("{vol}.img.");
        let mut v: Vec<u64> = fs::read_dir(self.qube_dir(q))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix(&prefix)?.parse().ok())
            .collect();
        v.sort_unstable();
        v
    }

    fn revision_path(&self, q: &Qube, vol: &str, n: u64) -> PathBuf {
        self.qube_dir(q).join(format!("{vol}.img.{n}"))
    }

    /// Whether a volume has a committed image.
    pub fn exists(&self, q: &Qube, vol: &str) -> bool {
        self.clean(q, vol).exists()
    }

    /// Bytes actually allocated by a volume's clean image.
    pub fn usage(&self, q: &Qube, vol: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(self.clean(q, vol))
            .map(|m| m.blocks() * 512)
            .unwrap_or(0)
    }

    /// Makes the current clean image a new revision, prunes old ones to
    /// `keep`, and puts `new` in its place.
    fn commit(&self, q: &Qube, c: &VolumeConf, new: &Path) -> Result<(), StorageError> {
        let clean = self.clean(q, c.name);
        let e = err(q, c.name);
        if c.revisions_to_keep > 0 && clean.exists() {
            let n = self.revisions(q, c.name).last().copied().unwrap_or(0) + 1;
            let rev = self.revision_path(q, c.name, n);
            fs::hard_link(&clean, &rev).map_err(e("keep a revision as", &rev))?;
        }
        commit_rename(new, &clean).map_err(e("commit", &clean))?;
        self.prune(q, c.name, c.revisions_to_keep.max(0) as usize);
        Ok(())
    }

    fn prune(&self, q: &Qube, vol: &str, keep: usize) {
        let revs = self.revisions(q, vol);
        let excess = revs.len().saturating_sub(keep);
        for n in &revs[..excess] {
            let _ = fs::remove_file(self.revision_path(q, vol, *n));
        }
    }

    /// Copies (reflink or data extents) `src` to a new `dst`.
    fn clone_image(&self, src: &Path, dst: &Path) -> io::Result<()> {
        let s = File::open(src)?;
        let _ = fs::remove_file(dst);
        let d = OpenOptions::new().write(true).create_new(true).open(dst)?;
        bulkhead_sys::fs::clone_file(&s, &d)?;
        d.sync_all()
    }

    /// Creates an empty ext4 image of `size` bytes at `path`.
    pub fn mkfs(path: &Path, size: u64, label: &str) -> io::Result<()> {
        let _ = fs::remove_file(path);
        let f = OpenOptions::new().write(true).create_new(true).open(path)?;
        f.set_len(size)?;
        drop(f);
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-L", label])
            .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
            .arg(path)
            .output()
            .map_err(|e| {
                io::Error::other(format!("cannot run mkfs.ext4 (install e2fsprogs): {e}"))
            })?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mkfs.ext4 failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Makes `path` an empty ext4 file system of `size` bytes: a copy of a
    /// pristine image kept per (label, size) in the pool, made once with
    /// mkfs (a sparse copy of ~1 MiB instead of a ~10 ms mkfs per start).
    fn fresh_image(&self, path: &Path, size: u64, label: &str) -> io::Result<()> {
        let dir = self.pool.join(".pristine");
        let pristine = dir.join(format!("{label}-{size}.img"));
        if !pristine.exists() {
            fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!("{label}-{size}.img.tmp{}", std::process::id()));
            Storage::mkfs(&tmp, size, label)?;
            commit_rename(&tmp, &pristine)?;
        }
        self.clone_image(&pristine, path)
    }

    fn mount_image(&self, img: &Path, at: &Path, rw: bool) -> io::Result<()> {
        // Never stack a second mount (possibly of the same image, read-write)
        // over one that is still there: that is how images get corrupted.
        if is_mounted(at) {
            return Err(io::Error::other(format!(
                "{} is still mounted from an earlier run; stop the qube (or restart bulkheadd to clean up) first",
                at.display()
            )));
        }
        fs::create_dir_all(at)?;
        let dev = bulkhead_sys::loopdev::attach(img, !rw)?;
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
        if !rw {
            flags |= MsFlags::MS_RDONLY;
        }
        // noinit_itable: no background zeroing of inode tables, which would
        // fill the sparse image for nothing.
        mount(
            Some(&dev.path),
            at,
            Some("ext4"),
            flags,
            Some("noinit_itable"),
        )
        .map_err(|e| {
            io::Error::other(format!(
                "mount {} on {}: {e}",
                dev.path.display(),
                at.display()
            ))
        })?;
        // The mount holds the device now; with autoclear it goes when unmounted.
        drop(dev);
        Ok(())
    }

    /// Host directories a qube's volumes are mounted on: `vol/` is 0700 so
    /// no other host user can browse a qube's files (stored with the qube's
    /// own uids, which may coincide with host users'), except the volatile
    /// volume, which the qube's own root must traverse to reach its overlay
    /// layers (those are 0700 and owned by the qube's root).
    fn prepare_mount_dirs(&self, name: &str) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let vol = self.mounts.join(name).join("vol");
        fs::create_dir_all(&vol)?;
        fs::set_permissions(&vol, fs::Permissions::from_mode(0o700))?;
        Ok(())
    }

    /// Prepares every volume of `q` for a start and, unless `as_disks` (a
    /// `vm` qube: the images go to the guest as disks), mounts them. On
    /// failure nothing stays mounted and no revision is made.
    pub fn start(&self, app: &App, q: &Qube, as_disks: bool) -> Result<Prepared, StorageError> {
        let dir = self.qube_dir(q);
        fs::create_dir_all(&dir).map_err(err(q, "*")("create", &dir))?;
        self.prepare_mount_dirs(&q.name)
            .map_err(err(q, "*")("create", &self.mounts.join(&q.name)))?;
        // Dirty images this start made (discarded if it fails).
        let mut created: Vec<PathBuf> = Vec::new();
        let result = self.start_inner(app, q, &mut created, as_disks);
        if result.is_err() {
            self.abort_start(app, q, &created);
        }
        result
    }

    fn start_inner(
        &self,
        app: &App,
        q: &Qube,
        created: &mut Vec<PathBuf>,
        as_disks: bool,
    ) -> Result<Prepared, StorageError> {
        let dir = self.qube_dir(q);
        let mut disks = Vec::new();
        let mut root = None;
        let mut private_mnt = None;
        let mut volatile_mnt = None;
        for c in volumes(app, q) {
            let e = err(q, c.name);
            let at = self.mount_point(&q.name, c.name);
            let inv = |message: String| StorageError::Invalid {
                qube: q.name.clone(),
                volume: c.name.into(),
                message,
            };
            let image = match (c.snap_on_start, c.save_on_stop) {
                (true, _) => {
                    // A snapshot of the source's clean image, pinned by a hard link.
                    let (sq, sv) = c.source.clone().ok_or_else(|| {
                        inv(
                            "has no template to take its snapshot from; set the qube's template"
                                .into(),
                        )
                    })?;
                    let src_q = app
                        .qubes
                        .get(&sq)
                        .ok_or_else(|| inv(format!("its source qube '{sq}' does not exist")))?;
                    let src = self.clean(src_q, sv);
                    if !src.exists() && c.name == "private" {
                        // A disposable template that never ran has an
                        // empty private volume: so does its disposable.
                        let img = self.dirty(q, c.name);
                        self.fresh_image(&img, c.size, c.name)
                            .map_err(e("create", &img))?;
                        created.push(img.clone());
                        let rw = c.rw;
                        if as_disks {
                            disks.push(bulkhead_hal::Disk {
                                serial: c.name.into(),
                                path: img,
                                read_only: !rw,
                            });
                            continue;
                        }
                        self.mount_image(&img, &at, rw).map_err(e("mount", &img))?;
                        private_mnt = Some(at);
                        continue;
                    }
                    if !src.exists() {
                        return Err(inv(format!(
                            "source {sq}:{sv} has no image yet ({}); build or import it first (e.g. `bulkhead template build minimal`)",
                            src.display()
                        )));
                    }
                    let snap = self.clean(q, c.name);
                    let tmp = dir.join(format!("{}-snap.tmp", c.name));
                    let _ = fs::remove_file(&tmp);
                    fs::hard_link(&src, &tmp).map_err(e("snapshot", &src))?;
                    fs::rename(&tmp, &snap).map_err(e("snapshot", &snap))?;
                    if c.name == "private" {
                        // A disposable's private is writable but thrown
                        // away: its own copy.
                        let dirty = self.dirty(q, c.name);
                        self.clone_image(&snap, &dirty).map_err(e("copy", &snap))?;
                        created.push(dirty.clone());
                        dirty
                    } else {
                        snap
                    }
                }
                (false, true) => {
                    let clean = self.clean(q, c.name);
                    let dirty = self.dirty(q, c.name);
                    if !clean.exists() && !dirty.exists() {
                        if c.name == "root" {
                            return Err(inv(format!(
                                "no root image at {}; build or import one first",
                                clean.display()
                            )));
                        }
                        let tmp = self.tmp_path(q, c.name, "new");
                        self.fresh_image(&tmp, c.size, c.name)
                            .map_err(e("create", &tmp))?;
                        commit_rename(&tmp, &clean).map_err(e("create", &clean))?;
                    }
                    if !dirty.exists() {
                        // Always a copy, as Qubes does: the clean image may be
                        // hard-linked by running AppVMs as their read-only
                        // root, and must never change under them.
                        self.clone_image(&clean, &dirty)
                            .map_err(e("copy", &clean))?;
                        created.push(dirty.clone());
                    }
                    // (An existing dirty image is left by a run that was never
                    // committed, e.g. a host crash: keep using it, nothing is lost.)
                    dirty
                }
                (false, false) => {
                    let img = self.dirty(q, c.name);
                    self.fresh_image(&img, c.size, c.name)
                        .map_err(e("create", &img))?;
                    created.push(img.clone());
                    img
                }
            };
            let rw = c.rw && !(c.snap_on_start && c.name == "root");
            if as_disks {
                if c.name == "root" {
                    root = Some((image.clone(), c.snap_on_start));
                }
                disks.push(bulkhead_hal::Disk {
                    serial: c.name.into(),
                    path: image,
                    read_only: !rw,
                });
                continue;
            }
            self.mount_image(&image, &at, rw)
                .map_err(e("mount", &image))?;
            match c.name {
                "root" => root = Some((at, c.snap_on_start)),
                "private" => private_mnt = Some(at),
                _ => volatile_mnt = Some(at),
            }
        }
        let e = err(q, "*");
        let (root_at, overlay) = root.ok_or_else(|| StorageError::Invalid {
            qube: q.name.clone(),
            volume: "root".into(),
            message: "this qube has no root volume".into(),
        })?;
        if as_disks {
            // The guest assembles its own root and binds from the disks.
            return Ok(Prepared {
                root: if overlay {
                    RootFs::Overlay {
                        lower: root_at,
                        upper: PathBuf::new(),
                        work: PathBuf::new(),
                    }
                } else {
                    RootFs::Direct { path: root_at }
                },
                binds: Vec::new(),
                disks,
                created: created.clone(),
            });
        }
        let root = if overlay {
            let vol = volatile_mnt.ok_or_else(|| StorageError::Invalid {
                qube: q.name.clone(),
                volume: "volatile".into(),
                message: "an overlay root needs a volatile volume".into(),
            })?;
            let (upper, work) = (vol.join("root-upper"), vol.join("root-work"));
            for d in [&upper, &work] {
                fs::create_dir_all(d).map_err(e("create", d))?;
            }
            RootFs::Overlay {
                lower: root_at,
                upper,
                work,
            }
        } else {
            RootFs::Direct { path: root_at }
        };
        let mut binds = Vec::new();
        if let Some(p) = private_mnt {
            // Qubes' layout: the private volume at /rw, /rw/home at /home,
            // /rw/usrlocal at /usr/local.
            //
            // The volume's content is the qube's: /rw/home may be a symlink it
            // planted (say to "/"), which the host must never follow when it
            // binds the directory. Anything but a real directory is moved
            // aside (kept, not deleted) and replaced. The qube is not running,
            // so nothing can swap it between this check and the bind (which
            // does not follow symlinks either).
            for sub in ["home", "usrlocal"] {
                let d = p.join(sub);
                match fs::symlink_metadata(&d) {
                    Ok(m) if m.file_type().is_dir() => continue,
                    Ok(_) => {
                        let aside = p.join(format!(
                            "{sub}.not-a-directory.{}",
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_secs())
                                .unwrap_or(0)
                        ));
                        tracing::warn!(
                            "qube '{}': /rw/{sub} was not a directory; moved aside to {}",
                            q.name,
                            aside.display()
                        );
                        fs::rename(&d, &aside).map_err(e("move aside", &d))?;
                    }
                    Err(_) => {}
                }
                fs::create_dir(&d).map_err(e("create", &d))?;
            }
            binds.push(Bind {
                src: p.clone(),
                dst: "/rw".into(),
                read_only: false,
            });
            binds.push(Bind {
                src: p.join("home"),
                dst: "/home".into(),
                read_only: false,
            });
            binds.push(Bind {
                src: p.join("usrlocal"),
                dst: "/usr/local".into(),
                read_only: false,
            });
        }
        Ok(Prepared {
            root,
            binds,
            disks,
            created: created.clone(),
        })
    }

    /// Undoes a start the qube never ran on: unmounts everything and drops
    /// the dirty images that start made, so no revision is pushed out.
    pub fn abort_start(&self, app: &App, q: &Qube, created: &[PathBuf]) {
        for c in volumes(app, q) {
            let _ = unmount(&self.mount_point(&q.name, c.name));
        }
        for p in created {
            let _ = fs::remove_file(p);
        }
        for c in volumes(app, q).iter().filter(|c| c.snap_on_start) {
            let _ = fs::remove_file(self.clean(q, c.name));
        }
    }

    /// Unmounts and commits or discards every volume of a qube that is not
    /// running. Idempotent: also cleans up after a crash.
    pub fn stop(&self, app: &App, q: &Qube) -> Result<(), StorageError> {
        let mut first_err = None;
        for c in volumes(app, q) {
            let at = self.mount_point(&q.name, c.name);
            if let Err(e) = unmount(&at) {
                first_err.get_or_insert(StorageError::Io {
                    qube: q.name.clone(),
                    volume: c.name.into(),
                    what: "unmount",
                    path: at.clone(),
                    source: e,
                });
                continue;
            }
            let dirty = self.dirty(q, c.name);
            let r = match (c.snap_on_start, c.save_on_stop) {
                (false, true) if dirty.exists() => self.commit(q, &c, &dirty),
                // Written in place (revisions_to_keep=0): only prune.
                (false, true) => {
                    self.prune(q, c.name, c.revisions_to_keep.max(0) as usize);
                    Ok(())
                }
                // Snapshots and volatile data are thrown away.
                _ => {
                    let _ = fs::remove_file(&dirty);
                    if c.snap_on_start {
                        let _ = fs::remove_file(self.clean(q, c.name));
                    }
                    Ok(())
                }
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Before replacing a halted qube's clean image: a dirty image left by a
    /// stop that could not finish would otherwise win at the next start and
    /// undo the operation. Commit it now (nothing lost), or refuse while it
    /// is still mounted.
    fn settle(&self, app: &App, q: &Qube, vol: &str) -> Result<(), StorageError> {
        let dirty = self.dirty(q, vol);
        if !dirty.exists() {
            return Ok(());
        }
        if is_mounted(&self.mount_point(&q.name, vol)) {
            return Err(StorageError::Invalid {
                qube: q.name.clone(),
                volume: vol.into(),
                message: "is still mounted from a run whose stop did not finish; restart bulkheadd to clean up, then retry".into(),
            });
        }
        let c = conf(app, q, vol)?;
        if c.save_on_stop && !c.snap_on_start {
            self.commit(q, &c, &dirty)
        } else {
            let _ = fs::remove_file(&dirty);
            Ok(())
        }
    }

    /// Whether a running AppVM's root snapshot is older than its template's
    /// current root.
    pub fn is_outdated(&self, app: &App, q: &Qube, vol: &str) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(c) = volumes(app, q).into_iter().find(|c| c.name == vol) else {
            return false;
        };
        let Some((sq, sv)) = c.source else {
            return false;
        };
        let Some(src_q) = app.qubes.get(&sq) else {
            return false;
        };
        match (
            fs::metadata(self.clean(q, vol)),
            fs::metadata(self.clean(src_q, sv)),
        ) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) != (b.dev(), b.ino()),
            _ => false,
        }
    }

    /// Makes revision `rev` the current image (qube halted); the current one
    /// becomes a revision, so a revert can itself be reverted.
    pub fn revert(&self, app: &App, q: &Qube, vol: &str, rev: u64) -> Result<(), StorageError> {
        let c = conf(app, q, vol)?;
        let e = err(q, vol);
        let src = self.revision_path(q, vol, rev);
        if !src.exists() {
            return Err(StorageError::Invalid {
                qube: q.name.clone(),
                volume: vol.into(),
                message: format!(
                    "no revision {rev} (have: {:?}); list them with `bulkhead volume revisions {}:{vol}`",
                    self.revisions(q, vol),
                    q.name
                ),
            });
        }
        self.settle(app, q, vol)?;
        let tmp = self.tmp_path(q, vol, "revert");
        let _ = fs::remove_file(&tmp);
        fs::hard_link(&src, &tmp).map_err(e("revert from", &src))?;
        // Keep at least one more revision so the reverted-from image stays.
        let keep = VolumeConf {
            revisions_to_keep: c.revisions_to_keep.max(1) + 1,
            ..c
        };
        self.commit(q, &keep, &tmp)?;
        let _ = fs::remove_file(&src);
        Ok(())
    }

    /// Grows a halted qube's volume to `size` bytes (file and file system).
    pub fn resize(&self, app: &App, q: &Qube, vol: &str, size: u64) -> Result<(), StorageError> {
        let c = conf(app, q, vol)?;
        let inv = |message: String| StorageError::Invalid {
            qube: q.name.clone(),
            volume: vol.into(),
            message,
        };
        if size < c.size {
            return Err(inv(format!(
                "shrinking from {} to {size} bytes is not supported (data would be lost)",
                c.size
            )));
        }
        if size > super::MAX_SIZE {
            return Err(inv(format!(
                "{size} bytes is over the {} byte limit",
                super::MAX_SIZE
            )));
        }
        if c.snap_on_start || !c.save_on_stop {
            // Nothing on disk to grow: the new size applies at the next start.
            return Ok(());
        }
        let clean = self.clean(q, vol);
        if !clean.exists() {
            return Ok(());
        }
        self.settle(app, q, vol)?;
        let e = err(q, vol);
        // Grow a copy and commit it: a failure leaves the old image untouched.
        let tmp = self.tmp_path(q, vol, "resize");
        self.clone_image(&clean, &tmp).map_err(e("copy", &clean))?;
        OpenOptions::new()
            .write(true)
            .open(&tmp)
            .and_then(|f| f.set_len(size))
            .map_err(e("grow", &tmp))?;
        for (prog, args) in [("e2fsck", &["-f", "-p"][..]), ("resize2fs", &[][..])] {
            let out = Command::new(prog)
                .args(args)
                .arg(&tmp)
                .output()
                .map_err(e("run e2fsprogs on", &tmp))?;
            // e2fsck: 1 means "errors corrected", still fine.
            let ok = out.status.success() || (prog == "e2fsck" && out.status.code() == Some(1));
            if !ok {
                let _ = fs::remove_file(&tmp);
                return Err(inv(format!(
                    "{prog} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        self.commit(q, &c, &tmp)
    }

    /// Starts an import: an empty file at the import path, for the caller
    /// to fill; returns the path.
    pub fn import_begin(&self, q: &Qube, vol: &str) -> Result<PathBuf, StorageError> {
        let dir = self.qube_dir(q);
        fs::create_dir_all(&dir).map_err(err(q, vol)("create", &dir))?;
        let p = self.import_path(q, vol);
        let _ = fs::remove_file(&p);
        File::create(&p).map_err(err(q, vol)("create", &p))?;
        Ok(p)
    }

    /// Ends an import: commits the image as the new clean one, or drops it.
    pub fn import_end(&self, app: &App, q: &Qube, vol: &str, ok: bool) -> Result<(), StorageError> {
        let p = self.import_path(q, vol);
        if !ok {
            let _ = fs::remove_file(&p);
            return Ok(());
        }
        if !p.exists() {
            return Err(StorageError::Invalid {
                qube: q.name.clone(),
                volume: vol.into(),
                message: "no import in progress".into(),
            });
        }
        self.settle(app, q, vol)?;
        let c = conf(app, q, vol)?;
        self.commit(q, &c, &p)
    }

    /// Copies `src`'s clean image of `vol` to `dst` (a halted qube) as its new
    /// clean image: O(1) with reflinks.
    pub fn clone_volume(
        &self,
        app: &App,
        src: &Qube,
        dst: &Qube,
        vol: &str,
    ) -> Result<(), StorageError> {
        let from = self.clean(src, vol);
        if !from.exists() {
            return Ok(());
        }
        let dir = self.qube_dir(dst);
        fs::create_dir_all(&dir).map_err(err(dst, vol)("create", &dir))?;
        self.settle(app, dst, vol)?;
        let tmp = self.tmp_path(dst, vol, "clone");
        self.clone_image(&from, &tmp)
            .map_err(err(dst, vol)("copy", &from))?;
        let c = conf(app, dst, vol)?;
        self.commit(dst, &c, &tmp)
    }

    /// Unmounts whatever is still mounted under a qube's runtime dir
    /// (leftovers of a qube whose instance was lost), deepest first.
    pub fn unmount_leftovers(&self, name: &str) {
        let base = self.runtime_dir(name);
        let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let mut points: Vec<PathBuf> = mi
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|m| PathBuf::from(unescape_mountinfo(m)))
            .filter(|p| p.starts_with(&base))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = umount2(&p, MntFlags::MNT_DETACH);
        }
    }

    /// Deletes every file of a qube's volumes (the qube is being removed).
    pub fn remove(&self, q: &Qube) -> io::Result<()> {
        let dir = self.qube_dir(q);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => {
                let _ = fs::remove_dir_all(self.runtime_dir(&q.name));
                Ok(())
            }
        }
    }
}

fn conf(app: &App, q: &Qube, vol: &str) -> Result<VolumeConf, StorageError> {
    volumes(app, q)
        .into_iter()
        .find(|c| c.name == vol)
        .ok_or_else(|| StorageError::Invalid {
            qube: q.name.clone(),
            volume: vol.into(),
            message: "no such volume".into(),
        })
}

fn err<'a>(
    q: &'a Qube,
    vol: &'a str,
) -> impl Fn(&'static str, &Path) -> Box<dyn FnOnce(io::Error) -> StorageError + 'a> + 'a {
    move |what, path| {
        let path = path.to_path_buf();
        Box::new(move |source| StorageError::Io {
            qube: q.name.clone(),
            volume: vol.to_string(),
            what,
            path,
            source,
        })
    }
}

/// Unmounts `at` if mounted, waiting briefly for the last users to go.
fn unmount(at: &Path) -> io::Result<()> {
    for _ in 0..100 {
        if !is_mounted(at) {
            return Ok(());
        }
        match umount2(at, MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other("still busy after 2 s"))
}
