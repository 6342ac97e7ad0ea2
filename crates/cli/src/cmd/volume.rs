//! `bulkhead volume` / `qvm-volume`: list, info, revisions, revert, resize,
//! and `config QUBE:VOL revisions_to_keep N`.

use anyhow::Result;

use crate::client::{parse_vm_list, Client};
use crate::exit::{usage, Code};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// List volumes (of one qube, or all).
    #[command(alias = "ls")]
    List {
        vm: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a volume's settings: QUBE:VOLUME [PROPERTY].
    Info {
        volume: String,
        property: Option<String>,
    },
    /// List a volume's revisions (oldest first).
    #[command(alias = "list-snapshots")]
    Revisions { volume: String },
    /// Restore a revision (default: the newest) of a halted qube's volume.
    Revert {
        volume: String,
        revision: Option<String>,
    },
    /// Grow a volume: SIZE in bytes or with a K/M/G/T suffix.
    #[command(alias = "extend")]
    Resize { volume: String, size: String },
    /// Change a setting (revisions_to_keep).
    #[command(alias = "set")]
    Config {
        volume: String,
        property: String,
        value: String,
    },
}

fn split(v: &str) -> Result<(String, String)> {
    match v.split_once(':') {
        Some((q, vol)) if !q.is_empty() && !vol.is_empty() => Ok((q.into(), vol.into())),
        _ => usage(format!("expected QUBE:VOLUME, got '{v}'")),
    }
}

fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let s = s
        .strip_suffix("iB")
        .or_else(|| s.strip_suffix('B'))
        .unwrap_or(s);
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return usage(format!("unknown size suffix in '{s}' (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    match num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)) {
        Some(n) => Ok(n),
        None => usage(format!("invalid size '{s}'")),
    }
}

fn info(client: &Client, q: &str, vol: &str) -> Result<Vec<(String, String)>> {
    Ok(client
        .call("admin.vm.volume.Info", vol, q, b"")?
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

pub fn run(client: &Client, a: Args) -> Result<Code> {
    match a.action.unwrap_or(Action::List {
        vm: None,
        json: false,
    }) {
        Action::List { vm, json } => {
            let vms = match vm {
                Some(v) => vec![v],
                None => parse_vm_list(&client.call("admin.vm.List", "", "dom0", b"")?)
                    .into_iter()
                    .filter(|v| v.name != "dom0")
                    .map(|v| v.name)
                    .collect(),
            };
            let mut rows = Vec::new();
            for q in &vms {
                for vol in client.call("admin.vm.volume.List", "", q, b"")?.lines() {
                    let i = info(client, q, vol)?;
                    let get = |k: &str| {
                        i.iter()
                            .find(|(a, _)| a == k)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    rows.push([
                        format!("{q}:{vol}"),
                        get("pool"),
                        get("size"),
                        get("usage"),
                        get("revisions_to_keep"),
                        get("source"),
                    ]);
                }
            }
            if json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|r| serde_json::json!({"volume": r[0], "pool": r[1], "size": r[2].parse::<u64>().unwrap_or(0), "usage": r[3].parse::<u64>().unwrap_or(0), "revisions_to_keep": r[4], "source": r[5]}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<28} {:<10} {:>14} {:>14} {:>4}  SOURCE",
                    "VOLUME", "POOL", "SIZE", "USAGE", "REVS"
                );
                for r in rows {
                    println!(
                        "{:<28} {:<10} {:>14} {:>14} {:>4}  {}",
                        r[0], r[1], r[2], r[3], r[4], r[5]
                    );
                }
            }
        }
        Action::Info { volume, property } => {
            let (q, vol) = split(&volume)?;
            let i = info(client, &q, &vol)?;
            let revs = client.call("admin.vm.volume.ListSnapshots", &vol, &q, b"")?;
            match property {
                Some(p) if p == "revisions" => print!("{revs}"),
                Some(p) => match i.iter().find(|(k, _)| *k == p) {
                    Some((_, v)) => println!("{v}"),
                    None => return usage(format!("no property '{p}' of volume {volume}")),
                },
                None => {
                    for (k, v) in &i {
                        println!("{k:<18} {v}");
                    }
                    println!(
                        "{:<18} {}",
                        "revisions",
                        revs.lines().collect::<Vec<_>>().join(" ")
                    );
                }
            }
        }
        Action::Revisions { volume } => {
            let (q, vol) = split(&volume)?;
            print!(
                "{}",
                client.call("admin.vm.volume.ListSnapshots", &vol, &q, b"")?
            );
        }
        Action::Revert { volume, revision } => {
            let (q, vol) = split(&volume)?;
            let rev = match revision {
                Some(r) => r,
                None => match client
                    .call("admin.vm.volume.ListSnapshots", &vol, &q, b"")?
                    .lines()
                    .last()
                {
                    Some(r) => r.to_string(),
                    None => anyhow::bail!("volume {volume} has no revisions to revert to"),
                },
            };
            client.call("admin.vm.volume.Revert", &vol, &q, rev.as_bytes())?;
            println!("{volume}: reverted to revision {rev}");
        }
        Action::Resize { volume, size } => {
            let (q, vol) = split(&volume)?;
            let n = parse_size(&size)?;
            client.call("admin.vm.volume.Resize", &vol, &q, n.to_string().as_bytes())?;
        }
        Action::Config {
            volume,
            property,
            value,
        } => {
            let (q, vol) = split(&volume)?;
            if property != "revisions_to_keep" {
                return usage(format!(
                    "'{property}' cannot be changed (only revisions_to_keep)"
                ));
            }
            client.call(
                "admin.vm.volume.Set.revisions_to_keep",
                &vol,
                &q,
                value.as_bytes(),
            )?;
        }
    }
    Ok(Code::Ok)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(super::parse_size("1024").unwrap(), 1024);
        assert_eq!(super::parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(super::parse_size("3GiB").unwrap(), 3 << 30);
        assert!(super::parse_size("x").is_err());
    }
}
