//! The client role: keep a session with the server and a warm pool of data connections, and
//! forward each signalled connection to a local target. Reconnects forever with backoff.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use smol::future::FutureExt;
use smol::io::AsyncWriteExt;
use smol::Timer;

use crate::arena::Arena;
use crate::auth::Key;
use crate::config::{Config, HostPort};
use crate::control::{Control, End, Handler};
use crate::copy;
use crate::error::{Error, ProtoError, Result};
use crate::handshake;
use crate::lines::LineReader;
use crate::net;
use crate::shutdown::Shutdown;
use crate::signal::{Kind, Signal, SID_LEN};
use crate::stats::{ActiveGuard, Stats};
use crate::stream::Conn;
use crate::util::{backoff, RateLimit};

/// Pool tick adjustment step (NodePass's rule).
const INTERVAL_STEP: Duration = Duration::from_millis(100);

pub(crate) struct Inner {
    cfg: Config,
    key: Key,
    stats: Arc<Stats>,
    arena: Arc<Arena>,
    shutdown: Shutdown,
    /// The TLS mode learned from the server (0 until told otherwise).
    tls: AtomicU8,
    /// Round-robin position among the targets.
    next_target: AtomicUsize,
    warn: RateLimit,
}

/// One session's pool bookkeeping, shared by the control loop and the pool connections.
struct Pool {
    sid: [u8; SID_LEN],
    end: Shutdown,
    idle: AtomicUsize,
    dialing: AtomicUsize,
    /// Pool connections taken by users since the last tick.
    used: AtomicUsize,
}

/// A client, ready to run.
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Prepare a client; nothing is dialed until [`Client::run`].
    pub fn new(cfg: Config, stats: Arc<Stats>, arena: Arc<Arena>, shutdown: Shutdown) -> Client {
        let key = Key::new(&cfg.key_bytes());
        let tls = AtomicU8::new(0);
        Client {
            inner: Arc::new(Inner {
                cfg,
                key,
                stats,
                arena,
                shutdown,
                tls,
                next_target: AtomicUsize::new(0),
                warn: RateLimit::new(Duration::from_secs(5)),
            }),
        }
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
                Err(Error::Proto(ProtoError::NeedTls(mode))) => {
                    log::info!("client: server {server} uses tls={mode}; switching");
                    inner.tls.store(mode, Relaxed);
                    continue;
                }
                Err(e) => log::warn!("client: cannot open a session with {server}: {e}"),
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

/// Dial the server and bring up the transport the server uses. Returns the connection, its
/// TLS mode and the certificate fingerprint seen.
async fn dial_tunnel(inner: &Inner) -> Result<(Conn, u8, Option<[u8; 32]>)> {
    let tcp = net::dial(&inner.cfg.tunnel, inner.cfg.tuning.dial_timeout).await?;
    let mode = inner.tls.load(Relaxed);
    if mode != 0 {
        return Err(Error::Tls(format!(
            "tls={mode} is not supported by this build"
        )));
    }
    Ok((Conn::Plain(tcp), 0, None))
}

/// Dial and authenticate one connection of `kind`, bounded by `HANDSHAKE_TIMEOUT`.
async fn open(inner: &Inner, kind: Kind, sid: Option<[u8; SID_LEN]>) -> Result<(Conn, LineReader)> {
    let work = async {
        let (mut conn, tls, fp) = dial_tunnel(inner).await?;
        let mut lines = LineReader::new();
        handshake::connect(&mut conn, &mut lines, &inner.key, kind, sid, tls, fp).await?;
        Ok((conn, lines))
    };
    work.or(async {
        Timer::after(inner.cfg.tuning.handshake_timeout + inner.cfg.tuning.dial_timeout).await;
        Err(Error::Timeout("handshake"))
    })
    .await
}

async fn session(inner: &Arc<Inner>) -> Result<End> {
    let (mut conn, mut lines) = open(inner, Kind::Ctl, None).await?;
    let reply = async { lines.next(&mut conn).await }
        .or(async {
            Timer::after(inner.cfg.tuning.handshake_timeout).await;
            Err(Error::Timeout("session reply"))
        })
        .await?;
    let (sid, max) = match reply {
        Signal::Session { sid, max, .. } => (sid, max as usize),
        Signal::Err { code, .. } => return Err(ProtoError::Refused(code).into()),
        _ => return Err(ProtoError::Unexpected("expected session").into()),
    };
    let max = inner.cfg.max.min(max).max(1);
    let min = inner.cfg.min.min(max);
    log::info!(
        "client: session up with {} (pool {min}..{max})",
        inner.cfg.tunnel
    );
    let pool = Arc::new(Pool {
        sid,
        end: Shutdown::new(),
        idle: AtomicUsize::new(0),
        dialing: AtomicUsize::new(0),
        used: AtomicUsize::new(0),
    });
    let mgr = PoolManager {
        inner: inner.clone(),
        pool: pool.clone(),
        min,
        max,
        capacity: min,
        interval: inner.cfg.tuning.min_pool_interval,
        trims: 0,
    };
    let end = Control::new(
        conn,
        lines,
        inner.cfg.tuning.report_interval,
        inner.stats.clone(),
    )
    .run(mgr)
    .await;
    pool.end.trigger();
    inner.stats.pool_idle.store(0, Relaxed);
    Ok(end)
}

/// Grows and shrinks the warm pool on the control loop's ticks.
struct PoolManager {
    inner: Arc<Inner>,
    pool: Arc<Pool>,
    min: usize,
    max: usize,
    capacity: usize,
    interval: Duration,
    /// Ticks until another `trim` may be sent (the previous one must take effect first).
    trims: u32,
}

impl Handler for PoolManager {
    fn signal(&mut self, _sig: Signal<'_>) -> std::result::Result<(), ProtoError> {
        Err(ProtoError::Unexpected("signal not for the client"))
    }

    fn tick(&mut self) -> (Option<Signal<'static>>, Duration) {
        let cfg = &self.inner.cfg.tuning;
        let idle = self.pool.idle.load(Relaxed);
        let used = self.pool.used.swap(0, Relaxed);
        let cap = self.capacity;
        // NodePass's rule: tick faster while the pool runs low, slower while it is full.
        if idle * 5 < cap {
            self.interval = self
                .interval
                .saturating_sub(INTERVAL_STEP)
                .max(cfg.min_pool_interval);
        } else if idle * 5 > cap * 4 {
            self.interval = (self.interval + INTERVAL_STEP).min(cfg.max_pool_interval);
        }
        // Grow when more than 80% of the pool was used this tick, shrink under 20%.
        if used * 5 > cap * 4 {
            self.capacity = (cap + 1).min(self.max);
        } else if used * 5 < cap {
            self.capacity = cap.saturating_sub(1).max(self.min);
        }
        let dialing = self.pool.dialing.load(Relaxed);
        let need = self.capacity.saturating_sub(idle + dialing);
        for _ in 0..need {
            self.pool.dialing.fetch_add(1, Relaxed);
            smol::spawn(pool_conn(self.inner.clone(), self.pool.clone())).detach();
        }
        self.inner.stats.pool_size.store(self.capacity, Relaxed);
        self.trims = self.trims.saturating_sub(1);
        let surplus = idle.saturating_sub(self.capacity);
        if surplus > 0 && self.trims == 0 {
            self.trims = 10;
            return (Some(Signal::Trim(surplus as u32)), self.interval);
        }
        (None, self.interval)
    }
}

/// One pool connection: dial, authenticate, wait idle for its opening line, then serve it.
async fn pool_conn(inner: Arc<Inner>, pool: Arc<Pool>) {
    let opened = async {
        let (mut conn, mut lines) = open(&inner, Kind::Pool, Some(pool.sid)).await?;
        match lines.next(&mut conn).await? {
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
    let (mut conn, mut lines, id) = match opened {
        Ok(x) => x,
        Err(Error::Shutdown) => return,
        Err(e) => {
            if inner.warn.allow() {
                log::warn!("client: pool connection failed: {e}");
            }
            return;
        }
    };
    inner
        .stats
        .pool_idle
        .store(pool.idle.fetch_add(1, Relaxed) + 1, Relaxed);
    let first = async { Some(lines.next(&mut conn).await) }
        .or(async {
            pool.end.wait().await;
            None
        })
        .await;
    inner
        .stats
        .pool_idle
        .store(pool.idle.fetch_sub(1, Relaxed) - 1, Relaxed);
    let peer = match first {
        None => return,
        Some(Ok(Signal::Tcp { id: got, peer })) if got == id => peer,
        Some(Ok(Signal::Udp { .. })) => {
            log::warn!("client: UDP flow refused: UDP is not supported by this build");
            return;
        }
        Some(Ok(other)) => {
            log::warn!("client: pool connection {id}: unexpected {other:?}, closed");
            return;
        }
        Some(Err(e)) => {
            log::debug!("client: idle pool connection {id} closed: {e}");
            return;
        }
    };
    pool.used.fetch_add(1, Relaxed);
    serve_tcp(&inner, conn, &lines, id, peer).await;
}

async fn serve_tcp(
    inner: &Inner,
    mut conn: Conn,
    lines: &LineReader,
    id: u32,
    peer: std::net::SocketAddr,
) {
    let _active = ActiveGuard::new(&inner.stats, false);
    let wait = inner.cfg.tuning.pool_get_timeout;
    let (Some(b1), Some(b2)) = (inner.arena.lease(wait).await, inner.arena.lease(wait).await)
    else {
        inner.stats.refused.fetch_add(1, Relaxed);
        log::warn!("client: user {peer} refused: no free buffer in {wait:?}");
        return;
    };
    let mut target = match dial_target(inner).await {
        Ok(t) => t,
        Err(e) => {
            inner.stats.refused.fetch_add(1, Relaxed);
            if inner.warn.allow() {
                log::warn!("client: user {peer}: no target reachable: {e}");
            }
            return;
        }
    };
    let early = lines.leftover();
    if !early.is_empty() {
        if let Err(e) = target.write_all(early).await {
            log::debug!("client: user {peer}: target write failed: {e}");
            return;
        }
        inner.stats.tcp_rx.add(early.len() as u64);
    }
    log::debug!("client: user {peer} on pool connection {id}");
    let st = &inner.stats;
    match copy::bidi(
        &mut conn,
        &mut target,
        (b1, b2),
        (&st.tcp_rx, &st.tcp_tx),
        inner.cfg.read,
    )
    .await
    {
        Ok((up, down)) => log::debug!("client: user {peer} done: {up} B up, {down} B down"),
        Err(e) => log::debug!("client: user {peer} ended: {e}"),
    }
}

/// Dial the targets round robin, skipping any that fail (failover).
async fn dial_target(inner: &Inner) -> Result<Conn> {
    let targets: &[HostPort] = &inner.cfg.targets;
    let start = inner.next_target.fetch_add(1, Relaxed);
    let mut last = Error::Timeout("no target");
    for i in 0..targets.len() {
        let t = &targets[(start + i) % targets.len()];
        match net::dial(t, inner.cfg.tuning.dial_timeout).await {
            Ok(s) => return Ok(Conn::Plain(s)),
            Err(e) => {
                log::debug!("client: target {t} failed: {e}");
                last = e;
            }
        }
    }
    Err(last)
}
