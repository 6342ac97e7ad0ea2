//! The data fast path (the relay and the agents move call data with it):
//! `read_data` over arbitrary bytes never panics, never returns a body
//! larger than the version's limit, and stops at the first bad header.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&v, rest)) = data.split_first() else {
        return;
    };
    let version = u32::from(v % 3) + 2;
    let mut r = std::io::Cursor::new(rest);
    let mut body = Vec::new();
    while let Ok(Some(ty)) = bulkhead_proto::qrexec_io::read_data(&mut r, version, &mut body) {
        let _ = ty;
        assert!(body.len() <= bulkhead_proto::qrexec::MAX_BODY);
    }
});
