//! The daemon's parser of a relay's policy request (the relay runs as the
//! calling qube's uid): no panic, and whatever it accepts is within limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((service, target)) = bulkheadd::qrexec::parse_request(data) {
        assert!(!service.is_empty() && service.len() <= 65000);
        assert!(target.len() <= 64);
        assert!(!service.contains(['/', '\n', ' ', '\0']));
        assert!(!target.contains(['/', '\n', ' ', '\0']));
    }
});
