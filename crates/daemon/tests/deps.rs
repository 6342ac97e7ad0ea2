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
    let host_crates = ["bulkheadd", "bulkhead-cli", "bulkhead-hal"];
    // Code that runs inside qubes, or that they link.
    let guest_shared = [
        "bulkhead-proto",
        "bulkhead-agent",
        "bulkhead-sys",
        "bulkhead-filecopy",
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
    for g in guest_shared {
        assert!(
            packages.iter().any(|p| p["name"] == g),
            "{g} is not in the workspace"
        );
    }
}
