//! The warm pool of a client session: how many pool connections to keep (NodePass's tick
//! rule, grown at once when a user takes one), dialing them, and their bookkeeping while
//! they wait for users.

use std::sync::atomic::{
    AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::Arc;
use std::time::Duration;

use smol::future::FutureExt;

use super::carry::{watch, PoolEvent};
use super::{open, Inner};
use crate::control::{Control, End, Handler};
use crate::error::{Error, ProtoError};
use crate::lines::LineReader;
use crate::poke::{Poke, QUIET_SLEEP, QUIET_TICKS};
use crate::server;
use crate::shutdown::Shutdown;
use crate::signal::{Kind, Signal, SID_LEN};
use crate::stream::Conn;
use crate::timeout::bounded;

/// Pool tick adjustment step (NodePass's rule).
const INTERVAL_STEP: Duration = Duration::from_millis(100);

/// Ticks between two `trim`s: the previous one must have taken effect (the closed connections
/// counted out) before the surplus is measured again.
const TRIM_TICKS: u32 = 2;

/// Pool connections dialed at once, at most: half of what the server lets be mid-handshake
/// (`pending::MAX_PENDING`), so a refill after a burst is never cut short as a flood would be.
const MAX_DIALING: usize = crate::pending::MAX_PENDING / 2;

/// One session's pool bookkeeping, shared by the control loop and the pool connections.
struct Pool {
    sid: [u8; SID_LEN],
    /// The TLS mode the session's control connection used: every pool connection uses it too.
    tls: u8,
    end: Shutdown,
    idle: AtomicUsize,
    dialing: AtomicUsize,
    /// Pool connections taken by users since the last tick.
    used: AtomicUsize,
    /// Reusable pool connections carrying a user now: they come back idle afterwards.
    busy: AtomicUsize,
    /// Pool connections to keep (counted by [`pooled`]): grown at once when the pool runs dry,
    /// shrunk by the ticks.
    capacity: AtomicUsize,
    /// The most `capacity` may reach.
    max: usize,
    /// TCP forwarded: the server offers it and `notcp` is not set here.
    tcp: bool,
    /// UDP forwarded: the server offers it, `noudp` is not set here, and this build has it.
    udp: bool,
    /// Forward flow: the queue this side takes pool connections from for its users.
    queue: Option<Arc<server::Session>>,
    /// Pool connections queued since the last tick (forward flow).
    offered: AtomicUsize,
    /// Wakes the manager's ticks, asleep while the pool is full and unused, when a pool
    /// connection is taken (or closes).
    poke: Poke,
}

/// Keep the warm pool of session `sid` (at most `max`, the server's bound) and run the
/// control loop with the pool manager, wrapped by `wrap` (the relay device adds refreshes).
#[allow(clippy::too_many_arguments)] // one call site per flow kind; a struct would only rename them
pub(crate) async fn run_pool<H: Handler>(
    inner: &Arc<Inner>,
    conn: Conn,
    lines: LineReader,
    sid: [u8; SID_LEN],
    max: usize,
    (tcp, udp): (bool, bool),
    queue: Option<Arc<server::Session>>,
    wrap: impl FnOnce(PoolManager) -> H,
) -> End {
    let max = inner.cfg.max.min(max).max(1);
    let min = inner.cfg.min.min(max);
    // The mode this session's control connection was opened with (it changes only between
    // sessions): every pool connection uses it too.
    let mode = inner.tls.load(Relaxed);
    let tcp = tcp && !inner.cfg.notcp;
    let udp = udp && inner.udp_arena.is_some();
    let proto = match (tcp, udp) {
        (true, true) => "TCP and UDP",
        (true, false) => "TCP",
        (false, true) => "UDP",
        (false, false) => "nothing",
    };
    let cipher = conn.cipher().map(|c| format!(", {c}")).unwrap_or_default();
    log::info!(
        "client: session up with {} (pool {min}..{max}, forwarding {proto}, tls={mode}{cipher})",
        inner.cfg.tunnel
    );
    let pool = Arc::new(Pool {
        sid,
        tls: mode,
        end: Shutdown::new(),
        idle: AtomicUsize::new(0),
        dialing: AtomicUsize::new(0),
        used: AtomicUsize::new(0),
        busy: AtomicUsize::new(0),
        capacity: AtomicUsize::new(min),
        max,
        tcp,
        udp,
        queue,
        offered: AtomicUsize::new(0),
        poke: Poke::default(),
    });
    let mgr = PoolManager {
        inner: inner.clone(),
        pool: pool.clone(),
        min,
        max,
        interval: inner.cfg.tuning.min_pool_interval,
        trims: 0,
        last_idle: 0,
        quiet: 0,
        asleep: false,
    };
    let end = Control::new(
        conn,
        lines,
        inner.cfg.tuning.report_interval,
        inner.stats.clone(),
    )
    .run(wrap(mgr))
    .await;
    pool.end.trigger();
    inner.stats.pool_idle.store(0, Relaxed);
    inner.stats.pool_asleep.store(false, Relaxed);
    end
}

/// Grows and shrinks the warm pool on the control loop's ticks.
pub(crate) struct PoolManager {
    inner: Arc<Inner>,
    pool: Arc<Pool>,
    min: usize,
    max: usize,
    interval: Duration,
    /// Ticks until another `trim` may be sent (the previous one must take effect first).
    trims: u32,
    /// Forward flow: the queue length at the last tick.
    last_idle: usize,
    /// Ticks in a row that found the pool full at `min` and unused.
    quiet: u32,
    /// The last tick armed `pool.poke` and asked for `QUIET_SLEEP`.
    asleep: bool,
}

impl Handler for PoolManager {
    fn signal(&mut self, _sig: Signal<'_>) -> std::result::Result<(), ProtoError> {
        Err(ProtoError::Unexpected("signal not for the client"))
    }

    fn poke(&self) -> Option<&Poke> {
        self.asleep.then_some(&self.pool.poke)
    }

    fn tick(&mut self) -> (Option<Signal<'static>>, Duration) {
        self.pool.poke.disarm();
        self.set_asleep(false);
        let cfg = &self.inner.cfg.tuning;
        let (idle, used) = match &self.pool.queue {
            // Forward flow: users take from the local queue; what left it since the last
            // tick, beyond what was queued, was used.
            Some(q) => {
                let now = q.idle_len();
                let offered = self.pool.offered.swap(0, Relaxed);
                let used = (self.last_idle + offered).saturating_sub(now);
                self.last_idle = now;
                (now, used)
            }
            None => (
                self.pool.idle.load(Relaxed),
                self.pool.used.swap(0, Relaxed),
            ),
        };
        let cap = self.pool.capacity.load(Relaxed);
        let busy = self.pool.busy.load(Relaxed);
        // NodePass's rule: tick faster while the pool runs low, slower while it is full. A
        // reusable connection busy with a user counts as in the pool (it comes back, and
        // `pooled` counts it too): else one long-held user of a pool of 4 left it at 3/4,
        // between the bounds, and the ticks stayed at 100 ms for as long as the user stayed.
        let avail = idle + busy.min(cap / 2);
        if avail * 5 < cap {
            self.interval = self
                .interval
                .saturating_sub(INTERVAL_STEP)
                .max(cfg.min_pool_interval);
        } else if avail * 5 > cap * 4 {
            self.interval = (self.interval + INTERVAL_STEP).min(cfg.max_pool_interval);
        }
        // Grow when more than 80% of the pool was used this tick; under 20%, halve it (a pool
        // doubled for a burst gives its connections and their memory back within a few
        // ticks); not used at all for a tick, back to `min` at once.
        let capacity = if used * 5 > cap * 4 {
            (cap + 1).min(self.max)
        } else if used == 0 {
            self.min
        } else if used * 5 < cap {
            (cap / 2).max(self.min)
        } else {
            cap
        };
        self.pool.capacity.store(capacity, Relaxed);
        let dialing = self.pool.dialing.load(Relaxed);
        let need = capacity
            .saturating_sub(pooled(idle, dialing, busy, capacity))
            .min(MAX_DIALING.saturating_sub(dialing));
        for _ in 0..need {
            self.pool.dialing.fetch_add(1, Relaxed);
            crate::rt::spawn(pool_conn(self.inner.clone(), self.pool.clone())).detach();
        }
        self.inner.stats.pool_size.store(capacity, Relaxed);
        self.trims = self.trims.saturating_sub(1);
        let surplus = idle.saturating_sub(capacity);
        if surplus > 0 && self.trims == 0 {
            self.trims = TRIM_TICKS;
            if let Some(q) = &self.pool.queue {
                // We are the taker: close our own surplus; the server sees them close.
                q.trim(surplus);
                return (None, self.interval);
            }
            return (Some(Signal::Trim(surplus as u32)), self.interval);
        }
        // Reverse flow, full at `min` (busy reusable connections counted, as `pooled` does),
        // nothing used or dialing: every change from here on is a pool event, which pokes, so
        // the ticks may sleep (forward flow counts its use only at ticks). The SeqCst loads
        // after arming see any use that did not poke.
        let full = |idle: usize, busy: usize| {
            used == 0 && capacity == self.min && pooled(idle, 0, busy, capacity) >= capacity
        };
        let still = self.pool.queue.is_none() && full(idle, busy) && dialing == 0;
        // Quiet for `QUIET_TICKS` in a row: the ticks sleep until a pool connection is taken
        // (idle, they would only wake the process every `MAX_POOL_INTERVAL`).
        self.quiet = if still { self.quiet + 1 } else { 0 };
        if self.quiet >= QUIET_TICKS {
            self.pool.poke.arm();
            let (idle, busy) = (self.pool.idle.load(SeqCst), self.pool.busy.load(SeqCst));
            if self.pool.used.load(SeqCst) == 0 && full(idle, busy) {
                self.set_asleep(true);
                return (None, QUIET_SLEEP);
            }
            self.pool.poke.disarm();
        }
        (None, self.interval)
    }
}

impl PoolManager {
    fn set_asleep(&mut self, asleep: bool) {
        self.asleep = asleep;
        self.inner.stats.pool_asleep.store(asleep, Relaxed);
    }
}

/// The pool connections counted against `cap`: idle and dialing ones, and the reusable ones
/// busy with a user (they come back) up to half of `cap`, so users one after another cause no
/// dial at all, while many held at once still leave half the pool idle for the next burst.
fn pooled(idle: usize, dialing: usize, busy: usize, cap: usize) -> usize {
    idle + dialing + busy.min(cap / 2)
}

/// A pool connection was just taken: dial its replacement now, off the user's path, rather
/// than at the next tick. A pool that ran dry doubles its capacity (up to `max`) so a burst
/// finds connections waiting; the ticks halve it again while it is mostly unused.
fn refill(inner: &Arc<Inner>, pool: &Arc<Pool>) {
    if pool.end.is_triggered() {
        return;
    }
    let idle = pool.idle.load(Relaxed);
    let mut cap = pool.capacity.load(Relaxed);
    if idle == 0 && cap < pool.max {
        cap = (cap * 2).clamp(1, pool.max);
        pool.capacity.store(cap, Relaxed);
        inner.stats.pool_size.store(cap, Relaxed);
    }
    let dialing = pool.dialing.load(Relaxed);
    let counted = pooled(idle, dialing, pool.busy.load(Relaxed), cap);
    let need = cap
        .saturating_sub(counted)
        .min(MAX_DIALING.saturating_sub(dialing));
    for _ in 0..need {
        pool.dialing.fetch_add(1, Relaxed);
        crate::rt::spawn(pool_conn(inner.clone(), pool.clone())).detach();
    }
}

/// One pool connection: dial, authenticate, wait (within `HANDSHAKE_TIMEOUT`) for `pooled`,
/// wait idle for its opening line, then serve it.
async fn pool_conn(inner: Arc<Inner>, pool: Arc<Pool>) {
    // In a block, so the result's slot is free again while the connection is watched.
    let (conn, lines, id) = {
        let opened = async {
            let (mut conn, mut lines) = open(&inner, pool.tls, Kind::Pool, Some(pool.sid)).await?;
            // The server answers `auth` at once (`pooled` or `err`): bounded as the handshake
            // is, or a server that never answers holds the connection for the whole session.
            let limit = inner.cfg.tuning.handshake_timeout;
            let reply = bounded(limit, "pooled reply", lines.next(&mut conn)).await?;
            match reply {
                Signal::Pooled { id } => Ok(Some((conn, lines, id))),
                // The server counted its pool full after our `auth`: a refill that crossed a
                // user's opening line, or connections closing there as this one came. Not a
                // fault: the ticks dial again while the pool is short. (A refusal before the
                // handshake, such as a relay's `max-conns`, is an error as any other.)
                Signal::Err { code: 201, .. } => Ok(None),
                Signal::Err { code, .. } => Err(ProtoError::Refused(code).into()),
                _ => Err(Error::Proto(ProtoError::Unexpected("expected pooled"))),
            }
        }
        .or(async {
            pool.end.wait().await;
            Err(Error::Shutdown)
        })
        .await;
        pool.dialing.fetch_sub(1, Relaxed);
        match opened {
            Ok(Some(x)) => x,
            Ok(None) => {
                return log::debug!("client: pool connection refused: the server's pool is full")
            }
            Err(Error::Shutdown) => return,
            Err(e) => {
                if inner.warn.allow() {
                    log::warn!("client: pool connection failed: {e}");
                }
                return;
            }
        }
    };
    // Forward flow: this side takes pool connections for its own users.
    if let Some(q) = &pool.queue {
        if q.offer(server::PoolConn { id, conn }) {
            pool.offered.fetch_add(1, Relaxed);
            inner.stats.pool_idle.store(q.idle_len(), Relaxed);
        }
        return;
    }
    let idle = |n: usize| inner.stats.pool_idle.store(n, Relaxed);
    idle(pool.idle.fetch_add(1, Relaxed) + 1);
    watch(
        &inner,
        conn,
        lines,
        id,
        &pool.end,
        (pool.tcp, pool.udp),
        |ev| match ev {
            PoolEvent::Taken { reuse } => {
                idle(pool.idle.fetch_sub(1, Relaxed).saturating_sub(1));
                if reuse {
                    pool.busy.fetch_add(1, Relaxed);
                }
                pool.used.fetch_add(1, SeqCst);
                refill(&inner, &pool);
                pool.poke.poke();
            }
            PoolEvent::Back => {
                pool.busy.fetch_sub(1, Relaxed);
                idle(pool.idle.fetch_add(1, Relaxed) + 1);
            }
            PoolEvent::Lost => {
                // One fewer in the pool: the next tick dials its replacement.
                pool.busy.fetch_sub(1, SeqCst);
                pool.poke.poke();
            }
            PoolEvent::Closed => {
                // Gone without a user: the next tick dials its replacement. Not at once: a
                // server closing idle connections would make that a tight redial loop, while
                // the ticks slow down on their own.
                idle(pool.idle.fetch_sub(1, Relaxed).saturating_sub(1));
                pool.poke.poke();
            }
        },
    )
    .await;
}
