//! Opening files and URLs in another qube (`qubes.OpenInVM`,
//! `qubes.OpenURL`), both ends:
//!
//! - `qvm-open-in-vm TARGET FILE|URL` and `qvm-open-in-dvm FILE|URL` (a
//!   disposable) send a URL as the call's stdin (`qubes.OpenURL`), or a
//!   file as its base name on one line followed by its content
//!   (`qubes.OpenInVM`); an edited file comes back on stdout and replaces
//!   the original (atomically). A disposable's copy is view-only unless it
//!   is edited too.
//! - the services save the file in a fresh private directory (or take the
//!   URL), run the qube's opener (`xdg-open`, looked up in PATH; `/usr/local`
//!   is the private volume, so a qube can install its own), wait for it, and
//!   send the file back if it changed.
//!
//! Everything received is hostile: URL length and scheme, the name (one
//! plain component) and the file size are checked.

use std::io::{self, BufRead, Read, Write};
use std::path::Path;
use std::process::Command;

use bulkhead_proto::qrexec::{max_chunk, Message};
use bulkhead_proto::qrexec_io::send;

use crate::client::{collect, connect, Call};

/// Longest URL accepted.
const MAX_URL: usize = 4096;
/// Largest file sent or received for opening.
const MAX_FILE: u64 = 1 << 30;

fn is_url(s: &str) -> bool {
    ["http://", "https://", "ftp://", "mailto:"]
        .iter()
        .any(|p| s.starts_with(p))
}

fn valid_url(s: &str) -> bool {
    s.len() <= MAX_URL && is_url(s) && s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s.starts_with('-')
        && s.chars().all(|c| !c.is_control() && !is_format(c))
}

/// Unicode format characters (bidi overrides, zero-width…), which let a
/// name display as something else.
fn is_format(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// A name no one can have guessed in advance (pid, time, counter).
fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{}-{t:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `qvm-open-in-vm TARGET FILE|URL`, `qvm-open-in-dvm FILE|URL`.
pub fn sender(name: &str, args: Vec<String>) -> i32 {
    let dvm = name == "qvm-open-in-dvm";
    let (target, what) = match (dvm, args.as_slice()) {
        (true, [w]) => ("@dispvm".to_string(), w.clone()),
        (false, [t, w]) => (t.clone(), w.clone()),
        _ => {
            eprintln!("usage: {name} {}FILE|URL", if dvm { "" } else { "TARGET " });
            return 2;
        }
    };
    match open_remote(&target, &what) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{name}: {e}");
            1
        }
    }
}

fn open_remote(target: &str, what: &str) -> io::Result<i32> {
    let (service, payload, file) = if is_url(what) {
        if !valid_url(what) {
            return Err(io::Error::other("not a valid URL"));
        }
        ("qubes.OpenURL", format!("{what}\n").into_bytes(), None)
    } else {
        let path = Path::new(what);
        let base = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| valid_name(n))
            .ok_or_else(|| io::Error::other("the file name cannot be sent"))?;
        let mut data = format!("{base}\n").into_bytes();
        std::fs::File::open(path)?
            .take(MAX_FILE + 1)
            .read_to_end(&mut data)?;
        if data.len() as u64 > MAX_FILE + base.len() as u64 + 1 {
            return Err(io::Error::other("the file is larger than 1 GiB"));
        }
        ("qubes.OpenInVM", data, Some(path.to_path_buf()))
    };
    let Some(Call {
        stream: mut s,
        mut dec,
        version,
    }) = connect(target, service)?
    else {
        return Ok(bulkhead_proto::qrexec::EXIT_REFUSED);
    };
    for c in payload.chunks(max_chunk(version)) {
        send(&mut s, &Message::DataStdin(c.to_vec()))?;
    }
    send(&mut s, &Message::DataStdin(vec![]))?;
    let got = collect(&mut s, &mut dec, MAX_FILE)?;
    if got.overflow {
        return Err(io::Error::other(
            "the edited file came back larger than 1 GiB",
        ));
    }
    let (back, code) = (got.stdout, got.code);
    if let (Some(path), false, 0) = (file, back.is_empty(), code) {
        // The edited version replaces the original only when complete, keeps
        // its mode, and goes through a new file that follows no link.
        use std::os::unix::fs::OpenOptionsExt;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(unique(".bulkhead-edit-"));
        let mode = std::fs::metadata(&path).map(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode() & 0o7777
        })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(&back)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        eprintln!("{}: updated with the edited version", path.display());
    }
    Ok(code)
}

fn opener() -> Option<std::path::PathBuf> {
    std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())
        .split(':')
        .map(|d| Path::new(d).join("xdg-open"))
        .find(|p| p.is_file())
}

/// `qubes.OpenURL`: one URL on stdin.
pub fn open_url_service() -> i32 {
    let mut line = String::new();
    let _ = io::stdin()
        .lock()
        .take(MAX_URL as u64 + 2)
        .read_line(&mut line);
    let url = line.trim_end_matches('\n');
    if !valid_url(url) {
        eprintln!("qubes.OpenURL: refusing an invalid URL");
        return 1;
    }
    let Some(open) = opener() else {
        eprintln!("qubes.OpenURL: no xdg-open in this qube to open {url}");
        return 1;
    };
    match Command::new(open).arg(url).status() {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("qubes.OpenURL: {e}");
            1
        }
    }
}

/// `qubes.OpenInVM`: a base name line, then the file.
pub fn open_file_service() -> i32 {
    match open_file() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qubes.OpenInVM: {e}");
            1
        }
    }
}

fn open_file() -> io::Result<i32> {
    let mut input = io::stdin().lock();
    let mut name = Vec::new();
    input.by_ref().take(257).read_until(b'\n', &mut name)?;
    let name = String::from_utf8(name)
        .ok()
        .map(|n| n.trim_end_matches('\n').to_string())
        .filter(|n| valid_name(n))
        .ok_or_else(|| io::Error::other("refusing an invalid file name"))?;
    let mut data = Vec::new();
    input.take(MAX_FILE + 1).read_to_end(&mut data)?;
    if data.len() as u64 > MAX_FILE {
        return Err(io::Error::other("file larger than 1 GiB"));
    }
    // A private directory per call (mode 0700), the file under its own name.
    // A fresh directory nobody could have created in advance.
    let dir = std::env::temp_dir().join(unique("qubes-open-"));
    std::fs::create_dir(&dir)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let path = dir.join(&name);
    std::fs::write(&path, &data)?;
    let Some(open) = opener() else {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(io::Error::other(format!(
            "no xdg-open in this qube to open {name}"
        )));
    };
    let status = Command::new(open).arg(&path).status()?;
    let after = std::fs::read(&path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    if status.success() && after != data {
        io::stdout().lock().write_all(&after)?;
    }
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_and_names_are_checked() {
        assert!(super::valid_url("https://example.org/a?b=c"));
        for bad in [
            "file:///etc/passwd",
            "javascript:alert(1)",
            "https://a b",
            "https://\u{1b}[2J",
        ] {
            assert!(!super::valid_url(bad), "{bad:?}");
        }
        assert!(super::valid_name("report.pdf"));
        for bad in ["", ".", "..", "a/b", "-rf", "a\nb", "cod\u{202E}fdp.exe"] {
            assert!(!super::valid_name(bad), "{bad:?}");
        }
    }
}
