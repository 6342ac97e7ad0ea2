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
    /// Our own children, by pid: `None` while running, then the exit status.
    /// Orphans adopted by PID 1 are reaped and forgotten.
    statuses: Mutex<HashMap<i32, Option<i32>>>,
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

    /// Starts a child and registers it before the reaper can see it exit:
    /// the registry lock is held across the spawn.
    pub fn spawn(&self, cmd: &mut std::process::Command) -> std::io::Result<std::process::Child> {
        let mut m = self
            .inner
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        m.insert(child.id() as i32, None);
        drop(m);
        *self.inner.spawns.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.inner.spawned.notify_all();
        Ok(child)
    }

    /// Waits for a child started with [`Reaper::spawn`] to exit and returns
    /// its status (128 + signal if killed).
    pub fn wait(&self, pid: u32) -> i32 {
        let key = pid as i32;
        let mut m = self
            .inner
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        loop {
            match m.get(&key).copied() {
                Some(Some(code)) => {
                    m.remove(&key);
                    return code;
                }
                Some(None) => {}
                // Never registered: not ours to wait for.
                None => return 125,
            }
            m = self.inner.exited.wait(m).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn record(inner: &Shared, pid: i32, code: i32) {
    let mut m = inner.statuses.lock().unwrap_or_else(|e| e.into_inner());
    // Only our registered children are kept; orphans are just reaped.
    if let Some(slot) = m.get_mut(&pid) {
        *slot = Some(code);
        inner.exited.notify_all();
    }
}
