//! `bulkhead template build minimal|debian-12`: builds a TemplateVM and
//! imports it as the template's root volume (Qubes' import protocol:
//! `internal.vm.volume.ImportBegin`, write the image, `ImportEnd`).
//!
//! - `minimal`: the host's static busybox (Debian's `busybox-static`) and
//!   Bulkhead's agent; needs no network.
//! - `debian-12`: Debian bookworm via `debootstrap` from a package mirror
//!   (progress shown), plus the agent, the `user` account and the qrexec
//!   services.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

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
    /// Build a template: `minimal` (busybox + agent, no network needed) or
    /// `debian-12` (debootstrap from a Debian mirror).
    Build {
        /// What to build.
        kind: String,
        /// Name of the TemplateVM (default: the kind).
        #[arg(long)]
        name: Option<String>,
        /// Label of a newly created template.
        #[arg(long, default_value = "black")]
        label: String,
        /// Static busybox to use.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// The agent binary (default: bulkhead-agent next to this program).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Debian mirror for debian-12.
        #[arg(long, default_value = "http://deb.debian.org/debian")]
        mirror: String,
        /// Extra packages for debian-12 (comma-separated).
        #[arg(long, default_value = "")]
        include: String,
    },
}

fn step(n: u32, total: u32, what: &str) {
    eprintln!("[{n}/{total}] {what}");
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    let Action::Build {
        kind,
        name,
        label,
        busybox,
        agent,
        mirror,
        include,
    } = a.action;
    if kind != "minimal" && kind != "debian-12" {
        bail!("unknown template '{kind}': choose minimal or debian-12");
    }
    let name = name.unwrap_or(kind.clone());
    super::check_name(&name)?;
    let agent = match agent {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("bulkhead-agent"),
    };
    if kind == "minimal" && !busybox.exists() {
        bail!(
            "{} not found; install it with `apt-get install busybox-static`",
            busybox.display()
        );
    }
    if kind == "debian-12"
        && Command::new("debootstrap")
            .arg("--version")
            .output()
            .is_err()
    {
        bail!("debootstrap not found; install it with `apt-get install debootstrap`");
    }
    if !agent.exists() {
        bail!(
            "agent binary {} not found; build the workspace or pass --agent",
            agent.display()
        );
    }
    let t0 = Instant::now();
    // Under /var/tmp: a Debian tree is too big for a RAM-backed /tmp.
    let dir = tempfile::Builder::new()
        .prefix("bulkhead-template-")
        .tempdir_in("/var/tmp")
        .context("cannot create a temporary directory in /var/tmp")?;
    let root = dir.path().join("root");
    if kind == "minimal" {
        step(
            1,
            4,
            "assembling the root tree (busybox, agent, qrexec services)",
        );
        minimal_tree(&root, &busybox, &agent)?;
    } else {
        step(1, 4, &format!("debootstrap bookworm from {mirror}"));
        debian_tree(&root, &agent, &mirror, &include)?;
    }

    step(2, 4, &format!("creating TemplateVM '{name}'"));
    match super::lookup(client, &name) {
        Ok(e) if e.class != "TemplateVM" => bail!(
            "'{name}' exists and is a {}, not a TemplateVM; pick another --name",
            e.class
        ),
        Ok(e) if e.state() != Some("Halted") => {
            bail!("template '{name}' is running; shut it down first")
        }
        Ok(_) => eprintln!(
            "      '{name}' exists; its root is replaced (the old one stays as a revision)"
        ),
        Err(_) => {
            client.call(
                "admin.vm.Create.TemplateVM",
                "",
                "dom0",
                format!("name={name} label={label}").as_bytes(),
            )?;
        }
    }

    step(3, 4, "writing the root image (mkfs.ext4 -d)");
    let begin = client.call("internal.vm.volume.ImportBegin", "root", &name, b"")?;
    let (size, path) = begin
        .split_once(' ')
        .context("unexpected ImportBegin reply")?;
    let size: u64 = size
        .parse()
        .context("unexpected size in ImportBegin reply")?;
    let made = mkfs(Path::new(path), &root, size);
    if let Err(e) = made {
        let _ = client.call("internal.vm.volume.ImportEnd", "root", &name, b"fail");
        return Err(e);
    }
    step(4, 4, "committing the image");
    client.call("internal.vm.volume.ImportEnd", "root", &name, b"ok")?;
    eprintln!(
        "template '{name}' built in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(Code::Ok)
}

fn mkfs(image: &Path, tree: &Path, size: u64) -> Result<()> {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", "root"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg("-d")
        .arg(tree)
        .arg(image)
        .arg(format!("{}k", size / 1024))
        .output()
        .context("cannot run mkfs.ext4; install e2fsprogs")?;
    if !out.status.success() {
        bail!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn write(root: &Path, rel: &str, text: &str, mode: u32) -> Result<()> {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies a binary and the shared libraries `ldd` lists for it (replacing
/// libraries already in the tree only if `replace_libs`).
fn install_binary(root: &Path, bin: &Path, dest: &str, replace_libs: bool) -> Result<()> {
    let target = root.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().unwrap_or(root))?;
    std::fs::copy(bin, &target).with_context(|| format!("copy {}", bin.display()))?;
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("cannot run ldd")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(lib) = line.split_whitespace().find(|w| w.starts_with('/')) {
            let t = root.join(lib.trim_start_matches('/'));
            if replace_libs || !t.exists() {
                std::fs::create_dir_all(t.parent().unwrap_or(root))?;
                std::fs::copy(lib, &t).with_context(|| format!("copy {lib}"))?;
            }
        }
    }
    Ok(())
}

/// Runs debootstrap with a one-line progress display, then adds what a
/// qube needs: the agent, the `user` account, the qrexec services.
fn debian_tree(root: &Path, agent: &Path, mirror: &str, include: &str) -> Result<()> {
    use std::io::{BufRead, Write};
    let mut cmd = Command::new("debootstrap");
    cmd.args(["--variant=minbase", "--merged-usr"]);
    let mut pkgs = vec!["ca-certificates", "procps", "less"];
    pkgs.extend(include.split(',').filter(|p| !p.is_empty()));
    cmd.arg(format!("--include={}", pkgs.join(",")));
    cmd.args(["bookworm"]).arg(root).arg(mirror);
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run debootstrap")?;
    let stderr = child.stderr.take();
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let out = std::io::BufReader::new(child.stdout.take().context("no debootstrap output")?);
    let (mut phase, mut n) = ("", 0u32);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    for line in out.lines() {
        let line = line?;
        let Some(msg) = line.strip_prefix("I: ") else {
            continue;
        };
        // debootstrap's own verbs, folded into the four phases users see.
        let p = match msg.split_whitespace().next().unwrap_or("") {
            "Retrieving" | "Validating" => "download",
            "Extracting" => "extract",
            "Unpacking" | "Installing" => "unpack",
            "Configuring" => "configure",
            _ => continue,
        };
        if p != phase {
            if !phase.is_empty() && !tty {
                eprintln!("      {phase}: {n} done");
            }
            phase = p;
            n = 0;
        }
        n += 1;
        if tty {
            let mut e = std::io::stderr();
            let item: String = msg.chars().take(50).collect();
            let _ = write!(e, "\r\x1b[K      {phase:<10} {n:>4}  {item}");
            let _ = e.flush();
        }
    }
    if tty {
        eprintln!();
    } else if !phase.is_empty() {
        eprintln!("      {phase}: {n} done");
    }
    let status = child.wait()?;
    let errs = errs.join().unwrap_or_default();
    if !status.success() {
        let log = root.join("debootstrap/debootstrap.log");
        bail!(
            "debootstrap failed ({status}): {}{}",
            errs.trim(),
            if log.exists() {
                format!("; see {}", log.display())
            } else {
                String::new()
            }
        );
    }
    // The agent: Debian already has its libraries (same glibc family); copy
    // only what is missing.
    install_binary(root, agent, "/usr/bin/bulkhead-agent", false)?;
    let useradd = Command::new("chroot")
        .arg(root)
        .args([
            "useradd",
            "-M",
            "-U",
            "-u",
            "1000",
            "-d",
            "/home/user",
            "-s",
            "/bin/bash",
            "user",
        ])
        .output()
        .context("cannot run chroot useradd")?;
    if !useradd.status.success() {
        bail!(
            "adding the user account failed: {}",
            String::from_utf8_lossy(&useradd.stderr).trim()
        );
    }
    for d in ["rw", "etc/qubes-rpc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    qrexec_services(root, "/bin/bash")?;
    // Downloaded packages are not part of the template.
    if let Ok(entries) = std::fs::read_dir(root.join("var/cache/apt/archives")) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

fn minimal_tree(root: &Path, busybox: &Path, agent: &Path) -> Result<()> {
    for (d, mode) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("usr/local", 0o755),
        ("etc/qubes-rpc", 0o755),
        ("etc/skel", 0o755),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("rw", 0o755),
        ("home", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("var/tmp", 0o1777),
        ("var/log", 0o755),
    ] {
        let p = root.join(d);
        std::fs::create_dir_all(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox")).context("copy busybox")?;
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .context("busybox --list-full")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet.contains("..") || applet == "bin/busybox" {
            continue;
        }
        let link = root.join(applet);
        if link.symlink_metadata().is_err() {
            if let Some(d) = link.parent() {
                std::fs::create_dir_all(d)?;
            }
            symlink("/bin/busybox", &link)?;
        }
    }
    install_binary(root, agent, "/usr/bin/bulkhead-agent", true)?;
    write(root, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", 0o644)?;
    write(
        root,
        "etc/group",
        "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n",
        0o644,
    )?;
    write(root, "etc/os-release", "NAME=\"Bulkhead minimal\"\nID=bulkhead-minimal\nPRETTY_NAME=\"Bulkhead minimal template (busybox)\"\n", 0o644)?;
    write(
        root,
        "etc/skel/.profile",
        "export PS1='[\\u@\\h \\W]\\$ '\n",
        0o644,
    )?;
    qrexec_services(root, "/bin/sh")
}

/// The standard services every template has: VMShell (with `shell`),
/// VMExec (the agent binary serves it when called by that name), GetDate.
fn qrexec_services(root: &Path, shell: &str) -> Result<()> {
    write(
        root,
        "etc/qubes-rpc/qubes.VMShell",
        &format!("#!/bin/sh\nexec {shell}\n"),
        0o755,
    )?;
    write(
        root,
        "etc/qubes-rpc/qubes.GetDate",
        "#!/bin/sh\nexec date -u -Iseconds\n",
        0o755,
    )?;
    symlink(
        "/usr/bin/bulkhead-agent",
        root.join("etc/qubes-rpc/qubes.VMExec"),
    )?;
    for svc in ["qubes.Filecopy", "qubes.OpenInVM", "qubes.OpenURL"] {
        symlink(
            "/usr/bin/bulkhead-agent",
            root.join("etc/qubes-rpc").join(svc),
        )?;
    }
    // TCP to the qube's own loopback, port from the argument (Qubes' link).
    symlink(
        "/dev/tcp/127.0.0.1",
        root.join("etc/qubes-rpc/qubes.ConnectTCP"),
    )?;
    // Calls to other qubes and file copy (the agent binary under Qubes' names).
    for tool in [
        "qrexec-client-vm",
        "qvm-connect-tcp",
        "qvm-open-in-vm",
        "qvm-open-in-dvm",
        "qvm-copy",
        "qvm-copy-to-vm",
        "qvm-move",
        "qvm-move-to-vm",
    ] {
        let link = root.join("usr/bin").join(tool);
        let _ = std::fs::remove_file(&link);
        symlink("bulkhead-agent", link)?;
    }
    Ok(())
}
