//! Root trees for test and benchmark qubes, shared by `tests/ns.rs` and
//! `benches/ns_start.rs`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const BUSYBOX: &str = "/bin/busybox";

/// A minimal busybox root owned by host root, like a template's, with
/// `root` and `user` (uid 1000) accounts.
pub fn busybox_root(dir: &Path, applets: &[&str]) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "etc", "tmp", "root", "home/user"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for a in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
    )
    .unwrap();
    root
}

/// Copies a dynamically linked binary and the libraries `ldd` names into `root`.
pub fn install_binary(root: &Path, bin: &Path, dest: &str) {
    let target = root.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(bin, &target).unwrap();
    let out = std::process::Command::new("ldd").arg(bin).output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(lib) = line.split_whitespace().find(|w| w.starts_with('/')) {
            let t = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(t.parent().unwrap()).unwrap();
            std::fs::copy(lib, &t).unwrap();
        }
    }
}

/// The agent binary built next to the nsinit helper, if the workspace built it.
pub fn agent_bin(nsinit: &Path) -> Option<PathBuf> {
    let p = nsinit.with_file_name("bulkhead-agent");
    p.exists().then_some(p)
}
