//! `bulkhead notes`: show or change a qube's notes.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::client::Client;
use crate::exit::{usage, Code};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The qube.
    vm: String,
    /// Replace the notes with this text.
    #[arg(long)]
    set: Option<String>,
    /// Replace the notes with this file's content ('-' for stdin).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Clear the notes.
    #[arg(long)]
    clear: bool,
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    super::lookup(client, &a.vm)?;
    let new = match (a.set, a.file, a.clear) {
        (None, None, false) => {
            print!("{}", client.call("admin.vm.notes.Get", "", &a.vm, b"")?);
            return Ok(Code::Ok);
        }
        (Some(t), None, false) => t.into_bytes(),
        (None, Some(f), false) => {
            if f.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b)?;
                b
            } else {
                std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?
            }
        }
        (None, None, true) => Vec::new(),
        _ => return usage("give only one of --set, --file, --clear"),
    };
    client.call("admin.vm.notes.Set", "", &a.vm, &new)?;
    Ok(Code::Ok)
}
