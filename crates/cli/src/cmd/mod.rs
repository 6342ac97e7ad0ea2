//! One file per subcommand; shared helpers here.

pub mod ask_agent;
pub mod check;
pub mod clone;
pub mod copy;
pub mod create;
pub mod events;
pub mod features;
pub mod kernel;
pub mod labels;
pub mod ls;
pub mod notes;
pub mod policy;
pub mod power;
pub mod prefs;
pub mod remove;
pub mod run;
pub mod shutdown;
pub mod start;
pub mod tags;
pub mod template;
pub mod volume;

use crate::client::{parse_vm_list, Client, VmEntry};
use crate::exit::usage;

/// Checks a qube name locally so the user gets a precise message.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    if name == "dom0" {
        return Ok(());
    }
    match bulkhead_proto::names::validate_vm_name(name) {
        Ok(()) => Ok(()),
        Err(e) => usage(format!("invalid qube name '{name}': {e}")),
    }
}

/// Looks a qube up (`admin.vm.List` on it), as Qubes tools do first.
pub fn lookup(client: &Client, name: &str) -> anyhow::Result<VmEntry> {
    check_name(name)?;
    let body = client.call("admin.vm.List", "", name, b"")?;
    parse_vm_list(&body)
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("bulkheadd listed nothing for '{name}'"))
}

/// `admin.vm.Create.<class>` (or `CreateInPool` when a pool is given), as
/// `qvm-create` sends it; `template` may be empty.
pub fn create_qube(
    client: &Client,
    class: &str,
    template: &str,
    name: &str,
    label: &str,
    pool: Option<&str>,
) -> anyhow::Result<()> {
    let mut payload = format!("name={name} label={label}");
    let method = match pool {
        Some(p) => {
            payload.push_str(&format!(" pool={p}"));
            format!("admin.vm.CreateInPool.{class}")
        }
        None => format!("admin.vm.Create.{class}"),
    };
    client.call(&method, template, "dom0", payload.as_bytes())?;
    Ok(())
}

/// The agent socket of a running qube, through the `qrexec.<qube>` link
/// bulkheadd keeps next to its Admin API socket (as Qubes' qrexec-daemon
/// does). The link is ours (a root-owned dir); its target is in the qube's
/// channel and `hal::guest` opens it without following symlinks.
pub fn agent_socket(socket: &std::path::Path, vm: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let link = socket
        .parent()
        .unwrap_or(std::path::Path::new("/run/bulkhead"))
        .join(format!("qrexec.{vm}"));
    std::fs::read_link(&link).with_context(|| {
        format!(
            "qube '{vm}' has no qrexec link at {}; is it running?",
            link.display()
        )
    })
}
