//! UDP forwarding: the server's shared socket and flow table, and each side's flow task.
//!
//! Every source address that sends to the server's public port is a *flow*. Its first
//! datagram takes an idle pool connection, which gets a `udp <id> <addr>` line and from then
//! on carries that flow's datagrams as frames (2-byte big-endian length, then the payload;
//! see [`crate::frame`]), both ways. The client answers the line with a UDP socket connected
//! to a target. Either side ends the flow after `UDP_READ_TIMEOUT` with no datagram, or when
//! the pool connection closes; the flow's two arena buffers go back to the UDP arena then.
//!
//! # Implementation
//! The server has one socket for all flows: `udp::flows` keeps the flow table and its receive
//! loop (the visitor of a relay uses the same table); `PoolOpener` is how a server flow
//! gets its connection.

pub(crate) mod flows;
mod relay;

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use smol::future::FutureExt;
use smol::io::AsyncWriteExt;
use smol::Async;

pub use relay::{buf_len, lock, Meters, Push, Queue, Relay, Source};

use crate::arena::Arena;
use crate::client;
use crate::config::{HostPort, Tuning};
use crate::error::{Error, Result};
use crate::net;
use crate::server::{self, take_pool};
use crate::signal::{Line, Signal};
use crate::stats::ActiveGuard;
use crate::stream::Conn;
use flows::{opening, Flows, Opened, Opener};

/// Attempts at finding a port free for both TCP and UDP when the public port is 0.
const BIND_TRIES: usize = 16;
/// Receive buffer asked for the server's shared socket: every flow's datagrams queue there,
/// and bursts of large datagrams overflow the usual 208 KiB default. The kernel caps it at
/// `net.core.rmem_max`, and it costs memory only while datagrams wait.
const SERVER_RCVBUF: usize = 1 << 20;
/// Bind the server's UDP socket on the address its TCP user listener got. With port 0 the
/// kernel chose the TCP port; if that UDP port is taken, both are bound again elsewhere.
pub(crate) async fn bind_beside(
    mut users: Async<TcpListener>,
    hp: &HostPort,
    tuning: &Tuning,
) -> Result<(Async<TcpListener>, Async<UdpSocket>)> {
    let mut last = None;
    for _ in 0..BIND_TRIES {
        let addr = users.get_ref().local_addr()?;
        match Async::<UdpSocket>::bind(addr) {
            Ok(s) => {
                if let Err(e) = rustix::net::sockopt::set_socket_recv_buffer_size(&s, SERVER_RCVBUF)
                {
                    log::debug!("udp: cannot enlarge the receive buffer: {e}");
                }
                return Ok((users, s));
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && hp.port == 0 => {
                last = Some(net::bind_error("UDP", addr, e));
                users = net::listen(hp, tuning).await?;
            }
            Err(e) => return Err(net::bind_error("UDP", addr, e).into()),
        }
    }
    Err(Error::Io(last.unwrap_or_else(|| {
        io::Error::from(io::ErrorKind::AddrInUse)
    })))
}

/// The server's flows take an idle pool connection of the client's session and announce
/// themselves with `udp <id> <addr>`.
pub(crate) struct PoolOpener(pub(crate) Arc<server::Inner>);

impl Opener for PoolOpener {
    async fn open(&self, src: SocketAddr, queue: &Mutex<Queue>) -> Result<Opened> {
        let Some((_, mut pc)) = take_pool(&self.0).await else {
            return Err(Error::Timeout("no pool connection from the client"));
        };
        let line = Signal::Udp {
            id: pc.id,
            peer: src,
        };
        pc.conn.write_all(&opening(&line.encode(), queue)).await?;
        pc.conn.flush().await?;
        log::debug!("udp: flow {src} on pool connection {}", pc.id);
        Ok(Opened {
            conn: pc.conn,
            early: Line::new(),
        })
    }
}

/// The server's receive loop: runs until cancelled.
pub(crate) async fn serve(
    inner: Arc<server::Inner>,
    sock: Arc<Async<UdpSocket>>,
    arena: Arc<Arena>,
) {
    let (stats, shutdown) = (inner.stats.clone(), inner.shutdown.clone());
    let flows = Flows::new(PoolOpener(inner.clone()), &inner.cfg, stats, shutdown);
    flows::serve(Arc::new(flows), sock, arena).await;
}

/// One flow on the client: a UDP socket connected to a target, relayed with the pool
/// connection until either side is silent for `UDP_READ_TIMEOUT` or the connection closes.
/// `early` is what followed the `udp` line: the start of the frame stream.
pub(crate) async fn serve_client(
    inner: &client::Inner,
    mut conn: Conn,
    early: &[u8],
    id: u32,
    peer: SocketAddr,
) {
    let _active = ActiveGuard::new(&inner.stats, true);
    let st = &inner.stats;
    let tuning = &inner.cfg.tuning;
    let wait = tuning.pool_get_timeout;
    let Some(arena) = &inner.udp_arena else {
        return;
    };
    let Some((b1, b2)) = arena.lease_pair(wait).await else {
        st.refused.fetch_add(1, Relaxed);
        log::warn!("client: UDP flow {peer} refused: no free buffer in {wait:?}");
        return;
    };
    let sock = match dial(inner).await {
        Ok(s) => s,
        Err(e) => {
            st.refused.fetch_add(1, Relaxed);
            if inner.warn.allow() {
                log::warn!("client: UDP flow {peer}: no target usable: {e}");
            }
            return;
        }
    };
    log::debug!("client: UDP flow {peer} on pool connection {id}");
    let meters = Meters {
        to_conn: &st.udp_tx,
        from_conn: &st.udp_rx,
        dropped: &st.udp_dropped,
    };
    let limits = (tuning.udp_buf, tuning.udp_read_timeout);
    let relay = Relay::new(
        &mut conn,
        (&sock, None),
        Source::socket(b1),
        b2,
        early,
        meters,
        limits,
    );
    let res = relay
        .or(async {
            inner.shutdown.wait().await;
            Ok(())
        })
        .await;
    match res {
        Ok(()) => log::debug!("client: UDP flow {peer} done"),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => log::debug!(
            "client: UDP flow {peer} ended after {:?} idle",
            tuning.udp_read_timeout
        ),
        // A broken frame stream is the peer's fault: say so. A reset is how flows end too.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            log::warn!("client: UDP flow {peer} closed: {e}")
        }
        Err(e) => log::debug!("client: UDP flow {peer} ended: {e}"),
    }
}

/// A UDP socket connected to the next target, round robin, skipping those that fail.
pub(crate) async fn dial(inner: &client::Inner) -> Result<Async<UdpSocket>> {
    let targets: &[HostPort] = &inner.cfg.targets;
    let start = inner.next_udp.fetch_add(1, Relaxed);
    let mut last = Error::Timeout("no target");
    for i in 0..targets.len() {
        let t = &targets[(start + i) % targets.len()];
        match net::dial_udp(t, inner.cfg.tuning.dial_timeout).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                log::debug!("client: UDP target {t} failed: {e}");
                last = e;
            }
        }
    }
    Err(last)
}
