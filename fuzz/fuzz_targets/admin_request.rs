//! Fuzzes the Admin API framing: request parser, reply parser, event stream.
#![no_main]

use bulkhead_proto::admin::{self, EventStream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = admin::parse_request(data) {
        // Re-encoding a parsed request must parse back to the same thing
        // (modulo `keyword adminvm`, which becomes `name dom0`).
        let again = admin::encode_request(&req.method, &req.arg, &req.source, &req.dest, &req.payload);
        if again.len() <= admin::MAX_REQUEST && !req.method.contains('+') {
            let back = admin::parse_request(&again).expect("re-encoded request parses");
            assert_eq!(back, req);
        }
    }
    let _ = admin::parse_reply(data);
    let mut s = EventStream::new();
    for chunk in data.chunks(7) {
        s.feed(chunk);
        while let Ok(Some(_)) = s.next_event() {}
    }
});
