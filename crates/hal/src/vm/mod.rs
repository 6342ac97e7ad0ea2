//! The `vm` backend: each qube a QEMU `-M microvm` guest (KVM when a real
//! guest runs under it, TCG otherwise — see [`accel`]), driven over QMP.
//!
//! Per running qube, in the qube's cgroup:
//! - QEMU, started by `bulkhead-vmm qemu`, which opens the qube's disk
//!   images as root, enters the [`jail`] and execs QEMU as the qube's VMM
//!   uid (`uid_base + 1`) with `-sandbox on`; the disks arrive as
//!   descriptors (`-add-fd`), the kernel and initramfs read-only;
//! - the guest channel helper (`bulkhead-vmm chan`, [`chan`]) as the qube's
//!   uid (`uid_base`), which turns QEMU's virtio-serial port into the same
//!   agent and relay sockets the `ns` backend offers, so qrexec runs
//!   unchanged.
//!
//! Disks are found in the guest by their virtio serial (`root`, `private`,
//! `volatile`); the guest's initramfs builds the same layout as `ns` (see
//! `bulkhead-agent`'s `vm` module). Volumes of vm qubes are never mounted on
//! the host.

pub mod accel;
pub mod chan;
pub mod jail;
pub mod qmp;

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{chown, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use crate::cgroup;
use crate::helper::{boot_id, Helper};
use crate::{Backend, Capabilities, Disk, HalError, Instance, QubeSpec, RunState, Stats};
use accel::{Accel, Verdict};
use jail::{JailBind, JailSpec};

/// Where Debian's QEMU is.
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// Host memory allowed to a qube's processes beyond its guest RAM (QEMU
/// itself, TCG's translation cache, the channel helper, the relay).
const OVERHEAD_MIB: u64 = 384;
/// TCG translation cache, MiB (QEMU's default of 1 GiB per qube would
/// dominate host memory).
const TCG_TB_MIB: u32 = 64;

/// The `vm` backend.
pub struct VmBackend {
    /// `bulkhead-vmm`.
    vmm: PathBuf,
    qemu: PathBuf,
    /// The accelerator verdict's cache file.
    accel_cache: PathBuf,
    verdict: Mutex<Option<Verdict>>,
}

impl VmBackend {
    pub fn new(vmm: PathBuf, accel_cache: PathBuf) -> Self {
        let qemu = PathBuf::from(QEMU);
        let verdict = Mutex::new(accel::cached(&accel_cache, &qemu));
        Self {
            vmm,
            qemu,
            accel_cache,
            verdict,
        }
    }

    /// The accelerator, running the trial with `kernel_dir` if not known yet.
    pub fn verdict(&self, kernel_dir: Option<&Path>) -> Option<Verdict> {
        let mut v = self.verdict.lock().unwrap_or_else(|e| e.into_inner());
        if v.is_none() {
            // The daemon may have found out meanwhile (its start-up trial).
            *v = accel::cached(&self.accel_cache, &self.qemu);
        }
        if v.is_none() {
            if let Some(k) = kernel_dir {
                *v = Some(accel::decide(&self.accel_cache, &self.qemu, k));
            }
        }
        v.clone()
    }
}

impl Backend for VmBackend {
    fn name(&self) -> &'static str {
        "vm"
    }

    fn capabilities(&self) -> Capabilities {
        let reason = if !nix::unistd::geteuid().is_root() {
            Some("bulkheadd must run as root to jail QEMU".to_string())
        } else if !self.qemu.exists() {
            Some(format!(
                "{} is not installed (apt-get install qemu-system-x86)",
                self.qemu.display()
            ))
        } else if !self.vmm.exists() {
            Some(format!("helper {} is not installed", self.vmm.display()))
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

    fn accelerator(&self, probe_with: Option<&Path>) -> Option<(String, Option<String>)> {
        self.verdict(probe_with)
            .map(|v| (v.accel.name().to_string(), v.reason))
    }

    fn start(&self, spec: &QubeSpec) -> Result<Box<dyn Instance>, HalError> {
        if let Some(reason) = self.capabilities().reason {
            return Err(HalError::Unusable {
                backend: "vm",
                reason,
            });
        }
        start(self, spec).map_err(|what| HalError::Start {
            qube: spec.name.clone(),
            what,
        })
    }

    fn adopt(&self, record: &crate::InstanceRecord) -> Result<Box<dyn Instance>, HalError> {
        adopt(record).map_err(|what| HalError::Control {
            qube: record.qube.clone(),
            what: format!("cannot re-adopt: {what}"),
        })
    }

    fn reap_leftovers(&self, qube: &str, id: &str) -> bool {
        cgroup::Cgroup::existing(&crate::ns::cgroup_name(qube, id)).is_none_or(|cg| {
            cg.kill_all(None);
            cg.wait_empty(Duration::from_secs(10))
        })
    }
}

/// What `bulkhead-vmm qemu` gets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QemuConfig {
    pub jail: JailSpec,
    pub qemu: PathBuf,
    /// QEMU's arguments, except the disks (added with their descriptors).
    pub args: Vec<String>,
    pub disks: Vec<Disk>,
}

/// The host's TSC frequency, measured once.
fn tsc_khz() -> Option<u64> {
    static KHZ: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| bulkhead_sys::cpu::tsc_khz(Duration::from_millis(20)))
}

/// Host paths of one qube's run directory.
struct Dirs {
    vmm: PathBuf,
    channel: PathBuf,
}

fn dirs(run_dir: &Path) -> Dirs {
    Dirs {
        vmm: run_dir.join("vmm"),
        channel: run_dir.join("channel"),
    }
}

fn io<T>(r: std::io::Result<T>, what: impl FnOnce() -> String) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// Gives `dir` to `uid`:`gid` with `mode`.
fn own(dir: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    chown(dir, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))
}

/// QEMU's command line for a qube (paths as seen inside the jail).
fn qemu_args(spec: &QubeSpec, vm: &crate::VmSpec, accel: Accel) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["-name", &format!("{},debug-threads=on", spec.name)]);
    push(&["-M", "microvm,rtc=on"]);
    match accel {
        Accel::Kvm => push(&["-accel", "kvm"]),
        Accel::Tcg => push(&[
            "-accel",
            &format!("tcg,thread=single,tb-size={TCG_TB_MIB}"),
            "-cpu",
            "max",
        ]),
    }
    push(&["-m", &spec.memory_mib.to_string()]);
    push(&["-smp", &spec.vcpus.max(1).to_string()]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    push(&["-kernel", "/kernel/vmlinuz", "-initrd", "/kernel/initramfs"]);
    let mut cmdline = format!(
        "console=ttyS0 quiet panic=-1 bulkhead.name={} bulkhead.root={}",
        spec.name,
        if vm.overlay_root { "overlay" } else { "direct" }
    );
    if !vm.kernelopts.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(vm.kernelopts.trim());
    }
    if accel == Accel::Tcg {
        // The guest's TSC runs at the host's rate; calibrating it against
        // the emulated PIT fails on a busy host and the boot hangs.
        if let Some(khz) = tsc_khz() {
            cmdline.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
        }
        cmdline.push_str(" no_timer_check");
    }
    push(&["-append", &cmdline]);
    // The serial console goes to the channel helper, which copies it into
    // the console log up to a cap: a guest must not fill the host's disk.
    push(&[
        "-chardev",
        &format!(
            "socket,id=console,path={}/{},server=on,wait=off",
            chan::VMM_DIR,
            chan::CONSOLE_SOCKET
        ),
        "-serial",
        "chardev:console",
    ]);
    push(&[
        "-device",
        "virtio-serial-device",
        "-chardev",
        &format!(
            "socket,id=qrexec,path={}/{},server=on,wait=off",
            chan::VMM_DIR,
            chan::CHARDEV_SOCKET
        ),
        "-device",
        "virtserialport,chardev=qrexec,name=org.bulkhead.qrexec",
    ]);
    push(&["-device", "virtio-balloon-device"]);
    push(&[
        "-qmp",
        &format!("unix:{}/qmp.sock,server=on,wait=off", chan::VMM_DIR),
    ]);
    push(&[
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    a
}

/// Undoes a start that did not finish.
struct Starting {
    children: Vec<std::process::Child>,
    cgroup: Option<cgroup::Cgroup>,
}

impl Drop for Starting {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(cg) = self.cgroup.take() {
            cg.kill_all(None);
            cg.wait_empty(Duration::from_secs(5));
        }
    }
}

fn start(b: &VmBackend, spec: &QubeSpec) -> Result<Box<dyn Instance>, String> {
    let vm = spec
        .vm
        .as_ref()
        .ok_or("no kernel and disks were given for a vm qube")?;
    if spec.uid_base < crate::ns::MIN_UID_BASE || spec.uid_base.checked_add(2).is_none() {
        return Err(format!("uid base {} is not allowed", spec.uid_base));
    }
    for f in ["vmlinuz", "initramfs"] {
        if !vm.kernel_dir.join(f).exists() {
            return Err(format!(
                "kernel {} has no {f}; reinstall it with `bulkhead kernel install`",
                vm.kernel_dir.display()
            ));
        }
    }
    let verdict = b
        .verdict(Some(&vm.kernel_dir))
        .ok_or("the accelerator could not be chosen")?;
    let (qube_uid, vmm_uid) = (spec.uid_base, spec.uid_base + 1);
    let d = dirs(&spec.run_dir);
    for dir in [&d.vmm, &d.channel] {
        // Nothing of an earlier run (stale sockets) may remain.
        let _ = fs::remove_dir_all(dir);
        io(fs::create_dir_all(dir), || {
            format!("create {}", dir.display())
        })?;
    }
    // QEMU (the VMM uid, the qube's group) and the channel helper (the
    // qube's uid and group) meet in vmm/ — sticky, so neither can replace
    // the other's sockets; the relay and the helper in channel/.
    own(&d.vmm, 0, qube_uid, 0o1770)?;
    own(&d.channel, qube_uid, qube_uid, 0o700)?;
    let log = crate::helper::open_console_log(&spec.log)?;
    let mut st = Starting {
        children: Vec::new(),
        cgroup: None,
    };
    let cg = io(
        cgroup::Cgroup::create(
            &crate::ns::cgroup_name(&spec.name, &spec.id),
            (spec.memory_mib + OVERHEAD_MIB) * 1024 * 1024,
            spec.vcpus,
            spec.max_pids,
        ),
        || "create cgroups".into(),
    )?;
    st.cgroup = Some(cg);
    let jail_root = |n: &str| spec.run_dir.join(n);
    // The channel helper first: it waits for QEMU's socket.
    let chan_cfg = chan::ChanConfig {
        jail: JailSpec {
            root: jail_root("jail-chan"),
            binds: vec![
                JailBind {
                    src: d.vmm.clone(),
                    dst: chan::VMM_DIR.into(),
                    writable: true,
                },
                JailBind {
                    src: d.channel.clone(),
                    dst: chan::CHANNEL_DIR.into(),
                    writable: true,
                },
            ],
            kvm: false,
            uid: qube_uid,
            gid: qube_uid,
        },
    };
    let spawn = |mode: &str, cfg: String, st: &mut Starting| -> Result<u32, String> {
        let out = io(log.try_clone(), || "dup the console log".into())?;
        let err = io(log.try_clone(), || "dup the console log".into())?;
        let child = io(
            Command::new(&b.vmm)
                .arg(mode)
                .arg(cfg)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn(),
            || format!("run {}", b.vmm.display()),
        )?;
        let pid = child.id();
        st.children.push(child);
        io(
            st.cgroup.as_ref().ok_or("cgroup vanished")?.add(pid),
            || "join cgroups".into(),
        )?;
        Ok(pid)
    };
    let json = |v: serde_json::Result<String>| v.map_err(|e| e.to_string());
    spawn("chan", json(serde_json::to_string(&chan_cfg))?, &mut st)?;
    let qemu_cfg = QemuConfig {
        jail: JailSpec {
            root: jail_root("jail-qemu"),
            binds: vec![
                JailBind {
                    src: d.vmm.clone(),
                    dst: chan::VMM_DIR.into(),
                    writable: true,
                },
                JailBind {
                    src: vm.kernel_dir.clone(),
                    dst: "/kernel".into(),
                    writable: false,
                },
            ],
            kvm: verdict.accel == Accel::Kvm,
            uid: vmm_uid,
            gid: qube_uid,
        },
        qemu: b.qemu.clone(),
        args: qemu_args(spec, vm, verdict.accel),
        disks: vm.disks.clone(),
    };
    let qemu_pid = spawn("qemu", json(serde_json::to_string(&qemu_cfg))?, &mut st)?;
    let qmp = d.vmm.join("qmp.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match qmp::status(&qmp) {
            Ok(_) => break,
            Err(e) => {
                if let Some(c) = st.children.last_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        return Err(format!(
                            "QEMU exited at once ({status}); see {}",
                            spec.log.display()
                        ));
                    }
                }
                if Instant::now() > deadline {
                    return Err(format!("QEMU's monitor did not answer: {e}"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    if let Some(target) = vm.balloon_mib.filter(|m| *m < spec.memory_mib) {
        // The guest gives memory back down to its `memory` once its balloon
        // driver loads; it may grow again up to `maxmem`.
        if let Err(e) = qmp::command(
            &qmp,
            "balloon",
            Some(serde_json::json!({ "value": target * 1024 * 1024 })),
        ) {
            eprintln!("qube '{}': balloon: {e}", spec.name);
        }
    }
    let qemu = st.children.pop().ok_or("QEMU vanished")?;
    let chan = st.children.pop().ok_or("channel helper vanished")?;
    let cg = st.cgroup.take().ok_or("cgroup vanished")?;
    let qemu_start = crate::process_start_time(qemu_pid);
    // The helper is reaped by a thread; its end is the end of the qube's channel.
    std::thread::spawn(move || {
        let mut chan = chan;
        let _ = chan.wait();
    });
    Ok(Box::new(VmInstance {
        name: spec.name.clone(),
        qemu: Helper::Child(qemu),
        qemu_start,
        cgroup: cg,
        run_dir: spec.run_dir.clone(),
        accel: verdict.accel,
        paused: false,
        exited: None,
        detached: false,
    }))
}

/// What a later daemon needs to re-adopt a `vm` qube.
#[derive(Debug, Serialize, Deserialize)]
struct VmRecord {
    boot_id: String,
    qemu_pid: u32,
    qemu_start: Option<u64>,
    cgroup: cgroup::Record,
    run_dir: PathBuf,
    accel: Accel,
    paused: bool,
}

fn adopt(record: &crate::InstanceRecord) -> Result<Box<dyn Instance>, String> {
    let r: VmRecord = serde_json::from_value(record.data.clone())
        .map_err(|e| format!("unreadable instance record: {e}"))?;
    if r.boot_id != boot_id() {
        return Err("it was started before the last reboot".into());
    }
    let gone = || "its QEMU process is gone".to_string();
    if crate::process_start_time(r.qemu_pid).is_none_or(|s| Some(s) != r.qemu_start) {
        return Err(gone());
    }
    let pidfd = bulkhead_sys::process::pidfd_open(r.qemu_pid)
        .map_err(|e| format!("pidfd_open({}): {e}", r.qemu_pid))?;
    if crate::process_start_time(r.qemu_pid) != r.qemu_start {
        return Err(gone());
    }
    Ok(Box::new(VmInstance {
        name: record.qube.clone(),
        qemu: Helper::Adopted {
            pid: r.qemu_pid,
            pidfd,
        },
        qemu_start: r.qemu_start,
        cgroup: cgroup::Cgroup::from_record(r.cgroup),
        run_dir: r.run_dir,
        accel: r.accel,
        paused: r.paused,
        exited: None,
        detached: false,
    }))
}

/// A running `vm` qube.
pub struct VmInstance {
    name: String,
    qemu: Helper,
    qemu_start: Option<u64>,
    cgroup: cgroup::Cgroup,
    run_dir: PathBuf,
    accel: Accel,
    paused: bool,
    exited: Option<i32>,
    detached: bool,
}

impl VmInstance {
    fn err(&self, what: String) -> HalError {
        HalError::Control {
            qube: self.name.clone(),
            what,
        }
    }

    fn qmp(&self) -> PathBuf {
        dirs(&self.run_dir).vmm.join("qmp.sock")
    }

    fn poll(&mut self) -> Option<i32> {
        if self.exited.is_none() {
            if let Some(code) = self.qemu.try_wait() {
                // The channel helper (and anything else of the qube) goes
                // with QEMU, before the caller releases the qube's storage.
                self.cgroup.kill_all(None);
                if !self.cgroup.wait_empty(Duration::from_secs(10)) {
                    return None;
                }
                self.exited = Some(code);
            }
        }
        self.exited
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        crate::helper::wait_for(timeout, || self.poll())
    }

    /// The accelerator this qube runs on.
    pub fn accel(&self) -> Accel {
        self.accel
    }
}

impl Instance for VmInstance {
    fn init_pid(&self) -> u32 {
        self.qemu.id()
    }

    fn agent_socket(&self) -> PathBuf {
        dirs(&self.run_dir).channel.join(crate::AGENT_SOCKET)
    }

    fn accelerator(&self) -> Option<String> {
        Some(self.accel.name().to_string())
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
        // The agent stops the qube's processes, syncs and powers off, as
        // PID 1 does on SIGTERM under ns.
        let ctl = dirs(&self.run_dir).vmm.join(chan::CONTROL_SOCKET);
        let mut s = std::os::unix::net::UnixStream::connect(&ctl)
            .map_err(|e| self.err(format!("cannot reach the guest's control port: {e}")))?;
        use std::io::Write;
        s.write_all(b"shutdown\n")
            .map_err(|e| self.err(format!("shutdown request: {e}")))
    }

    fn shutdown(&mut self, timeout: Duration) -> Result<RunState, HalError> {
        if let Some(c) = self.poll() {
            return Ok(RunState::Exited(c));
        }
        let _ = self.request_shutdown();
        match self.wait_exit(timeout) {
            Some(c) => Ok(RunState::Exited(c)),
            None => self.kill(),
        }
    }

    fn kill(&mut self) -> Result<RunState, HalError> {
        if let Some(c) = self.poll() {
            return Ok(RunState::Exited(c));
        }
        // QEMU is not reaped yet (poll said so): its pid is still its own.
        let _ = kill(Pid::from_raw(self.qemu.id() as i32), Signal::SIGKILL);
        self.cgroup.kill_all(None);
        self.paused = false;
        match self.wait_exit(Duration::from_secs(10)) {
            Some(c) => Ok(RunState::Exited(c)),
            None => Err(self.err("did not exit 10 s after SIGKILL".into())),
        }
    }

    fn pause(&mut self) -> Result<(), HalError> {
        qmp::command(&self.qmp(), "stop", None).map_err(|e| self.err(format!("pause: {e}")))?;
        self.paused = true;
        Ok(())
    }

    fn unpause(&mut self) -> Result<(), HalError> {
        qmp::command(&self.qmp(), "cont", None).map_err(|e| self.err(format!("unpause: {e}")))?;
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
        let r = VmRecord {
            boot_id: boot_id(),
            qemu_pid: self.qemu.id(),
            qemu_start: self.qemu_start,
            cgroup: self.cgroup.record(),
            run_dir: self.run_dir.clone(),
            accel: self.accel,
            paused: self.paused,
        };
        crate::InstanceRecord {
            backend: "vm".into(),
            qube: self.name.clone(),
            data: serde_json::to_value(r).unwrap_or_default(),
        }
    }

    fn detach(&mut self) {
        self.detached = true;
        self.cgroup.keep();
    }
}

impl Drop for VmInstance {
    fn drop(&mut self) {
        if !self.detached && self.poll().is_none() {
            let _ = self.kill();
        }
    }
}

/// `bulkhead-vmm qemu`: opens the disks, enters the jail, execs QEMU.
/// Returns only on failure (the exit code).
pub fn exec_qemu(cfg: &QemuConfig) -> i32 {
    match exec_qemu_inner(cfg) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("bulkhead-vmm qemu: {e}");
            1
        }
    }
}

/// First descriptor number handed to QEMU.
const FIRST_FD: i32 = 100;

fn exec_qemu_inner(cfg: &QemuConfig) -> Result<std::convert::Infallible, String> {
    // Opened as root, before the jail: QEMU itself never sees a volume path.
    let mut files = Vec::new();
    let mut args = cfg.args.clone();
    let mut next = FIRST_FD;
    for (set, disk) in cfg.disks.iter().enumerate() {
        let set = set + 1;
        let mut modes = vec![false];
        if !disk.read_only {
            // QEMU opens a writable image read-only first, then read-write:
            // the set holds one descriptor of each mode.
            modes.push(true);
        }
        for rw in modes {
            let f = io(
                fs::OpenOptions::new().read(true).write(rw).open(&disk.path),
                || format!("open {}", disk.path.display()),
            )?;
            args.extend(["-add-fd".to_string(), format!("fd={next},set={set}")]);
            files.push((f, next));
            next += 1;
        }
        let id = format!("disk{set}");
        args.extend([
            "-drive".to_string(),
            format!(
                "if=none,id={id},file=/dev/fdset/{set},format=raw,readonly={}",
                if disk.read_only { "on" } else { "off" }
            ),
            "-device".to_string(),
            format!("virtio-blk-device,drive={id},serial={}", disk.serial),
        ]);
    }
    jail::enter(&cfg.jail)?;
    for (f, n) in &files {
        // dup2 leaves the new descriptor without close-on-exec: exactly
        // these reach QEMU (everything else std opened is close-on-exec).
        nix::unistd::dup2(f.as_raw_fd(), *n).map_err(|e| format!("dup2: {e}"))?;
    }
    // Sockets QEMU creates are for the qube's group (the channel helper).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o007));
    let prog = std::ffi::CString::new(cfg.qemu.as_os_str().as_encoded_bytes())
        .map_err(|e| e.to_string())?;
    let mut argv = vec![prog.clone()];
    for a in &args {
        argv.push(std::ffi::CString::new(a.as_str()).map_err(|e| e.to_string())?);
    }
    let env: [std::ffi::CString; 0] = [];
    let e = nix::unistd::execve(&prog, &argv, &env);
    Err(format!("exec {}: {e:?}", cfg.qemu.display()))
}
