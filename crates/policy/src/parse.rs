//! Reading policy files: the R4.1+ line format, its directives, and the old
//! per-service format used by `!include-service`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::token::{Column, Token};
use crate::{Action, ArgSpec, Location, Policy, PolicyError, Rule};

/// Where policy text comes from (the file system, or memory in tests).
pub trait Files {
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Names of regular files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
}

/// The real file system.
pub struct OsFiles;

/// Largest policy file read.
pub const MAX_FILE: u64 = 16 << 20;
/// Deepest `!include` nesting.
pub const MAX_DEPTH: usize = 16;

impl Files for OsFiles {
    fn read(&self, path: &Path) -> io::Result<String> {
        use std::io::Read;
        let mut s = String::new();
        std::fs::File::open(path)?
            .take(MAX_FILE + 1)
            .read_to_string(&mut s)?;
        if s.len() as u64 > MAX_FILE {
            return Err(io::Error::other(format!("larger than {MAX_FILE} bytes")));
        }
        Ok(s)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(out)
    }
}

fn err(file: &Path, line: usize, message: impl Into<String>) -> PolicyError {
    PolicyError {
        file: file.display().to_string(),
        line,
        message: message.into(),
    }
}

fn service_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn arg_ok(s: &str) -> bool {
    s.starts_with('+')
        && s.len() <= 1025
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+._-".contains(&b))
}

fn yes_no(v: &str) -> Result<bool, String> {
    match v {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("expected yes or no, got {v:?}")),
    }
}

/// Parses `ACTION` and its `key=value` parameters.
fn parse_action(action: &str, params: &[&str], target_col: &Token) -> Result<Action, String> {
    let mut kv: BTreeMap<&str, &str> = BTreeMap::new();
    for p in params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("parameter {p:?} is not key=value"))?;
        if kv.insert(k, v).is_some() {
            return Err(format!("parameter {k:?} given twice"));
        }
    }
    let allowed: &[&str] = match action {
        "deny" => &["notify"],
        "allow" => &["target", "user", "notify", "autostart"],
        "ask" => &["target", "default_target", "user", "notify", "autostart"],
        other => {
            return Err(format!(
                "unknown action {other:?} (expected allow, deny or ask)"
            ))
        }
    };
    if let Some(k) = kv.keys().find(|k| !allowed.contains(k)) {
        return Err(format!("{action} does not take parameter {k:?}"));
    }
    let tok = |k: &str| {
        kv.get(k)
            .map(|v| Token::parse(v, Column::Param))
            .transpose()
    };
    let user = match kv.get("user") {
        Some(u)
            if !u.is_empty()
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)) =>
        {
            Some(u.to_string())
        }
        Some(u) => return Err(format!("invalid user {u:?}")),
        None => None,
    };
    let flag = |k: &str, default: bool| {
        kv.get(k)
            .map(|v| yes_no(v))
            .transpose()
            .map(|v| v.unwrap_or(default))
    };
    Ok(match action {
        "deny" => Action::Deny {
            notify: flag("notify", true)?,
        },
        "allow" => {
            let target = tok("target")?;
            if target.is_none() && *target_col == Token::Default {
                return Err("allow with @default in the target column needs target=".into());
            }
            Action::Allow {
                target,
                user,
                notify: flag("notify", false)?,
                autostart: flag("autostart", true)?,
            }
        }
        _ => Action::Ask {
            target: tok("target")?,
            default_target: tok("default_target")?,
            user,
            notify: flag("notify", false)?,
            autostart: flag("autostart", true)?,
        },
    })
}

struct Ctx<'a> {
    files: &'a dyn Files,
    depth: usize,
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.parent().unwrap_or(Path::new("/")).join(p)
    }
}

/// Parses one policy file (R4.1+ format) and everything it includes.
pub fn parse(path: &Path, text: &str, files: &dyn Files) -> Result<Vec<Rule>, PolicyError> {
    parse_in(path, text, &mut Ctx { files, depth: 0 })
}

/// Reads an included file and parses it with `parse` one level deeper.
fn nested(
    ctx: &mut Ctx<'_>,
    from: &Path,
    line: usize,
    target: &Path,
    parse: impl FnOnce(&Path, &str, &mut Ctx<'_>) -> Result<Vec<Rule>, PolicyError>,
) -> Result<Vec<Rule>, PolicyError> {
    if ctx.depth >= MAX_DEPTH {
        return Err(err(
            from,
            line,
            format!("includes nested deeper than {MAX_DEPTH}"),
        ));
    }
    let text = ctx
        .files
        .read(target)
        .map_err(|e| err(from, line, format!("cannot read {}: {e}", target.display())))?;
    ctx.depth += 1;
    let rules = parse(target, &text, ctx);
    ctx.depth -= 1;
    rules
}

fn location(path: &Path, line: usize) -> Location {
    Location {
        file: path.display().to_string(),
        line,
    }
}

fn parse_in(path: &Path, text: &str, ctx: &mut Ctx<'_>) -> Result<Vec<Rule>, PolicyError> {
    let mut rules = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let Some(directive) = fields[0].strip_prefix('!') {
            match (directive, fields.len()) {
                ("include", 2) => {
                    let p = resolve(path, fields[1]);
                    rules.extend(nested(ctx, path, n, &p, parse_in)?);
                }
                ("include-dir", 2) => {
                    let dir = resolve(path, fields[1]);
                    let names = ctx
                        .files
                        .list(&dir)
                        .map_err(|e| err(path, n, format!("cannot list {}: {e}", dir.display())))?;
                    for name in policy_files(&names).map_err(|m| err(path, n, m))? {
                        rules.extend(nested(ctx, path, n, &dir.join(&name), parse_in)?);
                    }
                }
                ("include-service", 4) => {
                    let (svc, arg) = (fields[1], fields[2]);
                    let (service, argument) =
                        service_and_arg(svc, arg).map_err(|m| err(path, n, m))?;
                    let p = resolve(path, fields[3]);
                    rules.extend(nested(ctx, path, n, &p, |p, t, c| {
                        parse_old(p, t, &service, &argument, c)
                    })?);
                }
                ("compat-4.0", 1) => {
                    return Err(err(path, n, "!compat-4.0 (pre-4.1 policy) is not supported; convert those files to the new format"));
                }
                _ => {
                    return Err(err(
                        path,
                        n,
                        format!("unknown or malformed directive {:?}", fields[0]),
                    ))
                }
            }
            continue;
        }
        if fields.len() < 5 {
            return Err(err(
                path,
                n,
                "expected SERVICE ARGUMENT SOURCE TARGET ACTION [PARAM=VALUE...]",
            ));
        }
        let (service, argument) =
            service_and_arg(fields[0], fields[1]).map_err(|m| err(path, n, m))?;
        let source = Token::parse(fields[2], Column::Source).map_err(|m| err(path, n, m))?;
        let target = Token::parse(fields[3], Column::Target).map_err(|m| err(path, n, m))?;
        let action = parse_action(fields[4], &fields[5..], &target).map_err(|m| err(path, n, m))?;
        rules.push(Rule {
            service,
            argument,
            source,
            target,
            action,
            location: location(path, n),
        });
    }
    Ok(rules)
}

fn service_and_arg(svc: &str, arg: &str) -> Result<(Option<String>, ArgSpec), String> {
    let service = match svc {
        "*" => None,
        s if service_ok(s) => Some(s.to_string()),
        s => return Err(format!("invalid service name {s:?}")),
    };
    let argument = match arg {
        "*" => ArgSpec::Any,
        a if arg_ok(a) => ArgSpec::Exact(a.to_string()),
        a => return Err(format!("invalid argument {a:?} (expected *, + or +ARG)")),
    };
    if service.is_none() && argument != ArgSpec::Any {
        return Err("with service * the argument must be *".into());
    }
    Ok((service, argument))
}

/// Old per-service syntax: `SRC DST ACTION[,k=v...]`, `$` for `@`.
fn parse_old(
    path: &Path,
    text: &str,
    service: &Option<String>,
    argument: &ArgSpec,
    ctx: &mut Ctx<'_>,
) -> Result<Vec<Rule>, PolicyError> {
    let mut rules = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.replace('$', "@");
        let fields: Vec<&str> = line.split_whitespace().collect();
        let include = match fields.as_slice() {
            [f] if f.starts_with("@include:") => {
                Some(f.trim_start_matches("@include:").to_string())
            }
            ["!include", p] => Some(p.to_string()),
            _ => None,
        };
        if let Some(p) = include {
            let p = resolve(path, &p);
            rules.extend(nested(ctx, path, n, &p, |p, t, c| {
                parse_old(p, t, service, argument, c)
            })?);
            continue;
        }
        if fields.len() != 3 {
            return Err(err(
                path,
                n,
                "expected SOURCE TARGET ACTION[,PARAM=VALUE...]",
            ));
        }
        let source = Token::parse(fields[0], Column::Source).map_err(|m| err(path, n, m))?;
        let target = Token::parse(fields[1], Column::Target).map_err(|m| err(path, n, m))?;
        let mut parts = fields[2].split(',');
        let action = parts.next().unwrap_or("");
        let params: Vec<&str> = parts.collect();
        let action = parse_action(action, &params, &target).map_err(|m| err(path, n, m))?;
        rules.push(Rule {
            service: service.clone(),
            argument: argument.clone(),
            source,
            target,
            action,
            location: location(path, n),
        });
    }
    Ok(rules)
}

/// The `.policy` files among `names`, sorted; an invalid name is an error
/// (it makes the whole policy unusable, as in Qubes).
fn policy_files(names: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for n in names {
        if n.starts_with('.') || !n.ends_with(".policy") {
            continue;
        }
        if !n
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b"_.-".contains(&b))
        {
            return Err(format!(
                "invalid policy file name {n:?} (use only 0-9 a-z _ . -)"
            ));
        }
        out.push(n.clone());
    }
    out.sort();
    Ok(out)
}

/// Loads every `*.policy` file from `dirs` (earlier dirs win on duplicate
/// names), in name order, into one policy.
pub fn load_dirs(dirs: &[PathBuf], files: &dyn Files) -> Result<Policy, PolicyError> {
    let mut chosen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let names = match files.list(dir) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(dir, 0, format!("cannot list: {e}"))),
        };
        for n in policy_files(&names).map_err(|m| err(dir, 0, m))? {
            chosen.entry(n.clone()).or_insert_with(|| dir.join(n));
        }
    }
    let mut rules = Vec::new();
    for path in chosen.values() {
        let text = files
            .read(path)
            .map_err(|e| err(path, 0, format!("cannot read: {e}")))?;
        rules.extend(parse(path, &text, files)?);
    }
    Ok(Policy::new(rules))
}
