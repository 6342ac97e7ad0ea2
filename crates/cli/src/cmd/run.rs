//! `bulkhead run` / `qvm-run`: run a command in a qube (starting it if
//! needed) through `qubes.VMExec`, as the qube's default user unless `-u`
//! says otherwise, with stdin, stdout, stderr and the exit code passed
//! through. `bulkhead run QUBE -- CMD ARG…` runs exactly that argv;
//! `qvm-run QUBE 'shell command'` runs it with `/bin/sh -c`, as Qubes does.

use std::path::Path;

use anyhow::{Context, Result};

use crate::client::Client;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run as this user (default: the qube's default_user).
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Pass stdin, stdout and stderr (always on for `bulkhead run`).
    #[arg(long, short = 'p')]
    pass_io: bool,
    /// Fail instead of starting a halted qube.
    #[arg(long, short = 'n')]
    no_autostart: bool,
    /// Run the words as a shell command line (`sh -c`), as qvm-run does.
    #[arg(long)]
    shell: bool,
    /// Run in a new disposable made from this disposable template (or, with
    /// `--dispvm` alone, the global default_dispvm), removed afterwards; the
    /// qube argument is then omitted.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    dispvm: Option<String>,
    /// Set by the `qvm-run` name: Qubes' defaults (shell, no I/O unless -p).
    #[arg(long, hide = true)]
    qvm_run: bool,
    /// The qube.
    vm: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Returns the command's exit code.
pub fn run(client: &Client, socket: &Path, mut a: Args) -> Result<u8> {
    if let Some(tmpl) = a.dispvm.clone() {
        // No qube argument: what clap took as the qube is the command.
        a.command.insert(0, std::mem::take(&mut a.vm));
        let dest = if tmpl.is_empty() {
            "dom0"
        } else {
            tmpl.as_str()
        };
        let name = client
            .call("admin.vm.CreateDisposable", "", dest, b"")
            .context("cannot create a disposable")?;
        a.vm = name.clone();
        if a.command.iter().all(|c| c.is_empty()) {
            return crate::exit::usage("name the command to run in the disposable");
        }
        let r = run_in(client, socket, &a);
        // Killing a disposable removes it.
        let _ = client.call("admin.vm.Kill", "", &name, b"");
        return r;
    }
    run_in(client, socket, &a)
}

fn run_in(client: &Client, socket: &Path, a: &Args) -> Result<u8> {
    if a.command.is_empty() {
        return crate::exit::usage("name the command to run: bulkhead run QUBE -- CMD [ARG...]");
    }
    super::lookup(client, &a.vm)?;
    let state = client.call("admin.vm.CurrentState", "", &a.vm, b"")?;
    let running = state.contains("power_state=Running");
    if !running {
        if state.contains("power_state=Paused") {
            anyhow::bail!(
                "qube '{}' is paused; unpause it first (bulkhead unpause {})",
                a.vm,
                a.vm
            );
        }
        if a.no_autostart {
            anyhow::bail!(
                "qube '{}' is not running (and --no-autostart was given)",
                a.vm
            );
        }
        if state.contains("power_state=Halted") {
            client
                .call("admin.vm.Start", "", &a.vm, b"")
                .with_context(|| format!("cannot start '{}'", a.vm))?;
        }
    }
    let user = match &a.user {
        Some(u) => u.clone(),
        None => client
            .call("admin.vm.property.Get", "default_user", &a.vm, b"")?
            .rsplit(' ')
            .next()
            .unwrap_or("user")
            .to_string(),
    };
    let argv: Vec<String> = if a.shell || a.qvm_run {
        vec!["/bin/sh".into(), "-c".into(), a.command.join(" ")]
    } else {
        a.command.clone()
    };
    let service = format!(
        "QUBESRPC qubes.VMExec+{} dom0",
        bulkhead_proto::vmexec::encode(&argv)
    );
    let target = super::agent_socket(socket, &a.vm)?;
    let pass = a.pass_io || !a.qvm_run;
    let code = if pass {
        bulkhead_hal::guest::exec(
            &target,
            &user,
            &service,
            std::io::stdin(),
            std::io::stdout(),
            std::io::stderr(),
        )
    } else {
        bulkhead_hal::guest::exec(
            &target,
            &user,
            &service,
            std::io::empty(),
            std::io::sink(),
            std::io::sink(),
        )
    }
    .with_context(|| format!("running a command in '{}'", a.vm))?;
    Ok(u8::try_from(code).unwrap_or(125))
}
