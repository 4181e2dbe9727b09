//! The flow table of a shared UDP socket: one flow per source address, each on its own
//! connection. The server and the visitor share it; only how a flow's connection is obtained
//! differs (an idle pool connection, or a circuit through a relay), behind [`Opener`].
//!
//! # Implementation
//! One receive loop reads every datagram and appends it, framed, to its flow's [`Queue`]; the
//! flow's task opens its connection, writes the queue out on it and sends the frames coming
//! back with `send_to`. The receive loop never waits for a flow: a datagram that finds no
//! room (queue full, no slot, no buffer) is dropped and counted in `udp_dropped`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use smol::future::{yield_now, FutureExt};
use smol::Async;

use super::relay::{lock, Meters, Push, Queue, Relay, Source};
use crate::arena::{Arena, Lease};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use crate::signal::Line;
use crate::stats::{ActiveGuard, Stats};
use crate::stream::Conn;
use crate::util::{accept_backoff, RateLimit};

/// Datagrams a receive loop handles before yielding, so a flood cannot starve other tasks
/// (this one and the single-end forwarder's).
const RECV_BUDGET: u32 = 64;

/// The datagrams a receive loop handled in a row. A receive and a send are ready at once while
/// datagrams keep coming, so such a loop never waits on its own: [`RecvBudget::spend`] yields
/// every [`RECV_BUDGET`] datagrams.
#[derive(Debug, Default)]
pub(crate) struct RecvBudget(u32);

impl RecvBudget {
    /// Count one datagram, and yield to the other tasks when the budget is spent.
    pub(crate) async fn spend(&mut self) {
        self.0 = self.0.wrapping_add(1);
        if self.0 % RECV_BUDGET == 0 {
            yield_now().await;
        }
    }
}

/// Largest opening write: the opening line plus the datagrams queued while it was set up.
const OPENING_WRITE: usize = 2048;
/// At most one log line per this period about dropped datagrams.
const DROP_LOG_PERIOD: Duration = Duration::from_secs(1);

/// A flow's connection, opened and announced: frames go both ways from now on.
pub(crate) struct Opened {
    /// The connection.
    pub conn: Conn,
    /// Bytes of the frame stream read along with the answer to the opening (visitor).
    pub early: Line,
}

/// How a new flow gets its connection.
pub(crate) trait Opener: Send + Sync + 'static {
    /// Obtain a connection for the flow from `src` and announce the flow on it. The frames
    /// queued meanwhile in `queue` should leave with the announcement ([`opening`]).
    fn open(
        &self,
        src: SocketAddr,
        queue: &Mutex<Queue>,
    ) -> impl Future<Output = Result<Opened>> + Send;
}

/// The opening write: `line`, then the frames queued so far if they all fit in one small
/// write (one segment), so that a DNS query is answered a round trip sooner.
pub(crate) fn opening(line: &[u8], queue: &Mutex<Queue>) -> Vec<u8> {
    let mut first = Vec::with_capacity(OPENING_WRITE);
    first.extend_from_slice(line);
    lock(queue).take_into(&mut first, OPENING_WRITE);
    first
}

/// One flow as the receive loop sees it.
struct Flow {
    queue: Mutex<Queue>,
}

/// The flows of one shared socket, and what their tasks need.
pub(crate) struct Flows<O> {
    opener: O,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    /// TCP connections and UDP flows at once (`slot`).
    slot: usize,
    /// Largest datagram (`UDP_DATA_BUF_SIZE`).
    max: usize,
    /// A flow ends after this long without a datagram (`UDP_READ_TIMEOUT`).
    idle: Duration,
    map: Mutex<HashMap<SocketAddr, Arc<Flow>>>,
    /// Flows that got no connection: logged at most once per [`DROP_LOG_PERIOD`].
    refusals: RateLimit,
}

impl<O: Opener> Flows<O> {
    /// An empty table whose flows open their connections with `opener`.
    pub(crate) fn new(opener: O, cfg: &Config, stats: Arc<Stats>, shutdown: Shutdown) -> Self {
        Flows {
            opener,
            stats,
            shutdown,
            slot: cfg.slot,
            max: cfg.tuning.udp_buf,
            idle: cfg.tuning.udp_read_timeout,
            map: Mutex::default(),
            refusals: RateLimit::new(DROP_LOG_PERIOD),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<SocketAddr, Arc<Flow>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Count a dropped datagram and say why, at most once per [`DROP_LOG_PERIOD`].
fn dropped(stats: &Stats, limit: &RateLimit, src: SocketAddr, why: std::fmt::Arguments<'_>) {
    stats.udp_dropped.fetch_add(1, Relaxed);
    if limit.allow() {
        log::warn!("udp: datagram from {src} dropped: {why}");
    }
}

/// The receive loop of a shared socket: runs until cancelled.
pub(crate) async fn serve<O: Opener>(
    flows: Arc<Flows<O>>,
    sock: Arc<Async<UdpSocket>>,
    arena: Arc<Arena>,
) {
    let max = flows.max;
    let stats = &flows.stats;
    // One byte more than the largest datagram carried, so a larger one is seen as such.
    let mut buf = vec![0u8; max + 1];
    let limit = RateLimit::new(DROP_LOG_PERIOD);
    let (mut errors, mut budget) = (0u32, RecvBudget::default());
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
        budget.spend().await;
        if n > max {
            let why = format_args!("larger than UDP_DATA_BUF_SIZE ({max} B)");
            dropped(stats, &limit, src, why);
            continue;
        }
        let d = &buf[..n];
        let found = flows.map().get(&src).cloned();
        if let Some(flow) = found {
            match lock(&flow.queue).push(d) {
                Push::Queued => {
                    stats.udp_rx.add(n as u64);
                    continue;
                }
                Push::Full => {
                    dropped(stats, &limit, src, format_args!("flow queue full"));
                    continue;
                }
                // That flow has just ended: this datagram starts a new one.
                Push::Closed => {}
            }
        }
        if stats.active() >= flows.slot {
            stats.refused.fetch_add(1, Relaxed);
            let why = format_args!("new flow, all {} slots in use", flows.slot);
            dropped(stats, &limit, src, why);
            continue;
        }
        let (Some(q), Some(r)) = (arena.try_lease(), arena.try_lease()) else {
            stats.refused.fetch_add(1, Relaxed);
            let why = format_args!("new flow, no free UDP buffer");
            dropped(stats, &limit, src, why);
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
        flows.map().insert(src, flow.clone());
        let task = run_flow(flows.clone(), sock.clone(), flow, r, src);
        crate::rt::spawn(async move {
            task.await;
            drop(active);
        })
        .detach();
    }
}

/// One flow: open its connection, then relay until it ends.
async fn run_flow<O: Opener>(
    flows: Arc<Flows<O>>,
    sock: Arc<Async<UdpSocket>>,
    flow: Arc<Flow>,
    rbuf: Lease,
    src: SocketAddr,
) {
    let st = &flows.stats;
    let work = async {
        let mut opened = flows
            .opener
            .open(src, &flow.queue)
            .await
            .map_err(|e| (true, e))?;
        let meters = Meters {
            to_conn: &st.udp_rx,
            from_conn: &st.udp_tx,
            dropped: &st.udp_dropped,
        };
        Relay::new(
            &mut opened.conn,
            (&sock, Some(src)),
            Source::Queue(&flow.queue),
            rbuf,
            &opened.early,
            meters,
            (flows.max, flows.idle),
        )
        .await
        .map_err(|e| (false, Error::Io(e)))
    };
    let res = work
        .or(async {
            flows.shutdown.wait().await;
            Err((false, Error::Shutdown))
        })
        .await;
    lock(&flow.queue).close();
    {
        let mut table = flows.map();
        if table.get(&src).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
            table.remove(&src);
        }
    }
    match res {
        Ok(()) => log::debug!("udp: flow {src} closed by the far side"),
        // Each datagram of a new source can end here: a flood must not flood the log too.
        Err((true, e)) => {
            st.refused.fetch_add(1, Relaxed);
            if flows.refusals.allow() {
                log::warn!("udp: no connection for flow {src}: {e}");
            }
        }
        Err((_, Error::Io(e))) if e.kind() == io::ErrorKind::TimedOut => {
            log::debug!("udp: flow {src} ended after {:?} idle", flows.idle)
        }
        Err((_, Error::Shutdown)) => {}
        Err((_, Error::Io(e))) if e.kind() != io::ErrorKind::InvalidData => {
            log::debug!("udp: flow {src} ended: {e}")
        }
        Err((_, e)) => log::warn!("udp: flow {src} ended: {e}"),
    }
}
