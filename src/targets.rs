//! Several targets: round robin with failover, and a target that failed is skipped for
//! [`SKIP`] so users do not pay its dial timeout on every connection.
//!
//! # Implementation
//! One slot per target, fixed at start, holds the time of its last failure. [`order`] (pure,
//! time passed in) lists the targets for one dial: those not failed in the last [`SKIP`], in
//! round-robin order, then the skipped ones as a last resort, so when every target is down
//! each is still tried. A success clears the slot; once [`SKIP`] has passed a failed target
//! is tried again in its turn.

use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use smol::Async;

use crate::config::HostPort;
use crate::dialer::Dialer;
use crate::error::{Error, Result};

/// How long a target that failed is passed over while others work.
pub const SKIP: Duration = Duration::from_secs(10);

/// The dial order for one connection: targets not failed within `skip` before `now`, in
/// rotation from `start`, then the rest in the same rotation. Writes `failed.len()` indices.
pub fn order(
    failed: &[Option<Instant>],
    start: usize,
    now: Instant,
    skip: Duration,
    out: &mut Vec<usize>,
) {
    out.clear();
    let n = failed.len();
    if n == 0 {
        return;
    }
    let skipped = |i: usize| failed[i].is_some_and(|t| now.saturating_duration_since(t) < skip);
    let rotation = (0..n).map(|k| (start + k) % n);
    out.extend(rotation.clone().filter(|&i| !skipped(i)));
    out.extend(rotation.filter(|&i| skipped(i)));
}

/// A role's targets with their failure bookkeeping.
#[derive(Debug)]
pub struct Targets {
    list: Vec<HostPort>,
    next: AtomicUsize,
    failed: Mutex<Box<[Option<Instant>]>>,
}

impl Targets {
    /// Bookkeeping for `list` (sized once).
    pub fn new(list: Vec<HostPort>) -> Targets {
        let failed = vec![None; list.len()].into_boxed_slice();
        Targets {
            list,
            next: AtomicUsize::new(0),
            failed: Mutex::new(failed),
        }
    }

    /// Dial the next target, failing over to the others. Returns the connection and the
    /// target's index in the list.
    pub async fn dial(&self, dialer: &Dialer) -> Result<(Async<TcpStream>, usize)> {
        let start = self.next.fetch_add(1, Relaxed);
        // One target (the usual case) needs no plan, and so no allocation per dial.
        let mut plan = Vec::new();
        if self.list.len() > 1 {
            let f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            order(&f, start, Instant::now(), SKIP, &mut plan);
        }
        let plan: &[usize] = if self.list.len() == 1 { &[0] } else { &plan };
        let mut last = Error::Timeout("no target");
        for &i in plan {
            let t = &self.list[i];
            let res = dialer.dial(t).await;
            let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            match res {
                Ok(s) => {
                    if f[i].take().is_some() {
                        log::info!("target {t} is reachable again");
                    }
                    return Ok((s, i));
                }
                Err(e) => {
                    if f[i].replace(Instant::now()).is_none() {
                        log::warn!("target {t} failed ({e}); skipping it for {SKIP:?}");
                    } else {
                        log::debug!("target {t} failed again: {e}");
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(failed: &[Option<Instant>], start: usize, now: Instant) -> Vec<usize> {
        let mut out = Vec::new();
        order(failed, start, now, SKIP, &mut out);
        out
    }

    #[test]
    fn round_robin_when_all_up() {
        let now = Instant::now();
        let f = [None, None, None];
        assert_eq!(plan(&f, 0, now), [0, 1, 2]);
        assert_eq!(plan(&f, 1, now), [1, 2, 0]);
        assert_eq!(plan(&f, 5, now), [2, 0, 1]);
        assert!(plan(&[], 3, now).is_empty());
    }

    #[test]
    fn failed_target_goes_last_until_skip_passes() {
        let t0 = Instant::now();
        let f = [Some(t0), None, None];
        assert_eq!(plan(&f, 0, t0), [1, 2, 0]);
        assert_eq!(plan(&f, 2, t0 + SKIP - Duration::from_millis(1)), [2, 1, 0]);
        // After SKIP it is tried again in its turn.
        assert_eq!(plan(&f, 0, t0 + SKIP), [0, 1, 2]);
    }

    #[test]
    fn all_failed_still_tried() {
        let t0 = Instant::now();
        let f = [Some(t0), Some(t0)];
        assert_eq!(plan(&f, 1, t0), [1, 0]);
    }
}
