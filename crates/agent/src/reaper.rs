//! PID 1 must reap every orphan; it must also hand our own children's exit
//! statuses to whoever waits for them. One thread does all `waitpid(-1)`
//! calls and files statuses by pid.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};

#[derive(Clone)]
pub struct Reaper {
    inner: Arc<(Mutex<HashMap<i32, i32>>, Condvar)>,
}

impl Reaper {
    /// Starts the reaping thread.
    pub fn start() -> Reaper {
        let r = Reaper {
            inner: Arc::new((Mutex::new(HashMap::new()), Condvar::new())),
        };
        let inner = r.inner.clone();
        std::thread::spawn(move || loop {
            match waitpid(None, None) {
                Ok(WaitStatus::Exited(pid, code)) => record(&inner, pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    record(&inner, pid.as_raw(), 128 + sig as i32)
                }
                Ok(_) | Err(Errno::EINTR) => {}
                // No children right now.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        });
        r
    }

    /// Waits for `pid` to exit and returns its status (128 + signal if killed).
    pub fn wait(&self, pid: u32) -> i32 {
        let (map, cv) = &*self.inner;
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(code) = m.remove(&(pid as i32)) {
                return code;
            }
            m = cv.wait(m).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn record(inner: &Arc<(Mutex<HashMap<i32, i32>>, Condvar)>, pid: i32, code: i32) {
    let (map, cv) = &**inner;
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    // Orphans nobody waits for would pile up; keep the map bounded.
    if m.len() > 4096 {
        m.clear();
    }
    m.insert(pid, code);
    cv.notify_all();
}
