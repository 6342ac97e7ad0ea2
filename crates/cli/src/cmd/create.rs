//! `bulkhead create` / `qvm-create`.

use anyhow::{Context, Result};

use crate::client::Client;
use crate::exit::{usage, Code};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Name of the new qube.
    name: String,
    /// Label (colour): red, orange, yellow, green, gray, blue, purple, black or a custom one.
    #[arg(long, short = 'l')]
    label: String,
    /// Template to base the qube on (AppVM: a TemplateVM; DispVM: a disposable template).
    #[arg(long, short = 't')]
    template: Option<String>,
    /// Class: AppVM (default), TemplateVM, StandaloneVM or DispVM.
    #[arg(long = "class", short = 'C', default_value = "AppVM")]
    class: String,
    /// Storage pool for the qube's volumes.
    #[arg(long = "pool", short = 'P')]
    pool: Option<String>,
    /// Set a property after creation: NAME=VALUE (repeatable).
    #[arg(long = "prop", visible_alias = "property")]
    props: Vec<String>,
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    super::check_name(&a.name)?;
    if !["AppVM", "TemplateVM", "StandaloneVM", "DispVM"].contains(&a.class.as_str()) {
        return usage(format!(
            "unknown class '{}': use AppVM, TemplateVM, StandaloneVM or DispVM",
            a.class
        ));
    }
    let mut props = Vec::new();
    for p in &a.props {
        match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => props.push((k.to_string(), v.to_string())),
            _ => return usage(format!("--prop '{p}' must be NAME=VALUE")),
        }
    }
    let labels = client.call("admin.label.List", "", "dom0", b"")?;
    if !labels.lines().any(|l| l == a.label) {
        return usage(format!(
            "no label '{}'; choose one of: {}",
            a.label,
            labels.lines().collect::<Vec<_>>().join(", ")
        ));
    }
    super::create_qube(
        client,
        &a.class,
        a.template.as_deref().unwrap_or(""),
        &a.name,
        &a.label,
        a.pool.as_deref(),
    )?;
    for (k, v) in &props {
        if let Err(e) = client.call("admin.vm.property.Set", k, &a.name, v.as_bytes()) {
            // Leave nothing half-made: take the new qube away again.
            let undo = client.call("admin.vm.Remove", "", &a.name, b"");
            let note = match undo {
                Ok(_) => format!("qube '{}' was not kept", a.name),
                Err(u) => format!(
                    "and removing the half-made qube '{}' failed too: {u}",
                    a.name
                ),
            };
            return Err(anyhow::Error::new(e)
                .context(format!("setting {k}={v} on the new qube failed; {note}")));
        }
    }
    client
        .call("admin.vm.List", "", &a.name, b"")
        .context("the new qube is not listed")?;
    Ok(Code::Ok)
}
