//! `bulkhead-hal`: how a qube is actually run.
//!
//! One trait ([`Backend`]) with one implementation per isolation technology:
//! [`ns`] (Linux namespaces, cgroups, seccomp) today, `vm` (QEMU) next.
//! The daemon asks [`pick`] for the backend named by a qube's `virt_mode` and
//! drives it only through the trait, so both backends are held to the same
//! conformance tests.
//!
//! This crate must not know about the Admin API, policy or the state file:
//! it gets a fully resolved [`QubeSpec`] and reports process-level facts.
#![forbid(unsafe_code)]

pub mod cgroup;
pub mod guest;
mod helper;
pub mod ns;
pub mod vm;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Everything a backend needs to run one qube, already resolved by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QubeSpec {
    /// Qube name (also its hostname).
    pub name: String,
    /// Host-wide unique id of this qube (the daemon passes its uuid): names
    /// host-global resources such as cgroups, so two daemons (or a test and
    /// a user's installation) never share them.
    pub id: String,
    /// The qube's root file system.
    pub root: RootFs,
    /// Host directories bound into the qube (the private volume at `/rw`…),
    /// in order; their files are stored with the qube's own uids.
    pub binds: Vec<Bind>,
    /// Scratch dir for the backend's own mounts and sockets (created if missing).
    /// Its `channel/` subdir is the guest channel: mounted at
    /// [`GUEST_CHANNEL_DIR`] inside the qube, where the agent listens.
    pub run_dir: PathBuf,
    /// Program run as PID 1 inside the qube, with its arguments.
    pub init: Vec<String>,
    /// First host uid/gid of the qube's range; qube uid N is host `uid_base + N`.
    pub uid_base: u32,
    /// Number of uids/gids in the range.
    pub uid_count: u32,
    /// Memory limit, MiB.
    pub memory_mib: u64,
    /// CPU limit, in CPUs.
    pub vcpus: u32,
    /// Most processes the qube may have at once.
    pub max_pids: u32,
    /// Where the qube's console output goes.
    pub log: PathBuf,
    /// What only the `vm` backend needs (kernel, disks); `None` for `ns`.
    #[serde(default)]
    pub vm: Option<VmSpec>,
}

/// A `vm` qube's kernel and disks. Its root and binds come from the disks
/// inside the guest ([`QubeSpec::root`] and [`QubeSpec::binds`] are unused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Directory holding `vmlinuz` and `initramfs` (a kernels-pool entry).
    pub kernel_dir: PathBuf,
    /// Extra kernel command line (the `kernelopts` property).
    pub kernelopts: String,
    /// The qube's volumes, as disk images.
    pub disks: Vec<Disk>,
    /// The root disk is a read-only template root under a copy-on-write
    /// overlay whose writes land on the volatile disk (an AppVM's).
    pub overlay_root: bool,
    /// Memory the guest is ballooned down to at start (`memory`), when
    /// lower than [`QubeSpec::memory_mib`] (`maxmem`).
    pub balloon_mib: Option<u64>,
}

/// One disk image of a `vm` qube, found in the guest by its serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// `root`, `private` or `volatile`.
    pub serial: String,
    pub path: PathBuf,
    pub read_only: bool,
}

/// How a qube's root is assembled. Host paths hold files with the uids the
/// qube sees (host uid 0 is the qube's root): the backend shifts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootFs {
    /// Copy-on-write over a shared tree (an AppVM over its template's root):
    /// `lower` is never written; writes land in `upper` (a host dir owned by
    /// the qube's uid range, discarded by the caller at stop).
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
    },
    /// The qube writes its root itself (a template's or standalone's root).
    Direct { path: PathBuf },
}

/// A host directory bound into the qube.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub src: PathBuf,
    /// Absolute path inside the qube.
    pub dst: String,
    pub read_only: bool,
}

/// Where the guest channel appears inside a qube.
pub const GUEST_CHANNEL_DIR: &str = "/run/bulkhead";
/// The agent's qrexec socket, relative to the channel dir.
pub const AGENT_SOCKET: &str = "qrexec.sock";

/// What a backend can do on this host, found by trying, not by guessing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// The backend can run qubes at all here.
    pub usable: bool,
    /// Why not, when it cannot.
    pub reason: Option<String>,
    /// Pause/unpause are supported.
    pub pause: bool,
    /// Memory limits are enforced.
    pub memory_limit: bool,
}

/// A running (or finished) qube as the backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    /// Exited with this status (a signal is reported as 128 + signo; -1
    /// when unknown, e.g. for a re-adopted qube).
    Exited(i32),
}

/// Resource figures of a running qube.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Most memory the qube has used, bytes (if the host reports it).
    pub memory_peak: Option<u64>,
    /// Times the qube hit its memory limit.
    pub memory_limit_hits: u64,
}

/// Backend failures, each naming the qube.
#[derive(Debug, Error)]
pub enum HalError {
    #[error("cannot start qube '{qube}': {what}")]
    Start { qube: String, what: String },
    #[error("qube '{qube}': {what}")]
    Control { qube: String, what: String },
    #[error("the {backend} backend is not usable here: {reason}")]
    Unusable {
        backend: &'static str,
        reason: String,
    },
}

/// One isolation technology.
pub trait Backend: Send + Sync {
    /// `"ns"` or `"vm"`.
    fn name(&self) -> &'static str;
    /// What works on this host.
    fn capabilities(&self) -> Capabilities;
    /// Starts a qube; returns once its init runs inside the sandbox.
    fn start(&self, spec: &QubeSpec) -> Result<Box<dyn Instance>, HalError>;
    /// Takes over a qube started by an earlier daemon process, from the
    /// record its [`Instance::record`] gave. Fails if that qube is gone.
    fn adopt(&self, record: &InstanceRecord) -> Result<Box<dyn Instance>, HalError>;
    /// Kills whatever is left of a qube no instance owns (a qube that could
    /// not be re-adopted), by the qube's name and [`QubeSpec::id`]; returns
    /// whether nothing is left.
    fn reap_leftovers(&self, qube: &str, id: &str) -> bool;
    /// The accelerator this backend's qubes run on (`kvm`, `tcg`) and why
    /// not KVM, if it applies and is known; with `probe_with` (a kernel
    /// directory) it is found out first if need be, which may take seconds.
    fn accelerator(
        &self,
        probe_with: Option<&std::path::Path>,
    ) -> Option<(String, Option<String>)> {
        let _ = probe_with;
        None
    }
}

/// What a daemon must remember to re-adopt a running qube after a restart
/// (kept by the daemon in its runtime dir).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The backend that started it.
    pub backend: String,
    pub qube: String,
    /// Backend-specific facts.
    pub data: serde_json::Value,
}

/// A started qube.
pub trait Instance: Send {
    /// Host pid of the qube's init.
    fn init_pid(&self) -> u32;
    /// Host path of the agent's qrexec socket (exists once the agent listens).
    fn agent_socket(&self) -> PathBuf;
    /// The accelerator the qube runs on, for VMs (`kvm`, `tcg`).
    fn accelerator(&self) -> Option<String> {
        None
    }
    /// Current state (reaps the qube if it exited).
    fn state(&mut self) -> RunState;
    /// Asks the qube to stop (its init gets SIGTERM) and returns at once;
    /// watch [`Instance::state`] for the exit.
    fn request_shutdown(&mut self) -> Result<(), HalError>;
    /// Asks init to stop (SIGTERM), then kills after `timeout`. Returns the exit state.
    fn shutdown(&mut self, timeout: Duration) -> Result<RunState, HalError>;
    /// Kills everything in the qube at once.
    fn kill(&mut self) -> Result<RunState, HalError>;
    /// Freezes every process of the qube.
    fn pause(&mut self) -> Result<(), HalError>;
    /// Thaws a paused qube.
    fn unpause(&mut self) -> Result<(), HalError>;
    /// Resource figures.
    fn stats(&self) -> Stats;
    /// Puts a host process that works for this qube (its qrexec relay)
    /// under the qube's resource limits, so it shares its memory and pid
    /// budget and dies with it.
    fn add_process(&self, pid: u32) -> Result<(), HalError>;
    /// What a later daemon needs to [`Backend::adopt`] this qube.
    fn record(&self) -> InstanceRecord;
    /// Lets go of the qube without stopping it (the daemon is exiting and a
    /// later one re-adopts it); dropping a detached instance leaves it running.
    fn detach(&mut self);
}

/// A process's start time (field 22 of `/proc/<pid>/stat`), which tells a
/// live process from a later one that reuses its pid.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The host helpers backends run.
#[derive(Debug, Clone)]
pub struct Helpers {
    /// `bulkhead-nsinit` (ns).
    pub nsinit: PathBuf,
    /// `bulkhead-vmm` (vm).
    pub vmm: PathBuf,
    /// Where the vm backend caches its accelerator verdict.
    pub accel_cache: PathBuf,
}

/// The backend for a `virt_mode` value.
pub fn pick(virt_mode: &str, helpers: &Helpers) -> Result<Box<dyn Backend>, HalError> {
    match virt_mode {
        "ns" => Ok(Box::new(ns::NsBackend::new(helpers.nsinit.clone()))),
        "vm" => Ok(Box::new(vm::VmBackend::new(
            helpers.vmm.clone(),
            helpers.accel_cache.clone(),
        ))),
        other => Err(HalError::Unusable {
            backend: "vm",
            reason: format!("virt_mode '{other}' is neither vm nor ns"),
        }),
    }
}
