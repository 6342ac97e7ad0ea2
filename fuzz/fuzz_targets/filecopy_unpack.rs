//! Fuzzes the Filecopy unpacker with real writes into a fresh directory: it
//! must never panic, and nothing may appear outside the destination.
#![no_main]

use bulkhead_filecopy::{unpack, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = tempfile::tempdir().expect("tempdir");
    let dest = base.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let limits = Limits { max_bytes: 1 << 20, max_files: 200, allow_links: true };
    let _ = unpack(data, &dest, limits);
    // Only `dest` may exist next to it.
    let names: Vec<_> = std::fs::read_dir(base.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [std::ffi::OsString::from("dest")], "something escaped the destination");
    // Every link that resolves must stay inside its top-level item.
    check_links(&dest, &dest);
});

fn check_links(dest: &std::path::Path, dir: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.file_type().is_symlink() {
            if let Ok(real) = std::fs::canonicalize(&p) {
                let top = p.strip_prefix(dest).unwrap().components().next().unwrap();
                let root = std::fs::canonicalize(dest.join(top)).unwrap();
                assert!(real.starts_with(&root), "{} escapes to {}", p.display(), real.display());
            }
        } else if m.is_dir() {
            check_links(dest, &p);
        }
    }
}
