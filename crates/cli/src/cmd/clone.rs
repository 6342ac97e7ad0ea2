//! `bulkhead clone` / `qvm-clone`: copies a qube's definition (properties,
//! features, tags, notes) and its persistent volumes (reflinked where the
//! pool's file system allows, so the copy takes no time or space).

use anyhow::Result;

use crate::client::{parse_get_all, CallError, Client};
use crate::exit::Code;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Qube to copy.
    source: String,
    /// Name of the copy.
    name: String,
    /// Class of the copy (default: the source's).
    #[arg(long = "class", short = 'C')]
    class: Option<String>,
    /// Storage pool for the copy.
    #[arg(long = "pool", short = 'P')]
    pool: Option<String>,
}

/// Properties that belong to the qube's identity or are set at creation.
const NOT_COPIED: [&str; 6] = ["name", "qid", "uuid", "label", "template", "dispid"];

pub fn run(client: &Client, a: Args) -> Result<Code> {
    let src = super::lookup(client, &a.source)?;
    super::check_name(&a.name)?;
    let props = parse_get_all(&client.call("admin.vm.property.GetAll", "", &a.source, b"")?);
    let get = |n: &str| {
        props
            .iter()
            .find(|p| p.name == n)
            .map(|p| p.value.clone())
            .unwrap_or_default()
    };
    let class = a.class.clone().unwrap_or(src.class.clone());
    super::create_qube(
        client,
        &class,
        &get("template"),
        &a.name,
        &get("label"),
        a.pool.as_deref(),
    )?;
    if let Err(e) = copy_rest(client, &a.source, &a.name, &props) {
        let undo = client.call("admin.vm.Remove", "", &a.name, b"");
        let note = match undo {
            Ok(_) => "the partial copy was removed".to_string(),
            Err(u) => format!("removing the partial copy '{}' failed too: {u}", a.name),
        };
        return Err(e.context(format!(
            "cloning '{}' to '{}' failed; {note}",
            a.source, a.name
        )));
    }
    Ok(Code::Ok)
}

fn copy_rest(client: &Client, from: &str, to: &str, props: &[crate::client::Prop]) -> Result<()> {
    let writable = client.call("admin.vm.property.List", "", to, b"")?;
    for p in props {
        if p.is_default
            || NOT_COPIED.contains(&p.name.as_str())
            || !writable.lines().any(|l| l == p.name)
        {
            continue;
        }
        match client.call("admin.vm.property.Set", &p.name, to, p.value.as_bytes()) {
            Ok(_) => {}
            // Read-only on this class: nothing to copy.
            Err(CallError::Exception { ref message, .. }) if message.contains("read-only") => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("copying property {}", p.name)))
            }
        }
    }
    for f in client.call("admin.vm.feature.List", "", from, b"")?.lines() {
        let v = client.call("admin.vm.feature.Get", f, from, b"")?;
        client.call("admin.vm.feature.Set", f, to, v.as_bytes())?;
    }
    for t in client.call("admin.vm.tag.List", "", from, b"")?.lines() {
        if !t.starts_with("created-by-") {
            client.call("admin.vm.tag.Set", t, to, b"")?;
        }
    }
    for vol in client.call("admin.vm.volume.List", "", from, b"")?.lines() {
        let info = client.call("admin.vm.volume.Info", vol, from, b"")?;
        let persistent = info.lines().any(|l| l == "save_on_stop=True")
            && info.lines().any(|l| l == "snap_on_start=False");
        if !persistent
            || !client
                .call("admin.vm.volume.List", "", to, b"")?
                .lines()
                .any(|v| v == vol)
        {
            continue;
        }
        let token = client.call("admin.vm.volume.CloneFrom", vol, from, b"")?;
        client
            .call("admin.vm.volume.CloneTo", vol, to, token.as_bytes())
            .map_err(|e| anyhow::Error::new(e).context(format!("copying volume {from}:{vol}")))?;
    }
    let notes = client.call("admin.vm.notes.Get", "", from, b"")?;
    if !notes.is_empty() {
        client.call("admin.vm.notes.Set", "", to, notes.as_bytes())?;
    }
    Ok(())
}
