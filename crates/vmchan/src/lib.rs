//! `bulkhead-vmchan`: both ends of the `vm` backend's guest channel.
//!
//! One link (a virtio-serial port: a character device in the guest, QEMU's
//! chardev socket on the host) carries many byte streams in the frames of
//! [`bulkhead_proto::mux`]. Each stream is spliced to a local unix socket:
//! on the host, connections to the qube's agent socket become streams to
//! the guest agent, and streams the guest opens reach the qube's qrexec
//! relay; in the guest, the reverse. So qrexec runs over `vm` unchanged.
//!
//! Flow control is per stream (credit of [`WINDOW`] bytes), so a stalled
//! stream never blocks the link; the link reader never waits on a local
//! socket. A peer that breaks the protocol (a malformed frame, more data
//! than its credit, a stream id of the wrong side) loses the link.
//!
//! Shared by the guest agent and a host helper, this crate must depend on
//! nothing but `bulkhead-proto`, and must never trust the peer.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use bulkhead_proto::mux::{self, Frame, HEADER_LEN, MAX_PAYLOAD, MAX_STREAMS, VERSION, WINDOW};

pub use bulkhead_proto::mux::port;

/// Which end of the link this is: the host opens odd stream ids, the guest
/// even ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Host,
    Guest,
}

/// Opens the local end of a stream the peer opened to `port`.
pub type Accept = dyn Fn(u32) -> io::Result<UnixStream> + Send + Sync;

/// One end of a link.
#[derive(Clone)]
pub struct Mux {
    inner: Arc<Inner>,
}

struct Inner {
    out: Mutex<Box<dyn Write + Send>>,
    streams: Mutex<HashMap<u32, Arc<Stream>>>,
    next: AtomicU32,
    side: Side,
    accept: Box<Accept>,
    dead: AtomicBool,
    /// Stream threads still running.
    threads: AtomicU32,
    /// Our HELLO is out: frames may follow.
    ready: Mutex<bool>,
    ready_cv: Condvar,
}

enum Incoming {
    Data(Vec<u8>),
    Eof,
    Close,
}

struct Stream {
    id: u32,
    /// Bytes we may still send.
    credit: Mutex<u32>,
    cv: Condvar,
    peer_closed: AtomicBool,
    /// To the thread writing into the local socket.
    tx: Mutex<Option<mpsc::Sender<Incoming>>>,
    /// Bytes received and not yet written to the local socket.
    queued: AtomicU32,
    /// Local threads finished (2 = the stream is over).
    done: AtomicU32,
    /// The local end, shared by both threads (one descriptor per stream).
    sock: Mutex<Option<Arc<UnixStream>>>,
}

fn protocol(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("guest channel: {e}"))
}

const STACK: usize = 128 * 1024;

impl Mux {
    /// A link end writing frames to `out`; `accept` opens the local end of
    /// streams the peer opens. Call [`Mux::run`] with the link's read half.
    pub fn new(out: Box<dyn Write + Send>, side: Side, accept: Box<Accept>) -> Mux {
        Mux {
            inner: Arc::new(Inner {
                out: Mutex::new(out),
                streams: Mutex::new(HashMap::new()),
                next: AtomicU32::new(match side {
                    Side::Host => 1,
                    Side::Guest => 2,
                }),
                side,
                accept,
                dead: AtomicBool::new(false),
                threads: AtomicU32::new(0),
                ready: Mutex::new(false),
                ready_cv: Condvar::new(),
            }),
        }
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.inner.streams().len()
    }

    /// Waits (up to `timeout`) until no stream thread runs any more, e.g.
    /// after [`Mux::run`] returned; whether that happened.
    pub fn wait_idle(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.inner.threads.load(Ordering::Acquire) > 0 {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        true
    }

    /// Opens a stream to the peer's `port`, spliced to `local`.
    pub fn open(&self, port: u32, local: UnixStream) -> io::Result<()> {
        let inner = &self.inner;
        {
            // Nothing may precede our HELLO on the link.
            let mut r = inner.ready.lock().unwrap_or_else(|e| e.into_inner());
            while !*r && !inner.dead.load(Ordering::Acquire) {
                r = inner
                    .ready_cv
                    .wait_timeout(r, std::time::Duration::from_millis(50))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if inner.dead.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the guest channel is down",
            ));
        }
        let stream = {
            let mut map = inner.streams();
            if map.len() >= MAX_STREAMS {
                return Err(io::Error::other(format!(
                    "guest channel: {MAX_STREAMS} streams are open already"
                )));
            }
            let id = loop {
                let id = inner.next.fetch_add(2, Ordering::Relaxed);
                if id != 0 && !map.contains_key(&id) {
                    break id;
                }
            };
            let (s, rx) = Stream::new(id);
            map.insert(id, s.clone());
            (s, rx)
        };
        inner.send(&Frame::Open {
            stream: stream.0.id,
            port,
        })?;
        inner.clone().start(stream.0, stream.1, local);
        Ok(())
    }

    /// Reads the link until it ends (`Ok`) or the peer breaks the protocol
    /// (`Err`); either way every stream is then closed.
    pub fn run(&self, mut link: impl Read) -> io::Result<()> {
        let r = self.read_loop(&mut link);
        self.inner.dead.store(true, Ordering::Release);
        self.inner.ready_cv.notify_all();
        let streams: Vec<Arc<Stream>> = self.inner.streams().drain().map(|(_, s)| s).collect();
        for s in streams {
            s.peer_closed.store(true, Ordering::Release);
            s.cv.notify_all();
            s.shutdown();
            s.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        r
    }

    fn read_loop(&self, link: &mut impl Read) -> io::Result<()> {
        let inner = &self.inner;
        if inner.side == Side::Host {
            inner.send(&Frame::Hello { version: VERSION })?;
            inner.set_ready();
        }
        let mut payload = vec![0u8; MAX_PAYLOAD];
        let mut first = true;
        loop {
            let mut h = [0u8; HEADER_LEN];
            match link.read_exact(&mut h) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let h = mux::parse_header(&h).map_err(protocol)?;
            let body = &mut payload[..h.len as usize];
            link.read_exact(body)?;
            let frame = mux::parse_frame(h, body).map_err(protocol)?;
            if first {
                let Frame::Hello { version } = frame else {
                    return Err(protocol("the first frame is not HELLO"));
                };
                if version != VERSION {
                    return Err(protocol(format!("unsupported version {version}")));
                }
                if inner.side == Side::Guest {
                    inner.send(&Frame::Hello { version: VERSION })?;
                    inner.set_ready();
                }
                first = false;
                continue;
            }
            self.handle(frame)?;
        }
    }

    fn handle(&self, frame: Frame<'_>) -> io::Result<()> {
        let inner = &self.inner;
        match frame {
            Frame::Hello { .. } => return Err(protocol("a second HELLO")),
            Frame::Open { stream, port } => {
                let peer_parity = match inner.side {
                    Side::Host => 0,
                    Side::Guest => 1,
                };
                if stream % 2 != peer_parity {
                    return Err(protocol(format!(
                        "stream {stream} opened by the wrong side"
                    )));
                }
                let (s, rx) = {
                    let mut map = inner.streams();
                    if map.contains_key(&stream) {
                        return Err(protocol(format!("stream {stream} opened twice")));
                    }
                    if map.len() >= MAX_STREAMS {
                        drop(map);
                        return inner.send(&Frame::Close { stream });
                    }
                    let (s, rx) = Stream::new(stream);
                    map.insert(stream, s.clone());
                    (s, rx)
                };
                // Connecting may wait on a full backlog: never on this thread.
                let i2 = inner.clone();
                let spawned = inner.spawn(move || match (i2.accept)(port) {
                    Ok(sock) => i2.start(s, rx, sock),
                    Err(_) => {
                        i2.streams().remove(&s.id);
                        let _ = i2.send(&Frame::Close { stream: s.id });
                    }
                });
                if spawned.is_err() {
                    self.inner.streams().remove(&stream);
                    self.inner.send(&Frame::Close { stream })?;
                }
            }
            Frame::Data { stream, data } => {
                let Some(s) = inner.get(stream) else {
                    return Ok(()); // closed meanwhile
                };
                let queued = s.queued.fetch_add(data.len() as u32, Ordering::AcqRel);
                if queued as u64 + data.len() as u64 > WINDOW as u64 {
                    return Err(protocol(format!(
                        "stream {stream}: more data than its credit"
                    )));
                }
                let tx = s.tx.lock().unwrap_or_else(|e| e.into_inner());
                let sent = tx
                    .as_ref()
                    .is_some_and(|tx| tx.send(Incoming::Data(data.to_vec())).is_ok());
                if !sent {
                    s.queued.fetch_sub(data.len() as u32, Ordering::AcqRel);
                }
            }
            Frame::Credit { stream, bytes } => {
                if let Some(s) = inner.get(stream) {
                    let mut c = s.credit.lock().unwrap_or_else(|e| e.into_inner());
                    *c = c.saturating_add(bytes).min(WINDOW);
                    s.cv.notify_all();
                }
            }
            Frame::Eof { stream } => {
                if let Some(s) = inner.get(stream) {
                    if let Some(tx) = s.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                        let _ = tx.send(Incoming::Eof);
                    }
                }
            }
            Frame::Close { stream } => {
                if let Some(s) = inner.get(stream) {
                    s.peer_closed.store(true, Ordering::Release);
                    s.cv.notify_all();
                    // The writer delivers what is queued, then shuts the
                    // socket; if it is gone already, shut it here.
                    let queued =
                        s.tx.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .as_ref()
                            .is_some_and(|tx| tx.send(Incoming::Close).is_ok());
                    if !queued {
                        s.shutdown();
                    }
                }
            }
        }
        Ok(())
    }
}

impl Stream {
    fn new(id: u32) -> (Arc<Stream>, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel();
        (
            Arc::new(Stream {
                id,
                credit: Mutex::new(WINDOW),
                cv: Condvar::new(),
                peer_closed: AtomicBool::new(false),
                tx: Mutex::new(Some(tx)),
                queued: AtomicU32::new(0),
                done: AtomicU32::new(0),
                sock: Mutex::new(None),
            }),
            rx,
        )
    }

    fn shutdown(&self) {
        if let Some(s) = self.sock.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn closed(&self) -> bool {
        self.peer_closed.load(Ordering::Acquire)
    }
}

impl Inner {
    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Stream>>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a stream thread of its own (counted for [`Mux::wait_idle`]).
    fn spawn(self: &Arc<Self>, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        struct Done(Arc<Inner>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.threads.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.threads.fetch_add(1, Ordering::AcqRel);
        let done = Done(self.clone());
        std::thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || {
                let _done = done;
                f()
            })
            .map(|_| ())
    }

    fn set_ready(&self) {
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.ready_cv.notify_all();
    }

    fn get(&self, id: u32) -> Option<Arc<Stream>> {
        self.streams().get(&id).cloned()
    }

    fn send(&self, f: &Frame<'_>) -> io::Result<()> {
        let bytes = mux::encode(f).ok_or_else(|| protocol("frame too large"))?;
        self.out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(&bytes)
    }

    /// Starts the two threads that splice stream `s` and `local`.
    fn start(self: Arc<Self>, s: Arc<Stream>, rx: mpsc::Receiver<Incoming>, local: UnixStream) {
        let local = Arc::new(local);
        let reader_sock = local.clone();
        *s.sock.lock().unwrap_or_else(|e| e.into_inner()) = Some(local.clone());
        if s.closed() {
            s.shutdown();
        }
        let (i2, s2) = (self.clone(), s.clone());
        let w = self.spawn(move || i2.write_local(&s2, rx, local));
        if w.is_err() {
            s.shutdown();
            self.finish(&s);
        }
        let (i3, s3) = (self.clone(), s.clone());
        let r = self.spawn(move || i3.read_local(&s3, reader_sock));
        if r.is_err() {
            s.shutdown();
            self.finish(&s);
        }
    }

    /// Local socket → link, within the peer's credit.
    fn read_local(&self, s: &Stream, sock: Arc<UnixStream>) {
        let mut buf = vec![0u8; MAX_PAYLOAD + HEADER_LEN];
        loop {
            let allowed = {
                let mut c = s.credit.lock().unwrap_or_else(|e| e.into_inner());
                while *c == 0 && !s.closed() && !self.dead.load(Ordering::Acquire) {
                    c = s.cv.wait(c).unwrap_or_else(|e| e.into_inner());
                }
                if s.closed() || self.dead.load(Ordering::Acquire) {
                    break;
                }
                (*c as usize).min(MAX_PAYLOAD)
            };
            match (&*sock).read(&mut buf[HEADER_LEN..HEADER_LEN + allowed]) {
                Ok(0) => {
                    let _ = self.send(&Frame::Eof { stream: s.id });
                    break;
                }
                Ok(n) => {
                    {
                        let mut c = s.credit.lock().unwrap_or_else(|e| e.into_inner());
                        *c -= n as u32;
                    }
                    buf[..HEADER_LEN].copy_from_slice(&mux::data_header(s.id, n));
                    let w = self
                        .out
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .write_all(&buf[..HEADER_LEN + n]);
                    if w.is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // A reset local end sends nothing more: as EOF, so the
                    // peer's end learns it (nothing else would tell it).
                    if !s.closed() {
                        let _ = self.send(&Frame::Eof { stream: s.id });
                    }
                    break;
                }
            }
        }
        self.finish(s);
    }

    /// Link → local socket, granting credit back as bytes leave.
    ///
    /// When the local end stops taking bytes (it closed; a service that
    /// exits without reading its input), later data is dropped but still
    /// credited, and nothing else changes: the other direction may still
    /// carry what the local end wrote before it went (a service's exit
    /// code), and the stream ends as usual once both directions are done.
    fn write_local(&self, s: &Stream, rx: mpsc::Receiver<Incoming>, sock: Arc<UnixStream>) {
        let mut broken = false;
        for m in rx {
            match m {
                Incoming::Data(d) => {
                    if !broken && (&*sock).write_all(&d).is_err() {
                        broken = true;
                    }
                    s.queued.fetch_sub(d.len() as u32, Ordering::AcqRel);
                    if !s.closed() {
                        let _ = self.send(&Frame::Credit {
                            stream: s.id,
                            bytes: d.len() as u32,
                        });
                    }
                }
                Incoming::Eof => {
                    let _ = sock.shutdown(Shutdown::Write);
                    break;
                }
                Incoming::Close => {
                    s.shutdown();
                    break;
                }
            }
        }
        self.finish(s);
    }

    /// One local thread of `s` is done; after both, the stream is over.
    fn finish(&self, s: &Stream) {
        if s.done.fetch_add(1, Ordering::AcqRel) == 1 {
            let removed = self.streams().remove(&s.id).is_some();
            s.shutdown();
            if removed && !s.closed() {
                let _ = self.send(&Frame::Close { stream: s.id });
            }
        }
    }
}

#[cfg(test)]
mod tests;
