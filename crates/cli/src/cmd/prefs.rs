//! `bulkhead prefs` / `qvm-prefs` and `bulkhead global-prefs` / `qubes-prefs`.

use anyhow::Result;

use crate::client::{parse_get_all, parse_prop_value, Client};
use crate::exit::{usage, Code};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The qube.
    vm: String,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args, Debug)]
pub struct GlobalArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args, Debug)]
struct Common {
    /// Property to show or set; all are listed when omitted.
    property: Option<String>,
    /// New value (an empty string means "none" for qube references).
    value: Option<String>,
    /// Reset the property to its default.
    #[arg(long, short = 'D', visible_alias = "delete", visible_alias = "unset")]
    default: bool,
    /// Show the property's description.
    #[arg(long = "help-property", short = 'H')]
    help_property: bool,
    /// Show what the default would be.
    #[arg(long)]
    get_default: bool,
    /// When listing, leave out properties at their default.
    #[arg(long)]
    hide_default: bool,
    /// List as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    super::lookup(client, &a.vm)?;
    go(client, "admin.vm.property", &a.vm, a.common)
}

pub fn run_global(client: &Client, a: GlobalArgs) -> Result<Code> {
    go(client, "admin.property", "dom0", a.common)
}

fn go(client: &Client, prefix: &str, dest: &str, c: Common) -> Result<Code> {
    let m = |s: &str| format!("{prefix}.{s}");
    let Some(prop) = c.property else {
        if c.default || c.help_property || c.get_default {
            return usage("name the property");
        }
        let all = parse_get_all(&client.call(&m("GetAll"), "", dest, b"")?);
        let shown: Vec<_> = all
            .into_iter()
            .filter(|p| !(c.hide_default && p.is_default))
            .collect();
        if c.json {
            let obj: serde_json::Map<String, serde_json::Value> = shown
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        serde_json::json!({"value": p.value, "default": p.is_default, "type": p.ty}),
                    )
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&obj)?);
        } else {
            let rows: Vec<Vec<String>> = shown
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        if p.is_default { "D" } else { "-" }.into(),
                        p.value.clone(),
                    ]
                })
                .collect();
            crate::table::print(&rows);
        }
        return Ok(Code::Ok);
    };
    if c.default {
        if c.value.is_some() {
            return usage("give either a value or --default, not both");
        }
        client.call(&m("Reset"), &prop, dest, b"")?;
    } else if c.help_property {
        println!("{}", client.call(&m("Help"), &prop, dest, b"")?);
    } else if c.get_default {
        let body = client.call(&m("GetDefault"), &prop, dest, b"")?;
        match body.split_once(' ') {
            Some((_, v)) => println!("{v}"),
            None if body.is_empty() => eprintln!("{prop} has no default"),
            None => println!(),
        }
    } else if let Some(v) = c.value {
        client.call(&m("Set"), &prop, dest, v.as_bytes())?;
    } else {
        let body = client.call(&m("Get"), &prop, dest, b"")?;
        let p = parse_prop_value(&prop, &body)
            .ok_or_else(|| anyhow::anyhow!("malformed reply '{body}'"))?;
        println!("{}", p.value);
    }
    Ok(Code::Ok)
}
