//! Carrying users: an idle pool connection waits for its opening line, then the TCP user or
//! UDP flow it announces goes to a target (with the PROXY header and the user's first bytes).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use smol::future::FutureExt;
use smol::io::AsyncWriteExt;

use super::Inner;
use crate::chunk::{ChunkError, Dechunk};
use crate::copy;
use crate::error::Result;
use crate::lines::LineReader;
use crate::proxy;
use crate::shutdown::Shutdown;
use crate::signal::Signal;
use crate::stats::ActiveGuard;
use crate::stream::Conn;

impl Inner {
    /// How a user's bytes are copied to and from a target: the TCP counters, `read=` and
    /// `rate=`.
    fn user_copy(&self) -> copy::Opts<'_> {
        copy::Opts::tcp(
            &self.arena,
            &self.stats,
            self.cfg.read,
            self.limits.as_ref(),
        )
    }
}

/// What became of an idle pool connection, for the pool's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolEvent {
    /// A user or flow took it; `reuse` when it will come back ([`PoolEvent::Back`]) or be
    /// lost ([`PoolEvent::Lost`]) after this user.
    Taken { reuse: bool },
    /// Its wait ended without a user: it closed, broke the protocol, or the session ended.
    Closed,
    /// A reused connection finished its user cleanly and is idle again.
    Back,
    /// A reused connection ended with its user.
    Lost,
}

/// The dialing side of an idle pool connection: wait (until `end`) for its opening line,
/// then carry the TCP user or UDP flow it announces to a target; a `tcpr` user leaves the
/// connection idle again for the next line. `on` hears each [`PoolEvent`]: `Taken` or
/// `Closed` once per wait, whatever ended it. Used by the client in reverse flow and by the
/// server in forward flow.
///
/// A plain `fn` returning an `async move` block: an `async fn` keeps a second copy of its
/// arguments in the future (they are moved into locals), which made every pool connection's
/// task 340 B bigger.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(crate) fn watch<'a>(
    inner: &'a Arc<Inner>,
    mut conn: Conn,
    mut lines: LineReader,
    id: u32,
    end: &'a Shutdown,
    (tcp, udp_on): (bool, bool),
    mut on: impl FnMut(PoolEvent) + 'a,
) -> impl std::future::Future<Output = ()> + 'a {
    async move {
        loop {
            let first = async { Some(lines.next(&mut conn).await) }
                .or(async {
                    end.wait().await;
                    None
                })
                .await;
            let (udp, peer, reuse) = match first {
                Some(Ok(Signal::Tcp {
                    id: got,
                    peer,
                    reuse,
                })) if got == id => (false, peer, reuse),
                Some(Ok(Signal::Udp { id: got, peer })) if got == id => (true, peer, false),
                None => return on(PoolEvent::Closed),
                Some(Ok(other)) => {
                    // A server that keeps doing this would make one line per connection.
                    if inner.warn.allow() {
                        log::warn!("pool connection {id}: unexpected {other:?}, closed");
                    } else {
                        log::debug!("pool connection {id}: unexpected {other:?}, closed");
                    }
                    return on(PoolEvent::Closed);
                }
                Some(Err(e)) => {
                    log::debug!("idle pool connection {id} closed: {e}");
                    return on(PoolEvent::Closed);
                }
            };
            on(PoolEvent::Taken { reuse });
            if (udp && !udp_on) || (!udp && !tcp) {
                let what = if udp { "UDP" } else { "TCP" };
                inner.stats.refused.fetch_add(1, Relaxed);
                if inner.warn.allow() {
                    log::warn!("{what} user {peer} refused: {what} is off on this tunnel");
                }
                if reuse {
                    on(PoolEvent::Lost);
                }
                return;
            }
            #[cfg(feature = "udp")]
            if udp {
                crate::udp::serve_client(inner, conn, lines.leftover(), id, peer).await;
                return;
            }
            log::debug!("user {peer} on pool connection {id}");
            if !reuse {
                serve_tcp(inner, conn, lines.leftover(), peer).await;
                return;
            }
            if !serve_chunked(inner, &mut conn, lines.leftover(), peer).await {
                return on(PoolEvent::Lost);
            }
            // Those bytes were the first chunks: the next line starts after them.
            lines.discard_leftover();
            log::debug!("pool connection {id} idle again");
            on(PoolEvent::Back);
        }
    }
}

/// Carry one `tcpr` user to a target over the chunked pool connection `conn`; `early` are
/// chunk bytes that came with the line. `true` when the connection is clean for the next user.
async fn serve_chunked(
    inner: &Inner,
    conn: &mut Conn,
    early: &[u8],
    peer: std::net::SocketAddr,
) -> bool {
    let _active = ActiveGuard::new(&inner.stats, false);
    // The chunks that came with the line: their payload goes to the target first. Nothing
    // may follow an end chunk until the next line.
    let mut dechunk = Dechunk::new();
    let mut payload = heapless::Vec::<u8, { crate::signal::MAX_LINE }>::new();
    let fed = dechunk.feed(early, |p| {
        let _ = payload.extend_from_slice(p);
    });
    if fed != Ok(early.len()) {
        log::debug!("client: user {peer}: {}", ChunkError::AfterEnd);
        return false;
    }
    let Some(mut target) = open_target(inner, peer, &payload).await else {
        return false;
    };
    let chunks = (copy::Pool::A, dechunk);
    match copy::chunked(conn, &mut target, chunks, inner.user_copy()).await {
        Ok((up, down)) => {
            let up = up + payload.len() as u64;
            log::debug!("client: user {peer} done: {up} B up, {down} B down");
            true
        }
        Err(e) => {
            log::debug!("client: user {peer} ended: {e}");
            false
        }
    }
}

/// Dial a target for user `peer`, send the PROXY header (`proxy=`) and the user's `early`
/// bytes; `None` (logged) when that fails.
async fn open_target(inner: &Inner, peer: std::net::SocketAddr, early: &[u8]) -> Option<Conn> {
    let mut target = match dial_target(inner).await {
        Ok(t) => t,
        Err(e) => {
            inner.stats.refused.fetch_add(1, Relaxed);
            if inner.warn.allow() {
                log::warn!("client: user {peer}: no target reachable: {e}");
            }
            return None;
        }
    };
    if let Err(e) = send_proxy_header(inner.cfg.proxy, &mut target, peer).await {
        log::debug!("client: user {peer}: PROXY header not sent: {e}");
        return None;
    }
    if !early.is_empty() {
        if let Err(e) = target.write_all(early).await {
            log::debug!("client: user {peer}: target write failed: {e}");
            return None;
        }
        inner.stats.tcp_rx.add(early.len() as u64);
    }
    Some(target)
}

/// Carry one user connection to a target: `early` are user bytes that arrived with the
/// signal, `peer` the user's address (for logs and the PROXY header).
pub(crate) async fn serve_tcp(
    inner: &Inner,
    mut conn: Conn,
    early: &[u8],
    peer: std::net::SocketAddr,
) {
    let _active = ActiveGuard::new(&inner.stats, false);
    let Some(mut target) = open_target(inner, peer, early).await else {
        return;
    };
    let splice = inner.cfg.tuning.splice;
    match copy::conns(&mut conn, &mut target, inner.user_copy(), splice).await {
        Ok((up, down)) => {
            let up = up + early.len() as u64;
            log::debug!("client: user {peer} done: {up} B up, {down} B down")
        }
        Err(e) => log::debug!("client: user {peer} ended: {e}"),
    }
}

/// Dial the targets round robin, skipping any that fail (failover).
async fn dial_target(inner: &Inner) -> Result<Conn> {
    let (s, _) = inner.targets.dial(&inner.dialer).await?;
    Ok(Conn::Plain(s))
}

/// `proxy=1|2`: the PROXY header for `user`, sent before any user byte. The destination is
/// the address the target connection points at (the client does not know which address the
/// user dialed on the server).
pub(crate) async fn send_proxy_header(
    mode: u8,
    target: &mut Conn,
    user: std::net::SocketAddr,
) -> Result<()> {
    if mode == 0 {
        return Ok(());
    }
    let dst = target.peer_addr()?;
    if let Some(h) = proxy::Header::new(mode, user, dst) {
        target.write_all(h.bytes()).await?;
    }
    Ok(())
}
