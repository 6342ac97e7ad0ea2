//! qubes.VMExec argument decoding (the agent runs it on the service argument,
//! which other qubes will send once qube-to-qube calls exist): no panic, and
//! whatever decodes re-encodes to exactly the same text (one encoding per argv).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(argv) = bulkhead_proto::vmexec::decode(text) {
        assert_eq!(bulkhead_proto::vmexec::encode(&argv), text);
    }
});
