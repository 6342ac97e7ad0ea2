//! The agent inside a `vm` qube (a QEMU microVM).
//!
//! Stage 1 runs as `/init` of the initramfs Bulkhead builds: it loads the
//! kernel modules the guest needs, finds the qube's disks by their virtio
//! serial (`root`, `private`, `volatile`), assembles the same file system
//! layout the `ns` backend gives a qube (an AppVM's root an overlay of the
//! read-only template root with its writes on the fresh volatile disk; the
//! private disk at `/rw`, `/rw/home` at `/home`, `/rw/usrlocal` at
//! `/usr/local`), and switches to the root's own agent.
//!
//! Stage 2 (the root's agent as PID 1, told by `BULKHEAD_VM=1`) carries the
//! guest channel: every stream the host opens on the virtio-serial port
//! reaches the agent's qrexec socket, every connection to
//! `/run/bulkhead/relay.sock` becomes a stream to the qube's relay; a
//! `shutdown` on the control port stops the qube, which then powers off.
//!
//! Everything here acts on the guest's own kernel: a guest that misbehaves
//! only breaks itself.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

/// Set in the environment of the stage-2 agent.
pub const VM_ENV: &str = "BULKHEAD_VM";
/// Name of the virtio-serial port carrying the guest channel.
pub const PORT_NAME: &str = "org.bulkhead.qrexec";
/// Printed on the console by a probe boot (`bulkhead.probe` on the kernel
/// command line), which the host's accelerator trial looks for.
pub const PROBE_OK: &str = "BULKHEAD-PROBE-OK";
/// Modules to load, in order, one file name per line (written by the
/// initramfs builder).
const MODULE_ORDER: &str = "/lib/modules/bulkhead/order";
const ROOT_AGENT: &str = "/usr/bin/bulkhead-agent";

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn mnt(
    src: &str,
    at: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    let _ = fs::create_dir_all(at);
    ctx(
        mount(Some(src), at, Some(fstype), flags, data),
        &format!("mount {src} ({fstype}) on {at}"),
    )
}

/// Stage 1: PID 1 of the initramfs. Never returns.
pub fn stage1() -> ! {
    if let Err(e) = stage1_inner() {
        eprintln!("bulkhead-agent (initramfs): {e}; powering off");
    }
    power_off();
}

fn stage1_inner() -> Result<(), String> {
    let none: Option<&str> = None;
    mnt("proc", "/proc", "proc", MsFlags::empty(), none)?;
    mnt("sysfs", "/sys", "sysfs", MsFlags::empty(), none)?;
    mnt("devtmpfs", "/dev", "devtmpfs", MsFlags::empty(), none)?;
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let arg = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key).map(str::to_string))
    };
    if cmdline.split_whitespace().any(|w| w == "bulkhead.probe") {
        println!("{PROBE_OK}");
        return Ok(());
    }
    load_modules();
    let disks = find_disks(&["root", "private", "volatile"], Duration::from_secs(10));
    let disk = |name: &str| {
        disks
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| format!("no '{name}' disk"))
    };
    let root = disk("root")?;
    let sysroot = "/sysroot";
    if arg("bulkhead.root=").as_deref() == Some("overlay") {
        // The template's root, never written; writes go to the volatile disk.
        mnt(&root, "/mnt/lower", "ext4", MsFlags::MS_RDONLY, none)?;
        mnt(
            &disk("volatile")?,
            "/mnt/volatile",
            "ext4",
            MsFlags::empty(),
            none,
        )?;
        for d in ["/mnt/volatile/root-upper", "/mnt/volatile/root-work"] {
            ctx(fs::create_dir_all(d), d)?;
        }
        mnt(
            "overlay",
            sysroot,
            "overlay",
            MsFlags::empty(),
            Some("lowerdir=/mnt/lower,upperdir=/mnt/volatile/root-upper,workdir=/mnt/volatile/root-work"),
        )?;
    } else {
        mnt(&root, sysroot, "ext4", MsFlags::empty(), none)?;
    }
    if let Ok(private) = disk("private") {
        mnt(
            &private,
            "/sysroot/rw",
            "ext4",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            none,
        )?;
        for (sub, at) in [
            ("home", "/sysroot/home"),
            ("usrlocal", "/sysroot/usr/local"),
        ] {
            let d = Path::new("/sysroot/rw").join(sub);
            match fs::symlink_metadata(&d) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    let _ = fs::rename(&d, d.with_extension("not-a-directory"));
                    ctx(fs::create_dir(&d), "mkdir /rw/{sub}")?;
                }
                Err(_) => ctx(fs::create_dir(&d), "mkdir /rw/{sub}")?,
            }
            let _ = fs::create_dir_all(at);
            ctx(
                mount(Some(&d), at, none, MsFlags::MS_BIND, none),
                &format!("bind /rw/{sub} on {at}"),
            )?;
        }
    }
    mnt(
        "tmpfs",
        "/sysroot/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755"),
    )?;
    ctx(
        fs::create_dir_all("/sysroot/run/bulkhead"),
        "mkdir /run/bulkhead",
    )?;
    for d in ["/dev", "/proc", "/sys"] {
        let to = format!("{sysroot}{d}");
        let _ = fs::create_dir_all(&to);
        ctx(
            mount(Some(d), to.as_str(), none, MsFlags::MS_MOVE, none),
            &format!("move {d}"),
        )?;
    }
    ctx(nix::unistd::chdir(sysroot), "chdir /sysroot")?;
    ctx(
        mount(Some("."), "/", none, MsFlags::MS_MOVE, none),
        "move the root",
    )?;
    ctx(nix::unistd::chroot("."), "chroot")?;
    ctx(nix::unistd::chdir("/"), "chdir /")?;
    let prog = CString::new(ROOT_AGENT).map_err(|e| e.to_string())?;
    let env = [
        CString::new(format!("{VM_ENV}=1")).map_err(|e| e.to_string())?,
        CString::new("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .map_err(|e| e.to_string())?,
    ];
    let e = nix::unistd::execve(&prog, std::slice::from_ref(&prog), &env);
    Err(format!(
        "cannot run {ROOT_AGENT} from the root volume: {e:?}"
    ))
}

/// Loads the modules listed by the initramfs builder (dependencies first).
fn load_modules() {
    let Ok(order) = fs::read_to_string(MODULE_ORDER) else {
        return;
    };
    let dir = Path::new(MODULE_ORDER).parent().unwrap_or(Path::new("/"));
    for name in order.lines().filter(|l| !l.is_empty()) {
        let path = dir.join(name);
        let r = fs::File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty())
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = r {
            if !e.contains("EEXIST") {
                eprintln!("bulkhead-agent (initramfs): module {name}: {e}");
            }
        }
    }
}

/// Block devices by virtio serial: `(serial, /dev/vdX)`, waiting until all
/// `want` are there or the deadline passes.
fn find_disks(want: &[&str], wait: Duration) -> Vec<(String, String)> {
    let deadline = Instant::now() + wait;
    loop {
        let mut found = Vec::new();
        if let Ok(d) = fs::read_dir("/sys/block") {
            for e in d.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Ok(s) = fs::read_to_string(e.path().join("serial")) {
                    let dev = format!("/dev/{name}");
                    if Path::new(&dev).exists() {
                        found.push((s.trim().to_string(), dev));
                    }
                }
            }
        }
        if want.iter().all(|w| found.iter().any(|(n, _)| n == w)) || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Syncs, makes the file systems read-only and powers the VM off.
pub fn power_off() -> ! {
    nix::unistd::sync();
    for m in ["/rw", "/"] {
        let _ = mount(
            None::<&str>,
            m,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        );
    }
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Only reached if the kernel refused; PID 1 exiting panics the kernel,
    // which (with panic=-1 and QEMU's -no-reboot) also ends the VM.
    std::process::exit(1);
}

/// Whether this agent is stage 2 of a `vm` qube.
pub fn is_vm() -> bool {
    std::env::var_os(VM_ENV).is_some()
}

/// Stage-2 setup as PID 1: the mounts and names `nsinit` provides on `ns`.
pub fn stage2_setup() {
    let _ = mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=620,ptmxmode=666"),
    );
    let _ = mnt(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    );
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(name) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bulkhead.name="))
    {
        let _ = nix::unistd::sethostname(name);
    }
    if let Err(e) = bulkhead_sys::net::loopback_up() {
        eprintln!("bulkhead-agent: cannot bring up lo: {e}");
    }
}

/// The virtio-serial port of the guest channel, by its name.
fn find_port() -> Option<PathBuf> {
    for e in fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        if fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == PORT_NAME) {
            return Some(Path::new("/dev").join(e.file_name()));
        }
    }
    None
}

/// Reads the port, waiting (instead of ending) while the host side is not
/// connected: the port reads as empty then.
struct PortReader(fs::File);

impl Read for PortReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Ok(0) => std::thread::sleep(Duration::from_millis(5)),
                other => return other,
            }
        }
    }
}

/// Starts the guest channel: streams to `agent_socket` and the control
/// port from the host, `relay.sock` connections to the host.
pub fn start_channel(agent_socket: PathBuf, relay_socket: &Path) -> Result<(), String> {
    let port = find_port().ok_or_else(|| format!("no virtio-serial port named {PORT_NAME}"))?;
    let file = ctx(
        fs::OpenOptions::new().read(true).write(true).open(&port),
        &port.display().to_string(),
    )?;
    let writer = ctx(file.try_clone(), "dup the port")?;
    let accept = move |p: u32| -> io::Result<UnixStream> {
        match p {
            bulkhead_vmchan::port::AGENT => UnixStream::connect(&agent_socket),
            bulkhead_vmchan::port::CONTROL => {
                let (a, b) = UnixStream::pair()?;
                std::thread::spawn(move || control(b));
                Ok(a)
            }
            _ => Err(io::Error::other("no such port")),
        }
    };
    let mux = bulkhead_vmchan::Mux::new(
        Box::new(writer),
        bulkhead_vmchan::Side::Guest,
        Box::new(accept),
    );
    let _ = fs::remove_file(relay_socket);
    let listener = ctx(UnixListener::bind(relay_socket), "listen on relay.sock")?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(relay_socket, fs::Permissions::from_mode(0o666));
    }
    let m2 = mux.clone();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            if let Err(e) = m2.open(bulkhead_vmchan::port::RELAY, c) {
                eprintln!("bulkhead-agent: guest channel: {e}");
            }
        }
    });
    std::thread::spawn(move || {
        let r = mux.run(PortReader(file));
        eprintln!("bulkhead-agent: guest channel ended: {r:?}");
    });
    Ok(())
}

/// The control port: `shutdown` stops the qube as SIGTERM does on `ns`.
fn control(mut s: UnixStream) {
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    if buf[..n].starts_with(b"shutdown") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(1),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}
