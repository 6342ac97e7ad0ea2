//! `bulkhead tags` / `qvm-tags`: `VM [list [TAG]] | add TAG… | del TAG…`.

use anyhow::Result;

use crate::client::Client;
use crate::exit::{usage, Code};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The qube.
    vm: String,
    /// list (default), add or del.
    action: Option<String>,
    /// Tags.
    tags: Vec<String>,
    /// List as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    super::lookup(client, &a.vm)?;
    match a.action.as_deref().unwrap_or("list") {
        "list" | "ls" | "l" => {
            if let Some(t) = a.tags.first() {
                let has = client.call("admin.vm.tag.Get", t, &a.vm, b"")? == "1";
                if has {
                    println!("{t}");
                }
                return Ok(if has { Code::Ok } else { Code::Failed });
            }
            let tags: Vec<String> = client
                .call("admin.vm.tag.List", "", &a.vm, b"")?
                .lines()
                .map(String::from)
                .collect();
            if a.json {
                println!("{}", serde_json::to_string_pretty(&tags)?);
            } else {
                for t in tags {
                    println!("{t}");
                }
            }
        }
        "add" | "a" | "set" => {
            if a.tags.is_empty() {
                return usage("name at least one tag to add");
            }
            for t in &a.tags {
                client.call("admin.vm.tag.Set", t, &a.vm, b"")?;
            }
        }
        "del" | "d" | "remove" | "unset" => {
            if a.tags.is_empty() {
                return usage("name at least one tag to remove");
            }
            for t in &a.tags {
                client.call("admin.vm.tag.Remove", t, &a.vm, b"")?;
            }
        }
        other => return usage(format!("unknown action '{other}': use list, add or del")),
    }
    Ok(Code::Ok)
}
