//! The Admin API socket server: one request per connection, qubesd framing.
//!
//! Reads go against an immutable snapshot of the state, so they never wait
//! for a write's fsync. Writes go to one writer task, which applies each on a
//! candidate copy of the state (a failing write leaves no trace), persists the
//! batch with one fsync (group commit), and only then publishes the new state,
//! emits the events and acknowledges every write in the batch. Every
//! connection is its own task, so one stalled client never delays others.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bulkhead_proto::admin::{self, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, Semaphore};

use crate::api::{self, Call, EventFilter};
use crate::error::{ApiError, Exc};
use crate::model::App;
use crate::store::Store;

/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long one event may wait for a subscriber's socket to take it.
const EVENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Events buffered per subscriber before a slow one is disconnected.
const EVENT_BUFFER: usize = 4096;

/// Shared daemon state.
pub struct Daemon {
    state: RwLock<Arc<App>>,
    writes: tokio::sync::mpsc::Sender<WriteJob>,
    /// Held by the writer while a batch is in flight.
    writing: Arc<tokio::sync::Mutex<()>>,
    events: broadcast::Sender<Arc<Event>>,
    /// Who may connect: root, the daemon's uid, and members of this gid.
    allowed_gid: Option<u32>,
    warn: RateLimit,
    /// Runs qubes; `None` for a state-only daemon (tests of the API alone).
    runtime: Option<Arc<crate::lifecycle::Runtime>>,
}

/// One queued write and where to send its outcome.
struct WriteJob {
    ctx: api::Ctx,
    call: Call,
    reply: tokio::sync::oneshot::Sender<Result<String, ApiError>>,
}

/// Most writes committed with one fsync.
const MAX_BATCH: usize = 256;

impl Daemon {
    /// Creates the daemon and starts its writer task (call inside a Tokio runtime).
    pub fn start(store: Store, app: App, allowed_gid: Option<u32>) -> Arc<Self> {
        Self::start_with_runtime(store, app, allowed_gid, None)
    }

    /// Like [`Daemon::start`], with a runtime that runs qubes.
    pub fn start_with_runtime(
        store: Store,
        app: App,
        allowed_gid: Option<u32>,
        runtime: Option<crate::lifecycle::Runtime>,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (writes, rx) = tokio::sync::mpsc::channel(MAX_CONNECTIONS);
        let d = Arc::new(Daemon {
            state: RwLock::new(Arc::new(app)),
            writes,
            writing: Arc::new(tokio::sync::Mutex::new(())),
            events,
            allowed_gid,
            warn: RateLimit::new(20),
            runtime: runtime.map(Arc::new),
        });
        tokio::spawn(writer(Arc::downgrade(&d), Arc::new(store), rx));
        d
    }

    /// The qube runtime, if this daemon runs qubes.
    pub fn runtime(&self) -> Option<&Arc<crate::lifecycle::Runtime>> {
        self.runtime.as_ref()
    }

    /// Publishes an event to subscribers.
    pub fn emit(&self, ev: Event) {
        let _ = self.events.send(Arc::new(ev));
    }

    /// Sets a qube's power state in the published snapshot (through the
    /// writer, so it is ordered with other writes; not persisted).
    pub async fn set_power(
        &self,
        name: &str,
        state: crate::model::PowerState,
    ) -> Result<(), ApiError> {
        let ctx = api::Ctx {
            source: crate::model::DOM0.into(),
            dest: name.into(),
        };
        self.write(&ctx, &Call::SetPower(state)).await.map(|_| ())
    }

    /// Runs a write through the writer (used by host operations).
    pub async fn write_call(&self, ctx: &api::Ctx, call: &Call) -> Result<String, ApiError> {
        self.write(ctx, call).await
    }

    /// Current state snapshot.
    pub fn snapshot(&self) -> Arc<App> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs one framed request and returns the reply bytes; `None` means abort
    /// the connection without a reply (as qubesd does on framing errors).
    pub async fn handle_request(self: &Arc<Self>, raw: &[u8]) -> Option<Reply> {
        let req = match admin::parse_request(raw) {
            Ok(r) => r,
            Err(e) => {
                self.warn.log(|| tracing::warn!("framing error: {e}"));
                return None;
            }
        };
        let snap = self.snapshot();
        let (ctx, call) = match api::decode(&snap, &req) {
            Ok(x) => x,
            Err(e) => {
                return Some(Reply::Bytes(exception(
                    &e,
                    &req.method,
                    &req.dest,
                    &self.warn,
                )))
            }
        };
        if call == Call::Events {
            return Some(Reply::Events(EventFilter::for_dest(&ctx.dest)));
        }
        let result = if call.is_host_op() {
            self.host_op(&ctx, &call).await
        } else if call == Call::Remove {
            self.remove_qube(&ctx).await
        } else if call.is_write() {
            self.write(&ctx, &call).await
        } else {
            api::query(&snap, &ctx, &call)
        };
        Some(Reply::Bytes(match result {
            Ok(body) => admin::encode_ok(body.as_bytes()),
            Err(e) => exception(&e, &req.method, &req.dest, &self.warn),
        }))
    }

    async fn write(&self, ctx: &api::Ctx, call: &Call) -> Result<String, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = WriteJob {
            ctx: ctx.clone(),
            call: call.clone(),
            reply: tx,
        };
        let down = || ApiError::new(Exc::QubesException, "bulkheadd is shutting down; try again");
        self.writes.send(job).await.map_err(|_| down())?;
        rx.await.map_err(|_| down())?
    }

    /// Serves connections until the listener fails or the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = match limit.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return,
            };
            match listener.accept().await {
                Ok((stream, _)) => {
                    let d = self.clone();
                    tokio::spawn(async move {
                        d.connection(stream).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    self.warn.log(|| tracing::warn!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn peer_allowed(&self, stream: &UnixStream) -> bool {
        let Ok(cred) = stream.peer_cred() else {
            return false;
        };
        let uid = cred.uid();
        if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
            return true;
        }
        let Some(gid) = self.allowed_gid else {
            return false;
        };
        cred.gid() == gid
            || cred
                .pid()
                .is_some_and(|pid| crate::sys::process_in_group(pid, gid))
    }

    async fn connection(self: &Arc<Self>, mut stream: UnixStream) {
        if !self.peer_allowed(&stream) {
            self.warn
                .log(|| tracing::warn!("refused a client outside the allowed group"));
            return;
        }
        let mut buf = Vec::with_capacity(256);
        let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut chunk = [0u8; 8192];
            loop {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok::<bool, std::io::Error>(true);
                }
                if buf.len() + n > admin::MAX_REQUEST {
                    return Ok(false);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        match read {
            // A bare connect-and-close (e.g. a readiness probe) is not an error.
            Ok(Ok(true)) if buf.is_empty() => return,
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                self.warn
                    .log(|| tracing::warn!("request too long, aborted"));
                return;
            }
            // Timed out or broken: drop it.
            _ => return,
        }
        match self.handle_request(&buf).await {
            // Framing error: abort without a reply, as qubesd does.
            None => {}
            Some(Reply::Bytes(bytes)) => {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
            }
            Some(Reply::Events(filter)) => self.stream_events(stream, filter).await,
        }
    }

    async fn stream_events(&self, mut stream: UnixStream, filter: EventFilter) {
        let mut rx = self.events.subscribe();
        let hello = Event {
            subject: String::new(),
            event: "connection-established".into(),
            kwargs: vec![],
        };
        if stream
            .write_all(&admin::encode_event(&hello))
            .await
            .is_err()
        {
            return;
        }
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    if !filter.matches(&ev) {
                        continue;
                    }
                    // A subscriber that stops reading is dropped, not waited on forever.
                    let sent = tokio::time::timeout(
                        EVENT_WRITE_TIMEOUT,
                        stream.write_all(&admin::encode_event(&ev)),
                    )
                    .await;
                    if !matches!(sent, Ok(Ok(()))) {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.warn.log(|| {
                        tracing::warn!("event subscriber fell {n} events behind; disconnected")
                    });
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// What to send back.
pub enum Reply {
    Bytes(Vec<u8>),
    Events(EventFilter),
}

fn exception(e: &ApiError, method: &str, dest: &str, warn: &RateLimit) -> Vec<u8> {
    if e.exc == Exc::ProtocolError {
        warn.log(|| tracing::warn!("protocol error in {method} for {dest}: {}", e.message));
    } else {
        tracing::debug!(
            "{method} for {dest} failed: {}: {}",
            e.exc.class_name(),
            e.message
        );
    }
    admin::encode_exception(e.exc.class_name(), &e.message)
}

/// At most `per_sec` log lines a second for messages a client can trigger.
pub struct RateLimit {
    per_sec: u32,
    window: Mutex<(Instant, u32)>,
}

impl RateLimit {
    pub fn new(per_sec: u32) -> Self {
        Self {
            per_sec,
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    pub fn log(&self, f: impl FnOnce()) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.0.elapsed() >= Duration::from_secs(1) {
            *w = (Instant::now(), 0);
        }
        if w.1 < self.per_sec {
            w.1 += 1;
            drop(w);
            f();
        }
    }
}

/// Binds the socket: refuses if a live daemon answers there, removes a stale
/// one, creates the parent dir, sets mode 0660 and the group.
pub fn bind_socket(
    path: &std::path::Path,
    gid: Option<nix::unistd::Gid>,
) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another daemon is already listening on {}; stop it or pick another --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.with_context(|| format!("cannot listen on {}", path.display()))?;
    if let Some(gid) = gid {
        crate::sys::set_owner_mode(path, gid, 0o660)
            .with_context(|| format!("cannot set group/mode of {}", path.display()))?;
    }
    Ok(listener)
}

impl Daemon {
    /// Waits until no write is in progress.
    pub async fn quiesce(&self) {
        let _g = self.writing.lock().await;
    }
}

/// The single writer: takes queued writes in batches, applies them one by one
/// on a candidate state, saves once, then publishes and acknowledges.
async fn writer(
    daemon: std::sync::Weak<Daemon>,
    store: Arc<Store>,
    mut rx: tokio::sync::mpsc::Receiver<WriteJob>,
) {
    while let Some(first) = rx.recv().await {
        let Some(d) = daemon.upgrade() else { return };
        let writing = d.writing.clone();
        let _busy = writing.lock().await;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut cand = (*d.snapshot()).clone();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let mut changed = false;
        let mut persist = false;
        for job in &batch {
            let mut trial = cand.clone();
            match api::mutate(&mut trial, &job.ctx, &job.call, rand::random::<u32>) {
                Ok((body, evs)) => {
                    cand = trial;
                    changed = true;
                    persist |= job.call.persists();
                    events.extend(evs);
                    outcomes.push(Ok(body));
                }
                Err(e) => outcomes.push(Err(e)),
            }
        }
        if changed {
            let cand = Arc::new(cand);
            let (st, to_save) = (store.clone(), cand.clone());
            let saved = if persist {
                tokio::task::spawn_blocking(move || st.save(&to_save)).await
            } else {
                Ok(Ok(()))
            };
            let failure = match saved {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failure {
                tracing::error!(
                    "saving state failed, {} change(s) not applied: {e}",
                    batch.len()
                );
                for o in outcomes.iter_mut().filter(|o| o.is_ok()) {
                    *o = Err(ApiError::new(
                        Exc::QubesException,
                        format!("could not save state, nothing changed: {e}"),
                    ));
                }
                events.clear();
            } else {
                *d.state.write().unwrap_or_else(|e| e.into_inner()) = cand;
            }
        }
        for ev in events {
            let _ = d.events.send(Arc::new(ev));
        }
        for (job, outcome) in batch.into_iter().zip(outcomes) {
            let _ = job.reply.send(outcome);
        }
    }
}
