//! `bulkhead labels`: list, create and remove labels.

use anyhow::Result;

use crate::client::Client;
use crate::exit::Code;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// List as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// List labels with index and colour (the default).
    List,
    /// Create a custom label.
    Create {
        name: String,
        /// Colour as 0xRRGGBB.
        color: String,
    },
    /// Remove a custom label that no qube uses.
    Remove { name: String },
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    match a.action.unwrap_or(Action::List) {
        Action::List => {
            let mut rows = Vec::new();
            for n in client.call("admin.label.List", "", "dom0", b"")?.lines() {
                let idx = client.call("admin.label.Index", n, "dom0", b"")?;
                let color = client.call("admin.label.Get", n, "dom0", b"")?;
                rows.push(vec![idx, n.to_string(), color]);
            }
            if a.json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|r| serde_json::json!({"index": r[0].parse::<u32>().unwrap_or(0), "name": r[1], "color": r[2]}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let mut all = vec![vec!["INDEX".into(), "NAME".into(), "COLOR".into()]];
                all.extend(rows);
                crate::table::print(&all);
            }
        }
        Action::Create { name, color } => {
            client.call("admin.label.Create", &name, "dom0", color.as_bytes())?;
        }
        Action::Remove { name } => {
            client.call("admin.label.Remove", &name, "dom0", b"")?;
        }
    }
    Ok(Code::Ok)
}
