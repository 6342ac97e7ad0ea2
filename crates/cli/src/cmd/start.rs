//! `bulkhead start` / `qvm-start`: start qubes; returns once each answers.

use anyhow::Result;

use crate::client::Client;
use crate::exit::Code;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Qubes to start.
    #[arg(required = true)]
    vms: Vec<String>,
    /// Do not fail if a qube is already running.
    #[arg(long, short = 'q')]
    quiet: bool,
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    let mut code = Code::Ok;
    for vm in &a.vms {
        super::lookup(client, vm)?;
        match client.call("admin.vm.Start", "", vm, b"") {
            Ok(_) => {}
            Err(e) if a.quiet && e.class() == Some("QubesVMNotHaltedError") => {}
            Err(e) => {
                eprintln!("bulkhead: cannot start '{vm}': {e}");
                code = crate::exit::code_for(&anyhow::Error::new(e));
            }
        }
    }
    Ok(code)
}
