//! The qube lifecycle: start, shutdown, kill, pause, unpause, crash
//! detection and re-adoption after a daemon restart.
//!
//! State machine (Qubes' power states; every other transition is refused
//! with Qubes' exception):
//!
//! ```text
//! Halted --Start--> Transient --agent ready--> Running <--Pause/Unpause--> Paused
//! Running|Paused --Shutdown--> Halting --exit or shutdown_timeout+kill--> Halted
//! any running state --Kill, or its processes die--> Halted
//! ```
//!
//! One async lock per qube serialises operations on it; the backend's
//! blocking calls and storage work run on the blocking pool. The power state
//! lives in the published snapshot (set through the writer, not persisted),
//! so queries never wait for a lifecycle operation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_hal::{Backend, Instance, InstanceRecord, QubeSpec, RunState};
use bulkhead_proto::admin::Event;

use crate::error::{ApiError, ApiResult, Exc};
use crate::model::props::{self, Holder};
use crate::model::{App, PowerState, Qube};
use crate::server::Daemon;
use crate::storage::Storage;

/// The program every qube runs as PID 1.
pub const GUEST_INIT: &str = "/usr/bin/bulkhead-agent";
/// First host uid of qube ranges; qube `qid` gets `BASE + qid * RANGE`.
pub const UID_BASE: u32 = 0x1000_0000;
pub const UID_RANGE: u32 = 65536;
/// Most processes in one qube.
pub const MAX_PIDS: u32 = 4096;
/// The vm backend's accelerator verdict: a fact about this host boot (the
/// key inside names the boot and QEMU), shared by every daemon on the host
/// so only the first vm start after a reboot pays for the trial.
pub const ACCEL_CACHE: &str = "/run/bulkhead-vm-accel.json";
/// How often running qubes are checked for an unexpected exit.
const MONITOR_PERIOD: Duration = Duration::from_millis(100);

/// Where the runtime's pieces are.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// The `ns` backend's helper.
    pub nsinit: PathBuf,
    /// The `vm` backend's helper (jailed QEMU, guest channel).
    pub vmm: PathBuf,
    /// The per-qube qrexec relay.
    pub relay: PathBuf,
    /// qrexec policy directories (`*.policy`), in priority order.
    pub policy_dirs: Vec<PathBuf>,
}

/// What the lifecycle needs from the host.
pub struct Runtime {
    pub storage: Storage,
    /// qrexec policy, for calls between qubes.
    pub policy: crate::qrexec::PolicyStore,
    /// The user's prompt for `ask` rules.
    pub ask: crate::qrexec::AskAgent,
    relay_bin: PathBuf,
    backends: Vec<Box<dyn Backend>>,
    run_dir: PathBuf,
    log_dir: PathBuf,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    /// One-time tokens of `admin.vm.volume.CloneFrom`: token → (qube, volume, issued).
    pub clone_tokens: Mutex<HashMap<String, (String, String, Instant)>>,
}

/// A qube's runtime slot.
#[derive(Default)]
pub struct Slot {
    inst: Option<Box<dyn Instance>>,
    /// A shutdown was asked for: an exit now is expected, not a crash.
    stopping: bool,
}

impl Runtime {
    /// Sets up storage, backends and policy.
    pub fn new(cfg: RuntimeConfig) -> std::io::Result<Runtime> {
        let (state_dir, run_dir) = (cfg.state_dir.as_path(), cfg.run_dir.as_path());
        check_reachable(run_dir)?;
        let storage = Storage::open(state_dir, run_dir)?;
        let log_dir = state_dir.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        let helpers = bulkhead_hal::Helpers {
            nsinit: cfg.nsinit,
            vmm: cfg.vmm,
            accel_cache: PathBuf::from(ACCEL_CACHE),
        };
        let backends = ["vm", "ns"]
            .iter()
            .map(|m| bulkhead_hal::pick(m, &helpers).map_err(std::io::Error::other))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Runtime {
            storage,
            policy: crate::qrexec::PolicyStore::new(cfg.policy_dirs),
            ask: crate::qrexec::AskAgent::default(),
            relay_bin: cfg.relay,
            backends,
            run_dir: run_dir.to_path_buf(),
            log_dir,
            slots: Mutex::new(HashMap::new()),
            clone_tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Every backend built in, for `bulkhead ls` and diagnostics.
    pub fn backends(&self) -> &[Box<dyn Backend>] {
        &self.backends
    }

    fn backend(&self, name: &str) -> Option<&dyn Backend> {
        self.backends
            .iter()
            .find(|b| b.name() == name)
            .map(|b| b.as_ref())
    }

    /// The lock of one qube's slot.
    pub fn slot(&self, name: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The accelerator a running `vm` qube uses (`kvm`, `tcg`); `None` for
    /// `ns` qubes, halted ones, or while a start or stop holds the slot.
    pub fn accelerator(&self, name: &str) -> Option<String> {
        let slot = self.slot(name);
        let g = slot.try_lock().ok()?;
        g.inst.as_ref()?.accelerator()
    }

    /// Where the vm backend caches its accelerator verdict (per host boot).
    pub fn accel_cache(&self) -> PathBuf {
        PathBuf::from(ACCEL_CACHE)
    }

    /// Console log of a qube.
    pub fn console_log(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("console-{name}.log"))
    }

    /// `qrexec.<name>`: a link to the agent socket of a running qube (as
    /// Qubes' qrexec-daemon makes them).
    pub fn qrexec_link(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("qrexec.{name}"))
    }

    /// The socket relays ask for policy decisions on.
    pub fn policy_socket(&self) -> PathBuf {
        self.run_dir.join("qrexec-policy.sock")
    }

    /// The socket a prompt agent (`bulkhead ask-agent`) registers on.
    pub fn ask_socket(&self) -> PathBuf {
        self.run_dir.join("ask.sock")
    }

    fn relay_record(&self, name: &str) -> PathBuf {
        self.storage.runtime_dir(name).join("relay.json")
    }

    /// Starts the qube's qrexec relay as the qube's own host uid (the base
    /// of its range: a compromised relay holds nothing the qube's root does
    /// not), listening in the qube's guest channel.
    fn start_relay(&self, name: &str, channel: &Path, uid: u32) -> std::io::Result<u32> {
        use std::os::unix::process::CommandExt;
        self.stop_relay(name);
        let log_path = self.log_dir.join(format!("relay-{name}.log"));
        // The relay rate-limits itself; the file is still kept bounded.
        if std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 16 << 20) {
            let _ = std::fs::rename(&log_path, log_path.with_extension("log.old"));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        // An empty directory the relay builds its own root on.
        let jail = self.storage.runtime_dir(name).join("relay-root");
        std::fs::create_dir_all(&jail)?;
        let child = std::process::Command::new(&self.relay_bin)
            .arg("--listen")
            .arg(channel.join("relay.sock"))
            .arg("--policy")
            .arg(self.policy_socket())
            .arg("--qube")
            .arg(name)
            .arg("--jail")
            .arg(&jail)
            .env_clear()
            .uid(uid)
            .gid(uid)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()?;
        let pid = child.id();
        let rec = serde_json::json!({"pid": pid, "start": bulkhead_hal::process_start_time(pid)});
        std::fs::write(self.relay_record(name), rec.to_string())?;
        // Reaped by a thread: the relay is not waited for anywhere else.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(pid)
    }

    /// Stops the qube's relay (if the recorded process is still that relay).
    fn stop_relay(&self, name: &str) {
        let path = self.relay_record(name);
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let _ = std::fs::remove_file(&path);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return;
        };
        let (Some(pid), start) = (v["pid"].as_u64(), v["start"].as_u64()) else {
            return;
        };
        if start.is_some() && bulkhead_hal::process_start_time(pid as u32) == start {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Whether the recorded relay of a qube is alive.
    fn relay_alive(&self, name: &str) -> bool {
        std::fs::read(self.relay_record(name))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| {
                let (pid, start) = (v["pid"].as_u64(), v["start"].as_u64());
                pid.is_some()
                    && start.is_some()
                    && bulkhead_hal::process_start_time(pid.unwrap_or(0) as u32) == start
            })
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.storage.runtime_dir(name).join("instance.json")
    }

    fn save_record(&self, rec: &InstanceRecord) -> std::io::Result<()> {
        let path = self.record_path(&rec.qube);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)
    }

    /// The kernels pool (`linux-kernel`): `<dir>/<version>/{vmlinuz,initramfs}`.
    pub fn kernels_dir(&self) -> PathBuf {
        self.storage
            .pool_path()
            .parent()
            .map(|p| p.join("linux-kernel"))
            .unwrap_or_default()
    }

    /// The kernel directory a `vm` qube boots, from its `kernel` property.
    fn kernel_dir(&self, app: &App, name: &str) -> ApiResult<PathBuf> {
        let k = props::value(app, Holder::Vm(name), "kernel")?
            .as_str()
            .unwrap_or("")
            .to_string();
        if k.is_empty() {
            return Err(ApiError::new(
                Exc::QubesVMError,
                format!(
                    "qube '{name}' has no kernel to boot (virt_mode=vm); install one with                      `bulkhead kernel install`, or set one with `bulkhead prefs {name} kernel VERSION`"
                ),
            ));
        }
        let dir = self.kernels_dir().join(&k);
        if !dir.join("vmlinuz").exists() || !dir.join("initramfs").exists() {
            return Err(ApiError::new(
                Exc::QubesVMError,
                format!(
                    "qube '{name}': kernel '{k}' is not installed in {}; see `bulkhead kernel list`,                      or install one with `bulkhead kernel install`",
                    self.kernels_dir().display()
                ),
            ));
        }
        Ok(dir)
    }

    fn spec(
        &self,
        app: &App,
        q: &Qube,
        prepared: crate::storage::Prepared,
        vm: bool,
    ) -> ApiResult<QubeSpec> {
        let int = |p: &str| -> ApiResult<i64> {
            Ok(props::value(app, Holder::Vm(&q.name), p)?
                .as_int()
                .unwrap_or(0))
        };
        let memory = int("memory")?;
        let maxmem = int("maxmem")?;
        let uid_base = q
            .qid
            .checked_mul(UID_RANGE)
            .and_then(|o| o.checked_add(UID_BASE))
            .filter(|b| b.checked_add(UID_RANGE).is_some())
            .ok_or_else(|| {
                ApiError::new(
                    Exc::QubesVMError,
                    format!("qid {} has no free uid range", q.qid),
                )
            })?;
        let vm_spec = if vm {
            let overlay_root = matches!(prepared.root, bulkhead_hal::RootFs::Overlay { .. });
            Some(bulkhead_hal::VmSpec {
                kernel_dir: self.kernel_dir(app, &q.name)?,
                kernelopts: props::value(app, Holder::Vm(&q.name), "kernelopts")?
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                disks: prepared.disks.clone(),
                overlay_root,
                balloon_mib: (maxmem > memory).then_some(memory.max(64) as u64),
            })
        } else {
            None
        };
        if let (false, bulkhead_hal::RootFs::Overlay { upper, .. }) = (vm, &prepared.root) {
            // The volatile volume holding the overlay layers: only the
            // qube's root (and host root) may enter it. (Not the upper dir
            // itself: its mode is the mode of the qube's "/".)
            if let Some(vol) = upper.parent() {
                use std::os::unix::fs::PermissionsExt;
                let fail = |e: std::io::Error| {
                    ApiError::new(Exc::StoragePoolException, format!("{}: {e}", vol.display()))
                };
                std::os::unix::fs::chown(vol, Some(uid_base), Some(uid_base)).map_err(fail)?;
                std::fs::set_permissions(vol, std::fs::Permissions::from_mode(0o700))
                    .map_err(fail)?;
            }
        }
        Ok(QubeSpec {
            name: q.name.clone(),
            id: q.uuid.simple().to_string(),
            root: prepared.root,
            binds: prepared.binds,
            run_dir: self.storage.runtime_dir(&q.name).join("run"),
            init: vec![GUEST_INIT.into()],
            uid_base,
            uid_count: UID_RANGE,
            memory_mib: if vm {
                // A guest kernel needs this much to boot at all.
                maxmem.max(memory).max(64) as u64
            } else {
                maxmem.max(memory).max(32) as u64
            },
            vcpus: int("vcpus")?.clamp(1, 1024) as u32,
            max_pids: MAX_PIDS,
            log: self.console_log(&q.name),
            vm: vm_spec,
        })
    }
}

/// A qube's root (an unprivileged host uid) resolves its mount sources
/// under the run dir while it builds its file system, so every ancestor must
/// be searchable by others.
fn check_reachable(run_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(run_dir)?;
    let abs = std::fs::canonicalize(run_dir)?;
    for dir in abs.ancestors() {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(std::io::Error::other(format!(
                "{} (mode {:o}) is not searchable by other users, but qubes run as \
                 unprivileged uids and must reach the run dir {} through it; \
                 `chmod o+x {}` or pick a --run-dir / --socket elsewhere (e.g. under /run)",
                dir.display(),
                mode & 0o7777,
                run_dir.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

fn not_halted(name: &str) -> ApiError {
    ApiError::new(
        Exc::QubesVMNotHaltedError,
        format!("Domain is running: '{name}'; shut it down first"),
    )
}

fn not_started(name: &str) -> ApiError {
    ApiError::new(
        Exc::QubesVMNotStartedError,
        format!("Domain is powered off: '{name}'"),
    )
}

fn event(subject: &str, name: &str, kwargs: Vec<(String, String)>) -> Event {
    Event {
        subject: subject.to_string(),
        event: name.to_string(),
        kwargs,
    }
}

fn hal_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(Exc::QubesVMError, e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(Exc::QubesException, format!("internal task failed: {e}")))
}

impl Daemon {
    fn rt(&self) -> ApiResult<&Arc<Runtime>> {
        self.runtime().ok_or_else(|| {
            ApiError::new(
                Exc::QubesException,
                "this bulkheadd runs without a qube runtime (--no-runtime); it cannot run qubes",
            )
        })
    }

    /// `admin.vm.Start`: returns once the qube's agent answers.
    pub async fn vm_start(self: &Arc<Self>, name: &str) -> ApiResult<()> {
        let rt = self.rt()?.clone();
        let slot = rt.slot(name);
        let mut guard = slot.lock().await;
        let app = self.snapshot();
        let q = app.vm(name)?.clone();
        if q.class == crate::model::Class::AdminVM {
            return Err(ApiError::new(
                Exc::QubesVMError,
                "dom0 is the host; it is always running",
            ));
        }
        if guard.inst.is_some() || q.power != PowerState::Halted {
            return Err(not_halted(name));
        }
        let mode = props::value(&app, Holder::Vm(name), "virt_mode")?
            .as_str()
            .unwrap_or("vm")
            .to_string();
        match rt.backend(&mode).map(|b| b.capabilities().reason) {
            None => {
                return Err(ApiError::new(
                    Exc::QubesVMError,
                    format!("qube '{name}' has virt_mode={mode}, which is neither vm nor ns"),
                ))
            }
            Some(Some(why)) => {
                let other = if mode == "vm" { "ns" } else { "vm" };
                return Err(ApiError::new(
                    Exc::QubesVMError,
                    format!(
                        "qube '{name}' cannot start: the {mode} backend is not usable here: {why} \
                         (or use the other backend: `bulkhead prefs {name} virt_mode {other}`)"
                    ),
                ));
            }
            Some(None) => {}
        }
        let timeout = props::value(&app, Holder::Vm(name), "qrexec_timeout")?
            .as_int()
            .unwrap_or(60)
            .clamp(1, 3600) as u64;
        self.emit(event(name, "domain-pre-start", vec![]));
        self.set_power(name, PowerState::Transient).await?;
        let (rt2, app2, q2) = (rt.clone(), app.clone(), q.clone());
        let started = blocking(move || -> ApiResult<Box<dyn Instance>> {
            let t0 = Instant::now();
            let as_disks = mode == "vm";
            let prepared = rt2.storage.start(&app2, &q2, as_disks).map_err(|e| {
                ApiError::new(Exc::StoragePoolException, e.to_string())
            })?;
            let t_storage = t0.elapsed();
            let created = prepared.created.clone();
            // Until the qube has run, failing means undoing the storage start
            // without committing anything (no revision pushed out).
            let abort = |e: ApiError| {
                rt2.storage.abort_start(&app2, &q2, &created);
                Err(e)
            };
            let spec = match rt2.spec(&app2, &q2, prepared, as_disks) {
                Ok(s) => s,
                Err(e) => return abort(e),
            };
            let Some(backend) = rt2.backend(&mode) else {
                return abort(hal_err("backend vanished"));
            };
            let mut inst = match backend.start(&spec) {
                Ok(i) => i,
                Err(e) => return abort(hal_err(e)),
            };
            // Recorded before anything else can fail or take long: a daemon
            // that dies from here on finds the qube and re-adopts it.
            if let Err(e) = rt2.save_record(&inst.record()) {
                let _ = inst.kill();
                drop(inst);
                return abort(ApiError::new(
                    Exc::QubesVMError,
                    format!("cannot save the instance record of '{}': {e}", q2.name),
                ));
            }
            let channel = inst
                .agent_socket()
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let relay = rt2
                .start_relay(&q2.name, &channel, spec.uid_base)
                .and_then(|pid| inst.add_process(pid).map_err(std::io::Error::other));
            if let Err(e) = relay {
                rt2.stop_relay(&q2.name);
                let _ = inst.kill();
                drop(inst);
                let _ = std::fs::remove_file(rt2.record_path(&q2.name));
                return abort(ApiError::new(
                    Exc::QubesVMError,
                    format!("cannot start the qrexec relay of '{}': {e}", q2.name),
                ));
            }
            let t_backend = t0.elapsed();
            let ready =
                bulkhead_hal::guest::wait_ready(&inst.agent_socket(), Duration::from_secs(timeout));
            tracing::debug!(
                "qube '{}': storage {:?}, backend {:?}, agent ready {:?}",
                q2.name,
                t_storage,
                t_backend - t_storage,
                t0.elapsed() - t_backend
            );
            if let Err(e) = ready {
                let _ = inst.kill();
                drop(inst);
                rt2.stop_relay(&q2.name);
                let _ = std::fs::remove_file(rt2.record_path(&q2.name));
                // The qube ran: keep what it wrote.
                let _ = rt2.storage.stop(&app2, &q2);
                return Err(ApiError::new(
                    Exc::QubesVMError,
                    format!(
                        "Cannot connect to qrexec agent of '{}' for {timeout} seconds ({e}); see {}",
                        q2.name,
                        spec.log.display()
                    ),
                ));
            }
            let link = rt2.qrexec_link(&q2.name);
            let _ = std::fs::remove_file(&link);
            let _ = std::os::unix::fs::symlink(inst.agent_socket(), &link);
            Ok(inst)
        })
        .await
        .and_then(|r| r);
        match started {
            Ok(inst) => {
                guard.inst = Some(inst);
                // Under the lock: nothing can finish the qube in between.
                self.set_power(name, PowerState::Running).await?;
                drop(guard);
                self.emit(event(
                    name,
                    "domain-start",
                    vec![("start_guid".into(), "True".into())],
                ));
                self.clone().monitor(name.to_string());
                Ok(())
            }
            Err(e) => {
                let _ = self.set_power(name, PowerState::Halted).await;
                drop(guard);
                self.emit(event(
                    name,
                    "domain-start-failed",
                    vec![("reason".into(), e.message.clone())],
                ));
                tracing::warn!("qube '{name}' failed to start: {}", e.message);
                Err(e)
            }
        }
    }

    /// Watches a running qube; when it stops by itself, cleans up and says so.
    fn monitor(self: Arc<Self>, name: String) {
        tokio::spawn(async move {
            let Some(rt) = self.runtime().cloned() else {
                return;
            };
            let slot = rt.slot(&name);
            loop {
                tokio::time::sleep(MONITOR_PERIOD).await;
                let mut g = slot.lock().await;
                let Some(inst) = g.inst.as_mut() else {
                    return; // stopped by someone else, who cleaned up
                };
                if let RunState::Exited(code) = inst.state() {
                    if g.stopping {
                        tracing::info!("qube '{name}' shut down");
                    } else {
                        tracing::warn!(
                            "qube '{name}' stopped unexpectedly (init exit status {code}); see {}",
                            rt.console_log(&name).display()
                        );
                    }
                    self.finish(&rt, &name, &mut g).await;
                    return;
                }
            }
        });
    }

    /// After a qube's processes are gone: storage stop, power Halted, events.
    async fn finish(&self, rt: &Arc<Runtime>, name: &str, slot: &mut Slot) {
        slot.inst = None;
        slot.stopping = false;
        let app = self.snapshot();
        if let Ok(q) = app.vm(name) {
            let (rt2, app2, q2) = (rt.clone(), app.clone(), q.clone());
            let r = blocking(move || {
                rt2.stop_relay(&q2.name);
                let _ = std::fs::remove_file(rt2.qrexec_link(&q2.name));
                let _ = std::fs::remove_file(rt2.record_path(&q2.name));
                rt2.storage.stop(&app2, &q2)
            })
            .await;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("qube '{name}': stopping its storage failed: {e}; it is retried at the next start"),
                Err(e) => tracing::error!("qube '{name}': {e}"),
            }
        }
        let _ = self.set_power(name, PowerState::Halted).await;
        self.emit(event(name, "domain-shutdown", vec![]));
        self.emit(event(name, "domain-stopped", vec![]));
        // A disposable is gone once it stops (Qubes' auto_cleanup).
        if let Ok(q) = app.vm(name) {
            let cleanup = q.class == crate::model::Class::DispVM
                && props::value(&app, Holder::Vm(name), "auto_cleanup")
                    .map(|v| v.as_bool())
                    .unwrap_or(false);
            if cleanup {
                let ctx = crate::api::Ctx {
                    source: crate::model::DOM0.into(),
                    dest: name.into(),
                };
                match self.write_call(&ctx, &crate::api::Call::Remove).await {
                    Ok(_) => {
                        let (rt2, q2) = (rt.clone(), q.clone());
                        let _ = blocking(move || rt2.storage.remove(&q2)).await;
                    }
                    Err(e) => tracing::warn!("disposable '{name}' not removed: {}", e.message),
                }
            }
        }
    }

    /// Creates a disposable from `template` (an AppVM with
    /// `template_for_dispvms`), named `dispN`, not started.
    pub async fn create_disposable(self: &Arc<Self>, template: &str) -> ApiResult<String> {
        let app = self.snapshot();
        let t = app.vm(template)?;
        if !props::value(&app, Holder::Vm(template), "template_for_dispvms")?.as_bool() {
            return Err(ApiError::value(format!(
                "'{template}' cannot be a disposable template: set its template_for_dispvms to True"
            )));
        }
        let label = props::value(&app, Holder::Vm(&t.name), "label")?.to_text();
        for _ in 0..100 {
            let name = format!("disp{}", rand::random::<u32>() % 9000 + 1000);
            if app.qubes.contains_key(&name) {
                continue;
            }
            let ctx = crate::api::Ctx {
                source: crate::model::DOM0.into(),
                dest: crate::model::DOM0.into(),
            };
            let call = crate::api::Call::Create(crate::api::CreateArgs {
                class: crate::model::Class::DispVM,
                template: Some(template.to_string()),
                name: name.clone(),
                label: label.clone(),
                pools: Default::default(),
            });
            match self.write_call(&ctx, &call).await {
                Ok(_) => {
                    // Removed when it stops, as Qubes' disposables.
                    let set = crate::api::Call::PropertySet(
                        crate::api::Target::Vm,
                        "auto_cleanup".into(),
                        b"True".to_vec(),
                    );
                    let vctx = crate::api::Ctx {
                        source: crate::model::DOM0.into(),
                        dest: name.clone(),
                    };
                    self.write_call(&vctx, &set).await?;
                    return Ok(name);
                }
                Err(e) if e.exc == Exc::QubesVMAlreadyExistsError => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::new(
            Exc::QubesException,
            "no free disposable name",
        ))
    }

    /// `admin.vm.Shutdown[+force][+wait]`.
    pub async fn vm_shutdown(
        self: &Arc<Self>,
        name: &str,
        force: bool,
        wait: bool,
    ) -> ApiResult<()> {
        let rt = self.rt()?.clone();
        let app = self.snapshot();
        let q = app.vm(name)?;
        if q.power == PowerState::Halted {
            return Err(not_started(name));
        }
        if !force {
            let users: Vec<String> = app
                .qubes
                .values()
                .filter(|o| o.power != PowerState::Halted && o.name != name)
                .filter(|o| {
                    props::value(&app, Holder::Vm(&o.name), "netvm")
                        .ok()
                        .and_then(|v| v.as_vm().map(|n| n == name))
                        .unwrap_or(false)
                })
                .map(|o| o.name.clone())
                .collect();
            if !users.is_empty() {
                return Err(ApiError::new(
                    Exc::QubesVMError,
                    format!(
                        "There are other VMs connected to this VM: {}; shut them down first or use --force",
                        users.join(", ")
                    ),
                ));
            }
        }
        let timeout = props::value(&app, Holder::Vm(name), "shutdown_timeout")?
            .as_int()
            .unwrap_or(60)
            .clamp(0, 3600) as u64;
        let slot = rt.slot(name);
        {
            let mut g = slot.lock().await;
            let Some(inst) = g.inst.as_mut() else {
                return Err(not_started(name));
            };
            self.emit(event(name, "domain-pre-shutdown", vec![]));
            if matches!(inst.state(), RunState::Paused) {
                inst.unpause().map_err(hal_err)?;
            }
            inst.request_shutdown().map_err(hal_err)?;
            g.stopping = true;
            self.set_power(name, PowerState::Halting).await?;
        }
        let d = self.clone();
        let name2 = name.to_string();
        let waiter = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(timeout);
            loop {
                {
                    let mut g = slot.lock().await;
                    let Some(inst) = g.inst.as_mut() else {
                        return Ok(()); // killed meanwhile
                    };
                    if let RunState::Exited(_) = inst.state() {
                        d.finish(&rt, &name2, &mut g).await;
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        tracing::warn!(
                            "qube '{name2}' did not shut down within {timeout} s; killing it"
                        );
                        d.kill_locked(&rt, &name2, &mut g).await?;
                        return Err(ApiError::new(
                            Exc::QubesVMShutdownTimeoutError,
                            format!(
                                "Domain shutdown timed out: '{name2}' (killed after {timeout} s)"
                            ),
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        if wait {
            waiter
                .await
                .map_err(|e| ApiError::new(Exc::QubesException, e.to_string()))??;
        }
        Ok(())
    }

    /// `admin.vm.Kill`.
    pub async fn vm_kill(self: &Arc<Self>, name: &str) -> ApiResult<()> {
        let rt = self.rt()?.clone();
        self.snapshot().vm(name)?;
        let slot = rt.slot(name);
        let mut g = slot.lock().await;
        if g.inst.is_none() {
            return Err(not_started(name));
        }
        self.kill_locked(&rt, name, &mut g).await
    }

    /// Kills the qube in a locked slot; its storage is released only once
    /// the backend confirms nothing of it is left.
    async fn kill_locked(&self, rt: &Arc<Runtime>, name: &str, g: &mut Slot) -> ApiResult<()> {
        let Some(mut inst) = g.inst.take() else {
            return Ok(());
        };
        let (inst, r) = blocking(move || {
            let r = inst.kill();
            (inst, r)
        })
        .await?;
        match r {
            Ok(_) => {
                drop(inst);
                self.finish(rt, name, g).await;
                Ok(())
            }
            Err(e) => {
                // Still there: keep it (and its storage) and say so.
                g.inst = Some(inst);
                Err(hal_err(e))
            }
        }
    }

    /// `admin.vm.Pause` / `admin.vm.Unpause`.
    pub async fn vm_pause(self: &Arc<Self>, name: &str, pause: bool) -> ApiResult<()> {
        let rt = self.rt()?.clone();
        let q_power = self.snapshot().vm(name)?.power;
        let slot = rt.slot(name);
        let mut g = slot.lock().await;
        let Some(inst) = g.inst.as_mut() else {
            return Err(not_started(name));
        };
        match (pause, q_power) {
            (true, PowerState::Running) => inst.pause().map_err(hal_err)?,
            (false, PowerState::Paused) => inst.unpause().map_err(hal_err)?,
            (true, _) => {
                return Err(ApiError::new(
                    Exc::QubesVMNotRunningError,
                    format!("Domain is not running: '{name}' (it is {})", q_power.name()),
                ))
            }
            (false, _) => {
                return Err(ApiError::new(
                    Exc::QubesVMNotPausedError,
                    format!("Domain is not paused: '{name}'"),
                ))
            }
        }
        let _ = rt.save_record(&inst.record());
        let (state, ev) = if pause {
            (PowerState::Paused, "domain-paused")
        } else {
            (PowerState::Running, "domain-unpaused")
        };
        self.set_power(name, state).await?;
        drop(g);
        self.emit(event(name, ev, vec![]));
        Ok(())
    }

    /// At daemon start, before the Admin API is served (so no call can race
    /// it): re-adopts qubes that kept running; for the rest, makes sure
    /// nothing of them is left running, then stops their storage (commit
    /// included, so nothing is lost).
    pub async fn recover(self: &Arc<Self>) {
        let Some(rt) = self.runtime().cloned() else {
            return;
        };
        let app = self.snapshot();
        for q in app
            .qubes
            .values()
            .filter(|q| q.class != crate::model::Class::AdminVM)
        {
            let slot = rt.slot(&q.name);
            let mut g = slot.lock().await;
            let path = rt.record_path(&q.name);
            let rec: Option<InstanceRecord> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            // A disposable's call died with the previous daemon: it goes.
            let disposable = q.class == crate::model::Class::DispVM
                && props::value(&app, Holder::Vm(&q.name), "auto_cleanup")
                    .map(|v| v.as_bool())
                    .unwrap_or(false);
            let rec = rec.filter(|_| !disposable);
            let adopted = rec.and_then(|rec| {
                let backend = rt.backend(&rec.backend)?;
                match backend.adopt(&rec) {
                    Ok(i) => Some(i),
                    Err(e) => {
                        tracing::warn!("{e}; cleaning up after it");
                        None
                    }
                }
            });
            if let Some(mut inst) = adopted {
                if !rt.relay_alive(&q.name) {
                    let channel = inst
                        .agent_socket()
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default();
                    let uid = UID_BASE + q.qid * UID_RANGE;
                    match rt.start_relay(&q.name, &channel, uid) {
                        Ok(pid) => {
                            let _ = inst.add_process(pid);
                        }
                        Err(e) => {
                            tracing::error!(
                                "qube '{}': cannot restart its qrexec relay: {e}",
                                q.name
                            )
                        }
                    }
                }
                let paused = matches!(inst.state(), RunState::Paused);
                g.inst = Some(inst);
                let state = if paused {
                    PowerState::Paused
                } else {
                    PowerState::Running
                };
                let _ = self.set_power(&q.name, state).await;
                drop(g);
                tracing::info!("re-adopted running qube '{}'", q.name);
                self.clone().monitor(q.name.clone());
                continue;
            }
            let (rt2, app2, q2) = (rt.clone(), app.clone(), q.clone());
            let r = blocking(move || {
                // A qube that runs without a usable record (its daemon died
                // mid-start) must be gone before its volumes are committed.
                let id = q2.uuid.simple().to_string();
                if !rt2
                    .backends()
                    .iter()
                    .all(|b| b.reap_leftovers(&q2.name, &id))
                {
                    return Err(format!(
                        "processes of qube '{}' survive SIGKILL; its volumes are left as they are",
                        q2.name
                    ));
                }
                rt2.stop_relay(&q2.name);
                let _ = std::fs::remove_file(rt2.record_path(&q2.name));
                let _ = std::fs::remove_file(rt2.qrexec_link(&q2.name));
                let r = rt2.storage.stop(&app2, &q2).map_err(|e| e.to_string());
                // The guest channel and staging mounts of a lost instance.
                rt2.storage.unmount_leftovers(&q2.name);
                r
            })
            .await;
            match r {
                Ok(Ok(())) => {
                    if disposable {
                        let ctx = crate::api::Ctx {
                            source: crate::model::DOM0.into(),
                            dest: q.name.clone(),
                        };
                        if self
                            .write_call(&ctx, &crate::api::Call::Remove)
                            .await
                            .is_ok()
                        {
                            let (rt2, q2) = (rt.clone(), q.clone());
                            let _ = blocking(move || rt2.storage.remove(&q2)).await;
                            tracing::info!(
                                "removed disposable '{}' left by the previous daemon",
                                q.name
                            );
                        }
                    }
                }
                Ok(Err(e)) => tracing::error!("qube '{}': cleanup failed: {e}", q.name),
                Err(e) => tracing::error!("qube '{}': {}", q.name, e.message),
            }
        }
    }

    /// Starts every qube with `autostart` set that is halted.
    pub async fn autostart(self: &Arc<Self>) {
        let app = self.snapshot();
        let auto: Vec<String> = app
            .qubes
            .values()
            .filter(|q| {
                props::value(&app, Holder::Vm(&q.name), "autostart")
                    .map(|v| v.as_bool())
                    .unwrap_or(false)
            })
            .map(|q| q.name.clone())
            .collect();
        for name in auto {
            if self.snapshot().vm(&name).map(|q| q.power) != Ok(PowerState::Halted) {
                continue;
            }
            match self.vm_start(&name).await {
                Ok(()) => tracing::info!("autostarted '{name}'"),
                Err(e) => tracing::error!("autostart of '{name}' failed: {}", e.message),
            }
        }
    }

    /// At daemon exit: leaves every qube running for the next daemon.
    pub async fn detach_all(&self) {
        let Some(rt) = self.runtime().cloned() else {
            return;
        };
        let slots: Vec<_> = rt
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for s in slots {
            if let Some(inst) = s.lock().await.inst.as_mut() {
                inst.detach();
            }
        }
    }

    /// Whether a qube's slot holds a running instance (for volume operations).
    pub async fn with_halted<T>(
        self: &Arc<Self>,
        name: &str,
        f: impl FnOnce(&Runtime, &App, &Qube) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T>
    where
        T: Send + 'static,
    {
        let rt = self.rt()?.clone();
        let slot = rt.slot(name);
        let g = slot.lock().await;
        let app = self.snapshot();
        let q = app.vm(name)?.clone();
        if g.inst.is_some() || q.power != PowerState::Halted {
            return Err(not_halted(name));
        }
        let r = blocking(move || f(&rt, &app, &q)).await?;
        drop(g);
        r
    }
}
