//! The taker's side of a session: the authenticated client's idle pool connections, queued
//! for users, and the count of those watched in forward flow.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crate::auth;
use crate::idle::IdleQueue;
use crate::shutdown::Shutdown;
use crate::signal::SID_LEN;
use crate::stream::Conn;

/// An idle pool connection waiting in the taker's queue.
pub struct PoolConn {
    /// Its id within the session.
    pub id: u32,
    /// The connection, authenticated and idle.
    pub conn: Conn,
}

/// One authenticated client and its idle pool connections.
pub struct Session {
    /// The session id pool connections name.
    pub sid: [u8; SID_LEN],
    pub(super) idle: IdleQueue<PoolConn>,
    /// Forward flow: pool connections the server waits on for the client's opening line
    /// (they never enter `idle`), counted against `max` as `idle` is.
    watched: AtomicUsize,
    pub(super) next_id: AtomicU32,
    /// Ends the session's tasks.
    pub end: Shutdown,
}

impl Session {
    /// A new session holding at most `max` idle pool connections.
    pub(crate) fn new(max: usize) -> Arc<Session> {
        Arc::new(Session {
            sid: auth::random::<SID_LEN>(),
            idle: IdleQueue::new(max),
            watched: AtomicUsize::new(0),
            next_id: AtomicU32::new(1),
            end: Shutdown::new(),
        })
    }

    /// Queue an idle pool connection; `false` (and the connection closed) when full.
    pub(crate) fn offer(&self, pc: PoolConn) -> bool {
        self.idle.offer(pc).is_ok()
    }

    /// Idle pool connections queued now.
    pub(crate) fn idle_len(&self) -> usize {
        self.idle.len()
    }

    /// Close up to `n` idle pool connections, the newest first; never one in use.
    pub(crate) fn trim(&self, n: usize) {
        self.idle.trim(n, |pc| pc.id);
    }

    /// Count one more watched pool connection (forward flow), unless `max` are watched
    /// already: `None` then, and the connection is to be refused as `pool full`.
    pub(super) fn watch_slot(&self, max: usize) -> Option<Watched<'_>> {
        self.watched
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Watched(&self.watched))
    }

    /// Count a watched pool connection again: a reused one back from its user. Not refused
    /// (it was counted when it came, and the client's own queue holds at most `max`).
    pub(super) fn watch_again(&self) -> Watched<'_> {
        self.watched.fetch_add(1, Relaxed);
        Watched(&self.watched)
    }

    /// Close the session and every idle connection it holds.
    pub fn close(&self) {
        self.end.trigger();
        self.idle.close();
    }
}

/// One pool connection counted in [`Session::watched`] while alive.
pub(super) struct Watched<'a>(&'a AtomicUsize);

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
