//! A wake-up for a periodic task that sleeps while there is nothing for it to do.
//!
//! The release ticker and the client's pool ticks run every second while anything goes on.
//! At idle they find nothing to do, yet each tick wakes the process: its main thread and
//! async-io's reactor thread, which then backs off in steps of its own (an idle client went
//! through 16 context switches a second, the server 9). Such a task [`arm`](Poke::arm)s a
//! `Poke` when it finds itself quiet, checks once more for work, and then waits for
//! [`poked`](Poke::poked) or a long timeout; code where work begins calls
//! [`poke`](Poke::poke), one atomic load while nobody sleeps.
//!
//! No wake-up is lost: `poke` is called after the change that makes work (a counter raised),
//! `arm` before the task's last look at that counter, and both are `SeqCst`, so either the
//! task sees the change or `poke` sees the task asleep.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use smol::channel::{bounded, Receiver, Sender};

/// Ticks in a row with nothing to do before a ticker sleeps: a few seconds, so that what a
/// burst leaves (a pool shrinking back, buffers to release) is still seen by ticks.
pub const QUIET_TICKS: u32 = 5;

/// The longest a quiet ticker sleeps unpoked (heartbeats go on meanwhile; a pool connection
/// replaced at idle frees a little heap without opening a connection).
pub const QUIET_SLEEP: Duration = Duration::from_secs(30);

/// See the module docs.
pub struct Poke {
    asleep: AtomicBool,
    tx: Sender<()>,
    rx: Receiver<()>,
}

impl Default for Poke {
    fn default() -> Self {
        let (tx, rx) = bounded(1);
        Poke {
            asleep: AtomicBool::new(false),
            tx,
            rx,
        }
    }
}

impl fmt::Debug for Poke {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poke")
            .field("asleep", &self.asleep.load(SeqCst))
            .finish()
    }
}

impl Poke {
    /// Wake the task if it sleeps. Call it after the change that gives the task work.
    pub fn poke(&self) {
        if self.asleep.load(SeqCst) && self.asleep.swap(false, SeqCst) {
            // Full only if a poke is already waiting to be seen: that one wakes the task.
            let _ = self.tx.try_send(());
        }
    }

    /// The task is about to sleep: from now on a [`poke`](Poke::poke) wakes it. The task
    /// looks for work once more after this, and sleeps only if it finds none.
    pub fn arm(&self) {
        // A poke left over from an earlier sleep is stale.
        while self.rx.try_recv().is_ok() {}
        self.asleep.store(true, SeqCst);
    }

    /// The task is awake again (poked, timed out or found work after arming).
    pub fn disarm(&self) {
        self.asleep.store(false, SeqCst);
    }

    /// Whether the task is armed and not poked since.
    pub fn is_armed(&self) -> bool {
        self.asleep.load(SeqCst)
    }

    /// Resolves once poked after [`arm`](Poke::arm); pending forever otherwise, so the caller
    /// races it with a timer.
    pub async fn poked(&self) {
        // The sender lives in `self`: `recv` cannot fail while we wait on it.
        if self.rx.recv().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `poked` resolves within `limit`.
    fn poked_within(p: &Poke, limit: Duration) -> bool {
        smol::block_on(crate::timeout::within(limit, p.poked())).is_some()
    }

    #[test]
    fn a_poke_wakes_an_armed_task_once() {
        let p = Poke::default();
        p.arm();
        assert!(p.is_armed());
        p.poke();
        assert!(!p.is_armed(), "a poke disarms");
        p.poke(); // not armed: nothing queued
        assert!(poked_within(&p, Duration::from_secs(5)));
        assert!(
            !poked_within(&p, Duration::from_millis(20)),
            "one poke, one wake"
        );
    }

    #[test]
    fn a_poke_before_arming_is_not_kept() {
        let p = Poke::default();
        p.poke();
        p.arm();
        assert!(!poked_within(&p, Duration::from_millis(20)));
    }

    #[test]
    fn arming_drops_a_stale_poke() {
        let p = Poke::default();
        p.arm();
        p.poke(); // seen by nobody: the task found work after arming
        p.disarm();
        p.arm();
        assert!(!poked_within(&p, Duration::from_millis(20)));
    }

    #[test]
    fn a_poke_from_another_thread_wakes_the_sleeper() {
        let p = std::sync::Arc::new(Poke::default());
        p.arm();
        let q = p.clone();
        let t = std::thread::spawn(move || q.poke());
        assert!(poked_within(&p, Duration::from_secs(5)));
        t.join().expect("poking thread");
    }
}
