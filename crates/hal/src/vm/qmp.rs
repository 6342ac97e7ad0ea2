//! A minimal QMP client: one connection per command (so a re-adopted qube
//! needs no state), greeting, `qmp_capabilities`, the command, its reply.
//!
//! QEMU runs jailed but a guest that escapes into it controls what it says,
//! so replies are read line by line with a size limit and a deadline, and
//! only parsed as JSON.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// Longest reply line accepted.
const MAX_LINE: u64 = 64 * 1024;
/// Deadline of one exchange.
const TIMEOUT: Duration = Duration::from_secs(10);

fn read_reply(r: &mut BufReader<UnixStream>) -> Result<Value, String> {
    loop {
        let mut line = String::new();
        let n = r
            .by_ref()
            .take(MAX_LINE)
            .read_line(&mut line)
            .map_err(|e| format!("reading QMP: {e}"))?;
        if n == 0 {
            return Err("QMP closed the connection".into());
        }
        if !line.ends_with('\n') {
            return Err("QMP sent an overlong line".into());
        }
        let v: Value =
            serde_json::from_str(&line).map_err(|e| format!("QMP sent bad JSON: {e}"))?;
        // Asynchronous events may come before the reply.
        if v.get("event").is_some() {
            continue;
        }
        return Ok(v);
    }
}

/// Runs one QMP command on the socket at `path`; returns its `return` value.
pub fn command(path: &Path, execute: &str, arguments: Option<Value>) -> Result<Value, String> {
    let s = UnixStream::connect(path).map_err(|e| format!("connect {}: {e}", path.display()))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let greeting = read_reply(&mut r)?;
    if greeting.get("QMP").is_none() {
        return Err("no QMP greeting".into());
    }
    let mut exchange = |cmd: Value| -> Result<Value, String> {
        let mut line = cmd.to_string();
        line.push('\n');
        w.write_all(line.as_bytes())
            .map_err(|e| format!("writing QMP: {e}"))?;
        let v = read_reply(&mut r)?;
        if let Some(e) = v.get("error") {
            return Err(format!(
                "QMP {}: {}",
                cmd["execute"].as_str().unwrap_or("?"),
                e.get("desc").and_then(Value::as_str).unwrap_or("error")
            ));
        }
        Ok(v.get("return").cloned().unwrap_or(Value::Null))
    };
    exchange(json!({"execute": "qmp_capabilities"}))?;
    let mut cmd = json!({ "execute": execute });
    if let Some(a) = arguments {
        cmd["arguments"] = a;
    }
    exchange(cmd)
}

/// QEMU's run state (`running`, `paused`, `shutdown`…).
pub fn status(path: &Path) -> Result<String, String> {
    let v = command(path, "query-status", None)?;
    Ok(v.get("status")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string())
}
