//! Crates follow trust boundaries: the shared protocol crate (which the guest
//! agent will link) must not depend on any host crate.

use std::process::Command;

#[test]
fn guest_shared_crates_do_not_depend_on_host_crates() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let host_crates = [
        "bulkheadd",
        "bulkhead-cli",
        "bulkhead-hal",
        "bulkhead-relay",
    ];
    // Code that runs inside qubes, or that they link.
    let guest_shared = [
        "bulkhead-proto",
        "bulkhead-agent",
        "bulkhead-sys",
        "bulkhead-filecopy",
        "bulkhead-vmchan",
    ];
    let packages = meta["packages"].as_array().unwrap();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        if !guest_shared.contains(&name) {
            continue;
        }
        for dep in p["dependencies"].as_array().unwrap() {
            let dn = dep["name"].as_str().unwrap();
            assert!(
                !host_crates.contains(&dn),
                "{name} (guest-shared) depends on host crate {dn}"
            );
        }
    }
    // The relay parses everything a qube sends, as the qube's own uid: it
    // links only the pure protocol crate, the syscall crate and its seccomp
    // filter.
    let relay = packages
        .iter()
        .find(|p| p["name"] == "bulkhead-relay")
        .expect("bulkhead-relay is not in the workspace");
    for dep in relay["dependencies"].as_array().unwrap() {
        let dn = dep["name"].as_str().unwrap();
        assert!(
            [
                "bulkhead-proto",
                "bulkhead-sys",
                "seccompiler",
                "libc",
                "nix"
            ]
            .contains(&dn),
            "bulkhead-relay must not depend on {dn}"
        );
    }
    for g in guest_shared {
        assert!(
            packages.iter().any(|p| p["name"] == g),
            "{g} is not in the workspace"
        );
    }
}
