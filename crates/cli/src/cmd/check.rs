//! `bulkhead check` / `qvm-check`: does a qube exist, run, sit paused, halted?
//! Exit 0 when every named qube passes.

use anyhow::Result;

use crate::client::Client;
use crate::exit::Code;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Qubes.
    #[arg(required = true)]
    vms: Vec<String>,
    /// Check that it is running.
    #[arg(long)]
    running: bool,
    /// Check that it is paused.
    #[arg(long)]
    paused: bool,
    /// Check that it is halted.
    #[arg(long)]
    halted: bool,
    /// Check that it is a template.
    #[arg(long)]
    template: bool,
    /// Print nothing.
    #[arg(long, short = 'q')]
    quiet: bool,
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    let mut ok = true;
    for vm in &a.vms {
        let entry = match super::lookup(client, vm) {
            Ok(e) => e,
            Err(_) => {
                if !a.quiet {
                    println!("{vm}: no such qube");
                }
                ok = false;
                continue;
            }
        };
        let state = entry.state().unwrap_or("NA").to_string();
        let (pass, what) = if a.running {
            (state == "Running", "running")
        } else if a.paused {
            (state == "Paused", "paused")
        } else if a.halted {
            (state == "Halted", "halted")
        } else if a.template {
            (entry.class == "TemplateVM", "a template")
        } else {
            (true, "existing")
        };
        if !a.quiet {
            println!("{vm}: {}{what} ({state})", if pass { "" } else { "not " });
        }
        ok &= pass;
    }
    Ok(if ok { Code::Ok } else { Code::Failed })
}
