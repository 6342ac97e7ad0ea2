//! `bulkhead kill|pause|unpause` / `qvm-kill|qvm-pause|qvm-unpause`.

use anyhow::Result;

use crate::client::Client;
use crate::exit::Code;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Qubes.
    #[arg(required = true)]
    vms: Vec<String>,
}

/// Calls `method` (`admin.vm.Kill`, `.Pause` or `.Unpause`) on each qube.
pub fn run(client: &Client, method: &str, a: Args) -> Result<Code> {
    let mut code = Code::Ok;
    for vm in &a.vms {
        super::lookup(client, vm)?;
        if let Err(e) = client.call(method, "", vm, b"") {
            eprintln!("bulkhead: {vm}: {e}");
            code = crate::exit::code_for(&anyhow::Error::new(e));
        }
    }
    Ok(code)
}
