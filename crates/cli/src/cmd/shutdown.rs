//! `bulkhead shutdown` / `qvm-shutdown`: ask qubes to stop; after their
//! `shutdown_timeout` the daemon kills them.

use anyhow::Result;

use crate::client::{parse_vm_list, Client};
use crate::exit::{usage, Code};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Qubes to shut down.
    vms: Vec<String>,
    /// Every running qube (except dom0).
    #[arg(long)]
    all: bool,
    /// With --all: leave these running.
    #[arg(long)]
    exclude: Vec<String>,
    /// Wait until they have stopped.
    #[arg(long)]
    wait: bool,
    /// Shut down even if other running qubes use it as their netvm.
    #[arg(long)]
    force: bool,
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    let vms: Vec<String> = if a.all {
        parse_vm_list(&client.call("admin.vm.List", "", "dom0", b"")?)
            .into_iter()
            .filter(|v| v.name != "dom0" && v.state() != Some("Halted"))
            .filter(|v| !a.exclude.contains(&v.name))
            .map(|v| v.name)
            .collect()
    } else {
        if a.vms.is_empty() {
            return usage("name the qubes to shut down, or use --all");
        }
        a.vms.clone()
    };
    let mut arg = Vec::new();
    if a.force || a.all {
        arg.push("force");
    }
    if a.wait {
        arg.push("wait");
    }
    let arg = arg.join("+");
    // Start every shutdown first, then wait: qubes stop in parallel.
    let calls: Vec<_> = vms
        .iter()
        .map(|vm| {
            let (c, vm, arg) = (client.clone(), vm.clone(), arg.clone());
            std::thread::spawn(move || (vm.clone(), c.call("admin.vm.Shutdown", &arg, &vm, b"")))
        })
        .collect();
    let mut code = Code::Ok;
    for t in calls {
        if let Ok((vm, Err(e))) = t.join() {
            eprintln!("bulkhead: cannot shut down '{vm}': {e}");
            code = crate::exit::code_for(&anyhow::Error::new(e));
        }
    }
    Ok(code)
}
