//! The relay's own figures: reservations, connections and refusals by status code, and the
//! periodic stats line and `RELAY_POINT` event line.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crate::stats::Stats;

/// Status codes counted as refusals, in the order they are reported.
pub const CODES: [u16; 7] = [200, 201, 202, 203, 204, 400, 401];

/// Counters of the relay besides the shared [`Stats`] (circuits are its `tcp_active` plus
/// `udp_active`, bytes its TCP plus UDP counters: the relay splices both the same way).
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

    /// Reservations, circuits, connections, bytes to devices, bytes to visitors.
    fn figures(&self, s: &Stats) -> (usize, usize, usize, u64, u64) {
        (
            self.reservations.load(Relaxed),
            s.active(),
            self.conns.load(Relaxed),
            s.tcp_rx.get() + s.udp_rx.get(),
            s.tcp_tx.get() + s.udp_tx.get(),
        )
    }

    /// The human stats line.
    pub fn line(&self, s: &Stats) -> String {
        let (res, circuits, conns, rx, tx) = self.figures(s);
        let mut out = format!(
            "relay: {res} reservations, {circuits} circuits, {conns} connections, {rx} B to devices, {tx} B to visitors; refused:"
        );
        for code in CODES {
            out.push_str(&format!(" {code}={}", self.refused(code)));
        }
        out
    }

    /// The same figures as one machine-readable line for `log=event`.
    pub fn event(&self, s: &Stats) -> String {
        let (res, circuits, conns, rx, tx) = self.figures(s);
        let mut out = format!(
            "RELAY_POINT|RESERVATIONS={res}|CIRCUITS={circuits}|CONNS={conns}|RX={rx}|TX={tx}"
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
        s.udp_rx.add(2);
        s.udp_tx.add(1);
        assert_eq!(
            r.event(&s),
            "RELAY_POINT|RESERVATIONS=3|CIRCUITS=0|CONNS=1|RX=7|TX=1\
             |R200=0|R201=0|R202=0|R203=0|R204=2|R400=0|R401=1"
        );
        assert!(r.line(&s).contains("3 reservations"));
        assert!(r.line(&s).ends_with("204=2 400=0 401=1"));
        drop(_g);
        assert_eq!(r.conns.load(Relaxed), 0);
    }
}
