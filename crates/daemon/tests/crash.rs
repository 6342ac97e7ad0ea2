//! Durability under `kill -9`: writers stream acknowledged changes while a
//! killer SIGKILLs the daemon at random instants. After every kill the state
//! file must load and contain every change that was acknowledged before it.
//! (A power cut is not simulated here; the write path is the same
//! temp-file + fsync + rename + directory-fsync sequence.)

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_proto::admin::encode_request;
use rand::Rng;

#[derive(Default)]
struct Acked {
    /// feature key → highest acknowledged value (values only grow).
    features: BTreeMap<String, u64>,
    /// qubes whose creation was acknowledged.
    created: Vec<String>,
    count: usize,
}

const TARGET_ACKED: usize = 1200;

#[test]
fn no_acknowledged_write_is_lost_under_kill_9() {
    let mut d = common::Daemon::start();
    let socket = d.socket.clone();
    let state_file = d.state_dir().join("qubes.json");
    let acked = Arc::new(Mutex::new(Acked::default()));
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));

    let mut writers = Vec::new();
    for w in 0..2u64 {
        let socket = socket.clone();
        let acked = acked.clone();
        let done = done.clone();
        writers.push(std::thread::spawn(move || {
            let mut rng = rand::thread_rng();
            let mut seq = 0u64;
            while !done.load(Ordering::Relaxed) {
                seq += 1;
                let create = seq.is_multiple_of(25);
                let (req, key) = if create {
                    let name = format!("w{w}q{seq}");
                    let payload = format!("name={name} label=red");
                    (
                        encode_request(
                            "admin.vm.Create.TemplateVM",
                            "",
                            "dom0",
                            "dom0",
                            payload.as_bytes(),
                        ),
                        name,
                    )
                } else {
                    let key = format!("w{w}k{}", rng.gen_range(0..40));
                    (
                        encode_request(
                            "admin.vm.feature.Set",
                            &key,
                            "dom0",
                            "dom0",
                            seq.to_string().as_bytes(),
                        ),
                        key,
                    )
                };
                let reply = std::panic::catch_unwind(|| {
                    let mut s = match std::os::unix::net::UnixStream::connect(&socket) {
                        Ok(s) => s,
                        Err(_) => return Vec::new(),
                    };
                    use std::io::{Read, Write};
                    if s.write_all(&req).is_err() || s.shutdown(std::net::Shutdown::Write).is_err()
                    {
                        return Vec::new();
                    }
                    let mut b = Vec::new();
                    let _ = s.read_to_end(&mut b);
                    b
                })
                .unwrap_or_default();
                if reply == b"0\0" {
                    let mut a = acked.lock().unwrap();
                    a.count += 1;
                    if create {
                        a.created.push(key);
                    } else {
                        let e = a.features.entry(key).or_insert(0);
                        *e = (*e).max(seq);
                    }
                } else if reply.is_empty() {
                    std::thread::sleep(Duration::from_millis(2));
                } else {
                    panic!("unexpected reply {:?}", String::from_utf8_lossy(&reply));
                }
            }
        }));
    }

    let mut rng = rand::thread_rng();
    loop {
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..60)));
        d.kill9();
        kills.fetch_add(1, Ordering::Relaxed);
        // Snapshot of what was acknowledged before the kill completed.
        let (features, created, count) = {
            let a = acked.lock().unwrap();
            (a.features.clone(), a.created.clone(), a.count)
        };
        let bytes = std::fs::read(&state_file).expect("state file exists after kill");
        let app =
            bulkheadd::store::parse_state(&state_file, &bytes).expect("state loads after kill -9");
        let dom0 = &app.qubes["dom0"];
        for (k, v) in &features {
            let got: u64 = dom0
                .features
                .get(k)
                .unwrap_or_else(|| panic!("acknowledged feature {k} lost"))
                .parse()
                .unwrap();
            assert!(got >= *v, "feature {k}: state has {got}, acknowledged {v}");
        }
        for q in &created {
            assert!(
                app.qubes.contains_key(q),
                "acknowledged creation of {q} lost"
            );
        }
        if count >= TARGET_ACKED {
            break;
        }
        d.restart();
    }
    done.store(true, Ordering::Relaxed);
    d.restart();
    for w in writers {
        w.join().unwrap();
    }
    let a = acked.lock().unwrap();
    println!(
        "{} acknowledged writes, {} kills, all present after every kill",
        a.count,
        kills.load(Ordering::Relaxed)
    );
    assert!(a.count >= TARGET_ACKED);
    assert!(
        kills.load(Ordering::Relaxed) >= 10,
        "too few kills to mean anything"
    );
}
