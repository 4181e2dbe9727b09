//! The public side of a server (and of a forward-flow client): accept users and carry each
//! on an idle pool connection of the current session.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::future::FutureExt;
use smol::{Async, Timer};

use super::{Inner, PoolConn, Session};
use crate::chunk::Dechunk;
use crate::copy;
use crate::lines::send;
use crate::signal::Signal;
use crate::stats::ActiveGuard;
use crate::stream::Conn;
use crate::util::accept_next;

/// Accept users and carry each on a pool connection of the current session.
pub(crate) async fn accept_users(inner: Arc<Inner>, l: Async<TcpListener>) {
    let mut errors = 0u32;
    loop {
        let (s, peer) = accept_next("public", &l, &mut errors).await;
        if inner.cfg.notcp {
            continue;
        }
        if inner.stats.active() >= inner.cfg.slot {
            inner.stats.refused.fetch_add(1, Relaxed);
            if inner.refusals.allow() {
                log::warn!("user {peer} refused: all {} slots in use", inner.cfg.slot);
            }
            continue;
        }
        // Counted here, not in the task: a burst is accepted before any task runs.
        let active = ActiveGuard::new(&inner.stats, false);
        crate::rt::spawn(user_conn(inner.clone(), s, peer, active)).detach();
    }
}

/// Take a live idle pool connection, waiting up to `POOL_GET_TIMEOUT` (also for a session);
/// with the session it came from (to give it back for reuse).
pub(crate) async fn take_pool(inner: &Inner) -> Option<(Arc<Session>, PoolConn)> {
    let deadline = Instant::now() + inner.cfg.tuning.pool_get_timeout;
    loop {
        let Some(sess) = inner.current() else {
            // No client yet (or it is reconnecting): look again shortly, until the deadline.
            if Instant::now() >= deadline {
                return None;
            }
            Timer::after(Duration::from_millis(50)).await;
            continue;
        };
        let got = async { sess.idle.pop().await }
            .or(async {
                Timer::at(deadline).await;
                None
            })
            .await;
        inner.stats.pool_idle.store(sess.idle_len(), Relaxed);
        match got {
            Some(pc) if pc.conn.idle_ok() => return Some((sess, pc)),
            Some(pc) => log::debug!("pool connection {} was closed while idle", pc.id),
            None if Instant::now() >= deadline => return None,
            None => {}
        }
    }
}

async fn user_conn(inner: Arc<Inner>, s: Async<TcpStream>, peer: SocketAddr, _active: ActiveGuard) {
    let wait = inner.cfg.tuning.pool_get_timeout;
    // No pool connection comes after a stop: give up at once rather than hold the drain.
    let stopping = async {
        inner.shutdown.wait().await;
        None
    };
    let Some((sess, mut pc)) = take_pool(&inner).or(stopping).await else {
        inner.stats.refused.fetch_add(1, Relaxed);
        if inner.refusals.allow() {
            log::warn!("user {peer} refused: no pool connection from the client in {wait:?}");
        }
        return;
    };
    let reuse = inner.cfg.tuning.reuse.applies(pc.conn.is_tls());
    let id = pc.id;
    if let Err(e) = send(&mut pc.conn, &Signal::Tcp { id, peer, reuse }).await {
        log::debug!("user {peer}: pool connection {id} failed: {e}");
        return;
    }
    log::debug!("user {peer} on pool connection {id}");
    let mut user = Conn::Plain(s);
    let o = copy::Opts::tcp(
        &inner.arena,
        &inner.stats,
        inner.cfg.read,
        inner.limits.as_ref(),
    );
    if reuse {
        let chunks = (copy::Pool::B, Dechunk::new());
        let done = copy::chunked(&mut user, &mut pc.conn, chunks, o).await;
        match done {
            Ok((up, down)) => {
                log::debug!(
                    "user {peer} done: {up} B up, {down} B down; pool connection {id} reused"
                );
                // Back in the queue for the next user, unless the session ended meanwhile.
                if !sess.end.is_triggered() && sess.offer(pc) {
                    inner.stats.pool_reused.fetch_add(1, Relaxed);
                    inner.stats.pool_idle.store(sess.idle_len(), Relaxed);
                }
            }
            Err(e) => log::debug!("user {peer} ended: {e}"),
        }
        return;
    }
    match copy::conns(&mut user, &mut pc.conn, o, inner.cfg.tuning.splice).await {
        Ok((up, down)) => log::debug!("user {peer} done: {up} B up, {down} B down"),
        Err(e) => log::debug!("user {peer} ended: {e}"),
    }
}
