//! Counters shared by a role's tasks, and the periodic stats and `CHECK_POINT` lines.

use std::sync::atomic::{
    AtomicBool, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::Arc;
#[cfg(not(target_has_atomic = "64"))]
use std::sync::Mutex;

use crate::poke::Poke;

/// A byte counter: atomic where the target has 64-bit atomics (MIPS32 and ARMv6 do not).
#[derive(Debug, Default)]
pub struct Counter {
    #[cfg(target_has_atomic = "64")]
    v: std::sync::atomic::AtomicU64,
    #[cfg(not(target_has_atomic = "64"))]
    v: Mutex<u64>,
}

impl Counter {
    /// Add `n`.
    pub fn add(&self, n: u64) {
        #[cfg(target_has_atomic = "64")]
        self.v.fetch_add(n, Relaxed);
        #[cfg(not(target_has_atomic = "64"))]
        {
            let mut v = self.v.lock().unwrap_or_else(|e| e.into_inner());
            *v = v.wrapping_add(n);
        }
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        #[cfg(target_has_atomic = "64")]
        return self.v.load(Relaxed);
        #[cfg(not(target_has_atomic = "64"))]
        return *self.v.lock().unwrap_or_else(|e| e.into_inner());
    }
}

/// Live figures of one role.
#[derive(Debug, Default)]
pub struct Stats {
    /// TCP user connections open now.
    pub tcp_active: AtomicUsize,
    /// UDP flows open now.
    pub udp_active: AtomicUsize,
    /// TCP bytes from users towards targets.
    pub tcp_rx: Counter,
    /// TCP bytes from targets back to users.
    pub tcp_tx: Counter,
    /// UDP bytes from users towards targets.
    pub udp_rx: Counter,
    /// UDP bytes from targets back to users.
    pub udp_tx: Counter,
    /// Datagrams dropped: larger than `UDP_DATA_BUF_SIZE`, no slot or buffer for a new flow,
    /// a flow's queue full while its pool connection is set up, or a send that failed.
    pub udp_dropped: AtomicUsize,
    /// Connections refused (slot full, no pool, no buffer).
    pub refused: AtomicUsize,
    /// Tunnel-port connections that failed authentication or broke the protocol.
    pub bad_peers: AtomicUsize,
    /// Idle pool connections now.
    pub pool_idle: AtomicUsize,
    /// Pool capacity now (client) or the session's max (server).
    pub pool_size: AtomicUsize,
    /// Pool connections that carried a user and went back to the idle queue (`tcpr`).
    pub pool_reused: AtomicUsize,
    /// Last control round trip in microseconds (0 until measured).
    pub ping_us: AtomicUsize,
    /// The client's pool ticks sleep: the pool is full at its minimum and unused.
    pub pool_asleep: AtomicBool,
    /// Sessions (TCP + UDP) opened since start; wraps, only compared for change.
    pub opened: AtomicUsize,
    /// Poked when a session opens or closes, and by the data arenas when a buffer comes
    /// back: wakes the release ticker sleeping while nothing moves.
    pub ticker: Arc<Poke>,
}

impl Stats {
    /// Sessions (TCP + UDP) open now.
    ///
    /// `SeqCst`: the release ticker reads it after arming [`Stats::ticker`], and
    /// [`ActiveGuard`] changes it before poking, so one of them sees the other.
    pub fn active(&self) -> usize {
        self.tcp_active.load(SeqCst) + self.udp_active.load(SeqCst)
    }

    /// The human stats line logged every `REPORT_INTERVAL`.
    pub fn line(&self) -> String {
        format!(
            "stats: pool {}/{} idle ({} reused), tcp {} open ({} B in, {} B out), udp {} open ({} B in, {} B out, {} dropped), refused {}, bad peers {}, ping {:.1} ms",
            self.pool_idle.load(Relaxed),
            self.pool_size.load(Relaxed),
            self.pool_reused.load(Relaxed),
            self.tcp_active.load(Relaxed),
            self.tcp_rx.get(),
            self.tcp_tx.get(),
            self.udp_active.load(Relaxed),
            self.udp_rx.get(),
            self.udp_tx.get(),
            self.udp_dropped.load(Relaxed),
            self.refused.load(Relaxed),
            self.bad_peers.load(Relaxed),
            self.ping_us.load(Relaxed) as f64 / 1000.0,
        )
    }

    /// NodePass's `CHECK_POINT` event line, read by NodePass dashboards.
    pub fn checkpoint(&self, mode: u8) -> String {
        format!(
            "CHECK_POINT|MODE={}|PING={}ms|POOL={}|TCPS={}|UDPS={}|TCPRX={}|TCPTX={}|UDPRX={}|UDPTX={}",
            mode,
            self.ping_us.load(Relaxed) / 1000,
            self.pool_idle.load(Relaxed),
            self.tcp_active.load(Relaxed),
            self.udp_active.load(Relaxed),
            self.tcp_rx.get(),
            self.tcp_tx.get(),
            self.udp_rx.get(),
            self.udp_tx.get(),
        )
    }
}

/// Counts one open session while alive (RAII), so every exit path decrements.
#[derive(Debug)]
pub struct ActiveGuard {
    stats: Arc<Stats>,
    udp: bool,
}

impl ActiveGuard {
    /// Count one more TCP connection (`udp == false`) or UDP flow.
    pub fn new(stats: &Arc<Stats>, udp: bool) -> Self {
        stats.counter(udp).fetch_add(1, SeqCst);
        stats.opened.fetch_add(1, SeqCst);
        stats.ticker.poke();
        ActiveGuard {
            stats: stats.clone(),
            udp,
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.stats.counter(self.udp).fetch_sub(1, SeqCst);
        self.stats.ticker.poke();
    }
}

impl Stats {
    fn counter(&self, udp: bool) -> &AtomicUsize {
        if udp {
            &self.udp_active
        } else {
            &self.tcp_active
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_has_nodepass_fields() {
        let s = Arc::new(Stats::default());
        s.tcp_rx.add(10);
        s.tcp_tx.add(20);
        let _g = ActiveGuard::new(&s, false);
        let line = s.checkpoint(1);
        assert_eq!(
            line,
            "CHECK_POINT|MODE=1|PING=0ms|POOL=0|TCPS=1|UDPS=0|TCPRX=10|TCPTX=20|UDPRX=0|UDPTX=0"
        );
    }
}
