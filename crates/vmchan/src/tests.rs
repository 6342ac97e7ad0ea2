use super::*;
use std::os::unix::net::UnixListener;
use std::time::Duration;

/// An echo service: reads to EOF, writes everything back, closes.
fn echo_listener(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("echo.sock");
    let l = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let mut c = c.unwrap();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                c.read_to_end(&mut buf).unwrap();
                c.write_all(&buf).unwrap();
            });
        }
    });
    path
}

/// A host and a guest end joined by a socketpair (the "virtio-serial" link);
/// streams the guest opens reach `target` on the host.
fn pair(target: std::path::PathBuf) -> (Mux, Mux) {
    let (a, b) = UnixStream::pair().unwrap();
    let host = Mux::new(
        Box::new(a.try_clone().unwrap()),
        Side::Host,
        Box::new(move |_port| UnixStream::connect(&target)),
    );
    let guest = Mux::new(
        Box::new(b.try_clone().unwrap()),
        Side::Guest,
        Box::new(|_| Err(io::Error::other("no services"))),
    );
    let (h, g) = (host.clone(), guest.clone());
    std::thread::spawn(move || h.run(a));
    std::thread::spawn(move || g.run(b));
    (host, guest)
}

/// Opens a stream through `m` and returns our end of it.
fn call(m: &Mux, payload: &[u8]) -> Vec<u8> {
    let (mine, theirs) = UnixStream::pair().unwrap();
    m.open(port::RELAY, theirs).unwrap();
    let mut w = mine.try_clone().unwrap();
    let p = payload.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&p).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut out = Vec::new();
    let mut r = mine;
    r.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    r.read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn a_stream_carries_bytes_both_ways_with_half_close() {
    let dir = tempdir();
    let (_host, guest) = pair(echo_listener(&dir));
    // Larger than the window: the echo only answers after reading to EOF,
    // so this needs credit to flow back while the other side buffers.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let got = call(&guest, &data);
    assert!(got == data, "{} bytes back of {}", got.len(), data.len());
}

#[test]
fn many_concurrent_streams_all_complete() {
    let dir = tempdir();
    let (_host, guest) = pair(echo_listener(&dir));
    let threads: Vec<_> = (0..256)
        .map(|i| {
            let g = guest.clone();
            std::thread::spawn(move || {
                let msg = format!("call {i} ").repeat(1000).into_bytes();
                let got = call(&g, &msg);
                assert!(
                    got == msg,
                    "call {i}: {} bytes back of {}",
                    got.len(),
                    msg.len()
                );
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Every stream is torn down on both sides once its calls end.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while guest.open_streams() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(guest.open_streams(), 0);
}

#[test]
fn a_refused_open_closes_the_stream() {
    let dir = tempdir();
    let (host, _guest) = pair(echo_listener(&dir));
    // The guest end accepts nothing: the caller's connection ends at once
    // (EOF, or a reset when what it wrote was never read).
    let (mine, theirs) = UnixStream::pair().unwrap();
    host.open(port::AGENT, theirs).unwrap();
    let _ = (&mine).write_all(b"anyone?");
    let mut r = mine;
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    match r.read_to_end(&mut out) {
        Ok(_) => assert!(out.is_empty()),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// Raw frames from a hostile guest into a host end.
fn hostile(frames: &[Vec<u8>]) -> io::Result<()> {
    let (a, mut b) = UnixStream::pair().unwrap();
    let host = Mux::new(
        Box::new(a.try_clone().unwrap()),
        Side::Host,
        Box::new(|_| {
            let (x, y) = UnixStream::pair()?;
            // Keep the far end open and never read it.
            std::mem::forget(y);
            Ok(x)
        }),
    );
    let mut wire = Vec::new();
    for f in frames {
        wire.extend_from_slice(f);
    }
    std::thread::spawn(move || {
        let _ = b.write_all(&wire);
        // Drain what the host sends so it never blocks.
        let mut sink = [0u8; 4096];
        while b.read(&mut sink).is_ok_and(|n| n > 0) {}
    });
    a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.run(a)
}

fn f(fr: Frame<'_>) -> Vec<u8> {
    mux::encode(&fr).unwrap()
}

#[test]
fn a_guest_breaking_the_protocol_loses_the_link() {
    let hello = f(Frame::Hello { version: VERSION });
    // Not HELLO first.
    assert!(hostile(&[f(Frame::Eof { stream: 2 })]).is_err());
    // Wrong version.
    assert!(hostile(&[f(Frame::Hello { version: 9 })]).is_err());
    // A host-side (odd) stream id.
    assert!(hostile(&[hello.clone(), f(Frame::Open { stream: 3, port: 1 })]).is_err());
    // The same stream twice.
    let open = f(Frame::Open { stream: 2, port: 1 });
    assert!(hostile(&[hello.clone(), open.clone(), open.clone()]).is_err());
    // More data than the window, into a local end that does not read.
    let chunk = vec![7u8; MAX_PAYLOAD];
    let mut frames = vec![hello.clone(), open];
    // The local socket's own buffer takes some before the writer stalls.
    for _ in 0..(4 * WINDOW as usize / MAX_PAYLOAD + 1) {
        frames.push(f(Frame::Data {
            stream: 2,
            data: &chunk,
        }));
    }
    let e = hostile(&frames).unwrap_err();
    assert!(e.to_string().contains("credit"), "{e}");
    // Garbage header.
    let mut junk = hello;
    junk.extend_from_slice(&[0xff; 12]);
    assert!(hostile(&[junk]).is_err());
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::AtomicUsize;
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "vmchan-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Regression: a service that answers and exits without reading its input
/// (a qrexec service's exit code) lost the answer about one call in ten —
/// the failed write into it stopped the stream's other direction too.
#[test]
fn an_answer_written_before_the_local_end_closes_is_delivered() {
    let dir = tempdir();
    let path = dir.join("answer.sock");
    let l = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let mut c = c.unwrap();
            let _ = c.write_all(b"exit 0");
            // Closed with the caller's input unread.
        }
    });
    let (_host, guest) = pair(path);
    for i in 0..200 {
        let (mine, theirs) = UnixStream::pair().unwrap();
        guest.open(port::RELAY, theirs).unwrap();
        let mut w = mine.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&[1u8; 300_000]);
        });
        let mut r = mine;
        r.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("call {i}: {e}"),
            }
        }
        assert_eq!(got, b"exit 0", "call {i}");
        drop(r);
        let _ = writer.join();
    }
}
