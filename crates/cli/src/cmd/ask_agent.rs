//! `bulkhead ask-agent`: the prompt that answers qrexec `ask` rules in a
//! terminal. It registers with bulkheadd (`<run dir>/ask.sock`) and, for each
//! call a rule says to ask about, shows who asks for what and lets the user
//! pick a target or refuse. With no agent running, `ask` denies.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, Result};

use crate::exit::Code;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Answer every question with this target (or `deny`) without asking;
    /// for scripts and tests.
    #[arg(long)]
    answer: Option<String>,
}

pub fn run(socket: &Path, a: Args) -> Result<Code> {
    let path = socket
        .parent()
        .unwrap_or(Path::new("/run/bulkhead"))
        .join("ask.sock");
    let s = UnixStream::connect(&path)
        .with_context(|| format!("cannot reach bulkheadd's prompt socket {}", path.display()))?;
    eprintln!("bulkhead ask-agent: registered; questions appear here (Ctrl-C to stop)");
    let mut w = s.try_clone()?;
    let stdin = std::io::stdin();
    for line in BufReader::new(s).lines() {
        let line = line?;
        let q: serde_json::Value = serde_json::from_str(&line).context("bad question")?;
        let str_of = |k: &str| q[k].as_str().unwrap_or("").to_string();
        let choices: Vec<String> = q["choices"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let default = q["default"].as_str().map(str::to_string);
        // Names come from the host's policy, not from qubes; printed escaped anyway.
        println!(
            "\n[ask] qube {:?} wants to call {:?} (asked for target {:?})",
            str_of("source"),
            str_of("service"),
            str_of("target")
        );
        println!("      allowed targets: {}", choices.join(", "));
        let answer = match &a.answer {
            Some(x) => {
                println!("      answered: {x}");
                x.clone()
            }
            None => {
                print!(
                    "      target [{}], or 'n' to refuse: ",
                    default.as_deref().unwrap_or("none")
                );
                std::io::stdout().flush()?;
                let mut l = String::new();
                stdin.lock().read_line(&mut l)?;
                let l = l.trim().to_string();
                if l.is_empty() {
                    default.clone().unwrap_or_default()
                } else {
                    l
                }
            }
        };
        let allow = answer != "n" && answer != "deny" && choices.contains(&answer);
        if !allow && answer != "n" && answer != "deny" {
            println!("      {answer:?} is not one of the allowed targets: refused");
        }
        let reply = serde_json::json!({"id": q["id"], "allow": allow, "target": answer});
        w.write_all(format!("{reply}\n").as_bytes())?;
    }
    eprintln!("bulkhead ask-agent: bulkheadd closed the connection");
    Ok(Code::Ok)
}
