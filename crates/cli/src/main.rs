//! `bulkhead`: the user's tool for Bulkhead. Also answers to the Qubes tool
//! names (`qvm-ls`, `qvm-create`, `qvm-prefs`, `qubes-prefs`, `qvm-features`,
//! `qvm-tags`, `qvm-remove`, `qvm-clone`) when invoked under them, so Qubes
//! habits and scripts carry over.
//!
//! It only translates options into Admin API calls; every rule is enforced by
//! the daemon.

#![forbid(unsafe_code)]

mod client;
mod cmd;
mod exit;
mod initramfs;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::Client;

/// Security by isolation: manage qubes.
#[derive(Parser, Debug)]
#[command(name = "bulkhead", version, about, after_help = exit::EXIT_CODES_HELP)]
pub struct Cli {
    /// Admin API socket of bulkheadd.
    #[arg(
        long,
        global = true,
        env = "BULKHEAD_SOCKET",
        default_value = "/run/bulkhead/qubesd.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List qubes (qvm-ls).
    Ls(cmd::ls::Args),
    /// Create a qube (qvm-create).
    Create(cmd::create::Args),
    /// Remove qubes (qvm-remove).
    Remove(cmd::remove::Args),
    /// Copy a qube's definition to a new qube (qvm-clone).
    Clone(cmd::clone::Args),
    /// Show or change a qube's properties (qvm-prefs).
    Prefs(cmd::prefs::Args),
    /// Show or change global properties (qubes-prefs).
    GlobalPrefs(cmd::prefs::GlobalArgs),
    /// Show or change a qube's features (qvm-features).
    Features(cmd::features::Args),
    /// Show or change a qube's tags (qvm-tags).
    Tags(cmd::tags::Args),
    /// List, create or remove labels.
    Labels(cmd::labels::Args),
    /// Show or change a qube's notes.
    Notes(cmd::notes::Args),
    /// Print Admin API events as they happen.
    Events(cmd::events::Args),
    /// Start qubes (qvm-start).
    Start(cmd::start::Args),
    /// Shut qubes down (qvm-shutdown).
    Shutdown(cmd::shutdown::Args),
    /// Kill qubes at once (qvm-kill).
    Kill(cmd::power::Args),
    /// Freeze qubes (qvm-pause).
    Pause(cmd::power::Args),
    /// Thaw paused qubes (qvm-unpause).
    Unpause(cmd::power::Args),
    /// Check that qubes exist / run / are halted (qvm-check).
    Check(cmd::check::Args),
    /// Run a command in a qube, starting it if needed (qvm-run).
    Run(cmd::run::Args),
    /// Volumes: list, info, revisions, revert, resize (qvm-volume).
    Volume(cmd::volume::Args),
    /// Build templates.
    Template(cmd::template::Args),
    /// Guest kernels of vm qubes: install, list.
    Kernel(cmd::kernel::Args),
    /// Check the qrexec policy, or explain a decision.
    Policy(cmd::policy::Args),
    /// Copy host files into a qube's ~/QubesIncoming/dom0 (qvm-copy-to-vm in dom0).
    Copy(cmd::copy::Args),
    /// Answer qrexec `ask` rules in this terminal.
    AskAgent(cmd::ask_agent::Args),
}

/// Qubes tool names and the subcommand each maps to.
const ALIASES: &[(&str, &str)] = &[
    ("qvm-ls", "ls"),
    ("qvm-create", "create"),
    ("qvm-remove", "remove"),
    ("qvm-clone", "clone"),
    ("qvm-prefs", "prefs"),
    ("qubes-prefs", "global-prefs"),
    ("qvm-features", "features"),
    ("qvm-tags", "tags"),
    ("qvm-start", "start"),
    ("qvm-shutdown", "shutdown"),
    ("qvm-kill", "kill"),
    ("qvm-pause", "pause"),
    ("qvm-unpause", "unpause"),
    ("qvm-check", "check"),
    ("qvm-run", "run"),
    ("qvm-volume", "volume"),
];

/// Rewrites `qvm-ls ARGS` into `bulkhead ls ARGS`.
fn argv() -> Vec<String> {
    let mut args: Vec<String> = std::env::args().collect();
    let invoked = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some((_, sub)) = ALIASES.iter().find(|(alias, _)| *alias == invoked) {
        args[0] = "bulkhead".into();
        args.insert(1, (*sub).to_string());
        if invoked == "qvm-run" {
            args.insert(2, "--qvm-run".into());
        }
    }
    args
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(argv()) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::Code::Usage
            } else {
                exit::Code::Ok
            };
            let _ = e.print();
            return code.into();
        }
    };
    let client = Client::new(&cli.socket);
    let result = match cli.command {
        Command::Ls(a) => cmd::ls::run(&client, a),
        Command::Create(a) => cmd::create::run(&client, a),
        Command::Remove(a) => cmd::remove::run(&client, a),
        Command::Clone(a) => cmd::clone::run(&client, a),
        Command::Prefs(a) => cmd::prefs::run(&client, a),
        Command::GlobalPrefs(a) => cmd::prefs::run_global(&client, a),
        Command::Features(a) => cmd::features::run(&client, a),
        Command::Tags(a) => cmd::tags::run(&client, a),
        Command::Labels(a) => cmd::labels::run(&client, a),
        Command::Notes(a) => cmd::notes::run(&client, a),
        Command::Events(a) => cmd::events::run(&client, a),
        Command::Start(a) => cmd::start::run(&client, a),
        Command::Shutdown(a) => cmd::shutdown::run(&client, a),
        Command::Kill(a) => cmd::power::run(&client, "admin.vm.Kill", a),
        Command::Pause(a) => cmd::power::run(&client, "admin.vm.Pause", a),
        Command::Unpause(a) => cmd::power::run(&client, "admin.vm.Unpause", a),
        Command::Check(a) => cmd::check::run(&client, a),
        Command::Volume(a) => cmd::volume::run(&client, a),
        Command::Template(a) => cmd::template::run(&client, a),
        Command::Kernel(a) => cmd::kernel::run(&client, a),
        Command::Policy(a) => cmd::policy::run(&client, a),
        Command::AskAgent(a) => cmd::ask_agent::run(&cli.socket, a),
        Command::Copy(a) => cmd::copy::run(&client, &cli.socket, a),
        Command::Run(a) => {
            return match cmd::run::run(&client, &cli.socket, a) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("bulkhead: error: {e:#}");
                    // Qubes' qrexec failure code: the command never ran.
                    let c = exit::code_for(&e);
                    if c == exit::Code::Failed {
                        ExitCode::from(125)
                    } else {
                        c.into()
                    }
                }
            };
        }
    };
    match result {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("bulkhead: error: {e:#}");
            exit::code_for(&e).into()
        }
    }
}
