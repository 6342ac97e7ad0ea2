//! Per-qube cgroups on v1 (per-controller hierarchies) and v2 hosts.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Unified hierarchy with the memory and pids controllers available.
    V2,
    /// Per-controller v1 hierarchies (also hybrid hosts whose v2 mount is empty).
    V1,
}

/// Finds the layout: v2 only if the unified root offers memory and pids.
pub fn layout() -> Layout {
    let controllers =
        fs::read_to_string(Path::new(ROOT).join("cgroup.controllers")).unwrap_or_default();
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if has("memory") && has("pids") {
        Layout::V2
    } else {
        Layout::V1
    }
}

/// A qube's cgroup(s), removed on drop (unless kept for a later daemon).
#[derive(Debug)]
pub struct Cgroup {
    layout: Layout,
    dirs: Vec<PathBuf>,
    keep: bool,
}

/// A cgroup as remembered across daemon restarts.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Record {
    v2: bool,
    dirs: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("write {} to {}: {e}", value.trim(), path.display()),
        )
    })
}

impl Cgroup {
    /// Creates the cgroup(s) for `name` with the limits set.
    pub fn create(name: &str, memory_bytes: u64, vcpus: u32, max_pids: u32) -> io::Result<Cgroup> {
        // Two instances of one qube must never share a cgroup (kill and
        // limits would reach both): refuse while an earlier one has processes.
        if let Some(mut old) = Cgroup::existing(name) {
            let pids = old.pids();
            if !pids.is_empty() {
                old.keep = true;
                return Err(io::Error::other(format!(
                    "processes of an earlier instance of '{name}' are still running (pids {pids:?}); kill them or restart bulkheadd"
                )));
            }
        }
        let layout = layout();
        let quota = u64::from(vcpus.max(1)) * 100_000;
        let mut cg = Cgroup {
            layout,
            dirs: Vec::new(),
            keep: false,
        };
        match layout {
            Layout::V2 => {
                let parent = Path::new(ROOT).join("bulkhead");
                fs::create_dir_all(&parent)?;
                let _ = write(
                    &Path::new(ROOT).join("cgroup.subtree_control"),
                    "+memory +pids +cpu",
                );
                let _ = write(&parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
                let dir = parent.join(name);
                fs::create_dir_all(&dir)?;
                cg.dirs.push(dir.clone());
                write(&dir.join("memory.max"), &memory_bytes.to_string())?;
                write(&dir.join("memory.swap.max"), "0").ok();
                write(&dir.join("pids.max"), &max_pids.to_string())?;
                write(&dir.join("cpu.max"), &format!("{quota} 100000")).ok();
            }
            Layout::V1 => {
                for ctrl in ["memory", "pids", "freezer", "cpu"] {
                    let base = Path::new(ROOT).join(ctrl);
                    if !base.exists() {
                        if ctrl == "cpu" {
                            continue;
                        }
                        return Err(io::Error::other(format!(
                            "cgroup v1 controller {ctrl} is not mounted at {}",
                            base.display()
                        )));
                    }
                    let dir = base.join("bulkhead").join(name);
                    fs::create_dir_all(&dir)?;
                    cg.dirs.push(dir.clone());
                    match ctrl {
                        "memory" => {
                            write(
                                &dir.join("memory.limit_in_bytes"),
                                &memory_bytes.to_string(),
                            )?;
                            // Without swap accounting this file is absent; the limit above still holds.
                            write(
                                &dir.join("memory.memsw.limit_in_bytes"),
                                &memory_bytes.to_string(),
                            )
                            .ok();
                        }
                        "pids" => write(&dir.join("pids.max"), &max_pids.to_string())?,
                        "cpu" => {
                            write(&dir.join("cpu.cfs_period_us"), "100000").ok();
                            write(&dir.join("cpu.cfs_quota_us"), &quota.to_string()).ok();
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(cg)
    }

    /// The cgroup(s) of a qube named `name`, if any exist.
    pub fn existing(name: &str) -> Option<Cgroup> {
        let layout = layout();
        let dirs: Vec<PathBuf> = match layout {
            Layout::V2 => vec![Path::new(ROOT).join("bulkhead").join(name)],
            Layout::V1 => ["memory", "pids", "freezer", "cpu"]
                .iter()
                .map(|c| Path::new(ROOT).join(c).join("bulkhead").join(name))
                .collect(),
        };
        let dirs: Vec<PathBuf> = dirs.into_iter().filter(|d| d.is_dir()).collect();
        (!dirs.is_empty()).then_some(Cgroup {
            layout,
            dirs,
            keep: false,
        })
    }

    /// Pids in the cgroup(s).
    pub fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .dirs
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|p| {
                p.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Waits until no process is left; false on timeout.
    pub fn wait_empty(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.pids().is_empty() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// What [`Cgroup::from_record`] needs.
    pub fn record(&self) -> Record {
        Record {
            v2: self.layout == Layout::V2,
            dirs: self.dirs.clone(),
        }
    }

    /// The cgroup(s) of a qube started by an earlier daemon.
    pub fn from_record(r: Record) -> Cgroup {
        Cgroup {
            layout: if r.v2 { Layout::V2 } else { Layout::V1 },
            // Only our own hierarchy: a tampered record must not point elsewhere.
            dirs: r
                .dirs
                .into_iter()
                .filter(|d| {
                    d.starts_with(ROOT) && d.components().any(|c| c.as_os_str() == "bulkhead")
                })
                .collect(),
            keep: false,
        }
    }

    /// Leaves the cgroup(s) in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Moves a process into the cgroup(s).
    pub fn add(&self, pid: u32) -> io::Result<()> {
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn freezer(&self) -> Option<(PathBuf, &'static str, &'static str)> {
        match self.layout {
            Layout::V2 => self
                .dirs
                .first()
                .map(|d| (d.join("cgroup.freeze"), "1", "0")),
            Layout::V1 => self
                .dirs
                .iter()
                .find(|d| d.starts_with(Path::new(ROOT).join("freezer")))
                .map(|d| (d.join("freezer.state"), "FROZEN", "THAWED")),
        }
    }

    /// Freezes or thaws every process in the cgroup.
    pub fn freeze(&self, frozen: bool) -> io::Result<()> {
        let (file, on, off) = self
            .freezer()
            .ok_or_else(|| io::Error::other("no freezer cgroup"))?;
        write(&file, if frozen { on } else { off })
    }

    /// Kills every process in the cgroup except `spare` (the helper, which
    /// must live to reap PID 1), including any that escaped their parent
    /// (v2 without a spare: `cgroup.kill`; otherwise freeze, SIGKILL each, thaw).
    pub fn kill_all(&self, spare: Option<u32>) {
        if self.layout == Layout::V2 && spare.is_none() {
            if let Some(d) = self.dirs.first() {
                if write(&d.join("cgroup.kill"), "1").is_ok() {
                    return;
                }
            }
        }
        let _ = self.freeze(true);
        for d in &self.dirs {
            if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                let pids = procs.lines().filter_map(|l| l.trim().parse::<i32>().ok());
                for pid in pids.filter(|p| Some(*p as u32) != spare) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = self.freeze(false);
    }

    /// Peak memory use in bytes, if the kernel reports it.
    /// The figures a backend reports for its qube.
    pub fn stats(&self) -> crate::Stats {
        crate::Stats {
            memory_peak: self.memory_peak(),
            memory_limit_hits: self.memory_limit_hits(),
        }
    }

    pub fn memory_peak(&self) -> Option<u64> {
        let name = match self.layout {
            Layout::V2 => "memory.peak",
            Layout::V1 => "memory.max_usage_in_bytes",
        };
        self.dirs
            .iter()
            .find_map(|d| fs::read_to_string(d.join(name)).ok()?.trim().parse().ok())
    }

    /// Times the memory limit was hit (v1 `failcnt`, v2 `memory.events` max).
    pub fn memory_limit_hits(&self) -> u64 {
        match self.layout {
            Layout::V2 => self
                .dirs
                .first()
                .and_then(|d| fs::read_to_string(d.join("memory.events")).ok())
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("max "))
                        .and_then(|n| n.trim().parse().ok())
                })
                .unwrap_or(0),
            Layout::V1 => self
                .dirs
                .iter()
                .find_map(|d| {
                    fs::read_to_string(d.join("memory.failcnt"))
                        .ok()?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for d in &self.dirs {
            // Fails while processes remain; they are gone once the qube exited.
            let _ = fs::remove_dir(d);
        }
    }
}
