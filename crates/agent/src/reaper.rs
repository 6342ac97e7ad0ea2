//! PID 1 must reap every orphan; it must also hand our own children's exit
//! statuses to whoever waits for them. One thread does all `waitpid(-1)`
//! calls and files statuses by pid. With no children it sleeps until the
//! next spawn is announced, so a short command's status is picked up at once.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};

#[derive(Default)]
struct Shared {
    /// Exit statuses not yet claimed, by pid.
    statuses: Mutex<HashMap<i32, i32>>,
    exited: Condvar,
    /// Bumped on every spawn; wakes the reaper when it had nothing to wait for.
    spawns: Mutex<u64>,
    spawned: Condvar,
}

#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Shared>,
}

impl Reaper {
    /// Starts the reaping thread.
    pub fn start() -> Reaper {
        let r = Reaper {
            inner: Arc::new(Shared::default()),
        };
        let inner = r.inner.clone();
        std::thread::spawn(move || loop {
            let seen = *inner.spawns.lock().unwrap_or_else(|e| e.into_inner());
            match waitpid(None, None) {
                Ok(WaitStatus::Exited(pid, code)) => record(&inner, pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    record(&inner, pid.as_raw(), 128 + sig as i32)
                }
                Ok(_) | Err(Errno::EINTR) => {}
                // No children: wait for the next spawn (re-checking now and
                // then for orphans adopted from elsewhere).
                Err(_) => {
                    let g = inner.spawns.lock().unwrap_or_else(|e| e.into_inner());
                    let woken = inner
                        .spawned
                        .wait_timeout_while(g, Duration::from_secs(1), |n| *n == seen);
                    drop(woken);
                }
            }
        });
        r
    }

    /// Tells the reaper a child was just started.
    pub fn spawned(&self) {
        *self.inner.spawns.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.inner.spawned.notify_all();
    }

    /// Waits for `pid` to exit and returns its status (128 + signal if killed).
    pub fn wait(&self, pid: u32) -> i32 {
        let mut m = self
            .inner
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(code) = m.remove(&(pid as i32)) {
                return code;
            }
            m = self.inner.exited.wait(m).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn record(inner: &Shared, pid: i32, code: i32) {
    let mut m = inner.statuses.lock().unwrap_or_else(|e| e.into_inner());
    // Orphans nobody waits for would pile up; keep the map bounded.
    if m.len() > 4096 {
        m.clear();
    }
    m.insert(pid, code);
    inner.exited.notify_all();
}
