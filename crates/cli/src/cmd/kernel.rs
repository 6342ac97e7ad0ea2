//! `bulkhead kernel install|list`: guest kernels for `vm` qubes, in the
//! `linux-kernel` pool (`<dir_path>/<version>/{vmlinuz,initramfs}`, Qubes'
//! layout). `install` takes Debian's `linux-image-cloud-amd64` (downloaded
//! with `apt-get download` and unpacked with `dpkg -x`: never installed or
//! booted on the host), builds the initramfs around Bulkhead's agent, and
//! makes it the default kernel if there is none.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::client::Client;
use crate::exit::Code;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Install a guest kernel from Debian's linux-image-cloud-amd64.
    Install {
        /// A kernel .deb already downloaded (default: fetch the newest
        /// linux-image-cloud-amd64 with apt-get download).
        #[arg(long)]
        deb: Option<PathBuf>,
        /// The agent binary for the initramfs (default: next to this program).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Do not make it the default kernel.
        #[arg(long)]
        no_default: bool,
    },
    /// List installed kernels.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn run_cmd(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The kernels pool's directory, from the daemon.
pub fn pool_dir(client: &Client) -> Result<PathBuf> {
    let info = client.call("admin.pool.Info", "linux-kernel", "dom0", b"")?;
    info.lines()
        .find_map(|l| l.strip_prefix("dir_path="))
        .map(PathBuf::from)
        .context("bulkheadd did not say where the linux-kernel pool is")
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    match a.action {
        Action::List { json } => {
            let dir = pool_dir(client)?;
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.path().join("vmlinuz").exists())
                        .filter_map(|e| e.file_name().to_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            if json {
                println!("{}", serde_json::to_string(&names)?);
            } else {
                for n in names {
                    println!("{n}");
                }
            }
            Ok(Code::Ok)
        }
        Action::Install {
            deb,
            agent,
            no_default,
        } => install(client, deb, agent, no_default),
    }
}

fn step(n: u32, what: &str) {
    eprintln!("[{n}/4] {what}");
}

fn install(
    client: &Client,
    deb: Option<PathBuf>,
    agent: Option<PathBuf>,
    no_default: bool,
) -> Result<Code> {
    let agent = match agent {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("bulkhead-agent"),
    };
    if !agent.exists() {
        bail!(
            "agent binary {} not found; build the workspace or pass --agent",
            agent.display()
        );
    }
    let pool = pool_dir(client)?;
    std::fs::create_dir_all(&pool).with_context(|| format!("create {}", pool.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".install-")
        .tempdir_in(&pool)
        .context("create a work directory in the kernels pool")?;
    let deb = match deb {
        Some(d) => d,
        None => {
            step(1, "downloading linux-image-cloud-amd64 (apt-get download)");
            download(work.path())?
        }
    };
    step(2, &format!("unpacking {}", deb.display()));
    let x = work.path().join("x");
    run_cmd(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x),
        "dpkg-deb -x",
    )?;
    let vmlinuz = std::fs::read_dir(x.join("boot"))
        .context("the package has no /boot")?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .context("the package has no /boot/vmlinuz-*; is it a linux-image package?")?;
    let version = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    bulkhead_proto::names::validate_token(&version)
        .map_err(|e| anyhow::anyhow!("kernel version '{version}': {e}"))?;
    let modules = x.join("lib/modules").join(&version);
    step(
        3,
        &format!("building the initramfs of {version} (agent + virtio modules)"),
    );
    let staged = work.path().join("kernel");
    std::fs::create_dir(&staged)?;
    std::fs::copy(&vmlinuz, staged.join("vmlinuz"))?;
    std::fs::File::open(staged.join("vmlinuz"))?.sync_all()?;
    crate::initramfs::build(&agent, &modules, &staged.join("initramfs"))?;
    step(
        4,
        &format!("installing into {}", pool.join(&version).display()),
    );
    let dest = pool.join(&version);
    if dest.exists() {
        let old = work.path().join("old");
        std::fs::rename(&dest, &old)?;
    }
    std::fs::rename(&staged, &dest)?;
    std::fs::File::open(&pool)?.sync_all()?;
    println!("installed kernel {version}");
    if !no_default {
        let cur = client.call("admin.property.Get", "default_kernel", "dom0", b"")?;
        // "default=True type=str " with nothing after it: unset.
        if cur.split_whitespace().nth(2).is_none() {
            client.call(
                "admin.property.Set",
                "default_kernel",
                "dom0",
                version.as_bytes(),
            )?;
            println!("default_kernel is now {version}");
        }
    }
    Ok(Code::Ok)
}

/// Downloads the newest `linux-image-*-cloud-amd64` the metapackage points at.
fn download(dir: &Path) -> Result<PathBuf> {
    let deps = run_cmd(
        Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]),
        "apt-cache depends linux-image-cloud-amd64 (run apt-get update first?)",
    )?;
    let pkg = deps
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .context("linux-image-cloud-amd64 names no kernel package; run apt-get update")?
        .to_string();
    // apt drops privileges to _apt for downloads: let it write here.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
    }
    run_cmd(
        Command::new("apt-get")
            .args(["download", "-q", &pkg])
            .current_dir(dir),
        &format!("apt-get download {pkg}"),
    )?;
    std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")
}
