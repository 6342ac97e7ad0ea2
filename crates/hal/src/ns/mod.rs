//! The `ns` backend: each qube in its own user, mount, PID, network, IPC,
//! UTS and cgroup namespaces, its root an overlay over an idmapped view of the
//! shared root, limited by cgroups and a seccomp filter.
//!
//! Weaker than `vm` (the host kernel is shared), which `bulkhead ls` says.
//! The in-namespace work is done by the `bulkhead-nsinit` helper ([`init`]).

pub mod init;
pub mod seccomp;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{chown, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use crate::cgroup;
use crate::helper::{boot_id, Helper};
use crate::{Backend, Capabilities, HalError, Instance, QubeSpec, RunState, Stats};
pub use cgroup::{layout as cgroup_layout, Layout as CgroupLayout};

/// The `ns` backend; `nsinit` is the path of the `bulkhead-nsinit` helper.
pub struct NsBackend {
    nsinit: PathBuf,
}

impl NsBackend {
    pub fn new(nsinit: PathBuf) -> Self {
        Self { nsinit }
    }
}

fn missing(what: &str) -> Option<String> {
    Some(what.to_string())
}

impl Backend for NsBackend {
    fn name(&self) -> &'static str {
        "ns"
    }

    fn capabilities(&self) -> Capabilities {
        let fs_ok = fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay"));
        let reason = if !nix::unistd::geteuid().is_root() {
            missing("bulkheadd must run as root to set up namespaces and cgroups")
        } else if !Path::new("/proc/self/ns/user").exists() {
            missing("the kernel has no user namespaces")
        } else if !fs_ok {
            missing("the kernel has no overlay file system")
        } else if !self.nsinit.exists() {
            Some(format!("helper {} is not installed", self.nsinit.display()))
        } else {
            None
        };
        Capabilities {
            usable: reason.is_none(),
            reason,
            pause: true,
            memory_limit: true,
        }
    }

    fn start(&self, spec: &QubeSpec) -> Result<Box<dyn Instance>, HalError> {
        let caps = self.capabilities();
        if let Some(reason) = caps.reason {
            return Err(HalError::Unusable {
                backend: "ns",
                reason,
            });
        }
        start(&self.nsinit, spec).map_err(|what| HalError::Start {
            qube: spec.name.clone(),
            what,
        })
    }

    fn reap_leftovers(&self, qube: &str, id: &str) -> bool {
        cgroup::Cgroup::existing(&cgroup_name(qube, id)).is_none_or(|cg| {
            cg.kill_all(None);
            cg.wait_empty(Duration::from_secs(10))
        })
    }

    fn adopt(&self, record: &crate::InstanceRecord) -> Result<Box<dyn Instance>, HalError> {
        adopt(&record.qube, record).map_err(|what| HalError::Control {
            qube: record.qube.clone(),
            what: format!("cannot re-adopt: {what}"),
        })
    }
}

fn io<T>(r: std::io::Result<T>, what: impl FnOnce() -> String) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// A started helper, before it is handed out; kills the helper if dropped early.
struct Starting {
    child: Option<Child>,
    /// Host-side idmapped mounts, detached once the qube holds its own copies.
    mounted: Vec<PathBuf>,
    /// The guest channel tmpfs, unmounted if the start fails.
    channel: Option<PathBuf>,
    /// Removed (after the helper is gone) if the start fails.
    cgroup: Option<cgroup::Cgroup>,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(cg) = self.cgroup.take() {
            cg.kill_all(None);
            cg.wait_empty(Duration::from_secs(5));
        }
        for m in self.mounted.drain(..) {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
        if let Some(c) = self.channel.take() {
            let _ = umount2(&c, MntFlags::MNT_DETACH);
        }
    }
}

fn read_line(out: &mut BufReader<ChildStdout>, log: &Path) -> Result<String, String> {
    let mut line = String::new();
    let n = io(out.read_line(&mut line), || {
        "reading from the helper".into()
    })?;
    if n == 0 {
        return Err(format!("the helper exited early; see {}", log.display()));
    }
    let line = line.trim_end().to_string();
    if let Some(e) = line.strip_prefix("error ") {
        return Err(e.to_string());
    }
    Ok(line)
}

/// The qube's cgroup name: readable, and unique on the host.
pub(crate) fn cgroup_name(name: &str, id: &str) -> String {
    if id.is_empty() {
        name.to_string()
    } else {
        format!("{name}.{id}")
    }
}

/// Lowest uid a qube's range may start at (below are the host's own users).
pub const MIN_UID_BASE: u32 = 65536;

fn start(nsinit: &Path, spec: &QubeSpec) -> Result<Box<dyn Instance>, String> {
    if spec.uid_base < MIN_UID_BASE
        || spec.uid_count == 0
        || spec.uid_base.checked_add(spec.uid_count).is_none()
    {
        return Err(format!(
            "uid range {}+{} is not allowed: it must start at {MIN_UID_BASE} or above and not wrap",
            spec.uid_base, spec.uid_count
        ));
    }
    let lower = spec.run_dir.join("lower");
    let merged = spec.run_dir.join("merged");
    let channel = spec.run_dir.join("channel");
    let (root_src, upper_work, root_ro) = match &spec.root {
        crate::RootFs::Overlay { lower, upper, work } => {
            (lower.clone(), Some((upper.clone(), work.clone())), true)
        }
        crate::RootFs::Direct { path } => (path.clone(), None, false),
    };
    let bind_dirs: Vec<PathBuf> = (0..spec.binds.len())
        .map(|i| spec.run_dir.join(format!("bind{i}")))
        .collect();
    let mut dirs = vec![lower.clone(), merged.clone(), channel.clone()];
    dirs.extend(bind_dirs.iter().cloned());
    if let Some((u, w)) = &upper_work {
        dirs.push(u.clone());
        dirs.push(w.clone());
    }
    for d in &dirs {
        // Leftovers of a crashed run must not shadow this one.
        let _ = umount2(d, MntFlags::MNT_DETACH);
        io(fs::create_dir_all(d), || format!("create {}", d.display()))?;
    }
    // The guest-writable channel is a tiny tmpfs of its own, fresh each run,
    // so a qube can neither fill a host file system through it nor leave
    // anything behind for the next run.
    let _ = umount2(&channel, MntFlags::MNT_DETACH);
    // Undoes everything below if the start fails part-way.
    let mut st = Starting {
        child: None,
        mounted: Vec::new(),
        channel: None,
        cgroup: None,
    };
    let tmpfs_opts = format!(
        "size=64k,nr_inodes=16,mode=0700,uid={0},gid={0}",
        spec.uid_base
    );
    io(
        nix::mount::mount(
            Some("tmpfs"),
            &channel,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some(tmpfs_opts.as_str()),
        )
        .map_err(std::io::Error::from),
        || format!("mount the guest channel tmpfs on {}", channel.display()),
    )?;
    st.channel = Some(channel.clone());
    let owner = (
        Some(Uid::from_raw(spec.uid_base)),
        Some(Gid::from_raw(spec.uid_base)),
    );
    let mut owned = vec![channel.clone()];
    if let Some((u, w)) = &upper_work {
        owned.push(u.clone());
        owned.push(w.clone());
    }
    for d in &owned {
        io(
            chown(d.as_path(), owner.0, owner.1).map_err(std::io::Error::from),
            || format!("chown {}", d.display()),
        )?;
    }
    let log = crate::helper::open_console_log(&spec.log)?;
    let cg = io(
        cgroup::Cgroup::create(
            &cgroup_name(&spec.name, &spec.id),
            spec.memory_mib * 1024 * 1024,
            spec.vcpus,
            spec.max_pids,
        ),
        || "create cgroups".into(),
    )?;
    st.cgroup = Some(cg);
    let cfg = init::InitConfig {
        hostname: spec.name.clone(),
        lower: lower.clone(),
        overlay: upper_work.clone(),
        binds: bind_dirs
            .iter()
            .zip(&spec.binds)
            .map(|(dir, b)| (dir.clone(), b.dst.clone(), b.read_only))
            .collect(),
        merged,
        channel: channel.clone(),
        init: spec.init.clone(),
    };
    let cfg_json = serde_json::to_string(&cfg).map_err(|e| e.to_string())?;
    let child = io(
        Command::new(nsinit)
            .arg(cfg_json)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn(),
        || format!("run {}", nsinit.display()),
    )?;
    st.child = Some(child);
    let child = st.child.as_mut().ok_or("helper vanished")?;
    let pid = child.id();
    io(
        st.cgroup.as_ref().ok_or("cgroup vanished")?.add(pid),
        || "join cgroups".into(),
    )?;

    let mut input: ChildStdin = child.stdin.take().ok_or("no helper stdin")?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no helper stdout")?);

    let first = read_line(&mut out, &spec.log)?;
    if first != "userns" {
        return Err(format!("helper said {first:?}, expected 'userns'"));
    }
    let map = format!("0 {} {}", spec.uid_base, spec.uid_count);
    for f in ["uid_map", "gid_map"] {
        let p = format!("/proc/{pid}/{f}");
        io(fs::write(&p, &map), || format!("write {p}"))?;
    }
    let userns = io(fs::File::open(format!("/proc/{pid}/ns/user")), || {
        "open the qube's user namespace".into()
    })?;
    let idmapped = |src: &Path, dst: &Path, ro: bool| {
        io(
            bulkhead_sys::mount::idmapped_bind(src, userns.as_fd(), dst, ro),
            || {
                format!(
                    "idmapped mount of {} (needs kernel >= 5.12 and a file system that supports it)",
                    src.display()
                )
            },
        )
    };
    idmapped(&root_src, &lower, root_ro)?;
    st.mounted.push(lower.clone());
    for (b, dir) in spec.binds.iter().zip(&bind_dirs) {
        idmapped(&b.src, dir, b.read_only)?;
        st.mounted.push(dir.clone());
    }
    io(writeln!(input, "go"), || "signal the helper".into())?;

    let mut init_pid = None;
    loop {
        let line = read_line(&mut out, &spec.log)?;
        if let Some(p) = line.strip_prefix("pid ") {
            init_pid = p.parse::<u32>().ok();
        } else if line == "ready" {
            break;
        } else {
            return Err(format!("helper said {line:?}"));
        }
    }
    let init_pid = init_pid.ok_or("helper did not report the init pid")?;
    // The qube's mount namespace holds its own copies now.
    for m in st.mounted.drain(..) {
        let _ = umount2(&m, MntFlags::MNT_DETACH);
    }
    let child = st.child.take().ok_or("helper vanished")?;
    st.channel = None;
    let cg = st.cgroup.take().ok_or("cgroup vanished")?;
    let helper_start = crate::process_start_time(child.id());
    Ok(Box::new(NsInstance {
        name: spec.name.clone(),
        helper: Helper::Child(child),
        helper_start,
        init_pid,
        cgroup: cg,
        paused: false,
        exited: None,
        detached: false,
        agent_socket: channel.join(crate::AGENT_SOCKET),
        channel,
    }))
}

fn parent_of(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// What a later daemon needs to re-adopt an `ns` qube.
#[derive(Debug, Serialize, Deserialize)]
struct NsRecord {
    /// Pids mean nothing after a reboot.
    #[serde(default)]
    boot_id: String,
    helper_pid: u32,
    helper_start: Option<u64>,
    init_pid: u32,
    cgroup: cgroup::Record,
    agent_socket: PathBuf,
    channel: PathBuf,
    paused: bool,
}

fn adopt(name: &str, record: &crate::InstanceRecord) -> Result<Box<dyn Instance>, String> {
    let r: NsRecord = serde_json::from_value(record.data.clone())
        .map_err(|e| format!("unreadable instance record: {e}"))?;
    if r.boot_id != boot_id() {
        return Err("it was started before the last reboot".into());
    }
    let now = crate::process_start_time(r.helper_pid);
    if now.is_none() || now != r.helper_start {
        return Err("its helper process is gone".into());
    }
    if parent_of(r.init_pid) != Some(r.helper_pid) {
        return Err("its init process is gone".into());
    }
    // The pidfd pins this very process: a pid reused later cannot be mistaken for it.
    let pidfd = bulkhead_sys::process::pidfd_open(r.helper_pid)
        .map_err(|e| format!("pidfd_open({}): {e}", r.helper_pid))?;
    if crate::process_start_time(r.helper_pid) != r.helper_start {
        return Err("its helper process is gone".into());
    }
    Ok(Box::new(NsInstance {
        name: name.to_string(),
        helper: Helper::Adopted {
            pid: r.helper_pid,
            pidfd,
        },
        helper_start: r.helper_start,
        init_pid: r.init_pid,
        cgroup: cgroup::Cgroup::from_record(r.cgroup),
        paused: r.paused,
        exited: None,
        detached: false,
        agent_socket: r.agent_socket,
        channel: r.channel,
    }))
}

/// A running `ns` qube.
pub struct NsInstance {
    name: String,
    /// The helper; it exits with PID 1's status.
    helper: Helper,
    helper_start: Option<u64>,
    init_pid: u32,
    cgroup: cgroup::Cgroup,
    paused: bool,
    exited: Option<i32>,
    /// Left running for a later daemon: dropping must not kill it.
    detached: bool,
    agent_socket: PathBuf,
    /// The channel tmpfs, unmounted when the qube is gone.
    channel: PathBuf,
}

impl NsInstance {
    fn err(&self, what: String) -> HalError {
        HalError::Control {
            qube: self.name.clone(),
            what,
        }
    }

    fn poll(&mut self) -> Option<i32> {
        if self.exited.is_none() {
            if let Some(code) = self.helper.try_wait() {
                // Nothing of the qube may outlive its helper: kill what is
                // left and wait until it is gone, so the caller can release
                // the qube's storage safely.
                self.cgroup.kill_all(None);
                if !self.cgroup.wait_empty(Duration::from_secs(10)) {
                    return None;
                }
                let _ = umount2(&self.channel, MntFlags::MNT_DETACH);
                self.exited = Some(code);
            }
        }
        self.exited
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        crate::helper::wait_for(timeout, || self.poll())
    }
}

impl Instance for NsInstance {
    fn init_pid(&self) -> u32 {
        self.init_pid
    }

    fn agent_socket(&self) -> PathBuf {
        self.agent_socket.clone()
    }

    fn state(&mut self) -> RunState {
        match self.poll() {
            Some(c) => RunState::Exited(c),
            None if self.paused => RunState::Paused,
            None => RunState::Running,
        }
    }

    fn request_shutdown(&mut self) -> Result<(), HalError> {
        if self.poll().is_some() {
            return Ok(());
        }
        if self.paused {
            self.unpause()?;
        }
        // The helper has not reaped PID 1 yet (poll said so), so this pid is
        // still the qube's init and cannot have been reused.
        kill(Pid::from_raw(self.init_pid as i32), Signal::SIGTERM)
            .map_err(|e| self.err(format!("SIGTERM to init: {e}")))
    }

    fn shutdown(&mut self, timeout: Duration) -> Result<RunState, HalError> {
        if let Some(c) = self.poll() {
            return Ok(RunState::Exited(c));
        }
        if self.paused {
            self.unpause()?;
        }
        let _ = kill(Pid::from_raw(self.init_pid as i32), Signal::SIGTERM);
        match self.wait_exit(timeout) {
            Some(c) => Ok(RunState::Exited(c)),
            None => self.kill(),
        }
    }

    fn kill(&mut self) -> Result<RunState, HalError> {
        if let Some(c) = self.poll() {
            return Ok(RunState::Exited(c));
        }
        // Everything in the qube's cgroup, not a pid that might be reused;
        // the helper stays to reap PID 1 and report its status.
        self.cgroup.kill_all(Some(self.helper.id()));
        self.paused = false;
        match self.wait_exit(Duration::from_secs(10)) {
            Some(c) => Ok(RunState::Exited(c)),
            None => Err(self.err("did not exit 10 s after SIGKILL".into())),
        }
    }

    fn pause(&mut self) -> Result<(), HalError> {
        self.cgroup
            .freeze(true)
            .map_err(|e| self.err(format!("pause: {e}")))?;
        self.paused = true;
        Ok(())
    }

    fn unpause(&mut self) -> Result<(), HalError> {
        self.cgroup
            .freeze(false)
            .map_err(|e| self.err(format!("unpause: {e}")))?;
        self.paused = false;
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.cgroup.stats()
    }

    fn add_process(&self, pid: u32) -> Result<(), HalError> {
        self.cgroup
            .add(pid)
            .map_err(|e| self.err(format!("adding pid {pid} to the qube's cgroup: {e}")))
    }

    fn record(&self) -> crate::InstanceRecord {
        let r = NsRecord {
            boot_id: boot_id(),
            helper_pid: self.helper.id(),
            helper_start: self.helper_start,
            init_pid: self.init_pid,
            cgroup: self.cgroup.record(),
            agent_socket: self.agent_socket.clone(),
            channel: self.channel.clone(),
            paused: self.paused,
        };
        crate::InstanceRecord {
            backend: "ns".into(),
            qube: self.name.clone(),
            data: serde_json::to_value(r).unwrap_or_default(),
        }
    }

    fn detach(&mut self) {
        self.detached = true;
        self.cgroup.keep();
    }
}

impl Drop for NsInstance {
    fn drop(&mut self) {
        if !self.detached && self.poll().is_none() {
            let _ = self.kill();
        }
    }
}
