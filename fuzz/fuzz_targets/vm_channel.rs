//! The host end of the vm backend's guest channel (`bulkhead-vmchan`, run
//! by `bulkhead-vmm chan`) reading whatever a guest writes to its
//! virtio-serial port: it never panics, and either reads to the end or
//! rejects the link. Streams the "guest" opens get a local end whose peer
//! is already gone, so every stream path (data, credit, EOF, close, write
//! failure) runs without anything blocking. The frame parser itself is
//! checked on the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::os::unix::net::UnixStream;

fuzz_target!(|data: &[u8]| {
    let _ = bulkhead_proto::mux::parse_all(data);
    let mux = bulkhead_vmchan::Mux::new(
        Box::new(std::io::sink()),
        bulkhead_vmchan::Side::Host,
        Box::new(|port| {
            if port == bulkhead_vmchan::port::RELAY {
                let (a, _gone) = UnixStream::pair()?;
                Ok(a)
            } else {
                Err(std::io::Error::other("no such port"))
            }
        }),
    );
    let _ = mux.run(std::io::Cursor::new(data));
    // Every stream thread ends once the link is gone.
    assert!(mux.wait_idle(std::time::Duration::from_secs(10)));
});
