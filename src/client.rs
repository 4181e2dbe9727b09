//! The client role: keep a session with the server and a warm pool of data connections, and
//! forward each signalled connection to a local target. Reconnects forever with backoff.

use std::sync::atomic::{
    AtomicU8, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::Arc;
use std::time::Duration;

use smol::future::FutureExt;
use smol::io::AsyncWriteExt;
use smol::Timer;

use crate::arena::Arena;
use crate::auth::Secret;
use crate::chunk::{ChunkError, Dechunk};
use crate::config::Config;
use crate::control::{Control, End, Handler};
use crate::copy;
use crate::dialer::Dialer;
use crate::error::{Error, ProtoError, Result};
use crate::handshake;
use crate::lines::LineReader;
use crate::poke::{Poke, QUIET_SLEEP, QUIET_TICKS};
use crate::proxy;
use crate::rate::Limits;
use crate::server;
use crate::shutdown::Shutdown;
use crate::signal::{Kind, Signal, MAC_LEN, SID_LEN};
use crate::stats::{ActiveGuard, Stats};
use crate::stream::Conn;
use crate::targets::Targets;
use crate::timeout::bounded;
#[cfg(feature = "tls")]
use crate::tls::{self, ClientTls};
use crate::util::{backoff, RateLimit};

/// Pool tick adjustment step (NodePass's rule).
const INTERVAL_STEP: Duration = Duration::from_millis(100);

/// Ticks between two `trim`s: the previous one must have taken effect (the closed connections
/// counted out) before the surplus is measured again.
const TRIM_TICKS: u32 = 2;

/// Pool connections dialed at once, at most: half of what the server lets be mid-handshake
/// (`pending::MAX_PENDING`), so a refill after a burst is never cut short as a flood would be.
const MAX_DIALING: usize = crate::pending::MAX_PENDING / 2;

pub(crate) struct Inner {
    pub(crate) cfg: Config,
    key: Secret,
    pub(crate) stats: Arc<Stats>,
    pub(crate) arena: Arc<Arena>,
    /// Buffers for UDP flows (`None`: UDP off).
    pub(crate) udp_arena: Option<Arc<Arena>>,
    pub(crate) shutdown: Shutdown,
    /// The TLS mode to dial with: learned from the server, never below `tls_floor`.
    pub(crate) tls: AtomicU8,
    /// The mode the URL asks for (`tls=`, or 2 with `ca=`/`sni=`); 0 means learn it.
    pub(crate) tls_floor: u8,
    /// The TLS configurations (pinning for tls=1, webpki for tls=2).
    #[cfg(feature = "tls")]
    tls_cfg: ClientTls,
    /// Outgoing connections (`dial=`, `dns=`).
    pub(crate) dialer: Dialer,
    /// The targets, round robin with failover.
    pub(crate) targets: Targets,
    /// `rate=`: the process's token buckets.
    pub(crate) limits: Option<Limits>,
    pub(crate) warn: RateLimit,
    /// Round-robin position among the targets for UDP flows.
    #[cfg(feature = "udp")]
    pub(crate) next_udp: AtomicUsize,
    /// Forward flow: the user-facing taker, made at the first forward-flow session.
    pub(crate) ingress: smol::lock::Mutex<Option<Arc<server::Inner>>>,
    /// This process's device id for relay reservations (lets it take its own name over).
    #[cfg(feature = "relay")]
    pub(crate) device: [u8; crate::signal::NONCE_LEN],
}

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

/// A client, ready to run.
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Prepare a client; nothing is dialed until [`Client::run`]. UDP flows lease their
    /// buffers from `udp_arena` (`None`: UDP off). A bad `ca=` file or `sni=` is an
    /// [`Error::Config`].
    pub fn new(
        cfg: Config,
        stats: Arc<Stats>,
        bufs: (Arc<Arena>, Option<Arc<Arena>>),
        shutdown: Shutdown,
    ) -> Result<Client> {
        Ok(Client {
            inner: Arc::new(Inner::new(cfg, stats, bufs, shutdown)?),
        })
    }

    /// Keep a session up until shutdown.
    pub async fn run(self) -> Result<()> {
        let inner = self.inner;
        let server = &inner.cfg.tunnel;
        let mut attempt = 0u32;
        while !inner.shutdown.is_triggered() {
            let res = session(&inner)
                .or(async {
                    inner.shutdown.wait().await;
                    Ok(End::Shutdown)
                })
                .await;
            match res {
                Ok(End::Shutdown) => break,
                Ok(end) => {
                    log::warn!("client: session with {server} ended: {end}");
                    attempt = 0;
                }
                Err(e) => match inner.adopt_tls_hint(&e) {
                    Some(mode) => {
                        log::info!("client: server {server} uses tls={mode}; switching");
                        continue;
                    }
                    None => {
                        log::warn!("client: cannot open a session with {server}: {e}");
                        inner.forget_tls();
                    }
                },
            }
            let delay = backoff(inner.cfg.tuning.service_cooldown, attempt);
            attempt = attempt.saturating_add(1);
            log::info!("client: reconnecting in {:.1} s", delay.as_secs_f64());
            Timer::after(delay)
                .or(async {
                    inner.shutdown.wait().await;
                    std::time::Instant::now()
                })
                .await;
        }
        Ok(())
    }
}

impl Inner {
    /// The shared state of a client (also used by the visit role to dial a relay).
    pub(crate) fn new(
        cfg: Config,
        stats: Arc<Stats>,
        (arena, udp_arena): (Arc<Arena>, Option<Arc<Arena>>),
        shutdown: Shutdown,
    ) -> Result<Inner> {
        #[cfg(feature = "tls")]
        let (tls_floor, tls_cfg) = (tls::client::initial_mode(&cfg), ClientTls::new(&cfg)?);
        #[cfg(not(feature = "tls"))]
        let tls_floor = 0;
        Ok(Inner {
            key: Secret::new(&cfg.key_bytes()),
            stats,
            arena,
            udp_arena,
            shutdown,
            tls: AtomicU8::new(tls_floor),
            tls_floor,
            #[cfg(feature = "tls")]
            tls_cfg,
            dialer: Dialer::new(&cfg),
            targets: Targets::new(cfg.targets.clone()),
            limits: Limits::new(cfg.rate),
            cfg,
            warn: RateLimit::new(Duration::from_secs(5)),
            #[cfg(feature = "udp")]
            next_udp: AtomicUsize::new(0),
            ingress: smol::lock::Mutex::new(None),
            #[cfg(feature = "relay")]
            device: crate::auth::random(),
        })
    }

    /// `e` is a server's `tls <mode>` answer to a plaintext attempt: dial with `mode` from now
    /// on and return it. Only a plaintext attempt can be told to switch, and only up: the hint
    /// is not authenticated, the mode is (both proofs on the TLS connection cover it).
    pub(crate) fn adopt_tls_hint(&self, e: &Error) -> Option<u8> {
        match e {
            Error::Proto(ProtoError::NeedTls(mode))
                if self.tls.load(Relaxed) == 0 && *mode != 0 =>
            {
                self.tls.store(*mode, Relaxed);
                Some(*mode)
            }
            _ => None,
        }
    }

    /// An attempt failed: learn the TLS mode again next time (back to the URL's), as the
    /// server may have been reconfigured, and a forged `tls` hint must not stick.
    pub(crate) fn forget_tls(&self) {
        self.tls.store(self.tls_floor, Relaxed);
    }

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

/// Dial the server and bring up the transport for TLS `mode` (0 plain, 1 pinned, 2 verified).
/// Returns the connection, its TLS mode and the fingerprint of the certificate seen.
async fn dial_tunnel(
    inner: &Inner,
    mode: u8,
    kind: Kind,
) -> Result<(Conn, u8, Option<[u8; MAC_LEN]>)> {
    let tcp = inner.dialer.dial(&inner.cfg.tunnel).await?;
    if mode == 0 {
        return Ok((Conn::Plain(tcp), 0, None));
    }
    #[cfg(feature = "tls")]
    {
        // Control connections (one per session or reservation) go through futures-rustls;
        // the ones that carry users lease their record buffers only while bytes move.
        let pooled = matches!(kind, Kind::Pool | Kind::Connect);
        let (conn, fp) = inner.tls_cfg.connect(mode, tcp, pooled).await?;
        Ok((conn, mode, Some(fp)))
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = kind;
        Err(Error::Unsupported("TLS (the server uses tls=1 or tls=2)"))
    }
}

/// Dial and authenticate one connection of `kind` in TLS `mode`, bounded by
/// `HANDSHAKE_TIMEOUT` + `DIAL_TIMEOUT`.
pub(crate) async fn open(
    inner: &Inner,
    mode: u8,
    kind: Kind,
    sid: Option<[u8; SID_LEN]>,
) -> Result<(Conn, LineReader)> {
    let work = async {
        let (mut conn, tls, fp) = dial_tunnel(inner, mode, kind).await?;
        let mut lines = LineReader::new();
        handshake::connect(&mut conn, &mut lines, &inner.key, kind, sid, tls, fp).await?;
        Ok((conn, lines))
    };
    let limit = inner.cfg.tuning.handshake_timeout + inner.cfg.tuning.dial_timeout;
    bounded(limit, "handshake", work).await
}

async fn session(inner: &Arc<Inner>) -> Result<End> {
    // With `name=`, the tunnel address is a relay: reserve the name instead of `ctl`.
    #[cfg(feature = "relay")]
    if let Some(name) = &inner.cfg.name {
        return crate::relay::device::session(inner, name).await;
    }
    let mode = inner.tls.load(Relaxed);
    let (mut conn, mut lines) = open(inner, mode, Kind::Ctl, None).await?;
    let limit = inner.cfg.tuning.handshake_timeout;
    let reply = bounded(limit, "session reply", lines.next(&mut conn)).await?;
    let (sid, max, tcp, udp, forward) = match reply {
        Signal::Session {
            sid,
            max,
            tcp,
            udp,
            forward,
        } => (sid, max as usize, tcp, udp, forward),
        Signal::Err { code, .. } => return Err(ProtoError::Refused(code).into()),
        _ => return Err(ProtoError::Unexpected("expected session").into()),
    };
    if !forward {
        return Ok(run_pool(inner, conn, lines, sid, max, (tcp, udp), None, |m| m).await);
    }
    // Forward flow: users connect here and ride the pool; the server dials the targets.
    let ingress = ingress(inner).await?;
    let queue = server::Session::new(inner.cfg.max.min(max).max(1));
    ingress.set_session(Some(queue.clone()));
    let end = run_pool(
        inner,
        conn,
        lines,
        sid,
        max,
        (tcp, udp),
        Some(queue.clone()),
        |m| m,
    )
    .await;
    ingress.set_session(None);
    queue.close();
    Ok(end)
}

/// The listeners of forward flow, bound on the client's address at the first forward-flow
/// session and kept (with their accept loops) until shutdown.
async fn ingress(inner: &Arc<Inner>) -> Result<Arc<server::Inner>> {
    let mut slot = inner.ingress.lock().await;
    if let Some(i) = slot.as_ref() {
        return Ok(i.clone());
    }
    let at = inner
        .cfg
        .targets
        .first()
        .ok_or(Error::Proto(ProtoError::Unexpected("no listen address")))?;
    let users = crate::net::listen(at, &inner.cfg.tuning).await?;
    let ing = server::Inner::ingress(
        inner.cfg.clone(),
        inner.stats.clone(),
        inner.arena.clone(),
        inner.shutdown.clone(),
    );
    #[cfg(feature = "udp")]
    let users = match (&inner.udp_arena, inner.cfg.noudp) {
        (Some(arena), false) => {
            let (users, sock) = crate::udp::bind_beside(users, at, &inner.cfg.tuning).await?;
            let (ing, arena, stop) = (ing.clone(), arena.clone(), inner.shutdown.clone());
            crate::rt::spawn(async move {
                crate::udp::serve(ing, Arc::new(sock), arena)
                    .or(stop.wait())
                    .await
            })
            .detach();
            users
        }
        _ => users,
    };
    log::info!(
        "client: forward flow: users connect to {}, the server dials its targets",
        users.get_ref().local_addr()?
    );
    let (ing2, stop) = (ing.clone(), inner.shutdown.clone());
    crate::rt::spawn(async move { server::accept_users(ing2, users).or(stop.wait()).await })
        .detach();
    *slot = Some(ing.clone());
    Ok(ing)
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
                Signal::Pooled { id } => Ok((conn, lines, id)),
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
            Ok(x) => x,
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
        Ok((up, down)) => log::debug!("client: user {peer} done: {up} B up, {down} B down"),
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
