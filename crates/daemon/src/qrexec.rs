//! Qube-to-qube qrexec calls, the daemon's part: policy and connecting.
//!
//! Each running qube has a relay (`bulkhead-qrexec-relay`, running as that
//! qube's own unprivileged host uid) that parses everything the qube sends.
//! When the qube asks for a call, its relay asks here, on the policy socket:
//!
//! ```text
//! relay → daemon:  service=SVC[+ARG]\ntarget=TARGET\n\n
//! daemon → relay:  result=allow\nversion=N\n\n   + the connected target fd
//!                  result=deny\ncode=126|125\nreason=…\n\n
//! ```
//!
//! The source is never taken from the request: it is the qube whose uid
//! range the relay's uid (SO_PEERCRED) starts. On allow, the daemon itself
//! connects to the target's agent and sends `user:QUBESRPC SVC+ARG SOURCE`,
//! so a compromised relay cannot choose the command, the user or the target.
//! Policy files are Qubes' R4.1+ format (`bulkhead-policy`), reloaded when
//! any file in the policy directories changes.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bulkhead_policy::{Decision, Domain, Policy, PolicyError, Request, System};
use bulkhead_proto::qrexec::{self, Message};

use crate::lifecycle::{UID_BASE, UID_RANGE};
use crate::model::props::{self, Holder};
use crate::model::{App, PowerState, DOM0};
use crate::server::Daemon;

/// Disposables alive at once, in all and made for one caller.
pub const MAX_DISPOSABLES: usize = 32;
pub const MAX_DISPOSABLES_PER_QUBE: usize = 4;

/// Largest request a relay may send.
pub const MAX_REQUEST: usize = qrexec::MAX_SERVICE_NAME_LEN + 256;

/// (path, mtime, size) of every file in the policy directories.
type Fingerprint = Vec<(PathBuf, SystemTime, u64)>;
/// A loaded policy, or why it cannot be used.
type Loaded = Result<Arc<Policy>, PolicyError>;

/// The policy files, reloaded when they change.
pub struct PolicyStore {
    dirs: Vec<PathBuf>,
    cache: Mutex<Option<(Fingerprint, Loaded)>>,
}

fn fingerprint(dirs: &[PathBuf]) -> Fingerprint {
    let mut v = Vec::new();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(m) = e.metadata() {
                v.push((
                    e.path(),
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                ));
            }
        }
    }
    v.sort();
    v
}

impl PolicyStore {
    pub fn new(dirs: Vec<PathBuf>) -> PolicyStore {
        PolicyStore {
            dirs,
            cache: Mutex::new(None),
        }
    }

    /// The policy directories, in priority order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The current policy; an invalid one is an error naming file and line
    /// (and every call is denied until it is fixed).
    pub fn current(&self) -> Result<Arc<Policy>, PolicyError> {
        let fp = fingerprint(&self.dirs);
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((old, p)) = c.as_ref() {
            if *old == fp {
                return p.clone();
            }
        }
        let existing: Vec<PathBuf> = self.dirs.iter().filter(|d| d.is_dir()).cloned().collect();
        let p = bulkhead_policy::load_dirs(&existing, &bulkhead_policy::OsFiles).map(Arc::new);
        match &p {
            Ok(pol) => tracing::info!("qrexec policy loaded: {} rules", pol.rules().len()),
            Err(e) => tracing::error!("qrexec policy is invalid, every call is denied: {e}"),
        }
        *c = Some((fp, p.clone()));
        p
    }
}

/// What the policy evaluator needs to know about every qube.
pub fn system(app: &App) -> System {
    let mut sys = System::default();
    for q in app.qubes.values() {
        let get = |p: &str| props::value(app, Holder::Vm(&q.name), p).ok();
        sys.domains.insert(
            q.name.clone(),
            Domain {
                name: q.name.clone(),
                class: q.class.name().to_string(),
                tags: q.tags.iter().cloned().collect(),
                template_for_dispvms: get("template_for_dispvms").is_some_and(|v| v.as_bool()),
                default_dispvm: get("default_dispvm").and_then(|v| v.as_vm().map(str::to_string)),
                template: get("template").and_then(|v| v.as_vm().map(str::to_string)),
                running: q.power == PowerState::Running || q.name == DOM0,
                uuid: q.uuid.to_string(),
            },
        );
    }
    sys
}

/// The qube whose relay runs as host uid `uid` (the base of its range).
fn qube_of_uid(app: &App, uid: u32) -> Option<String> {
    let off = uid.checked_sub(UID_BASE)?;
    if off % UID_RANGE != 0 {
        return None;
    }
    let qid = off / UID_RANGE;
    app.qubes
        .values()
        .find(|q| q.qid == qid && q.name != DOM0)
        .map(|q| q.name.clone())
}

#[cfg(test)]
mod tests {
    #[test]
    fn relay_requests_are_strict() {
        let p = |s: &str| super::parse_request(s.as_bytes());
        assert_eq!(
            p("service=test.Echo+a\ntarget=@dispvm:x\n\n"),
            Some(("test.Echo+a".into(), "@dispvm:x".into()))
        );
        for bad in [
            "service=a\n\n",
            "service=a\ntarget=b\nsource=dom0\n\n",
            "service=a\nservice=b\ntarget=c\n\n",
            "service=../x\ntarget=b\n\n",
            "service=+x\ntarget=b\n\n",
            "service=a+b+c\ntarget=b\n\n",
            "service=a\ntarget=b c\n\n",
            "service=a\ntarget=b/c\n\n",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }
}

/// A refusal sent back to the relay.
struct Refusal {
    code: i32,
    reason: String,
}

fn refuse(code: i32, reason: impl Into<String>) -> Refusal {
    Refusal {
        code,
        reason: reason.into(),
    }
}

/// Parses a relay's request (`service=…\ntarget=…\n\n`, each key once,
/// nothing else); the relay runs as the qube's uid, so this is hostile
/// input: pure, bounded, fuzzed (`fuzz/fuzz_targets/relay_request.rs`).
pub fn parse_request(buf: &[u8]) -> Option<(String, String)> {
    if buf.len() > MAX_REQUEST {
        return None;
    }
    let text = std::str::from_utf8(buf).ok()?;
    let mut service = None;
    let mut target = None;
    for line in text.lines().filter(|l| !l.is_empty()) {
        match line.split_once('=') {
            Some(("service", v)) if service.is_none() => service = Some(v.to_string()),
            Some(("target", v)) if target.is_none() => target = Some(v.to_string()),
            _ => return None,
        }
    }
    let (service, target) = (service?, target?);
    (valid_service(&service) && valid_target(&target)).then_some((service, target))
}

fn valid_service(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= qrexec::MAX_SERVICE_NAME_LEN
        && !s.starts_with('+')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
        && s.matches('+').count() <= 1
}

fn valid_target(s: &str) -> bool {
    s.len() <= qrexec::DOMAIN_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b':'))
}

impl Daemon {
    /// Serves one relay connection (blocking; run on the blocking pool).
    pub fn serve_relay(self: &Arc<Self>, mut s: UnixStream) {
        let outcome = self.relay_request(&mut s);
        let reply = match &outcome {
            Ok((version, _)) => format!("result=allow\nversion={version}\n\n"),
            Err(r) => format!(
                "result=deny\ncode={}\nreason={}\n\n",
                r.code,
                r.reason.replace('\n', " ")
            ),
        };
        let fd = outcome.as_ref().ok().map(|(_, t)| t.as_raw_fd());
        if let Err(e) = bulkhead_sys::fdpass::send_with_fd(&s, reply.as_bytes(), fd) {
            tracing::debug!("relay went away before its answer: {e}");
        }
    }

    fn relay_request(self: &Arc<Self>, s: &mut UnixStream) -> Result<(u32, UnixStream), Refusal> {
        let cred = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(|e| refuse(qrexec::EXIT_QREXEC_FAILED, format!("peer credentials: {e}")))?;
        let app = self.snapshot();
        let Some(source) = qube_of_uid(&app, cred.uid()) else {
            return Err(refuse(qrexec::EXIT_REFUSED, "caller is not a qube's relay"));
        };
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // One deadline for the whole request, not per read.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !buf.ends_with(b"\n\n") {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(refuse(qrexec::EXIT_QREXEC_FAILED, "request timed out"));
            }
            let _ = s.set_read_timeout(Some(left));
            let n = s.read(&mut chunk).map_err(|e| {
                refuse(
                    qrexec::EXIT_QREXEC_FAILED,
                    format!("reading the request: {e}"),
                )
            })?;
            if n == 0 || buf.len() + n > MAX_REQUEST {
                return Err(refuse(qrexec::EXIT_QREXEC_FAILED, "malformed request"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let (service, target) = parse_request(&buf)
            .ok_or_else(|| refuse(qrexec::EXIT_QREXEC_FAILED, "malformed request"))?;
        self.call_from_qube(&source, &service, &target)
    }

    /// Decides a call from `source` and, if allowed, connects it to the
    /// target's agent (starting the target if policy says so).
    fn call_from_qube(
        self: &Arc<Self>,
        source: &str,
        service: &str,
        target: &str,
    ) -> Result<(u32, UnixStream), Refusal> {
        let (svc, arg) = match service.split_once('+') {
            Some((s, a)) => (s, format!("+{a}")),
            None => (service, "+".to_string()),
        };
        // Names are bounded but may be long; logs get a prefix.
        let shown: String = service.chars().take(100).collect();
        let log = |what: &str| {
            tracing::info!("qrexec: {source} -> {target} {shown}: {what}");
        };
        let rt = self
            .runtime()
            .ok_or_else(|| refuse(qrexec::EXIT_QREXEC_FAILED, "no runtime"))?;
        let policy = rt.policy.current().map_err(|e| {
            log(&format!("denied (invalid policy: {e})"));
            refuse(
                qrexec::EXIT_REFUSED,
                "the policy is invalid; see the daemon log",
            )
        })?;
        let app = self.snapshot();
        let sys = system(&app);
        let req = Request {
            service: svc,
            argument: &arg,
            source,
            target,
        };
        let (dest, user, autostart) = match policy.decide(&sys, &req) {
            Decision::Allow {
                target,
                user,
                autostart,
                rule,
                ..
            } => {
                log(&format!("allowed by {rule} (target {target})"));
                (target, user, autostart)
            }
            Decision::Ask {
                choices,
                default_target,
                user,
                autostart,
                rule,
                ..
            } => match rt
                .ask
                .ask(source, service, target, &choices, default_target.as_deref())
            {
                Ok(Some(chosen)) if choices.contains(&chosen) => {
                    log(&format!(
                        "allowed by the user (ask, rule {rule}), target {chosen}"
                    ));
                    (chosen, user, autostart)
                }
                Ok(_) => {
                    log(&format!("denied by the user (ask, rule {rule})"));
                    return Err(refuse(qrexec::EXIT_REFUSED, "request refused"));
                }
                Err(why) => {
                    log(&format!("denied: rule {rule} says ask, and {why}"));
                    return Err(refuse(qrexec::EXIT_REFUSED, "request refused"));
                }
            },
            Decision::Deny { reason, rule, .. } => {
                match rule {
                    Some(r) => log(&format!("denied by {r}")),
                    None => log(&format!("denied: {reason}")),
                }
                return Err(refuse(qrexec::EXIT_REFUSED, "request refused"));
            }
        };
        if dest == source {
            log("denied: a qube cannot call itself");
            return Err(refuse(qrexec::EXIT_REFUSED, "request refused"));
        }
        // A disposable: created and started for this call, killed (and so
        // removed) when the call ends.
        let mut disposable = None;
        let (dest, autostart) = match dest.strip_prefix("@dispvm:") {
            Some(tmpl) => {
                let live = |pred: &dyn Fn(&crate::model::Qube) -> bool| {
                    app.qubes
                        .values()
                        .filter(|q| q.class == crate::model::Class::DispVM && pred(q))
                        .count()
                };
                let mine = format!("disp-created-by-{source}");
                if live(&|_| true) >= MAX_DISPOSABLES
                    || live(&|q| q.tags.contains(&mine)) >= MAX_DISPOSABLES_PER_QUBE
                {
                    log("failed: too many disposables already");
                    return Err(refuse(qrexec::EXIT_QREXEC_FAILED, "too many disposables"));
                }
                let d = self.clone();
                let src = source.to_string();
                let tmpl = tmpl.to_string();
                let made = tokio::runtime::Handle::current().block_on(async move {
                    let name = d.create_disposable(&tmpl).await?;
                    let tag = crate::api::Call::TagSet(format!("disp-created-by-{src}"));
                    let ctx = crate::api::Ctx {
                        source: DOM0.into(),
                        dest: name.clone(),
                    };
                    d.write_call(&ctx, &tag).await?;
                    if let Err(e) = d.vm_start(&name).await {
                        let _ = d
                            .remove_qube(&crate::api::Ctx {
                                source: DOM0.into(),
                                dest: name.clone(),
                            })
                            .await;
                        return Err(e);
                    }
                    Ok(name)
                });
                match made {
                    Ok(name) => {
                        log(&format!("started disposable {name}"));
                        disposable = Some(name.clone());
                        // Already running: the start below finds it so.
                        (name, true)
                    }
                    Err(e) => {
                        log(&format!("failed: cannot start a disposable: {}", e.message));
                        return Err(refuse(
                            qrexec::EXIT_QREXEC_FAILED,
                            "cannot start a disposable",
                        ));
                    }
                }
            }
            None => (dest, autostart),
        };
        if dest == DOM0 {
            // Served by the host: a socket pair whose far end goes to the
            // relay, speaking data messages like an agent would.
            let (ours, theirs) = UnixStream::pair()
                .map_err(|e| refuse(qrexec::EXIT_QREXEC_FAILED, format!("socketpair: {e}")))?;
            let (d, src, svc, tgt) = (
                self.clone(),
                source.to_string(),
                service.to_string(),
                target.to_string(),
            );
            let handle = tokio::runtime::Handle::current();
            std::thread::spawn(move || {
                let _g = handle.enter();
                if let Err(e) = crate::dom0rpc::serve(&d, &handle, ours, &src, &svc, &tgt) {
                    tracing::warn!("qrexec: {src} -> dom0 {svc}: {e}");
                }
            });
            return Ok((qrexec::PROTOCOL_VERSION, theirs));
        }
        let running = app.vm(&dest).map(|q| q.power).ok();
        if running != Some(PowerState::Running) {
            if !autostart {
                return Err(refuse(qrexec::EXIT_REFUSED, "target is not running"));
            }
            let d = self.clone();
            let dest2 = dest.clone();
            let started =
                tokio::runtime::Handle::current().block_on(async move { d.vm_start(&dest2).await });
            if let Err(e) = started {
                if e.exc != crate::error::Exc::QubesVMNotHaltedError {
                    log(&format!("failed: cannot start {dest}: {}", e.message));
                    return Err(refuse(
                        qrexec::EXIT_QREXEC_FAILED,
                        "cannot start the target",
                    ));
                }
            }
        }
        let app = self.snapshot();
        let user = match user {
            Some(u) => u,
            None => props::value(&app, Holder::Vm(&dest), "default_user")
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "user".into()),
        };
        let link = std::fs::read_link(rt.qrexec_link(&dest))
            .map_err(|_| refuse(qrexec::EXIT_QREXEC_FAILED, "target has no agent socket"))?;
        let connect = || -> std::io::Result<(u32, UnixStream)> {
            let (mut t, _dec, version) = bulkhead_hal::guest::handshake(&link)?;
            bulkhead_proto::qrexec_io::send(
                &mut t,
                &Message::ExecCmdline {
                    connect_domain: 0,
                    connect_port: 0,
                    cmdline: format!("{user}:QUBESRPC {service} {source}").into_bytes(),
                },
            )?;
            t.set_read_timeout(None)?;
            t.set_write_timeout(None)?;
            Ok((version, t))
        };
        let connected = connect().map_err(|e| {
            log(&format!("failed: connecting to {dest}: {e}"));
            refuse(
                qrexec::EXIT_QREXEC_FAILED,
                "cannot reach the target's agent",
            )
        });
        let Some(name) = disposable else {
            return connected;
        };
        let kill = |d: Arc<Daemon>, name: String| {
            let _ =
                tokio::runtime::Handle::current().block_on(async move { d.vm_kill(&name).await });
        };
        let (version, target) = match connected {
            Ok(c) => c,
            Err(r) => {
                kill(self.clone(), name);
                return Err(r);
            }
        };
        // Relay the bytes (not parsed here) so the end of the call is seen,
        // then dispose of the qube.
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| refuse(qrexec::EXIT_QREXEC_FAILED, format!("socketpair: {e}")))?;
        let d = self.clone();
        let handle = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            let _g = handle.enter();
            splice_bytes(ours, target);
            kill(d, name);
        });
        Ok((version, theirs))
    }
}

/// The registered prompt agent (`bulkhead ask-agent`) that answers `ask`
/// rules. One at a time; the newest registration wins. Questions are one
/// JSON line each way; no answer within [`ASK_TIMEOUT`] denies.
#[derive(Default)]
pub struct AskAgent {
    conn: Mutex<Option<UnixStream>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Sources with a question waiting: one at a time per qube, so no qube
    /// can queue up prompts (or threads) behind the user.
    pending: Mutex<std::collections::HashSet<String>>,
}

/// How long the user has to answer.
pub const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl AskAgent {
    /// Registers a newly connected prompt agent.
    pub fn register(&self, s: UnixStream) {
        tracing::info!("qrexec: a prompt agent registered");
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
    }

    /// Asks the user; `Ok(None)` means they refused, `Err` why nobody could.
    pub fn ask(
        &self,
        source: &str,
        service: &str,
        target: &str,
        choices: &[String],
        default: Option<&str>,
    ) -> Result<Option<String>, String> {
        if !self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.to_string())
        {
            return Err("another question from this qube is still open".into());
        }
        let r = self.ask_inner(source, service, target, choices, default);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(source);
        r
    }

    fn ask_inner(
        &self,
        source: &str,
        service: &str,
        target: &str,
        choices: &[String],
        default: Option<&str>,
    ) -> Result<Option<String>, String> {
        use std::io::{BufRead, Write};
        let mut g = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let Some(conn) = g.as_mut() else {
            return Err("no prompt agent is registered (run `bulkhead ask-agent`)".into());
        };
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let q = serde_json::json!({
            "id": id, "source": source, "service": service, "target": target,
            "choices": choices, "default": default,
        });
        let sent = conn
            .write_all(format!("{q}\n").as_bytes())
            .and_then(|()| conn.set_read_timeout(Some(ASK_TIMEOUT)));
        if let Err(e) = sent {
            *g = None;
            return Err(format!("the prompt agent went away ({e})"));
        }
        let mut line = String::new();
        let read = conn
            .try_clone()
            .and_then(|c| std::io::BufReader::new(c.take(4096)).read_line(&mut line));
        match read {
            Ok(n) if n > 0 => {}
            Ok(_) => {
                *g = None;
                return Err("the prompt agent went away".into());
            }
            Err(e) => {
                *g = None;
                return Err(format!("no answer from the prompt agent ({e})"));
            }
        }
        let a: serde_json::Value =
            serde_json::from_str(&line).map_err(|_| "bad answer".to_string())?;
        if a["id"].as_u64() != Some(id) {
            *g = None;
            return Err("the prompt agent answered another question".into());
        }
        Ok(if a["allow"].as_bool() == Some(true) {
            a["target"].as_str().map(str::to_string)
        } else {
            None
        })
    }
}

/// Accepts prompt agents forever (the socket is root/group only).
pub async fn serve_ask(daemon: Arc<Daemon>, listener: tokio::net::UnixListener) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let d = daemon.clone();
        // The registry's lock may be held by a pending question: never
        // wait for it on the async runtime.
        tokio::task::spawn_blocking(move || {
            if let (Some(rt), Ok(std)) = (d.runtime(), s.into_std()) {
                let _ = std.set_nonblocking(false);
                rt.ask.register(std);
            }
        });
    }
}

/// Copies bytes both ways; when either side ends (the call is over, or
/// the caller or the disposable went away), both are shut down, so a
/// silent disposable cannot outlive its call.
fn splice_bytes(a: UnixStream, b: UnixStream) {
    fn copy(mut from: UnixStream, mut to: UnixStream) {
        use std::io::Write;
        let mut buf = vec![0u8; 256 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
        let _ = from.shutdown(std::net::Shutdown::Both);
    }
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let t = std::thread::spawn(move || copy(a2, b2));
    copy(b, a);
    let _ = t.join();
}

/// Binds the policy socket for relays: any local uid may connect, only
/// relays (by uid) get answers.
pub fn bind_policy_socket(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// Relay requests handled at once, in all (each may block a pool thread
/// while it starts a target); the blocking pool has 512.
pub const MAX_REQUESTS: usize = 128;
/// Relay requests handled at once for one source qube.
pub const MAX_REQUESTS_PER_QUBE: usize = 16;

/// Accepts relay connections forever, a bounded number at a time, so no
/// qube can exhaust the daemon's blocking threads.
pub async fn serve_policy(daemon: Arc<Daemon>, listener: tokio::net::UnixListener) {
    use std::collections::HashMap;
    use tokio::sync::Semaphore;
    let all = Arc::new(Semaphore::new(MAX_REQUESTS));
    let mut per_uid: HashMap<u32, Arc<Semaphore>> = HashMap::new();
    loop {
        let Ok((s, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let Ok(uid) = s.peer_cred().map(|c| c.uid()) else {
            continue;
        };
        if per_uid.len() > 4096 {
            per_uid.retain(|_, sem| Arc::strong_count(sem) > 1);
        }
        let mine = per_uid
            .entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_REQUESTS_PER_QUBE)))
            .clone();
        let (d, all) = (daemon.clone(), all.clone());
        tokio::spawn(async move {
            // Waiting here costs no thread; a qube over its share waits for
            // its own earlier calls, not for everyone's.
            let Ok(_p1) = mine.acquire_owned().await else {
                return;
            };
            let Ok(_p2) = all.acquire_owned().await else {
                return;
            };
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok(std) = s.into_std() {
                    let _ = std.set_nonblocking(false);
                    d.serve_relay(std);
                }
            })
            .await;
        });
    }
}
