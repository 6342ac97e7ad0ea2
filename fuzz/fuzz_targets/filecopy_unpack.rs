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
});
