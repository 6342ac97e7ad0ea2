//! `bulkhead remove` / `qvm-remove`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Result;

use crate::client::Client;
use crate::exit::{usage, Code};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Qubes to remove.
    #[arg(required = true)]
    vms: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'f', visible_alias = "yes", short_alias = 'y')]
    force: bool,
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    for v in &a.vms {
        super::lookup(client, v)?;
    }
    if !a.force {
        if !std::io::stdin().is_terminal() {
            return usage("refusing to remove without confirmation; pass --force");
        }
        print!(
            "This will completely remove {} and everything stored in it. Are you sure? [y/N] ",
            a.vms.join(", ")
        );
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            eprintln!("Not removing anything.");
            return Ok(Code::Failed);
        }
    }
    for v in &a.vms {
        client.call("admin.vm.Remove", "", v, b"")?;
    }
    Ok(Code::Ok)
}
