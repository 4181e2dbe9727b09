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
//! The server has one socket for all flows, so one receive loop reads every datagram and
//! appends it, framed, to its flow's [`Queue`]; the flow's task writes the queue out on the
//! pool connection and sends the frames coming back with `send_to`. The receive loop never
//! waits for a flow: a datagram that finds no room (queue full, no slot, no buffer) is
//! dropped and counted in `udp_dropped`.

mod relay;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use smol::future::{yield_now, FutureExt};
use smol::io::AsyncWriteExt;
use smol::Async;

pub use relay::{buf_len, lock, Meters, Push, Queue, Relay, Source};

use crate::arena::{Arena, Lease};
use crate::client;
use crate::config::HostPort;
use crate::error::{Error, Result};
use crate::net;
use crate::server::{self, take_pool};
use crate::signal::Signal;
use crate::stats::{ActiveGuard, Stats};
use crate::stream::Conn;
use crate::util::{accept_backoff, RateLimit};

/// Datagrams the receive loop handles before yielding, so a flood cannot starve other tasks.
const RECV_BUDGET: u32 = 64;
/// Attempts at finding a port free for both TCP and UDP when the public port is 0.
const BIND_TRIES: usize = 16;
/// Receive buffer asked for the server's shared socket: every flow's datagrams queue there,
/// and bursts of large datagrams overflow the usual 208 KiB default. The kernel caps it at
/// `net.core.rmem_max`, and it costs memory only while datagrams wait.
const SERVER_RCVBUF: usize = 1 << 20;
/// Largest opening write: the `udp` line plus the datagrams queued while it was set up.
const OPENING_WRITE: usize = 2048;
/// At most one log line per this period about dropped datagrams.
const DROP_LOG_PERIOD: Duration = Duration::from_secs(1);

/// Bind the server's UDP socket on the address its TCP user listener got. With port 0 the
/// kernel chose the TCP port; if that UDP port is taken, both are bound again elsewhere.
pub(crate) async fn bind_beside(
    mut users: Async<TcpListener>,
    hp: &HostPort,
    timeout: Duration,
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
                last = Some(e);
                users = net::listen(hp, timeout).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Io(last.unwrap_or_else(|| {
        io::Error::from(io::ErrorKind::AddrInUse)
    })))
}

/// One flow as the receive loop sees it.
struct Flow {
    queue: Mutex<Queue>,
}

type Flows = Mutex<HashMap<SocketAddr, Arc<Flow>>>;

fn lock_flows(f: &Flows) -> MutexGuard<'_, HashMap<SocketAddr, Arc<Flow>>> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

/// Count a dropped datagram and say why, at most once per [`DROP_LOG_PERIOD`].
fn dropped(stats: &Stats, limit: &RateLimit, src: SocketAddr, why: std::fmt::Arguments<'_>) {
    stats.udp_dropped.fetch_add(1, Relaxed);
    if limit.allow() {
        log::warn!("udp: datagram from {src} dropped: {why}");
    }
}

/// The server's receive loop: runs until cancelled.
pub(crate) async fn serve(
    inner: Arc<server::Inner>,
    sock: Arc<Async<UdpSocket>>,
    arena: Arc<Arena>,
) {
    let flows: Arc<Flows> = Arc::default();
    let max = inner.cfg.tuning.udp_buf;
    // One byte more than the largest datagram carried, so a larger one is seen as such.
    let mut buf = vec![0u8; max + 1];
    let limit = RateLimit::new(DROP_LOG_PERIOD);
    let (mut errors, mut handled) = (0u32, 0u32);
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(x) => {
                errors = 0;
                x
            }
            // An ICMP error for a datagram we sent: nothing to do on a shared socket.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => {
                accept_backoff("udp", &e, &mut errors).await;
                continue;
            }
        };
        handled = handled.wrapping_add(1);
        if handled % RECV_BUDGET == 0 {
            yield_now().await;
        }
        if n > max {
            let why = format_args!("larger than UDP_DATA_BUF_SIZE ({max} B)");
            dropped(&inner.stats, &limit, src, why);
            continue;
        }
        let d = &buf[..n];
        let found = lock_flows(&flows).get(&src).cloned();
        if let Some(flow) = found {
            match lock(&flow.queue).push(d) {
                Push::Queued => {
                    inner.stats.udp_rx.add(n as u64);
                    continue;
                }
                Push::Full => {
                    dropped(&inner.stats, &limit, src, format_args!("flow queue full"));
                    continue;
                }
                // That flow has just ended: this datagram starts a new one.
                Push::Closed => {}
            }
        }
        let stats = &inner.stats;
        if stats.active() >= inner.cfg.slot {
            stats.refused.fetch_add(1, Relaxed);
            let why = format_args!("new flow, all {} slots in use", inner.cfg.slot);
            dropped(stats, &limit, src, why);
            continue;
        }
        let (Some(q), Some(r)) = (arena.try_lease(), arena.try_lease()) else {
            stats.refused.fetch_add(1, Relaxed);
            dropped(
                stats,
                &limit,
                src,
                format_args!("new flow, no free UDP buffer"),
            );
            continue;
        };
        let active = ActiveGuard::new(stats, true);
        let mut queue = Queue::new(q);
        if queue.push(d) == Push::Queued {
            stats.udp_rx.add(n as u64);
        }
        let flow = Arc::new(Flow {
            queue: Mutex::new(queue),
        });
        lock_flows(&flows).insert(src, flow.clone());
        let task = run_flow(inner.clone(), sock.clone(), flows.clone(), flow, r, src);
        crate::rt::spawn(async move {
            task.await;
            drop(active);
        })
        .detach();
    }
}

/// One flow on the server: take a pool connection, announce the flow, relay until it ends.
async fn run_flow(
    inner: Arc<server::Inner>,
    sock: Arc<Async<UdpSocket>>,
    flows: Arc<Flows>,
    flow: Arc<Flow>,
    rbuf: Lease,
    src: SocketAddr,
) {
    let tuning = &inner.cfg.tuning;
    let work = async {
        let Some(mut pc) = take_pool(&inner).await else {
            return Err(Error::Timeout("a pool connection"));
        };
        // The line and the datagrams queued meanwhile go out in one write (one segment),
        // if they are small: a DNS query is answered a round trip sooner.
        let mut first = Vec::with_capacity(OPENING_WRITE);
        let line = Signal::Udp {
            id: pc.id,
            peer: src,
        };
        first.extend_from_slice(&line.encode());
        lock(&flow.queue).take_into(&mut first, OPENING_WRITE);
        pc.conn.write_all(&first).await?;
        pc.conn.flush().await?;
        drop(first);
        log::debug!("udp: flow {src} on pool connection {}", pc.id);
        let st = &inner.stats;
        let meters = Meters {
            to_conn: &st.udp_rx,
            from_conn: &st.udp_tx,
            dropped: &st.udp_dropped,
        };
        let limits = (tuning.udp_buf, tuning.udp_read_timeout);
        let src_q = Source::Queue(&flow.queue);
        Relay::new(
            &mut pc.conn,
            (&sock, Some(src)),
            src_q,
            rbuf,
            &[],
            meters,
            limits,
        )
        .await
        .map_err(Error::Io)
    };
    let res = work
        .or(async {
            inner.shutdown.wait().await;
            Err(Error::Shutdown)
        })
        .await;
    lock(&flow.queue).close();
    {
        let mut table = lock_flows(&flows);
        if table.get(&src).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
            table.remove(&src);
        }
    }
    match res {
        Ok(()) => log::debug!("udp: flow {src} closed by the client"),
        Err(Error::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
            log::debug!(
                "udp: flow {src} ended after {:?} idle",
                tuning.udp_read_timeout
            )
        }
        Err(Error::Shutdown) => {}
        Err(Error::Timeout(what)) => {
            inner.stats.refused.fetch_add(1, Relaxed);
            log::warn!(
                "udp: flow {src} refused: no {what} from the client in {:?}",
                tuning.pool_get_timeout
            );
        }
        Err(Error::Io(e)) if e.kind() != io::ErrorKind::InvalidData => {
            log::debug!("udp: flow {src} ended: {e}")
        }
        Err(e) => log::warn!("udp: flow {src} ended: {e}"),
    }
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
    let (Some(b1), Some(b2)) = (arena.lease(wait).await, arena.lease(wait).await) else {
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
async fn dial(inner: &client::Inner) -> Result<Async<UdpSocket>> {
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
