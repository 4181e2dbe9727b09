//! The relay's own figures: reservations, connections and refusals by status code, and the
//! periodic stats line and `RELAY_POINT` event line.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crate::stats::Stats;

/// Status codes counted as refusals, in the order they are reported.
pub const CODES: [u16; 7] = [200, 201, 202, 203, 204, 400, 401];

/// Counters of the relay besides the shared [`Stats`] (circuits are its `tcp_active`, bytes
/// its `tcp_rx`/`tcp_tx`).
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Live reservations.
    pub reservations: AtomicUsize,
    /// Open connections on the relay port (control, pool, visitors, handshakes).
    pub conns: AtomicUsize,
    refused: [AtomicUsize; CODES.len()],
}

impl RelayStats {
    /// Count one refusal with `code` (codes outside [`CODES`] count as 401).
    pub fn refuse(&self, code: u16) {
        let i = CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(CODES.len() - 1);
        self.refused[i].fetch_add(1, Relaxed);
    }

    /// Refusals with `code` so far.
    pub fn refused(&self, code: u16) -> usize {
        CODES
            .iter()
            .position(|&c| c == code)
            .map_or(0, |i| self.refused[i].load(Relaxed))
    }

    /// The human stats line.
    pub fn line(&self, s: &Stats) -> String {
        let mut out = format!(
            "relay: {} reservations, {} circuits, {} connections, {} B to devices, {} B to visitors; refused:",
            self.reservations.load(Relaxed),
            s.tcp_active.load(Relaxed),
            self.conns.load(Relaxed),
            s.tcp_rx.get(),
            s.tcp_tx.get(),
        );
        for code in CODES {
            out.push_str(&format!(" {code}={}", self.refused(code)));
        }
        out
    }

    /// The same figures as one machine-readable line for `log=event`.
    pub fn event(&self, s: &Stats) -> String {
        let mut out = format!(
            "RELAY_POINT|RESERVATIONS={}|CIRCUITS={}|CONNS={}|RX={}|TX={}",
            self.reservations.load(Relaxed),
            s.tcp_active.load(Relaxed),
            self.conns.load(Relaxed),
            s.tcp_rx.get(),
            s.tcp_tx.get(),
        );
        for code in CODES {
            out.push_str(&format!("|R{code}={}", self.refused(code)));
        }
        out
    }
}

/// Counts one open connection on the relay port while alive.
#[derive(Debug)]
pub struct ConnGuard(Arc<RelayStats>);

impl ConnGuard {
    /// Count one more connection.
    pub fn new(stats: &Arc<RelayStats>) -> Self {
        stats.conns.fetch_add(1, Relaxed);
        ConnGuard(stats.clone())
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_every_figure() {
        let r = Arc::new(RelayStats::default());
        let s = Stats::default();
        r.reservations.store(3, Relaxed);
        let _g = ConnGuard::new(&r);
        r.refuse(204);
        r.refuse(204);
        r.refuse(999);
        s.tcp_rx.add(5);
        assert_eq!(
            r.event(&s),
            "RELAY_POINT|RESERVATIONS=3|CIRCUITS=0|CONNS=1|RX=5|TX=0\
             |R200=0|R201=0|R202=0|R203=0|R204=2|R400=0|R401=1"
        );
        assert!(r.line(&s).contains("3 reservations"));
        assert!(r.line(&s).ends_with("204=2 400=0 401=1"));
        drop(_g);
        assert_eq!(r.conns.load(Relaxed), 0);
    }
}
