//! `bulkheadd` binary: parse options, open the state, listen, serve.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bulkheadd::server::{bind_socket, Daemon};
use bulkheadd::store::Store;
use bulkheadd::sys;
use clap::Parser;

/// The Bulkhead host daemon: owns qube state and answers the Qubes Admin API.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Opts {
    /// Directory holding the durable state.
    #[arg(long, default_value = "/var/lib/bulkhead")]
    state_dir: PathBuf,
    /// Admin API socket; repeat to listen on several paths (e.g. also
    /// /run/qubesd.sock for Qubes' own tools).
    #[arg(long = "socket", default_value = "/run/bulkhead/qubesd.sock")]
    sockets: Vec<PathBuf>,
    /// Group whose members may use the socket (created if missing).
    #[arg(long, default_value = "bulkhead")]
    group: String,
    /// Start in the background: return once the socket answers.
    #[arg(long)]
    detach: bool,
    /// Write the daemon's pid here.
    #[arg(long)]
    pidfile: Option<PathBuf>,
    /// With --detach: append the daemon's log here.
    #[arg(long, default_value = "/var/log/bulkheadd.log")]
    log_file: PathBuf,
    /// Runtime directory (mounts of running qubes, `qrexec.<name>` links);
    /// default: the directory of the first --socket.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// The `vm` backend's helper; default: `bulkhead-vmm` next to this binary.
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// The `ns` backend's helper; default: `bulkhead-nsinit` next to this binary.
    #[arg(long)]
    nsinit: Option<PathBuf>,
    /// The per-qube qrexec relay; default: `bulkhead-qrexec-relay` next to this binary.
    #[arg(long)]
    relay: Option<PathBuf>,
    /// qrexec policy directory (`*.policy`, Qubes R4.1+ format); repeat for
    /// several, highest priority first.
    #[arg(long = "policy-dir", default_value = "/etc/bulkhead/policy.d")]
    policy_dirs: Vec<PathBuf>,
    /// Serve the Admin API on the state only, without running qubes.
    #[arg(long)]
    no_runtime: bool,
}

/// Says once, at start, which accelerator vm qubes get. Finding out may
/// boot a test guest (seconds), so it runs on its own thread.
fn announce_accelerator(rt: &bulkheadd::lifecycle::Runtime, kernel: Option<PathBuf>) {
    let Some(vm) = rt.backends().iter().find(|b| b.name() == "vm") else {
        return;
    };
    if vm.capabilities().reason.is_some() {
        return;
    }
    let say = |v: Option<(String, Option<String>)>| {
        match v {
        Some((a, None)) => tracing::info!("backend vm: qubes run with {a} acceleration"),
        Some((a, Some(why))) => tracing::warn!(
            "backend vm: KVM is not usable ({why}); vm qubes run under {} (software emulation: isolated, but slow to start)",
            a.to_uppercase()
        ),
        None => tracing::warn!(
            "backend vm: no guest kernel is installed, so vm qubes cannot start: run `bulkhead kernel install`"
        ),
    }
    };
    if let Some(v) = vm.accelerator(None) {
        return say(Some(v));
    }
    match kernel.filter(|k| k.join("vmlinuz").exists()) {
        None => say(None),
        Some(k) => {
            let cache = rt.accel_cache();
            std::thread::spawn(move || {
                let v = bulkhead_hal::vm::accel::decide(
                    &cache,
                    std::path::Path::new(bulkhead_hal::vm::QEMU),
                    &k,
                );
                say(Some((v.accel.name().to_string(), v.reason)));
            });
        }
    }
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    if opts.detach {
        return match detach(&opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bulkheadd: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BULKHEAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkheadd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Re-runs ourselves without --detach in a new process group, with output to
/// the log file, and waits until the first socket accepts connections.
fn detach(opts: &Opts) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find own executable")?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    if let Some(dir) = opts.log_file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&opts.log_file)
        .with_context(|| format!("cannot open log file {}", opts.log_file.display()))?;
    let mut child = std::process::Command::new(exe)
        .args(args)
        .env(DETACHED_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start the daemon process")?;
    let sock = &opts.sockets[0];
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "daemon exited during start ({status}); see {}",
                opts.log_file.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(sock).is_ok() {
            println!(
                "bulkheadd running (pid {}), socket {}",
                child.id(),
                sock.display()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!(
        "daemon did not answer on {} within 15 s; see {}",
        sock.display(),
        opts.log_file.display()
    )
}

/// Set for the background process started by `--detach`.
const DETACHED_ENV: &str = "BULKHEAD_DETACHED";

fn run(opts: Opts) -> Result<()> {
    if std::env::var_os(DETACHED_ENV).is_some() {
        // A background daemon keeps no controlling terminal (and leaves the
        // starter's process group, so its Ctrl-C does not reach us).
        nix::unistd::setsid().context("setsid")?;
        std::env::remove_var(DETACHED_ENV);
    }
    sys::raise_nofile_limit();
    // Files and dirs the daemon creates get explicit modes where they must be
    // private; everything else (run dirs qubes traverse) is world-searchable.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let gid = sys::ensure_group(&opts.group)
        .with_context(|| format!("cannot set up group '{}'", opts.group))?;
    let (store, app) = Store::open(&opts.state_dir, sys::host_info())?;
    tracing::info!(
        "state {} loaded: {} qubes",
        store.state_path().display(),
        app.qubes.len()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let runtime = if opts.no_runtime {
        None
    } else {
        let run_dir = opts.run_dir.clone().unwrap_or_else(|| {
            opts.sockets[0]
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/run/bulkhead"))
        });
        let exe = std::env::current_exe().context("cannot find own executable")?;
        let cfg = bulkheadd::lifecycle::RuntimeConfig {
            state_dir: opts.state_dir.clone(),
            run_dir: run_dir.clone(),
            nsinit: opts
                .nsinit
                .clone()
                .unwrap_or_else(|| exe.with_file_name("bulkhead-nsinit")),
            vmm: opts
                .vmm
                .clone()
                .unwrap_or_else(|| exe.with_file_name("bulkhead-vmm")),
            relay: opts
                .relay
                .clone()
                .unwrap_or_else(|| exe.with_file_name("bulkhead-qrexec-relay")),
            policy_dirs: opts.policy_dirs.clone(),
        };
        let r = bulkheadd::lifecycle::Runtime::new(cfg)
            .with_context(|| format!("cannot set up the qube runtime in {}", run_dir.display()))?;
        for b in r.backends() {
            let caps = b.capabilities();
            match caps.reason {
                None => tracing::info!("backend {}: usable", b.name()),
                Some(why) => tracing::warn!("backend {}: not usable here: {why}", b.name()),
            }
        }
        let kernel = bulkheadd::model::props::value(
            &app,
            bulkheadd::model::props::Holder::Global,
            "default_kernel",
        )
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .filter(|k| !k.is_empty())
        .map(|k| r.kernels_dir().join(k));
        announce_accelerator(&r, kernel);
        Some(r)
    };
    rt.block_on(async move {
        let daemon = Daemon::start_with_runtime(store, app, Some(gid.as_raw()), runtime);
        // Before any client can race it: re-adopt running qubes, clean up
        // after the others.
        daemon.recover().await;
        if let Some(rt) = daemon.runtime() {
            let path = rt.policy_socket();
            let l = bulkheadd::qrexec::bind_policy_socket(&path)
                .with_context(|| format!("cannot listen on {}", path.display()))?;
            tokio::spawn(bulkheadd::qrexec::serve_policy(daemon.clone(), l));
            let ask = rt.ask_socket();
            let l = bind_socket(&ask, Some(gid))?;
            tokio::spawn(bulkheadd::qrexec::serve_ask(daemon.clone(), l));
        }
        let mut servers = Vec::new();
        for path in &opts.sockets {
            let listener = bind_socket(path, Some(gid))?;
            tracing::info!("listening on {}", path.display());
            servers.push(tokio::spawn(daemon.clone().serve(listener)));
        }
        if let Some(p) = &opts.pidfile {
            std::fs::write(p, format!("{}\n", std::process::id()))
                .with_context(|| format!("cannot write pidfile {}", p.display()))?;
        }
        {
            let d = daemon.clone();
            tokio::spawn(async move { d.autostart().await });
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        for s in servers {
            s.abort();
        }
        // Wait for an in-flight write to finish persisting before exit.
        let _ = tokio::time::timeout(Duration::from_secs(5), daemon.quiesce()).await;
        // Running qubes stay up; the next daemon re-adopts them.
        let _ = tokio::time::timeout(Duration::from_secs(5), daemon.detach_all()).await;
        for path in &opts.sockets {
            let _ = std::fs::remove_file(path);
        }
        if let Some(p) = &opts.pidfile {
            let _ = std::fs::remove_file(p);
        }
        // Exit without running destructors: an instance whose slot was busy
        // (a start in progress) could not be detached above, and dropping it
        // would kill its qube.
        std::process::exit(0)
    })
}
