//! Many clients at once, and stalled clients that never finish their request.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[test]
fn serves_256_concurrent_connections() {
    let d = common::Daemon::start();
    d.ok(
        "admin.vm.Create.TemplateVM",
        "",
        "dom0",
        b"name=tpl label=black",
    );
    let n = 256;
    // Open all connections first, then send every request at once.
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let socket = d.socket.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&socket).unwrap();
                barrier.wait();
                let req = if i % 8 == 0 {
                    bulkhead_proto::admin::encode_request(
                        "admin.vm.feature.Set",
                        &format!("f{i}"),
                        "dom0",
                        "tpl",
                        b"1",
                    )
                } else {
                    bulkhead_proto::admin::encode_request(
                        "admin.vm.property.Get",
                        "memory",
                        "dom0",
                        "tpl",
                        b"",
                    )
                };
                s.write_all(&req).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut b = Vec::new();
                s.read_to_end(&mut b).unwrap();
                (i, b)
            })
        })
        .collect();
    for h in handles {
        let (i, b) = h.join().unwrap();
        if i % 8 == 0 {
            assert_eq!(b, b"0\0", "write {i}");
        } else {
            assert_eq!(b, b"0\0default=True type=int 400", "read {i}");
        }
    }
    let features = d.ok("admin.vm.feature.List", "", "tpl", b"");
    assert_eq!(features.lines().count(), n / 8);
}

#[test]
fn stalled_clients_do_not_delay_others() {
    let d = common::Daemon::start();
    // 300 clients that connect and send half a request, then stall.
    let stalled: Vec<UnixStream> = (0..300)
        .map(|_| {
            let mut s = UnixStream::connect(&d.socket).unwrap();
            s.write_all(b"admin.vm.List+ dom0 na").unwrap();
            s
        })
        .collect();
    // Plus one event subscriber that never reads.
    let mut sub = UnixStream::connect(&d.socket).unwrap();
    sub.write_all(b"admin.Events+ dom0 name dom0\0").unwrap();
    sub.shutdown(std::net::Shutdown::Write).unwrap();
    let start = Instant::now();
    for i in 0..200 {
        d.ok("admin.vm.feature.Set", &format!("x{i}"), "dom0", b"v");
        d.ok("admin.vm.List", "", "dom0", b"");
    }
    let elapsed = start.elapsed();
    // Generous bound: the point is "not blocked behind the stalled ones"
    // (a blocked server would hit the 30 s request timeout).
    assert!(
        elapsed < Duration::from_secs(20),
        "400 calls took {elapsed:?} with stalled clients present"
    );
    drop(stalled);
    drop(sub);
}
