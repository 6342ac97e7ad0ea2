//! Choosing the accelerator by trial: KVM only if a real guest boots under
//! it. `/dev/kvm` existing (or even opening) proves nothing — on hosts that
//! offer a paravirtualised KVM for nested guests, a stock kernel never gets
//! past the firmware. So a probe guest (the installed kernel and initramfs
//! with `bulkhead.probe`, which prints a marker and powers off) is booted
//! under KVM with a deadline; if the marker does not appear, qubes run
//! under TCG (software emulation).
//!
//! The verdict is cached per boot of the host and QEMU binary, so only the
//! first start after a reboot pays for the trial.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Printed by the probe guest (`bulkhead-agent`'s initramfs stage).
pub const PROBE_OK: &str = "BULKHEAD-PROBE-OK";
/// How long a KVM guest may take to reach the marker. Under TCG the same
/// boot takes about 2 s here; KVM that works needs well under one.
pub const KVM_DEADLINE: Duration = Duration::from_secs(6);

/// The accelerator qubes run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// A trial's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub accel: Accel,
    /// Why KVM is not used (None with KVM).
    pub reason: Option<String>,
    /// Cache key: boot id and QEMU binary.
    key: String,
}

fn key(qemu: &Path) -> String {
    let mtime = std::fs::metadata(qemu)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{} {} {mtime}", crate::helper::boot_id(), qemu.display())
}

/// The cached verdict for this boot and QEMU, if any.
pub fn cached(cache: &Path, qemu: &Path) -> Option<Verdict> {
    let v: Verdict = serde_json::from_slice(&std::fs::read(cache).ok()?).ok()?;
    (v.key == key(qemu)).then_some(v)
}

/// Runs the trial (unless cached) with the kernel in `kernel_dir`.
pub fn decide(cache: &Path, qemu: &Path, kernel_dir: &Path) -> Verdict {
    if let Some(v) = cached(cache, qemu) {
        return v;
    }
    let reason = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Err(e) => Some(format!("/dev/kvm cannot be opened ({e})")),
        Ok(_) => boot_probe(qemu, kernel_dir).err(),
    };
    let v = Verdict {
        accel: if reason.is_none() {
            Accel::Kvm
        } else {
            Accel::Tcg
        },
        reason,
        key: key(qemu),
    };
    if let Ok(bytes) = serde_json::to_vec(&v) {
        let tmp = cache.with_extension("tmp");
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, cache);
        }
    }
    v
}

/// Boots the probe guest under KVM; Ok if it printed the marker in time.
fn boot_probe(qemu: &Path, kernel_dir: &Path) -> Result<(), String> {
    let mut child = Command::new(qemu)
        .args(["-M", "microvm", "-accel", "kvm", "-m", "128", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel_dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(kernel_dir.join("initramfs"))
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1 bulkhead.probe",
            "-serial",
            "stdio",
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let mut out = child.stdout.take().ok_or("no probe output")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = out.read(&mut chunk) {
            if n == 0 || buf.len() > 1 << 20 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&buf).contains(PROBE_OK) {
                let _ = tx.send(());
                return;
            }
        }
    });
    let t0 = Instant::now();
    let ok = rx.recv_timeout(KVM_DEADLINE).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a test guest did not boot under KVM within {:.0?}",
            t0.elapsed().min(KVM_DEADLINE)
        ))
    }
}
