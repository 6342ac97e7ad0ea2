//! The CLI against a real daemon: Qubes-style options, output, exit codes,
//! and the qvm-* names.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn cli_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bulkhead"))
}

/// bulkheadd is built into the same target dir when the workspace is tested.
fn daemon_bin() -> PathBuf {
    let p = cli_bin().with_file_name("bulkheadd");
    assert!(
        p.exists(),
        "{} missing: run the workspace tests (cargo test --workspace)",
        p.display()
    );
    p
}

fn own_group() -> String {
    let out = Command::new("id").arg("-gn").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Env {
    dir: tempfile::TempDir,
    socket: PathBuf,
    daemon: Child,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qubesd.sock");
        let daemon = Command::new(daemon_bin())
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(&socket)
            .arg("--group")
            .arg(own_group())
            .env("BULKHEAD_LOG", "error")
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Env {
            dir,
            socket,
            daemon,
        }
    }

    fn run_as(&self, exe: &Path, args: &[&str]) -> Output {
        Command::new(exe)
            .args(args)
            .env("BULKHEAD_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_as(&cli_bin(), args)
    }

    /// Runs and asserts exit 0; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "bulkhead {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs, asserts the exit code, returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(code), "bulkhead {args:?}: {err}");
        err
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn setup(e: &Env) {
    e.ok(&["create", "--class", "TemplateVM", "-l", "black", "minimal"]);
    e.ok(&["global-prefs", "default_template", "minimal"]);
    e.ok(&["create", "-l", "red", "work", "--prop", "memory=800"]);
    e.ok(&["create", "-l", "green", "-t", "minimal", "personal"]);
}

#[test]
fn ls_columns_and_formats() {
    let e = Env::new();
    setup(&e);
    let out = e.ok(&["ls"]);
    let lines: Vec<&str> = out.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATE",
            "CLASS",
            "LABEL",
            "TEMPLATE",
            "NETVM",
            "ISOLATION"
        ]
    );
    let work: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("work "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        work,
        ["work", "Halted", "AppVM", "red", "minimal", "-", "vm"]
    );
    let dom0: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        dom0,
        ["dom0", "Running", "AdminVM", "black", "-", "-", "host"]
    );
    assert_eq!(
        e.ok(&["ls", "--raw-list"]),
        "dom0\nminimal\npersonal\nwork\n"
    );
    e.ok(&["prefs", "personal", "virt_mode", "ns"]);
    let json: serde_json::Value = serde_json::from_str(&e.ok(&["ls", "--json"])).unwrap();
    let personal = json
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "personal")
        .unwrap();
    assert_eq!(personal["isolation"], "ns(weaker)");
    assert_eq!(personal["template"], "minimal");
    assert_eq!(
        e.ok(&["ls", "--raw-data", "--fields", "name,memory", "work"]),
        "work|800\n"
    );
    assert_eq!(
        e.ok(&[
            "ls",
            "--raw-data",
            "-O",
            "name",
            "--exclude",
            "dom0",
            "--halted"
        ]),
        "minimal\npersonal\nwork\n"
    );
    e.ok(&["tags", "work", "add", "office"]);
    assert_eq!(
        e.ok(&["ls", "--raw-data", "-O", "name", "--tags", "office"]),
        "work\n"
    );
    assert_eq!(e.ok(&["ls", "--running", "--raw-list"]), "dom0\n");
}

#[test]
fn prefs_features_tags_labels_notes() {
    let e = Env::new();
    setup(&e);
    assert_eq!(e.ok(&["prefs", "work", "memory"]), "800\n");
    assert_eq!(e.ok(&["prefs", "personal", "memory"]), "400\n");
    e.ok(&["prefs", "minimal", "memory", "600"]);
    assert_eq!(e.ok(&["prefs", "personal", "memory"]), "600\n");
    e.ok(&["prefs", "work", "--default", "memory"]);
    assert_eq!(e.ok(&["prefs", "work", "memory"]), "600\n");
    assert_eq!(e.ok(&["prefs", "work", "--get-default", "vcpus"]), "2\n");
    assert!(e.ok(&["prefs", "work", "-H", "netvm"]).contains("network"));
    let listing = e.ok(&["prefs", "work"]);
    assert!(
        listing
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["label", "-", "red"]),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["memory", "D", "600"]),
        "{listing}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&e.ok(&["prefs", "work", "--json"])).unwrap();
    assert_eq!(json["template"]["value"], "minimal");
    assert_eq!(json["template"]["default"], false);
    let err = e.fails(&["prefs", "work", "memory", "lots"], 1);
    assert!(
        err.contains("Invalid value 'lots' for property 'memory' of 'work'"),
        "{err}"
    );
    let err = e.fails(&["prefs", "work", "nosuch"], 5);
    assert!(err.contains("Invalid property 'nosuch'"), "{err}");
    assert!(e.ok(&["global-prefs"]).contains("default_template"));
    assert_eq!(e.ok(&["global-prefs", "default_template"]), "minimal\n");

    e.ok(&["features", "work", "service.cups", "1"]);
    e.ok(&["features", "work", "gui", ""]);
    assert_eq!(e.ok(&["features", "work", "service.cups"]), "1\n");
    let feats: serde_json::Value =
        serde_json::from_str(&e.ok(&["features", "work", "--json"])).unwrap();
    assert_eq!(feats, serde_json::json!({"gui": "", "service.cups": "1"}));
    e.ok(&["features", "work", "--unset", "gui"]);
    e.fails(&["features", "work", "gui"], 5);

    e.ok(&["tags", "work", "add", "a", "b"]);
    assert_eq!(e.ok(&["tags", "work"]), "a\nb\ncreated-by-dom0\n");
    e.ok(&["tags", "work", "del", "a"]);
    assert_eq!(e.ok(&["tags", "work", "list", "b"]), "b\n");
    e.fails(&["tags", "work", "list", "a"], 1);
    e.fails(&["tags", "work", "del", "a"], 5);

    e.ok(&["labels", "create", "teal", "0x008080"]);
    let labels: serde_json::Value = serde_json::from_str(&e.ok(&["labels", "--json"])).unwrap();
    assert_eq!(
        labels[8],
        serde_json::json!({"index": 9, "name": "teal", "color": "0x008080"})
    );
    e.ok(&["labels", "remove", "teal"]);

    e.ok(&["notes", "work", "--set", "line one\nline two"]);
    assert_eq!(e.ok(&["notes", "work"]), "line one\nline two");
    e.ok(&["notes", "work", "--clear"]);
    assert_eq!(e.ok(&["notes", "work"]), "");
}

#[test]
fn create_clone_remove() {
    let e = Env::new();
    setup(&e);
    let err = e.fails(&["create", "-l", "red", "work"], 1);
    assert!(err.contains("already exists"), "{err}");
    let err = e.fails(&["create", "-l", "mauve", "x"], 2);
    assert!(
        err.contains("no label 'mauve'") && err.contains("red, orange"),
        "{err}"
    );
    let err = e.fails(&["create", "-l", "red", "9lives"], 2);
    assert!(err.contains("invalid qube name '9lives'"), "{err}");
    // A failing --prop leaves no half-made qube behind.
    let err = e.fails(&["create", "-l", "red", "half", "--prop", "memory=-5"], 1);
    assert!(err.contains("was not kept"), "{err}");
    e.fails(&["prefs", "half"], 5);

    e.ok(&["prefs", "work", "vcpus", "4"]);
    e.ok(&["features", "work", "x", "y"]);
    e.ok(&["tags", "work", "add", "t1"]);
    e.ok(&["notes", "work", "--set", "hello"]);
    e.ok(&["clone", "work", "work2"]);
    assert_eq!(e.ok(&["prefs", "work2", "vcpus"]), "4\n");
    assert_eq!(e.ok(&["prefs", "work2", "memory"]), "800\n");
    assert_eq!(e.ok(&["prefs", "work2", "label"]), "red\n");
    assert_eq!(e.ok(&["prefs", "work2", "template"]), "minimal\n");
    assert_eq!(e.ok(&["features", "work2", "x"]), "y\n");
    assert_eq!(e.ok(&["tags", "work2"]), "created-by-dom0\nt1\n");
    assert_eq!(e.ok(&["notes", "work2"]), "hello");
    assert_ne!(
        e.ok(&["prefs", "work2", "uuid"]),
        e.ok(&["prefs", "work", "uuid"])
    );

    let err = e.fails(&["remove", "work2"], 2);
    assert!(err.contains("--force"), "{err}");
    let err = e.fails(&["remove", "-f", "minimal"], 1);
    assert!(
        err.contains("template of 'work'") && err.contains("global default_template"),
        "{err}"
    );
    e.ok(&["remove", "-f", "work2", "work"]);
    assert_eq!(e.ok(&["ls", "--raw-list"]), "dom0\nminimal\npersonal\n");
    e.fails(&["remove", "-f", "ghost"], 5);
}

#[test]
fn qubes_tool_names() {
    let e = Env::new();
    let bin = e.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for name in [
        "qvm-ls",
        "qvm-create",
        "qvm-prefs",
        "qubes-prefs",
        "qvm-features",
        "qvm-tags",
        "qvm-remove",
        "qvm-clone",
    ] {
        std::os::unix::fs::symlink(cli_bin(), bin.join(name)).unwrap();
    }
    let run = |name: &str, args: &[&str]| {
        let o = e.run_as(&bin.join(name), args);
        assert!(
            o.status.success(),
            "{name} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    run(
        "qvm-create",
        &["--class", "TemplateVM", "--label", "black", "fedora"],
    );
    run("qubes-prefs", &["default_template", "fedora"]);
    run("qvm-create", &["-l", "red", "--prop", "vcpus=3", "work"]);
    assert_eq!(run("qvm-prefs", &["work", "vcpus"]), "3\n");
    run("qvm-features", &["work", "f", "v"]);
    run("qvm-tags", &["work", "add", "tg"]);
    run("qvm-clone", &["work", "work-copy"]);
    assert_eq!(
        run("qvm-ls", &["--raw-list"]),
        "dom0\nfedora\nwork\nwork-copy\n"
    );
    run("qvm-remove", &["--force", "work-copy"]);
    assert_eq!(run("qvm-ls", &["--raw-list"]), "dom0\nfedora\nwork\n");
    assert_eq!(run("qubes-prefs", &["default_template"]), "fedora\n");
}

#[test]
fn events_and_missing_daemon() {
    let e = Env::new();
    let mut child = Command::new(cli_bin())
        .args(["events", "--count", "2"])
        .env("BULKHEAD_SOCKET", &e.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the subscriber time to connect before changes happen.
    std::thread::sleep(Duration::from_millis(300));
    e.ok(&["create", "--class", "TemplateVM", "-l", "black", "t"]);
    e.ok(&["features", "t", "a", "1"]);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        out,
        "dom0 domain-add vm=t\nt feature-set:a feature=a value=1\n"
    );

    let o = Command::new(cli_bin())
        .args(["ls"])
        .env("BULKHEAD_SOCKET", e.dir.path().join("nothing-here.sock"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot talk to bulkheadd") && err.contains("bulkheadd --detach"),
        "{err}"
    );
    let _ = std::io::stdout().flush();
}
