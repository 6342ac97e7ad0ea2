//! `bulkhead events`: print Admin API events as they arrive.

use std::io::Write;

use anyhow::Result;

use crate::client::Client;
use crate::exit::Code;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this qube's events (default: all).
    vm: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Exit after this many events (not counting connection-established).
    #[arg(long)]
    count: Option<u64>,
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    let dest = a.vm.clone().unwrap_or_else(|| "dom0".into());
    super::check_name(&dest)?;
    let mut seen = 0u64;
    if a.count == Some(0) {
        return Ok(Code::Ok);
    }
    let mut out = std::io::stdout();
    client.events(&dest, |ev| {
        if ev.event == "connection-established" {
            return true;
        }
        let line = if a.json {
            let kw: serde_json::Map<String, serde_json::Value> = ev
                .kwargs
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            serde_json::json!({"subject": ev.subject, "event": ev.event, "kwargs": kw}).to_string()
        } else {
            let subject = if ev.subject.is_empty() {
                "dom0"
            } else {
                &ev.subject
            };
            let kw: Vec<String> = ev.kwargs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{subject} {} {}", ev.event, kw.join(" "))
                .trim_end()
                .to_string()
        };
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return false;
        }
        seen += 1;
        a.count.is_none_or(|c| seen < c)
    })?;
    Ok(Code::Ok)
}
