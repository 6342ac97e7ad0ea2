//! The conformance suite: every lifecycle and isolation scenario, end to
//! end (a real `bulkheadd`, the real `bulkhead` CLI, a minimal template
//! built from busybox-static and the agent, real qubes), run once per
//! backend built in. Each scenario is a function of the `virt_mode`;
//! [`conformance!`] instantiates it per backend: every scenario on `ns`, and
//! on `vm` (QEMU; under TCG on hosts without usable KVM, ~2-3 s per boot)
//! every scenario whose behaviour can differ there — the storage-only ones
//! (revert, resize) are the same code on both.
//!
//! Needs root, loop devices, mkfs.ext4, /bin/busybox (busybox-static) and the
//! workspace's binaries (`cargo test --workspace` builds them); `vm` also
//! needs QEMU and a Debian kernel package (`$BULKHEAD_KERNEL_DEB`, else
//! fetched once with `apt-get download`). Each test prints why it skips
//! otherwise. Qube names carry a per-test prefix because
//! cgroups are named after qubes and tests run in parallel.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Env {
    d: common::Daemon,
    cli: PathBuf,
    tpl: String,
    /// Prefix of this test's qube names (backend + scenario).
    tag: String,
    /// `ns` or `vm`.
    mode: String,
}

fn missing(mode: &str) -> Option<String> {
    let bin = common::daemon_bin();
    let need_bins = [
        "bulkhead",
        "bulkhead-agent",
        "bulkhead-nsinit",
        "bulkhead-vmm",
    ];
    if mode == "vm" {
        if !Path::new(bulkhead_hal::vm::QEMU).exists() {
            return Some("QEMU missing (apt-get install qemu-system-x86)".into());
        }
        if let Err(e) = kernel_deb() {
            return Some(e);
        }
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    for p in ["/dev/loop-control", "/bin/busybox"] {
        if !Path::new(p).exists() {
            return Some(format!("{p} missing (apt-get install busybox-static)"));
        }
    }
    if Command::new("mkfs.ext4").arg("-V").output().is_err() {
        return Some("mkfs.ext4 missing".into());
    }
    for b in need_bins {
        if !bin.with_file_name(b).exists() {
            return Some(format!("{b} not built (run cargo test --workspace)"));
        }
    }
    None
}

macro_rules! env_or_skip {
    ($tag:expr, $mode:expr) => {
        match missing($mode) {
            Some(why) => {
                eprintln!("SKIPPED: {why}");
                return;
            }
            None => Env::new(&format!("{}{}", $mode, $tag), $mode),
        }
    };
}

/// One `#[test]` per scenario and backend: `both` run on `ns` and `vm`,
/// `ns_only` on `ns` (storage-only scenarios, the same code on `vm`; the
/// host-side bind of the private volume, which `vm` never does), `vm_only`
/// on `vm`.
macro_rules! conformance {
    (both: [$($b:ident),* $(,)?], ns_only: [$($n:ident),* $(,)?], vm_only: [$($v:ident),* $(,)?] $(,)?) => {
        mod ns {
            $( #[test] fn $b() { super::$b("ns") } )*
            $( #[test] fn $n() { super::$n("ns") } )*
        }
        mod vm {
            $( #[test] fn $b() { super::$b("vm") } )*
            $( #[test] fn $v() { super::$v("vm") } )*
        }
    };
}

conformance!(
    both: [
        template_update_reaches_appvm_at_restart_root_writes_vanish_private_persists,
        qubes_cannot_see_each_others_files_processes_or_network,
        root_in_a_qube_cannot_load_modules_see_the_host_mount_disks_or_write_outside,
        a_qube_over_its_memory_limit_is_contained,
        daemon_restart_readopts_running_qubes_and_autostart_starts_qubes,
        kill_9_of_a_qubes_init_is_noticed_and_reported,
        lifecycle_state_machine_and_qubes_exceptions,
        run_streams_stdin_and_output_and_clone_copies_volumes,
        qrexec_calls_between_qubes_follow_policy,
        admin_calls_and_dom0_services_from_qubes_follow_policy,
        qvm_copy_delivers_trees_and_refuses_hostile_streams,
        calls_to_dispvm_run_in_a_fresh_disposable_that_is_then_removed,
    ],
    ns_only: [
        revert_restores_the_previous_private_revision,
        symlinks_planted_in_the_private_volume_are_not_followed_by_the_host,
    ],
    vm_only: [
        the_vmm_runs_jailed_and_cannot_open_another_qubes_volume,
        the_accelerator_is_chosen_by_trial_and_shown,
        memory_maxmem_and_vcpus_are_honoured,
    ],
);

/// A Debian kernel package for `bulkhead kernel install`: `$BULKHEAD_KERNEL_DEB`,
/// or one fetched once per host into the target directory.
fn kernel_deb() -> Result<PathBuf, String> {
    static DEB: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    DEB.get_or_init(|| {
        if let Some(p) = std::env::var_os("BULKHEAD_KERNEL_DEB") {
            return Ok(PathBuf::from(p));
        }
        let dir = common::daemon_bin()
            .parent()
            .map(|p| p.join("test-kernel"))
            .ok_or("no target dir")?;
        let find = || {
            std::fs::read_dir(&dir).ok().and_then(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "deb"))
            })
        };
        if let Some(p) = find() {
            return Ok(p);
        }
        // Fetched into a private dir, then renamed: parallel test binaries
        // never see half a package.
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o777));
        let deps = Command::new("apt-cache")
            .args(["depends", "linux-image-cloud-amd64"])
            .output()
            .map_err(|e| format!("apt-cache: {e}"))?;
        let pkg = String::from_utf8_lossy(&deps.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: ").map(str::to_string))
            .ok_or("no linux-image-cloud-amd64 package known to apt (apt-get update?)")?;
        let ok = Command::new("apt-get")
            .args(["download", "-q", &pkg])
            .current_dir(&tmp)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("apt-get download {pkg} failed"));
        }
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => {}
            Err(_) => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        find().ok_or_else(|| "the kernel package vanished".into())
    })
    .clone()
}

impl Env {
    fn new(tag: &str, mode: &str) -> Env {
        let d = common::Daemon::start();
        let cli = common::daemon_bin().with_file_name("bulkhead");
        let tpl = format!("{tag}-tpl");
        let e = Env {
            d,
            cli,
            tpl,
            tag: tag.to_string(),
            mode: mode.to_string(),
        };
        e.ok(&["template", "build", "minimal", "--name", &e.tpl]);
        e.ok(&["global-prefs", "default_virt_mode", mode]);
        if mode == "vm" {
            let deb = kernel_deb().expect("kernel package");
            e.ok(&["kernel", "install", "--deb", &deb.to_string_lossy()]);
            // Fixed guest memory (no balloon): smaller, faster boots under TCG.
            e.ok(&["prefs", &e.tpl, "memory", "256"]);
            e.ok(&["prefs", &e.tpl, "maxmem", "0"]);
        }
        e
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.cli);
        c.args(args).env("BULKHEAD_SOCKET", &self.d.socket);
        c
    }

    fn bh(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run bulkhead")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.bh(args);
        assert!(
            o.status.success(),
            "bulkhead {args:?} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A qube name unique to this test.
    fn q(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    fn create(&self, name: &str) {
        self.ok(&["create", "-t", &self.tpl, "-l", "red", name]);
    }

    /// Runs a shell script in the qube as `user`; returns (exit code, stdout).
    fn sh(&self, vm: &str, user: &str, script: &str) -> (i32, String) {
        let o = self.bh(&["run", "-u", user, vm, "--", "/bin/sh", "-c", script]);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    fn state(&self, vm: &str) -> String {
        let s = self.d.ok("admin.vm.CurrentState", "", vm, b"");
        s.rsplit("power_state=").next().unwrap_or("").to_string()
    }

    fn wait_state(&self, vm: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.state(vm) != want {
            assert!(Instant::now() < deadline, "{vm} never became {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn restart_qube(&self, vm: &str) {
        self.ok(&["shutdown", "--wait", vm]);
        self.ok(&["start", vm]);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Qubes outlive a daemon by design; tests must not leave any behind.
        let _ = self.bh(&["shutdown", "--all", "--wait"]);
    }
}

fn template_update_reaches_appvm_at_restart_root_writes_vanish_private_persists(mode: &str) {
    let e = env_or_skip!("e2e1", mode);
    e.create(&e.q("work"));
    let (code, _) = e.sh(
        &e.q("work"),
        "root",
        "echo junk > /etc/junk && echo kept > /home/user/kept && echo usr > /usr/local/u",
    );
    assert_eq!(code, 0);
    // Update the template while the AppVM runs: it keeps its snapshot.
    let (code, _) = e.sh(&e.tpl, "root", "echo v2 > /etc/template-version");
    assert_eq!(code, 0);
    e.ok(&["shutdown", "--wait", &e.tpl]);
    let (_, out) = e.sh(&e.q("work"), "user", "cat /etc/template-version 2>&1; true");
    assert!(out.contains("No such file"), "{out}");
    assert!(e
        .ok(&[
            "volume",
            "info",
            &format!("{}:root", e.q("work")),
            "is_outdated"
        ])
        .contains("True"));
    e.restart_qube(&e.q("work"));
    let (_, out) = e.sh(
        &e.q("work"),
        "user",
        "cat /etc/template-version; cat /etc/junk 2>&1; cat ~/kept /usr/local/u; id -u; pwd",
    );
    assert!(out.contains("v2"), "template update missing: {out}");
    assert!(
        out.contains("No such file"),
        "root write survived a restart: {out}"
    );
    assert!(out.contains("kept\nusr\n1000\n/home/user"), "{out}");
}

fn revert_restores_the_previous_private_revision(mode: &str) {
    let e = env_or_skip!("e2e2", mode);
    e.create(&e.q("work"));
    assert_eq!(e.sh(&e.q("work"), "user", "echo first > ~/a").0, 0);
    e.restart_qube(&e.q("work"));
    assert_eq!(e.sh(&e.q("work"), "user", "rm ~/a; echo second > ~/b").0, 0);
    // Revert needs a halted qube.
    let o = e.bh(&["volume", "revert", &format!("{}:private", e.q("work"))]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("shut it down"));
    e.ok(&["shutdown", "--wait", &e.q("work")]);
    let revs = e.ok(&["volume", "revisions", &format!("{}:private", e.q("work"))]);
    assert_eq!(revs.lines().count(), 1, "revisions_to_keep=1: {revs}");
    e.ok(&["volume", "revert", &format!("{}:private", e.q("work"))]);
    let (_, out) = e.sh(&e.q("work"), "user", "cat ~/a; ls ~");
    assert!(out.starts_with("first\n"), "{out}");
    assert!(!out.contains('b'), "{out}");
    // Grow the private volume (halted only; never shrink), data intact.
    let vol = format!("{}:private", e.q("work"));
    assert!(!e.bh(&["volume", "resize", &vol, "3G"]).status.success());
    e.ok(&["shutdown", "--wait", &e.q("work")]);
    let o = e.bh(&["volume", "resize", &vol, "1G"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("shrinking"));
    e.ok(&["volume", "resize", &vol, "3G"]);
    assert_eq!(e.ok(&["volume", "info", &vol, "size"]).trim(), "3221225472");
    let (_, out) = e.sh(&e.q("work"), "user", "cat ~/a; df -k /rw | tail -1");
    let kib: u64 = out
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(out.starts_with("first\n") && kib > 2_900_000, "{out}");
    // revisions_to_keep=0: stopping keeps no revision.
    e.ok(&["shutdown", "--wait", &e.q("work")]);
    e.ok(&["volume", "config", &vol, "revisions_to_keep", "0"]);
    e.ok(&["start", &e.q("work")]);
    e.ok(&["shutdown", "--wait", &e.q("work")]);
    assert_eq!(e.ok(&["volume", "revisions", &vol]).trim(), "");
}

fn qubes_cannot_see_each_others_files_processes_or_network(mode: &str) {
    let e = env_or_skip!("e2e3", mode);
    e.create(&e.q("a"));
    e.create(&e.q("b"));
    assert_eq!(
        e.sh(
            &e.q("a"),
            "user",
            "echo secret > ~/secret; (sleep 600 >/dev/null 2>&1 &) ; true"
        )
        .0,
        0
    );
    let (_, out) = e.sh(
        &e.q("b"),
        "root",
        "cat /home/user/secret 2>&1; ps -o comm | grep -c sleep; ls /sys/class/net; \
         cat /proc/net/dev | tail -n +3 | cut -d: -f1; ls /rw /run/bulkhead",
    );
    assert!(out.contains("No such file"), "{out}");
    assert!(out.contains("\n0\n"), "b sees a's processes: {out}");
    assert!(
        !out.contains("eth") && !out.contains("veth"),
        "b sees network interfaces: {out}"
    );
    // The only network device is lo, and nothing listens anywhere.
    let (_, out) = e.sh(
        &e.q("b"),
        "root",
        "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '",
    );
    assert_eq!(out.trim(), "lo");
}

fn root_in_a_qube_cannot_load_modules_see_the_host_mount_disks_or_write_outside(mode: &str) {
    let e = env_or_skip!("e2e4", mode);
    e.create(&e.q("work"));
    let marker = format!("/tmp/bulkhead-e2e4-{}", std::process::id());
    let (code, out) = e.sh(
        &e.q("work"),
        "root",
        &format!(
            "insmod /dev/null; echo insmod=$?; \
             ps -o pid | tail -n +2 | wc -l; \
             ls /dev; \
             mount -t ext4 /dev/loop0 /mnt; echo mount=$?; \
             mount -t proc proc /mnt; echo procmount=$?; \
             echo x > {marker}; echo write=$?; \
             cat /proc/1/cmdline | tr '\\0' ' '; echo"
        ),
    );
    assert_eq!(code, 0, "{out}");
    if e.mode == "ns" {
        // The host kernel is shared: root in the qube must not change it.
        assert!(!out.contains("insmod=0"), "{out}");
        assert!(
            !out.contains("mount=0") && !out.contains("procmount=0"),
            "{out}"
        );
        let procs: usize = out
            .lines()
            .nth(1)
            .unwrap_or("99")
            .trim()
            .parse()
            .unwrap_or(99);
        assert!(procs <= 6, "root sees {procs} processes: {out}");
        assert!(!out.contains("loop0"), "block devices visible: {out}");
    } else {
        // A VM's root owns its own kernel (modules and mounts are its
        // business); what matters is that nothing of the host shows.
        let (_, ps) = e.sh(&e.q("work"), "root", "ps -o comm");
        assert!(
            !ps.contains("bulkheadd") && !ps.contains("cargo") && !ps.contains("qemu"),
            "host processes visible: {ps}"
        );
        assert!(out.contains("vda"), "{out}");
    }
    assert!(!out.contains("sda"), "block devices visible: {out}");
    assert!(
        out.contains("bulkhead-agent"),
        "PID 1 is not the agent: {out}"
    );
    // The qube wrote its own /tmp (its volatile layer), not the host's.
    assert!(!Path::new(&marker).exists());
    use std::os::unix::fs::MetadataExt;
    let base = e.d.dir.path().join("qubes").join(e.q("work"));
    if e.mode == "vm" {
        // A VM's volumes are never mounted on the host.
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mi.contains(&base.to_string_lossy().to_string()),
            "vm volumes mounted on the host: {mi}"
        );
        return;
    }
    // Other host users cannot browse the qube's mounted volumes.
    for d in ["vol", "volatile"] {
        let m = std::fs::metadata(base.join(d)).unwrap();
        assert_eq!(m.mode() & 0o077, 0, "{d} is mode {:o}", m.mode() & 0o7777);
    }
}

fn a_qube_over_its_memory_limit_is_contained(mode: &str) {
    let e = env_or_skip!("e2e5", mode);
    e.create(&e.q("work"));
    // A VM needs room for its own kernel and initramfs.
    let mem = if e.mode == "vm" { "128" } else { "64" };
    e.ok(&["prefs", &e.q("work"), "memory", mem]);
    e.ok(&["prefs", &e.q("work"), "maxmem", mem]);
    // 200 MB held in one shell variable: far over the qube's memory.
    let (code, _) = e.sh(
        &e.q("work"),
        "user",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}",
    );
    assert_ne!(code, 0, "the hog was not stopped");
    // The qube itself survives and still answers.
    assert_eq!(e.state(&e.q("work")), "Running");
    assert_eq!(e.sh(&e.q("work"), "user", "echo alive").1, "alive\n");
}

fn daemon_restart_readopts_running_qubes_and_autostart_starts_qubes(mode: &str) {
    let mut e = env_or_skip!("e2e6", mode);
    e.create(&e.q("work"));
    e.create(&e.q("auto"));
    e.ok(&["prefs", &e.q("auto"), "autostart", "True"]);
    assert_eq!(e.sh(&e.q("work"), "user", "echo before > ~/f").0, 0);
    // A crash (SIGKILL) of the daemon, not a clean exit.
    e.d.restart();
    e.wait_state(&e.q("work"), "Running");
    e.wait_state(&e.q("auto"), "Running");
    let (code, out) = e.sh(&e.q("work"), "user", "cat ~/f");
    assert_eq!((code, out.as_str()), (0, "before\n"));
    // The re-adopted qube still stops cleanly and keeps its data.
    e.ok(&["shutdown", "--wait", &e.q("work")]);
    assert_eq!(e.state(&e.q("work")), "Halted");
    assert_eq!(e.sh(&e.q("work"), "user", "cat ~/f").1, "before\n");
    // A qube running without a usable record (its daemon died mid-start) is
    // killed before its volumes are committed, never started twice.
    assert_eq!(e.sh(&e.q("work"), "user", "echo after > ~/g; sync").0, 0);
    let rec =
        e.d.dir
            .path()
            .join(format!("qubes/{}/instance.json", e.q("work")));
    let key = if e.mode == "vm" {
        "qemu_pid"
    } else {
        "helper_pid"
    };
    let helper = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&rec).unwrap())
        .unwrap()["data"][key]
        .as_u64()
        .unwrap();
    std::fs::remove_file(&rec).unwrap();
    e.d.restart();
    assert_eq!(e.state(&e.q("work")), "Halted");
    // Gone, or a zombie waiting for whoever inherited it to reap it.
    let stat = std::fs::read_to_string(format!("/proc/{helper}/stat")).unwrap_or_default();
    let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
    assert!(
        matches!(state, None | Some('Z') | Some('X')),
        "the unrecorded qube is still running: {stat}"
    );
    assert_eq!(
        e.sh(&e.q("work"), "user", "cat ~/f ~/g").1,
        "before\nafter\n"
    );
}

fn init_pid(e: &Env, vm: &str) -> i32 {
    // On ns the agent (PID 1 in the qube); on vm the whole VM (QEMU).
    let rec = std::fs::read_to_string(e.d.dir.path().join(format!("qubes/{vm}/instance.json")))
        .expect("instance record");
    let v: serde_json::Value = serde_json::from_str(&rec).unwrap();
    let key = if e.mode == "vm" {
        "qemu_pid"
    } else {
        "init_pid"
    };
    v["data"][key].as_i64().expect("init pid") as i32
}

fn kill_9_of_a_qubes_init_is_noticed_and_reported(mode: &str) {
    let e = env_or_skip!("e2e7", mode);
    e.create(&e.q("work"));
    // Synced: a VM killed at once is a machine losing power, and keeps only
    // what its kernel wrote out (on ns the host's page cache has it anyway).
    assert_eq!(e.sh(&e.q("work"), "user", "echo data > ~/f; sync").0, 0);
    let mut events = e
        .cmd(&["events", &e.q("work")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = init_pid(&e, &e.q("work"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    e.wait_state(&e.q("work"), "Halted");
    std::thread::sleep(Duration::from_millis(200));
    let _ = events.kill();
    let out = events.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("domain-shutdown"), "{text}");
    // Nothing lost: the private volume was committed, and the qube restarts.
    assert_eq!(e.sh(&e.q("work"), "user", "cat ~/f").1, "data\n");
}

fn lifecycle_state_machine_and_qubes_exceptions(mode: &str) {
    let e = env_or_skip!("e2e8", mode);
    e.create(&e.q("work"));
    let exc = |m: &str, arg: &str| {
        let r = e.d.req(m, arg, &e.q("work"), b"");
        String::from_utf8_lossy(&r)
            .split('\0')
            .nth(1)
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(exc("admin.vm.Shutdown", ""), "QubesVMNotStartedError");
    assert_eq!(exc("admin.vm.Kill", ""), "QubesVMNotStartedError");
    assert_eq!(exc("admin.vm.Pause", ""), "QubesVMNotStartedError");
    e.ok(&["start", &e.q("work")]);
    assert_eq!(e.state(&e.q("work")), "Running");
    assert_eq!(exc("admin.vm.Start", ""), "QubesVMNotHaltedError");
    assert_eq!(exc("admin.vm.Unpause", ""), "QubesVMNotPausedError");
    assert_eq!(exc("admin.vm.Remove", ""), "QubesVMNotHaltedError");
    e.ok(&["pause", &e.q("work")]);
    assert_eq!(e.state(&e.q("work")), "Paused");
    assert_eq!(exc("admin.vm.Pause", ""), "QubesVMNotRunningError");
    let o = e.bh(&["run", &e.q("work"), "--", "true"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("paused"));
    e.ok(&["unpause", &e.q("work")]);
    assert_eq!(e.sh(&e.q("work"), "user", "echo ok").1, "ok\n");
    e.ok(&["kill", &e.q("work")]);
    assert_eq!(e.state(&e.q("work")), "Halted");
    assert!(e.bh(&["check", "--running", &e.q("work")]).status.code() == Some(1));
    // --no-autostart refuses a halted qube; plain run starts it.
    assert!(!e
        .bh(&["run", "-n", &e.q("work"), "--", "true"])
        .status
        .success());
    assert_eq!(e.sh(&e.q("work"), "user", "exit 7").0, 7);
    // A shutdown that the qube ignores ends in a kill after shutdown_timeout.
    e.ok(&["prefs", &e.q("work"), "shutdown_timeout", "1"]);
    let r = e.d.req("admin.vm.Shutdown", "wait", &e.q("work"), b"");
    assert!(r.starts_with(b"0\0"), "{:?}", String::from_utf8_lossy(&r));
    assert_eq!(e.state(&e.q("work")), "Halted");
    e.ok(&["remove", "-f", &e.q("work")]);
    assert!(!e
        .d
        .state_dir()
        .join(format!("pools/default/appvms/{}", e.q("work")))
        .exists());
}

fn run_streams_stdin_and_output_and_clone_copies_volumes(mode: &str) {
    let e = env_or_skip!("e2e9", mode);
    e.create(&e.q("work"));
    let mut c = e.cmd(&[
        "run",
        &e.q("work"),
        "--",
        "sh",
        "-c",
        "wc -c; echo err >&2; exit 3",
    ]);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut i = child.stdin.take().unwrap();
        i.write_all(&vec![b'x'; 1 << 20]).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1048576");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    // Arguments pass through exactly, including awkward characters.
    let o = e.bh(&[
        "run",
        &e.q("work"),
        "--",
        "printf",
        "%s|",
        "a b",
        "-x",
        "$HOME",
        "ü",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "a b|-x|$HOME|ü|");
    // qvm-run: a shell command line, output only with --pass-io.
    let link = e.d.dir.path().join("qvm-run");
    let _ = std::os::unix::fs::symlink(&e.cli, &link);
    let o = Command::new(&link)
        .args(["--pass-io", &e.q("work"), "echo", "$((6*7))"])
        .env("BULKHEAD_SOCKET", &e.d.socket)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "42\n");
    assert_eq!(e.sh(&e.q("work"), "user", "echo cloned > ~/c").0, 0);
    e.ok(&["shutdown", "--wait", &e.q("work")]);
    e.ok(&["clone", &e.q("work"), &e.q("copy")]);
    assert_eq!(e.sh(&e.q("copy"), "user", "cat ~/c").1, "cloned\n");
}

fn symlinks_planted_in_the_private_volume_are_not_followed_by_the_host(mode: &str) {
    let e = env_or_skip!("e2e10", mode);
    e.create(&e.q("work"));
    // Root in the qube replaces /rw/home and /rw/usrlocal (bound by the host
    // at the next start) with links to the root directory.
    let (code, out) = e.sh(
        &e.q("work"),
        "root",
        "rm -rf /rw/home /rw/usrlocal && ln -s / /rw/home && ln -s /etc /rw/usrlocal && ls -l /rw",
    );
    assert_eq!(code, 0, "{out}");
    e.restart_qube(&e.q("work"));
    let (code, out) = e.sh(
        &e.q("work"),
        "root",
        "ls -a /home /usr/local; ls /rw | grep -c not-a-directory",
    );
    assert_eq!(code, 0, "{out}");
    // Fresh, real directories; the links were moved aside, not followed.
    assert!(!out.contains("bin") && !out.contains("passwd"), "{out}");
    assert!(out.trim_end().ends_with('2'), "{out}");
    assert!(out.contains("user"), "home was not recreated: {out}");
}

/// Writes a policy file into the daemon's policy directory.
fn policy(e: &Env, file: &str, text: &str) {
    let dir = e.d.dir.path().join("policy.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(file), text).unwrap();
}

fn qrexec_calls_between_qubes_follow_policy(mode: &str) {
    let e = env_or_skip!("e2e11", mode);
    let (a, b) = (e.q("a"), e.q("b"));
    e.create(&a);
    e.create(&b);
    // A service in b's /usr/local (its private volume).
    let (code, _) = e.sh(
        &b,
        "root",
        "mkdir -p /usr/local/etc/qubes-rpc && printf '#!/bin/sh\\necho \"from $QREXEC_REMOTE_DOMAIN arg=$1 uid=$(id -u)\"\\ntr a-z A-Z\\nexit 5\\n' \
         > /usr/local/etc/qubes-rpc/test.Echo && chmod +x /usr/local/etc/qubes-rpc/test.Echo",
    );
    assert_eq!(code, 0);
    let buuid = e.ok(&["prefs", &b, "uuid"]).trim().to_string();
    // rpc-config: this service always runs as root in b.
    e.sh(
        &b,
        "root",
        "mkdir -p /etc/qubes/rpc-config && echo force-user=root > /etc/qubes/rpc-config/test.Echo+forced \
         && echo exit-on-service-eof=true > /etc/qubes/rpc-config/test.Linger \
         && printf '#!/bin/sh\\necho bye\\nexec >&- 2>&-\\nsleep 600\\n' > /usr/local/etc/qubes-rpc/test.Linger \
         && chmod +x /usr/local/etc/qubes-rpc/test.Linger",
    );
    policy(
        &e,
        "50-test.policy",
        &format!(
            "test.Echo +bytype @type:AppVM uuid:{buuid} allow\n\
             test.Echo +forced @anyvm @anyvm allow\n\
             test.Linger * @anyvm @anyvm allow\n\
             test.Echo +allowed @anyvm @anyvm allow\n\
             test.Echo +asroot @anyvm @anyvm allow user=root\n\
             test.Echo +noauto @anyvm @anyvm allow autostart=no\n\
             test.Echo * @tag:trusted {b} allow\n\
             test.Missing * @anyvm @anyvm allow\n\
             test.Ask * @anyvm @anyvm ask\n\
             test.Echo +ask @anyvm @anyvm ask\n\
             qubes.ConnectTCP +7777 @anyvm @anyvm allow\n\
             test.Echo * @anyvm @anyvm deny\n"
        ),
    );
    let call = |svc: &str| {
        e.sh(
            &a,
            "user",
            &format!("echo hi | qrexec-client-vm {b} {svc}; echo rc=$?"),
        )
        .1
    };
    let out = call("test.Echo+allowed");
    assert_eq!(out, format!("from {a} arg=allowed uid=1000\nHI\nrc=5\n"));
    assert!(call("test.Echo+asroot").contains("uid=0\n"));
    assert!(call("test.Echo+forced").contains("uid=0\n"), "force-user");
    // exit-on-service-eof: the call ends when the service closes its
    // output, although the process sleeps on.
    let t = Instant::now();
    assert_eq!(call("test.Linger"), "bye\nrc=0\n");
    // (Without the setting it would wait for the 600 s sleep.)
    assert!(t.elapsed() < Duration::from_secs(300));
    // @type: and uuid: tokens; a qube may also be named by uuid.
    assert!(call("test.Echo+bytype").ends_with("rc=5\n"));
    let out = e
        .sh(
            &a,
            "user",
            &format!("qrexec-client-vm uuid:{buuid} test.Echo+allowed </dev/null; echo rc=$?"),
        )
        .1;
    assert!(out.ends_with("rc=5\n"), "{out}");
    let out = call("test.Echo+other");
    assert!(out.ends_with("rc=126\n"), "deny rule: {out}");
    let out = call("test.Missing");
    if !out.ends_with("rc=127\n") {
        // Once more with the client's own message, to say why.
        let again = e.sh(
            &a,
            "user",
            &format!("echo hi | qrexec-client-vm {b} test.Missing 2>&1; echo rc=$?"),
        );
        panic!("no such service: {out:?}; again: {again:?}");
    }
    assert!(
        call("test.Ask").ends_with("rc=126\n"),
        "ask without an agent"
    );
    // With a prompt agent: the user's answer decides.
    for (answer, want) in [(b.as_str(), "rc=5\n"), ("deny", "rc=126\n")] {
        let mut agent = e
            .cmd(&["ask-agent", "--answer", answer])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Registered once it says so.
        {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(agent.stderr.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(line.contains("registered"), "{line}");
        }
        let out = call("test.Echo+ask");
        let _ = agent.kill();
        let shown = String::from_utf8_lossy(&agent.wait_with_output().unwrap().stdout).into_owned();
        assert!(out.ends_with(want), "answer {answer}: {out}");
        assert!(
            shown.contains("test.Echo+ask") && shown.contains(&a),
            "{shown}"
        );
    }
    assert!(
        call("test.Nothing").ends_with("rc=126\n"),
        "no matching rule"
    );
    // A name that does not exist is @default to the policy: no probing.
    let out = e
        .sh(
            &a,
            "user",
            "qrexec-client-vm no-such-qube test.Echo+allowed </dev/null; echo rc=$?",
        )
        .1;
    assert!(out.ends_with("rc=126\n"), "{out}");
    // Tags are the host's, checked at each call.
    e.ok(&["tags", &a, "add", "trusted"]);
    assert!(call("test.Echo+other").ends_with("rc=5\n"));
    // autostart=no refuses a halted target; the default starts it.
    e.ok(&["shutdown", "--wait", &b]);
    assert!(call("test.Echo+noauto").ends_with("rc=126\n"));
    assert_eq!(e.state(&b), "Halted");
    assert!(call("test.Echo+allowed").ends_with("rc=5\n"));
    assert_eq!(e.state(&b), "Running");

    // The source is the host's word: a relay message claiming another
    // source (MSG_TRIGGER_SERVICE4's source field) changes nothing.
    {
        use bulkhead_proto::qrexec::Message;
        use bulkhead_proto::qrexec_io::{hello, recv, send};
        let sock =
            e.d.dir
                .path()
                .join(format!("qubes/{a}/run/channel/relay.sock"));
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let (mut dec, _) = hello(&mut s).unwrap();
        send(
            &mut s,
            &Message::TriggerService4 {
                source_domain: "dom0".into(),
                target_domain: b.clone(),
                ident: "SOCKET1".into(),
                service_name: "test.Echo+allowed".into(),
            },
        )
        .unwrap();
        assert!(matches!(
            recv(&mut s, &mut dec).unwrap(),
            Some(Message::ServiceConnect { .. })
        ));
        send(&mut s, &Message::DataStdin(vec![])).unwrap();
        let mut out = Vec::new();
        loop {
            match recv(&mut s, &mut dec).unwrap() {
                Some(Message::DataStdout(d)) => out.extend(d),
                Some(Message::ExitCode(c)) => {
                    assert_eq!(c, 5);
                    break;
                }
                Some(_) => {}
                None => panic!("no exit code"),
            }
        }
        assert!(
            String::from_utf8_lossy(&out).starts_with(&format!("from {a} ")),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    // An invalid policy file denies everything until it is fixed.
    policy(&e, "40-broken.policy", "this is not a rule\n");
    assert!(call("test.Echo+allowed").ends_with("rc=126\n"));
    std::fs::remove_file(e.d.dir.path().join("policy.d/40-broken.policy")).unwrap();
    assert!(call("test.Echo+allowed").ends_with("rc=5\n"));

    // qubes.ConnectTCP (a /dev/tcp link) and qvm-connect-tcp: a TCP echo
    // server on b's loopback, reached from a; other ports are not allowed.
    e.sh(
        &b,
        "user",
        "(nc -ll -p 7777 -e /bin/cat >/dev/null 2>&1 &); \
         i=0; while [ $i -lt 50 ] && ! netstat -ltn 2>/dev/null | grep -q ':7777 '; do sleep 0.05; i=$((i+1)); done",
    );
    let out = e.sh(&a, "user", &format!(
        "echo over-qrexec | qrexec-client-vm {b} qubes.ConnectTCP+7777; \
         qrexec-client-vm {b} qubes.ConnectTCP+22 </dev/null 2>/dev/null; echo rc=$?; \
         (qvm-connect-tcp 8888:{b}:7777 >/dev/null 2>&1 &); \
         i=0; while [ $i -lt 50 ] && ! netstat -ltn 2>/dev/null | grep -q ':8888 '; do sleep 0.05; i=$((i+1)); done; \
         echo over-tcp | nc -w 2 127.0.0.1 8888"
    )).1;
    assert_eq!(out, "over-qrexec\nrc=126\nover-tcp\n");

    // 256 calls at once into one qube.
    let out = e
        .sh(
            &a,
            "user",
            &format!(
                "i=0; while [ $i -lt 256 ]; do (echo x | qrexec-client-vm {b} test.Echo+allowed >/dev/null 2>&1; echo $? > /tmp/rc.$i) & i=$((i+1)); done; wait; cat /tmp/rc.* | grep -c '^5$'"
            ),
        )
        .1;
    assert_eq!(out.trim(), "256");
}

fn admin_calls_and_dom0_services_from_qubes_follow_policy(mode: &str) {
    let e = env_or_skip!("e2e12", mode);
    let (mgmt, other) = (e.q("mgmt"), e.q("other"));
    e.create(&mgmt);
    e.create(&other);
    policy(
        &e,
        "50-admin.policy",
        &format!(
            "admin.vm.List * {mgmt} @adminvm allow target=dom0\n\
             admin.vm.List * {mgmt} {other} allow target=dom0\n\
             admin.vm.property.Get * {mgmt} {other} allow target=dom0\n\
             admin.vm.property.Set +label {mgmt} {other} allow target=dom0\n\
             qubes.GetDate * @anyvm @default allow target=dom0\n"
        ),
    );
    let run = |q: &str, script: &str| e.sh(q, "user", script).1;
    // Replies are qubesd's own bytes ("0\0" + body), shown with NUL as '|'.
    let out = run(
        &mgmt,
        "qrexec-client-vm dom0 admin.vm.List </dev/null | tr '\\0' '|'; echo \" rc=$?\"",
    );
    assert!(
        out.starts_with("0|dom0 class=AdminVM") && out.contains(&format!("\n{other} class=AppVM")),
        "{out}"
    );
    // Only the qubes policy lets it name are listed (not itself, not the template).
    assert!(
        !out.contains(&format!("\n{mgmt} ")) && !out.contains(&e.tpl),
        "{out}"
    );
    let out = run(
        &mgmt,
        &format!("qrexec-client-vm {other} admin.vm.property.Get+label </dev/null | tr '\\0' '|'"),
    );
    assert_eq!(out, "0|default=False type=label red");
    // Allowed write: the source is the calling qube, the destination the target it named.
    let out = run(
        &mgmt,
        &format!(
            "printf blue | qrexec-client-vm {other} admin.vm.property.Set+label | tr '\\0' '|'"
        ),
    );
    assert_eq!(out, "0|");
    assert!(e.ok(&["prefs", &other, "label"]).contains("blue"));
    // Not granted: refused by policy (126), nothing changed.
    let out = run(
        &mgmt,
        &format!("printf green | qrexec-client-vm {other} admin.vm.property.Set+netvm; echo rc=$?"),
    );
    assert!(out.ends_with("rc=126\n"), "{out}");
    let out = run(
        &other,
        &format!("qrexec-client-vm {mgmt} admin.vm.property.Get+label </dev/null; echo rc=$?"),
    );
    assert!(out.ends_with("rc=126\n"), "{out}");
    // A dom0 service.
    let out = run(&other, "qrexec-client-vm @default qubes.GetDate </dev/null");
    assert!(out.starts_with("20") && out.contains('T'), "{out}");
}

/// A Filecopy stream with one record (`kind` and body as given) and the end marker.
fn hostile_stream(name: &[u8], kind: bulkhead_proto::filecopy::Kind, body: &[u8]) -> Vec<u8> {
    use bulkhead_proto::filecopy::{mode_of, Header};
    let h = Header {
        namelen: name.len() as u32,
        mode: mode_of(kind, 0o644),
        filelen: body.len() as u64,
        atime: 0,
        atime_nsec: 0,
        mtime: 0,
        mtime_nsec: 0,
    };
    let mut v = h.encode().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(body);
    v.extend_from_slice(&[0u8; 32]);
    v
}

fn qvm_copy_delivers_trees_and_refuses_hostile_streams(mode: &str) {
    use bulkhead_proto::filecopy::Kind;
    let e = env_or_skip!("e2e13", mode);
    let (a, b) = (e.q("a"), e.q("b"));
    e.create(&a);
    e.create(&b);
    policy(
        &e,
        "30-user.policy",
        &format!("qubes.Filecopy * {a} {b} allow\n"),
    );
    policy(
        &e,
        "90-default.policy",
        include_str!("../../../packaging/policy.d/90-default.policy"),
    );
    let (code, out) = e.sh(
        &a,
        "user",
        &format!(
            "mkdir -p d/sub && echo one > d/a && echo two > d/sub/b && ln -s a d/link && echo solo > f \
             && qvm-copy-to-vm {b} d f && echo copied && qvm-move-to-vm {b} d 2>&1; echo rc=$?; ls"
        ),
    );
    assert_eq!(code, 0);
    // The second send of d is refused (never overwrite) and d stays.
    assert!(
        out.contains("copied\n") && out.contains("File exists") && out.contains("rc=1\n"),
        "{out}"
    );
    assert!(
        out.contains("d\n"),
        "a failed move deleted its source: {out}"
    );
    let (_, out) = e.sh(
        &b,
        "user",
        &format!("cd ~/QubesIncoming/{a} && find . | sort && cat d/sub/b && readlink d/link"),
    );
    assert_eq!(
        out,
        "./\n./d\n./d/a\n./d/link\n./d/sub\n./d/sub/b\n./f\ntwo\na\n".replacen("./\n", ".\n", 1)
    );
    // From the host: bulkhead copy into ~/QubesIncoming/dom0.
    let host = e.d.dir.path().join("from-host");
    std::fs::create_dir_all(host.join("inner")).unwrap();
    std::fs::write(host.join("inner/n.txt"), "host data\n").unwrap();
    e.ok(&["copy", &b, host.to_str().unwrap()]);
    assert_eq!(
        e.sh(&b, "user", "cat ~/QubesIncoming/dom0/from-host/inner/n.txt")
            .1,
        "host data\n"
    );
    // qvm-copy without a target goes to the policy's ask: no prompt agent, refused.
    let (_, out) = e.sh(&a, "user", "qvm-copy f; echo rc=$?");
    assert!(out.ends_with("rc=126\n"), "{out}");

    // Hostile streams, written straight to the service: traversal, absolute
    // names, links out of the tree; each refused, nothing outside QubesIncoming.
    for (name, kind, body) in [
        (&b"../escaped"[..], Kind::File, &b"x"[..]),
        (b"/tmp/abs", Kind::File, b"x"),
        (b"out", Kind::Symlink, b"/etc/passwd"),
        (b"up", Kind::Symlink, b"../../x"),
    ] {
        let stream = hostile_stream(name, kind, body);
        let mut c = e
            .cmd(&["run", &a, "--", "qrexec-client-vm", &b, "qubes.Filecopy"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&stream).unwrap();
        }
        let o = c.wait_with_output().unwrap();
        assert_ne!(o.status.code(), Some(0), "{name:?} was accepted");
    }
    let (_, out) = e.sh(
        &b,
        "user",
        &format!("ls ~/QubesIncoming/{a}; ls ~/QubesIncoming; ls /tmp; ls ~ | grep -c escaped"),
    );
    assert_eq!(out, format!("d\nf\ndom0\n{a}\n0\n"), "{out}");
}

fn calls_to_dispvm_run_in_a_fresh_disposable_that_is_then_removed(mode: &str) {
    let e = env_or_skip!("e2e14", mode);
    let (a, dvm) = (e.q("a"), e.q("dvm"));
    e.create(&a);
    e.create(&dvm);
    e.ok(&["prefs", &dvm, "template_for_dispvms", "True"]);
    e.ok(&["prefs", &a, "default_dispvm", &dvm]);
    // The service lives in the disposable template's private volume.
    let (code, _) = e.sh(
        &dvm,
        "root",
        "mkdir -p /usr/local/etc/qubes-rpc /usr/local/bin && printf '#!/bin/sh\\necho \"in $(hostname)\"; echo scratch > ~/left-behind\\n' \
         > /usr/local/etc/qubes-rpc/test.Where && chmod +x /usr/local/etc/qubes-rpc/test.Where \
         && printf '#!/bin/sh\\n[ -f \"$1\" ] && echo \"edited in $(hostname)\" >> \"$1\"; exit 0\\n' > /usr/local/bin/xdg-open \
         && chmod +x /usr/local/bin/xdg-open",
    );
    assert_eq!(code, 0);
    e.ok(&["shutdown", "--wait", &dvm]);
    policy(
        &e,
        "50-disp.policy",
        &format!(
            "test.Where * @anyvm @dispvm allow\n\
             test.Where * @anyvm @dispvm:{dvm} allow\n\
             test.Where * @anyvm @anyvm deny\n\
             qubes.OpenInVM * @anyvm @dispvm allow\n\
             qubes.OpenInVM * @anyvm {dvm} allow\n\
             qubes.OpenURL * @anyvm {dvm} allow\n"
        ),
    );
    let before = e.ok(&["ls", "--raw-list"]);
    for target in ["@dispvm".to_string(), format!("@dispvm:{dvm}")] {
        let out = e
            .sh(
                &a,
                "user",
                &format!("qrexec-client-vm {target} test.Where </dev/null; echo rc=$?"),
            )
            .1;
        assert!(
            out.starts_with("in disp") && out.ends_with("rc=0\n"),
            "{target}: {out}"
        );
    }
    // Opening a file in a disposable and in a named qube: the edit comes back.
    let out = e
        .sh(
            &a,
            "user",
            &format!(
                "echo original > doc.txt && qvm-open-in-dvm doc.txt 2>/dev/null && cat doc.txt && \
         qvm-open-in-vm {dvm} doc.txt 2>/dev/null && tail -n 1 doc.txt; \
         qvm-open-in-vm {dvm} https://example.org/; echo url=$?"
            ),
        )
        .1;
    assert!(out.starts_with("original\nedited in disp"), "{out}");
    assert!(
        out.contains(&format!("\nedited in {dvm}\nurl=0\n")),
        "{out}"
    );
    e.ok(&["shutdown", "--wait", &dvm]);
    // bulkhead run --dispvm: the same from dom0.
    let out = e.ok(&[
        "run",
        &format!("--dispvm={dvm}"),
        "--",
        "sh",
        "-c",
        "hostname; ls /usr/local/etc/qubes-rpc",
    ]);
    assert!(
        out.starts_with("disp") && out.ends_with("test.Where\n"),
        "{out}"
    );
    // Each call had its own disposable, gone afterwards; the template is untouched.
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.ok(&["ls", "--raw-list"]) != before {
        assert!(
            Instant::now() < deadline,
            "disposables left: {}",
            e.ok(&["ls", "--raw-list"])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = e.sh(&dvm, "user", "ls ~").1;
    assert!(!out.contains("left-behind"), "{out}");
    // A named qube is not a disposable target for this rule.
    let out = e
        .sh(
            &a,
            "user",
            &format!("qrexec-client-vm {dvm} test.Where </dev/null; echo rc=$?"),
        )
        .1;
    assert!(out.ends_with("rc=126\n"), "{out}");
}

/// Fields of `/proc/<pid>/status`, by name.
fn proc_status(pid: i32) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn the_vmm_runs_jailed_and_cannot_open_another_qubes_volume(mode: &str) {
    let e = env_or_skip!("e2e15", mode);
    let (a, b) = (e.q("a"), e.q("b"));
    e.create(&a);
    e.create(&b);
    assert_eq!(e.sh(&a, "user", "echo a-secret > ~/s").0, 0);
    assert_eq!(e.sh(&b, "user", "echo b-secret > ~/s").0, 0);
    let pid = init_pid(&e, &a);
    let st = proc_status(pid);
    // An unprivileged uid of its own, no capabilities, no way to regain
    // any, QEMU's seccomp filter on.
    let uid: u32 = st["Uid"]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(uid >= 65536, "QEMU runs as uid {uid}");
    assert_eq!(st["CapEff"], "0000000000000000");
    assert_eq!(st["CapPrm"], "0000000000000000");
    assert_eq!(st["NoNewPrivs"], "1");
    assert_eq!(st["Seccomp"], "2", "no seccomp filter");
    let gid: u32 = st["Gid"]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Another qube's QEMU runs as another uid.
    let other = proc_status(init_pid(&e, &b));
    assert_ne!(other["Uid"], st["Uid"]);
    // Its own mount and network namespaces.
    for ns in ["mnt", "net", "ipc", "uts"] {
        assert_ne!(
            std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap(),
            std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap(),
            "{ns} namespace shared with the host"
        );
    }
    // Its root holds programs, its kernel and its sockets: no volumes, no
    // state, no host sockets.
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .flatten()
        .map(|x| x.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in &names {
        assert!(
            [
                "bin", "dev", "etc", "kernel", "lib", "lib32", "lib64", "libx32", "sbin", "usr",
                "vmm"
            ]
            .contains(&n.as_str()),
            "unexpected {n} in QEMU's root: {names:?}"
        );
    }
    // As QEMU's uid inside its namespaces, the other qube's volumes (and
    // its own) cannot be opened by path: they do not exist there.
    let pool = e.d.state_dir().join("pools/default/appvms");
    let b_img = std::fs::read_dir(pool.join(&b))
        .unwrap()
        .flatten()
        .map(|x| x.path())
        .find(|p| p.to_string_lossy().ends_with(".img"))
        .expect("b has an image");
    assert!(b_img.exists());
    let o = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "-n", "-r", "-w"])
        .args(["-S", &uid.to_string(), "-G", &gid.to_string()])
        .arg("--")
        .arg("/bin/cat")
        .arg(&b_img)
        .output()
        .expect("nsenter (util-linux)");
    assert!(
        !o.status.success(),
        "QEMU's jail could read {}",
        b_img.display()
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("No such file"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Its descriptors: its own qube's images, nothing of the other's.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|x| std::fs::read_link(x.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let b_dir = pool.join(&b).to_string_lossy().into_owned();
    let a_dir = pool.join(&a).to_string_lossy().into_owned();
    assert!(!fds.iter().any(|f| f.starts_with(&b_dir)), "{fds:?}");
    assert!(fds.iter().any(|f| f.starts_with(&a_dir)), "{fds:?}");
    // Both qubes still work, each with its own data.
    assert_eq!(e.sh(&a, "user", "cat ~/s").1, "a-secret\n");
    assert_eq!(e.sh(&b, "user", "cat ~/s").1, "b-secret\n");
}

fn the_accelerator_is_chosen_by_trial_and_shown(mode: &str) {
    let e = env_or_skip!("e2e16", mode);
    let a = e.q("a");
    e.create(&a);
    e.ok(&["start", &a]);
    let state = e.d.ok("admin.vm.CurrentState", "", &a, b"");
    let accel = state
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("accelerator="))
        .unwrap_or_else(|| panic!("no accelerator in CurrentState: {state}"))
        .to_string();
    assert!(accel == "kvm" || accel == "tcg", "{state}");
    // The verdict came from a trial, cached for this boot.
    let cache: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bulkheadd::lifecycle::ACCEL_CACHE).expect("verdict cache"),
    )
    .unwrap();
    assert_eq!(cache["accel"].as_str().unwrap().to_lowercase(), accel);
    if accel == "tcg" {
        assert!(cache["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    // QEMU was started with it, and `bulkhead ls` says so.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", init_pid(&e, &a))).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains(&format!("-accel {accel}")), "{cmdline}");
    let ls = e.ok(&["ls", "-O", "name,isolation", &a]);
    assert!(ls.contains(&format!("vm({accel})")), "{ls}");
    let ls = e.ok(&["ls", "--json", &a]);
    assert!(ls.contains(&format!("\"vm({accel})\"")), "{ls}");
}

fn memory_maxmem_and_vcpus_are_honoured(mode: &str) {
    let e = env_or_skip!("e2e17", mode);
    let a = e.q("a");
    e.create(&a);
    e.ok(&["prefs", &a, "vcpus", "1"]);
    e.ok(&["prefs", &a, "memory", "160"]);
    e.ok(&["prefs", &a, "maxmem", "400"]);
    // Booted with maxmem, ballooned down to memory once its driver loads.
    let total = |e: &Env| -> u64 {
        let (_, out) = e.sh(&a, "user", "grep MemTotal /proc/meminfo");
        out.split_whitespace()
            .nth(1)
            .and_then(|k| k.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        e.sh(&a, "user", "grep -c ^processor /proc/cpuinfo").1,
        "1\n"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut kib = total(&e);
    while kib > 200 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        kib = total(&e);
    }
    assert!(
        (100 * 1024..=200 * 1024).contains(&kib),
        "MemTotal {kib} KiB: not ballooned to 160 MiB"
    );
    // Without maxmem above memory the guest gets exactly memory, no balloon.
    e.ok(&["shutdown", "--wait", &a]);
    e.ok(&["prefs", &a, "maxmem", "0"]);
    e.ok(&["prefs", &a, "memory", "300"]);
    e.ok(&["prefs", &a, "vcpus", "2"]);
    let kib = total(&e);
    assert!((250 * 1024..=300 * 1024).contains(&kib), "{kib}");
    assert_eq!(
        e.sh(&a, "user", "grep -c ^processor /proc/cpuinfo").1,
        "2\n"
    );
}
