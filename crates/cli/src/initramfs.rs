//! The initramfs of `vm` qubes: an uncompressed cpio (`newc`) archive
//! holding Bulkhead's agent as `/init` (with the libraries it links), the
//! kernel modules the guest needs (dependencies resolved from each module's
//! `.modinfo`, load order written to `/lib/modules/bulkhead/order`) and the
//! nodes the kernel opens before any file system is mounted.
//!
//! Written directly, so building one needs neither root nor `cpio`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Modules a guest needs, by name (each with its dependencies): the
/// virtio-mmio transport of `-M microvm`, disks, the guest channel, the
/// balloon, the AppVM root overlay, networking.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_balloon",
    "overlay",
    "virtio_net",
];

/// An archive being written.
pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> Cpio<W> {
    pub fn new(out: W) -> Self {
        Cpio {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        let name = name.trim_start_matches('/');
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.put(hdr.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    pub fn dir(&mut self, name: &str) -> Result<()> {
        self.entry(name, 0o040755, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.entry(name, 0o100000 | mode, (0, 0), data)
    }

    #[cfg(test)]
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<()> {
        self.entry(name, 0o120777, (0, 0), target.as_bytes())
    }

    pub fn char_dev(&mut self, name: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.entry(name, 0o020000 | mode, (major, minor), &[])
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        Ok(self.out)
    }
}

/// `depends=` of a kernel module, from its `.modinfo` strings.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every `.ko` under `modules_dir`, by module name (`-` and `_` are the same).
fn index_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            index_modules(&p, out)?;
        } else if let Some(stem) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            out.insert(stem.replace('-', "_"), p);
        }
    }
    Ok(())
}

/// The modules to load, dependencies before their users.
pub fn resolve_modules(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let mut index = BTreeMap::new();
    index_modules(modules_dir, &mut index)?;
    let mut order: Vec<(String, PathBuf)> = Vec::new();
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        order: &mut Vec<(String, PathBuf)>,
        depth: usize,
    ) -> Result<()> {
        if order.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        if depth > 32 {
            bail!("module dependencies of {name} loop");
        }
        let Some(path) = index.get(name) else {
            // Built into this kernel: nothing to load.
            return Ok(());
        };
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        for d in module_depends(&bytes) {
            visit(&d.replace('-', "_"), index, order, depth + 1)?;
        }
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
    for w in wanted {
        visit(w, &index, &mut order, 0)?;
    }
    Ok(order)
}

/// Host libraries a dynamically linked binary needs (from `ldd`).
fn libraries(bin: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("cannot run ldd")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(str::to_string)
        .collect())
}

/// The agent without debug information when `strip` (binutils) is there:
/// a smaller initramfs unpacks faster at every boot.
fn stripped(agent: &Path) -> Result<Vec<u8>> {
    let tmp = std::env::temp_dir().join(format!("bulkhead-init-{}", std::process::id()));
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&tmp)
        .arg(agent)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let data = if ok {
        std::fs::read(&tmp).with_context(|| format!("read {}", tmp.display()))
    } else {
        std::fs::read(agent).with_context(|| format!("read {}", agent.display()))
    };
    let _ = std::fs::remove_file(&tmp);
    data
}

/// Builds the initramfs for the kernel whose modules are in `modules_dir`.
pub fn build(agent: &Path, modules_dir: &Path, out: &Path) -> Result<()> {
    let f = std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut c = Cpio::new(std::io::BufWriter::new(f));
    for d in [
        "dev",
        "proc",
        "sys",
        "mnt",
        "sysroot",
        "lib",
        "lib/modules",
        "lib/modules/bulkhead",
    ] {
        c.dir(d)?;
    }
    // The kernel opens it for init's stdio before /dev is mounted.
    c.char_dev("dev/console", 0o600, 5, 1)?;
    c.char_dev("dev/null", 0o666, 1, 3)?;
    c.file("init", 0o755, &stripped(agent)?)?;
    let mut dirs: Vec<String> = Vec::new();
    for lib in libraries(agent)? {
        let p = Path::new(&lib);
        let mut anc: Vec<String> = p
            .ancestors()
            .skip(1)
            .filter(|a| a.as_os_str().len() > 1)
            .map(|a| a.to_string_lossy().to_string())
            .collect();
        anc.reverse();
        for a in anc {
            if !dirs.contains(&a) && a != "/lib" {
                c.dir(&a)?;
                dirs.push(a);
            }
        }
        let data = std::fs::read(p).with_context(|| format!("read {lib}"))?;
        c.file(&lib, 0o755, &data)?;
    }
    let mut order = String::new();
    for (name, path) in resolve_modules(modules_dir, GUEST_MODULES)? {
        let data = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        c.file(&format!("lib/modules/bulkhead/{name}.ko"), 0o644, &data)?;
        order.push_str(&format!("{name}.ko\n"));
    }
    c.file("lib/modules/bulkhead/order", 0o644, order.as_bytes())?;
    let mut w = c.finish()?;
    w.flush()?;
    w.into_inner()
        .map_err(|e| anyhow::anyhow!("write {}: {}", out.display(), e.error()))?
        .sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_terminated() {
        let mut c = Cpio::new(Vec::new());
        c.dir("a").unwrap();
        c.file("a/b", 0o644, b"hello").unwrap();
        c.symlink("a/c", "b").unwrap();
        let v = c.finish().unwrap();
        assert_eq!(v.len() % 4, 0);
        assert!(v.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&v);
        assert!(text.contains("a/b\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
        // The file's header says 5 bytes and mode 0100644.
        let at = text.find("a/b\0").unwrap() - 110;
        assert_eq!(&text[at + 14..at + 22], "000081a4");
        assert_eq!(&text[at + 54..at + 62], "00000005");
    }

    #[test]
    fn depends_are_read_from_modinfo() {
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring\0retpoline=Y\0";
        assert_eq!(module_depends(ko), vec!["virtio", "virtio_ring"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
        assert!(module_depends(b"nothing").is_empty());
    }
}
