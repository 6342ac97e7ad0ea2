//! `bulkhead features` / `qvm-features`.

use anyhow::Result;

use crate::client::Client;
use crate::exit::{usage, Code};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The qube.
    vm: String,
    /// Feature to show or set; all are listed when omitted.
    feature: Option<String>,
    /// New value.
    value: Option<String>,
    /// Remove the feature.
    #[arg(long, short = 'D', visible_alias = "delete", visible_alias = "unset")]
    default: bool,
    /// List as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    super::lookup(client, &a.vm)?;
    let Some(f) = a.feature else {
        if a.default {
            return usage("name the feature to remove");
        }
        let names = client.call("admin.vm.feature.List", "", &a.vm, b"")?;
        let mut rows = Vec::new();
        for n in names.lines() {
            rows.push(vec![
                n.to_string(),
                client.call("admin.vm.feature.Get", n, &a.vm, b"")?,
            ]);
        }
        if a.json {
            let obj: serde_json::Map<String, serde_json::Value> = rows
                .into_iter()
                .map(|r| (r[0].clone(), serde_json::Value::String(r[1].clone())))
                .collect();
            println!("{}", serde_json::to_string_pretty(&obj)?);
        } else {
            crate::table::print(&rows);
        }
        return Ok(Code::Ok);
    };
    if a.default {
        if a.value.is_some() {
            return usage("give either a value or --unset, not both");
        }
        client.call("admin.vm.feature.Remove", &f, &a.vm, b"")?;
    } else if let Some(v) = a.value {
        client.call("admin.vm.feature.Set", &f, &a.vm, v.as_bytes())?;
    } else {
        println!("{}", client.call("admin.vm.feature.Get", &f, &a.vm, b"")?);
    }
    Ok(Code::Ok)
}
