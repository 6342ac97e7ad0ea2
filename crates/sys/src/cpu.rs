//! The host's time-stamp counter frequency. Under TCG a guest's TSC ticks
//! at the host's rate; a guest kernel that must calibrate it against its
//! emulated PIT while the host is busy fails ("Unable to calibrate against
//! PIT") and hangs early in boot, so the `vm` backend passes the frequency
//! measured here (`tsc_early_khz=`).

use std::time::{Duration, Instant};

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; it has no memory effects and exists on
    // every x86_64 CPU (it is not disabled for user space on Linux unless
    // seccomp's TSC mode is used, which this process does not set).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The TSC frequency in kHz, measured against the monotonic clock over
/// `sample` (median of three runs); `None` off x86_64 or if it looks wrong.
pub fn tsc_khz(sample: Duration) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut runs: Vec<u64> = (0..3)
            .filter_map(|_| {
                let (t0, c0) = (Instant::now(), rdtsc());
                std::thread::sleep(sample);
                let (t1, c1) = (Instant::now(), rdtsc());
                let us = t1.duration_since(t0).as_micros() as u64;
                (us > 0 && c1 > c0).then(|| (c1 - c0) * 1000 / us)
            })
            .collect();
        runs.sort_unstable();
        runs.get(1)
            .copied()
            .filter(|k| (100_000..20_000_000).contains(k))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = sample;
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tsc_frequency_is_plausible() {
        if let Some(k) = super::tsc_khz(std::time::Duration::from_millis(20)) {
            assert!((100_000..20_000_000).contains(&k), "{k}");
        }
    }
}
