//! Handshakes in progress on a listening port (the server's tunnel port, the relay port),
//! capped with evict-oldest.
//!
//! A new connection past the cap closes the oldest pending one: a real peer's handshake takes
//! one round trip, so the oldest is the likeliest attacker, and a flood of silent connections
//! cannot lock real peers out for `HANDSHAKE_TIMEOUT`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;

use smol::channel::{bounded, Receiver, Sender};
use smol::future::FutureExt;

/// Most connections allowed to be mid-handshake at once on one listening port;
/// `SEMAPHORE_LIMIT` may set fewer. 256 real peers never handshake at the same instant (one
/// round trip each), and each pending one holds a socket and, with TLS, a record buffer.
pub const MAX_PENDING: usize = 256;

/// Why an evicted handshake ended (logged at debug: a flood makes many).
pub const EVICTED: &str = "closed for a newer connection: too many handshakes pending";

/// The pending handshakes of one port, oldest first.
#[derive(Debug)]
pub struct Pending {
    cap: usize,
    table: Mutex<Table>,
}

/// The entries; dropping an entry's sender evicts that handshake.
#[derive(Debug, Default)]
struct Table {
    next: u64,
    q: VecDeque<(u64, Sender<()>)>,
}

/// One registered handshake: hand it to [`Pending::run`].
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    evicted: Receiver<()>,
}

impl Pending {
    /// At most `limit` handshakes pending at once (`SEMAPHORE_LIMIT`), clamped to
    /// 1..=[`MAX_PENDING`].
    pub fn new(limit: usize) -> Self {
        Pending {
            cap: limit.clamp(1, MAX_PENDING),
            table: Mutex::default(),
        }
    }

    /// Register a new connection's handshake, evicting the oldest when the cap is reached.
    /// Call it in the accept loop, not in the connection's task: a burst is accepted before
    /// any task runs.
    pub fn enter(&self) -> Ticket {
        let (tx, evicted) = bounded::<()>(1);
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if t.q.len() >= self.cap {
            t.q.pop_front();
        }
        t.next += 1;
        let id = t.next;
        t.q.push_back((id, tx));
        Ticket { id, evicted }
    }

    /// Close the oldest pending handshake, if there is one (its task ends soon after): for
    /// a port whose connection limit is reached, where the new connection should rather take
    /// the place of a handshake that may never finish. Whether one was closed.
    pub fn evict_oldest(&self) -> bool {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.q.pop_front().is_some()
    }

    /// Handshakes pending now.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).q.len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Run the handshake `shake` of `ticket`: its output, or `None` when a newer connection
    /// evicted it first. Either way the entry leaves the table when this returns.
    pub async fn run<T>(&self, ticket: Ticket, shake: impl Future<Output = T>) -> Option<T> {
        let _entry = Entry(self, ticket.id);
        async { Some(shake.await) }
            .or(async {
                let _ = ticket.evicted.recv().await;
                None
            })
            .await
    }
}

/// Removes one handshake from the table when it ends (if not evicted already).
struct Entry<'a>(&'a Pending, u64);

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let mut t = self.0.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = t.q.iter().position(|(id, _)| *id == self.1) {
            t.q.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_is_evicted_and_finished_ones_leave() {
        smol::block_on(async {
            let p = Pending::new(2);
            let (a, b) = (p.enter(), p.enter());
            assert_eq!(p.len(), 2);
            let c = p.enter();
            assert_eq!(p.len(), 2);
            // `a` was pushed out: its handshake ends at once, whatever it was waiting for.
            assert_eq!(p.run(a, std::future::pending::<()>()).await, None);
            assert_eq!(p.run(b, async { 7 }).await, Some(7));
            assert_eq!(p.len(), 1);
            assert_eq!(p.run(c, async { 8 }).await, Some(8));
            assert!(p.is_empty());
            assert!(!p.evict_oldest(), "nothing to evict");
            let (d, e) = (p.enter(), p.enter());
            assert!(p.evict_oldest());
            assert_eq!(p.run(d, std::future::pending::<()>()).await, None);
            assert_eq!(p.run(e, async { 9 }).await, Some(9));
        });
    }

    #[test]
    fn the_cap_is_the_limit_up_to_max_pending() {
        let full = |p: &Pending| {
            let t: Vec<Ticket> = (0..MAX_PENDING + 10).map(|_| p.enter()).collect();
            drop(t);
            p.len()
        };
        assert_eq!(full(&Pending::new(3)), 3);
        assert_eq!(full(&Pending::new(0)), 1);
        assert_eq!(full(&Pending::new(65_536)), MAX_PENDING);
    }
}
