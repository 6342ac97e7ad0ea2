//! `bulkhead ls` / `qvm-ls`.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::client::{parse_get_all, parse_vm_list, Client};
use crate::exit::Code;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only these qubes.
    vms: Vec<String>,
    /// Columns to show, comma-separated: name, state, class, label, template,
    /// netvm, isolation, or any property name.
    #[arg(long, short = 'O', value_delimiter = ',')]
    fields: Option<Vec<String>>,
    /// Only names, one per line.
    #[arg(long)]
    raw_list: bool,
    /// Values separated by '|', no header.
    #[arg(long)]
    raw_data: bool,
    /// JSON: an array of objects with every column asked for.
    #[arg(long)]
    json: bool,
    /// Only running qubes.
    #[arg(long)]
    running: bool,
    /// Only paused qubes.
    #[arg(long)]
    paused: bool,
    /// Only halted qubes.
    #[arg(long)]
    halted: bool,
    /// Only qubes with one of these tags.
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// Leave these qubes out.
    #[arg(long)]
    exclude: Vec<String>,
}

const DEFAULT_FIELDS: [&str; 7] = [
    "name",
    "state",
    "class",
    "label",
    "template",
    "netvm",
    "isolation",
];

/// What the isolation column says: how strongly this qube is isolated —
/// for a running VM also its accelerator (`vm(kvm)`, `vm(tcg)`: software
/// emulation, isolated as well but slow).
fn isolation(class: &str, props: &BTreeMap<String, String>, accel: Option<&str>) -> String {
    if class == "AdminVM" {
        return "host".into();
    }
    match props.get("virt_mode").map(String::as_str) {
        Some("vm") => match accel {
            Some(a) => format!("vm({a})"),
            None => "vm".into(),
        },
        Some("ns") => "ns(weaker)".into(),
        Some(other) => other.to_string(),
        None => "-".into(),
    }
}

/// A running qube's accelerator, from `admin.vm.CurrentState`.
fn accelerator(client: &Client, name: &str) -> Option<String> {
    let s = client.call("admin.vm.CurrentState", "", name, b"").ok()?;
    s.split_whitespace()
        .find_map(|kv| kv.strip_prefix("accelerator="))
        .map(str::to_string)
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    let list = if a.vms.len() == 1 {
        super::check_name(&a.vms[0])?;
        client.call("admin.vm.List", "", &a.vms[0], b"")?
    } else {
        client.call("admin.vm.List", "", "dom0", b"")?
    };
    let mut vms = parse_vm_list(&list);
    if a.vms.len() > 1 {
        for v in &a.vms {
            if !vms.iter().any(|e| &e.name == v) {
                return Err(crate::client::CallError::Exception {
                    class: "QubesVMNotFoundError".into(),
                    message: format!("No such domain: '{v}'"),
                }
                .into());
            }
        }
        vms.retain(|e| a.vms.contains(&e.name));
    }
    vms.retain(|e| !a.exclude.contains(&e.name));
    let states: Vec<&str> = [
        (a.running, "Running"),
        (a.paused, "Paused"),
        (a.halted, "Halted"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, s)| *s)
    .collect();
    if !states.is_empty() {
        vms.retain(|e| states.contains(&e.state.as_str()));
    }
    if a.raw_list {
        for v in &vms {
            println!("{}", v.name);
        }
        return Ok(Code::Ok);
    }
    let fields: Vec<String> = a
        .fields
        .clone()
        .unwrap_or_else(|| DEFAULT_FIELDS.iter().map(|s| s.to_string()).collect())
        .into_iter()
        .map(|f| f.to_ascii_lowercase())
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut objects = Vec::new();
    for v in &vms {
        let props: BTreeMap<String, String> =
            parse_get_all(&client.call("admin.vm.property.GetAll", "", &v.name, b"")?)
                .into_iter()
                .map(|p| (p.name, p.value))
                .collect();
        if !a.tags.is_empty() {
            let tags = client.call("admin.vm.tag.List", "", &v.name, b"")?;
            if !tags.lines().any(|t| a.tags.iter().any(|w| w == t)) {
                continue;
            }
        }
        let mut row = Vec::new();
        let mut obj = serde_json::Map::new();
        for f in &fields {
            let val = match f.as_str() {
                "name" => v.name.clone(),
                "state" => v.state.clone(),
                "class" => v.class.clone(),
                "isolation" => {
                    let accel = if v.state == "Running" || v.state == "Paused" {
                        accelerator(client, &v.name)
                    } else {
                        None
                    };
                    isolation(&v.class, &props, accel.as_deref())
                }
                other => props.get(other).cloned().unwrap_or_default(),
            };
            let shown = if val.is_empty() {
                "-".to_string()
            } else {
                val.clone()
            };
            obj.insert(f.clone(), serde_json::Value::String(val));
            row.push(shown);
        }
        rows.push(row);
        objects.push(serde_json::Value::Object(obj));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&objects)?);
    } else if a.raw_data {
        for r in rows {
            println!("{}", r.join("|"));
        }
    } else {
        let mut all = vec![fields
            .iter()
            .map(|f| f.to_ascii_uppercase())
            .collect::<Vec<_>>()];
        all.extend(rows);
        crate::table::print(&all);
    }
    Ok(Code::Ok)
}
