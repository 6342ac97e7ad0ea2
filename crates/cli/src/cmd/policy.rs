//! `bulkhead policy check` validates the qrexec policy files;
//! `bulkhead policy explain SRC DST SERVICE[+ARG]` prints what the policy
//! decides for that call and which rule (file:line) decided it, using the
//! daemon's view of the qubes (`internal.GetSystemInfo`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use bulkhead_policy::{Decision, Domain, Request, System};

use crate::client::Client;
use crate::exit::Code;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Policy directories, highest priority first.
    #[arg(
        long = "policy-dir",
        global = true,
        default_value = "/etc/bulkhead/policy.d"
    )]
    dirs: Vec<PathBuf>,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Check every policy file; print the first error (file:line) if any.
    Check,
    /// Show the decision for a call: SOURCE TARGET SERVICE[+ARG].
    Explain {
        source: String,
        target: String,
        service: String,
    },
}

fn load(dirs: &[PathBuf]) -> Result<bulkhead_policy::Policy> {
    let existing: Vec<PathBuf> = dirs.iter().filter(|d| d.is_dir()).cloned().collect();
    bulkhead_policy::load_dirs(&existing, &bulkhead_policy::OsFiles)
        .map_err(|e| anyhow::anyhow!("{e}\n(every qrexec call is denied until this is fixed)"))
}

fn system(client: &Client) -> Result<System> {
    let info = client.call("internal.GetSystemInfo", "", "dom0", b"")?;
    let v: serde_json::Value = serde_json::from_str(&info).context("bad system info")?;
    let mut sys = System::default();
    if let Some(doms) = v["domains"].as_object() {
        for (name, d) in doms {
            let s = |k: &str| d[k].as_str().map(str::to_string);
            sys.domains.insert(
                name.clone(),
                Domain {
                    name: name.clone(),
                    class: s("type").unwrap_or_default(),
                    tags: d["tags"]
                        .as_array()
                        .map(|t| {
                            t.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    template_for_dispvms: d["template_for_dispvms"].as_bool().unwrap_or(false),
                    default_dispvm: s("default_dispvm"),
                    template: s("template"),
                    running: s("power_state").as_deref() == Some("Running") || name == "dom0",
                    uuid: s("uuid").unwrap_or_default(),
                },
            );
        }
    }
    Ok(sys)
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    match a.action {
        Action::Check => {
            let p = load(&a.dirs)?;
            let shown: Vec<String> = a.dirs.iter().map(|d| d.display().to_string()).collect();
            println!(
                "policy OK: {} rules from {}",
                p.rules().len(),
                shown.join(", ")
            );
        }
        Action::Explain {
            source,
            target,
            service,
        } => {
            let p = load(&a.dirs)?;
            let sys = system(client)?;
            let (svc, arg) = match service.split_once('+') {
                Some((s, a)) => (s.to_string(), format!("+{a}")),
                None => (service.clone(), "+".to_string()),
            };
            let d = p.decide(
                &sys,
                &Request {
                    service: &svc,
                    argument: &arg,
                    source: &source,
                    target: &target,
                },
            );
            match d {
                Decision::Allow {
                    target,
                    user,
                    autostart,
                    rule,
                    ..
                } => {
                    println!(
                        "allow: target={target} user={} autostart={autostart}",
                        user.as_deref().unwrap_or("(default)")
                    );
                    println!("rule: {rule}");
                }
                Decision::Ask {
                    choices,
                    default_target,
                    rule,
                    ..
                } => {
                    println!(
                        "ask: choices={} default={}",
                        choices.join(","),
                        default_target.as_deref().unwrap_or("-")
                    );
                    println!("rule: {rule}");
                }
                Decision::Deny { reason, rule, .. } => {
                    println!("deny: {reason}");
                    match rule {
                        Some(r) => println!("rule: {r}"),
                        None => println!("rule: none matched"),
                    }
                    return Ok(Code::Failed);
                }
            }
        }
    }
    Ok(Code::Ok)
}
