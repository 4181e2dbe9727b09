//! The relay role: devices reserve names, visitors reach them by name, the relay splices.
//!
//! One listener takes every connection (docs/PROTOCOL.md "Relay"). After the usual
//! handshake, the `hello` kind says what a connection is: `reserve` (a device's control
//! connection, which *is* the reservation), `pool` (an idle data connection of a reservation,
//! named by its sid), or `connect` (a visitor asking for a circuit).
//! Limits follow libp2p circuit relay v2; every refusal carries its status code.

mod circuit;
pub(crate) mod device;
pub mod limit;
pub mod stats;
pub mod table;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use smol::future::FutureExt;
use smol::{Async, Timer};

use crate::arena::Arena;
use crate::auth::Key;
use crate::config::{Config, LogLevel};
use crate::control::{Control, End, Handler};
use crate::error::{status_text, Error, ProtoError, Result};
use crate::handshake::{self, refuse};
use crate::lines::{send, LineReader};
use crate::net;
use crate::pending::{Pending, Ticket, EVICTED};
use crate::shutdown::Shutdown;
use crate::signal::{Kind, Signal, SID_LEN};
use crate::stats::Stats;
use crate::stream::Conn;
use crate::timeout::bounded;
use crate::util::{accept_next, RateLimit};
use stats::ConnGuard;
pub use stats::RelayStats;
use table::{Idle, Limits, Reservation, Table};

/// Shortest reservation TTL announced: `reserved` carries whole seconds.
const MIN_TTL: Duration = Duration::from_secs(1);

pub(crate) struct Inner {
    cfg: Config,
    device_key: Key,
    visit_key: Key,
    stats: Arc<Stats>,
    rstats: Arc<RelayStats>,
    arena: Arc<Arena>,
    shutdown: Shutdown,
    table: Mutex<Table>,
    /// Connections mid-handshake (evict-oldest past the cap, as on the server's tunnel port).
    pending: Pending,
    warn: RateLimit,
    /// The relay port's certificate (tls=1, tls=2): every leg to the relay is TLS then.
    #[cfg(feature = "tls")]
    tls: Option<Arc<crate::tls::ServerTls>>,
}

impl Inner {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ttl(&self) -> Duration {
        self.cfg.relay.ttl.max(MIN_TTL)
    }

    /// Count a refusal, tell the peer, and log it (rate limited).
    async fn refuse(&self, conn: &mut Conn, peer: SocketAddr, code: u16, text: &str) {
        self.rstats.refuse(code);
        refuse(conn, code, text).await;
        if self.warn.allow() {
            log::info!(
                "relay: {peer} refused: {} ({code}): {text}",
                status_text(code)
            );
        }
    }
}

/// A bound relay, ready to run.
pub struct Relay {
    inner: Arc<Inner>,
    listener: Async<TcpListener>,
}

impl Relay {
    /// Bind the relay port.
    pub async fn bind(
        cfg: Config,
        stats: Arc<Stats>,
        arena: Arc<Arena>,
        shutdown: Shutdown,
    ) -> Result<Relay> {
        // Certificates first: a bad file is a configuration error and nothing is bound.
        #[cfg(feature = "tls")]
        let tls = crate::tls::ServerTls::new(&cfg)?;
        let listener = net::listen(&cfg.tunnel, &cfg.tuning).await?;
        let device_key = Key::fresh(&cfg.key_bytes());
        let visit_key = match &cfg.relay.visit_key {
            Some(k) => Key::fresh(k.as_bytes()),
            None => device_key.clone(),
        };
        let pending = Pending::new(cfg.tuning.semaphore_limit);
        let inner = Arc::new(Inner {
            cfg,
            device_key,
            visit_key,
            stats,
            rstats: Arc::new(RelayStats::default()),
            arena,
            shutdown,
            table: Mutex::new(Table::default()),
            pending,
            warn: RateLimit::new(Duration::from_secs(1)),
            #[cfg(feature = "tls")]
            tls,
        });
        Ok(Relay { inner, listener })
    }

    /// The relay port's address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.get_ref().local_addr()?)
    }

    /// The relay's own counters.
    pub fn relay_stats(&self) -> Arc<RelayStats> {
        self.inner.rstats.clone()
    }

    /// Serve until shutdown, logging the figures every `stats` interval.
    pub async fn run(self) -> Result<()> {
        let Relay { inner, listener } = self;
        let lim = &inner.cfg.relay;
        log::info!(
            "relay: listening on {} (max-conns {}, max-reservations {}, {} per IP, {} circuits each, ttl {:?})",
            listener.get_ref().local_addr()?,
            lim.max_conns,
            lim.max_reservations,
            lim.max_per_ip,
            lim.max_circuits,
            inner.ttl(),
        );
        let a = crate::rt::spawn(accept(inner.clone(), listener));
        let r = crate::rt::spawn(report(inner.clone()));
        #[cfg(feature = "tls")]
        let w = inner.tls.clone().map(|tls| crate::rt::spawn(tls.watch()));
        inner.shutdown.wait().await;
        #[cfg(feature = "tls")]
        if let Some(w) = w {
            w.cancel().await;
        }
        a.cancel().await;
        r.cancel().await;
        let all = inner.table().all();
        for res in all {
            res.close();
        }
        Ok(())
    }
}

async fn report(inner: Arc<Inner>) {
    loop {
        Timer::after(inner.cfg.relay.stats).await;
        match inner.cfg.log {
            LogLevel::Event => {
                crate::console::out(format_args!("{}", inner.rstats.event(&inner.stats)))
            }
            LogLevel::Debug | LogLevel::Info => log::info!("{}", inner.rstats.line(&inner.stats)),
            _ => {}
        }
    }
}

async fn accept(inner: Arc<Inner>, l: Async<TcpListener>) {
    let mut errors = 0u32;
    loop {
        let (s, peer) = accept_next("relay", &l, &mut errors).await;
        let limit = inner.cfg.relay.max_conns;
        // At the limit, a handshake still pending makes room: silent connections must not
        // lock devices and visitors out. The count can pass the limit by the handshakes so
        // closed until their tasks end (at most `SEMAPHORE_LIMIT`).
        if inner.rstats.conns.load(Relaxed) >= limit && !inner.pending.evict_oldest() {
            inner.rstats.refuse(201);
            // One non-blocking write: the peer reads a status instead of a bare close.
            let _ = s.get_ref().write(b"err 201 max-conns reached\n");
            if inner.warn.allow() {
                log::warn!("relay: {peer} refused: all {limit} connections in use (201)");
            }
            continue;
        }
        let guard = ConnGuard::new(&inner.rstats);
        // Registered here, not in the task: a burst is accepted before any task runs.
        let ticket = inner.pending.enter();
        crate::rt::spawn(conn(inner.clone(), s, peer, guard, ticket)).detach();
    }
}

/// One connection on the relay port: handshake, then by kind. `ticket` is its entry in
/// `inner.pending` (see `accept`).
async fn conn(
    inner: Arc<Inner>,
    s: Async<TcpStream>,
    peer: SocketAddr,
    guard: ConnGuard,
    ticket: Ticket,
) {
    let mut lines = LineReader::new();
    let (dev, vis) = (&inner.device_key, &inner.visit_key);
    let pick = move |kind| match kind {
        Kind::Reserve | Kind::Pool => Some(dev),
        Kind::Connect => Some(vis),
        Kind::Ctl => None,
    };
    #[cfg(feature = "tls")]
    let handle = inner.tls.as_ref();
    #[cfg(not(feature = "tls"))]
    let handle: Option<&crate::server::TlsHandle> = None;
    let shake = async {
        let (mut conn, mode, fp) = crate::server::transport(handle, s, &mut lines).await?;
        let hello = handshake::accept_keyed(&mut conn, &mut lines, &pick, mode, fp).await?;
        Ok((conn, hello))
    };
    let shake = bounded(inner.cfg.tuning.handshake_timeout, "handshake", shake);
    let Some(res) = inner.pending.run(ticket, shake).await else {
        inner.stats.bad_peers.fetch_add(1, Relaxed);
        return log::debug!("relay: {peer} {EVICTED}");
    };
    let (conn, hello) = match res {
        Ok(x) => x,
        Err(e) => {
            inner.stats.bad_peers.fetch_add(1, Relaxed);
            match e {
                Error::Proto(ProtoError::BadProof) => inner.rstats.refuse(202),
                Error::Proto(ProtoError::Unexpected(_)) => inner.rstats.refuse(401),
                _ => {}
            }
            if inner.warn.allow() {
                log::warn!("relay: {peer} refused: {e}");
            }
            return;
        }
    };
    match hello.kind {
        Kind::Reserve => reserve_conn(&inner, conn, lines, peer).await,
        Kind::Pool => pool_conn(&inner, conn, hello.sid, peer, guard).await,
        Kind::Connect => circuit::visit(&inner, conn, lines, peer).await,
        Kind::Ctl => {}
    }
}

/// Read one line within `HANDSHAKE_TIMEOUT` and hand it to `f`.
async fn next_line<T>(
    inner: &Inner,
    conn: &mut Conn,
    lines: &mut LineReader,
    f: impl FnOnce(Signal<'_>) -> Option<T>,
) -> Result<Option<T>> {
    let line = async { Ok(f(lines.next(conn).await?)) };
    bounded(inner.cfg.tuning.handshake_timeout, "request line", line).await
}

/// Why a reservation's control connection ended.
enum Ended {
    Control(End),
    Expired,
}

/// A device's control connection: `reserve <name> <device>`, then the reservation lives as
/// long as this connection (heartbeats, `refresh`, `trim`, `flush`).
async fn reserve_conn(inner: &Arc<Inner>, mut conn: Conn, mut lines: LineReader, peer: SocketAddr) {
    let req = next_line(inner, &mut conn, &mut lines, |sig| match sig {
        Signal::Reserve { name, device } => Some((name.to_owned(), device)),
        _ => None,
    })
    .await;
    let (name, device) = match req {
        Ok(Some(x)) => x,
        Ok(None) => return inner.refuse(&mut conn, peer, 401, "expected reserve").await,
        Err(Error::Signal(_)) => {
            return inner
                .refuse(&mut conn, peer, 400, "malformed request line")
                .await
        }
        Err(e) => return log::debug!("relay: {peer}: no reserve line: {e}"),
    };
    let lim = &inner.cfg.relay;
    let limits = Limits {
        max_reservations: lim.max_reservations,
        max_per_ip: lim.max_per_ip,
        ttl: inner.ttl(),
        max_pool: inner.cfg.max.min(lim.max_circuits).max(1),
    };
    let granted = {
        let mut t = inner.table();
        let g = t.reserve(&name, device, peer.ip(), Instant::now(), &limits);
        inner.rstats.reservations.store(t.len(), Relaxed);
        g
    };
    let grant = match granted {
        Ok(g) => g,
        Err(r) => return inner.refuse(&mut conn, peer, r.code(), &r.text()).await,
    };
    let res = grant.res;
    if let Some(old) = grant.replaced {
        log::info!("relay: {name}: taken over by its device from {peer}");
        old.close();
    }
    let reply = Signal::Reserved {
        sid: res.sid,
        ttl: u32::try_from(limits.ttl.as_secs()).unwrap_or(u32::MAX),
        max: u32::try_from(res.max).unwrap_or(u32::MAX),
    };
    if let Err(e) = send(&mut conn, &reply).await {
        log::debug!("relay: {name}: {peer}: {e}");
    } else {
        log::info!("relay: {name} reserved by {peer}");
        let end = serve_reservation(inner, conn, lines, &res).await;
        log::info!("relay: {name} ({peer}) released: {end}");
    }
    {
        let mut t = inner.table();
        t.release(&res);
        inner.rstats.reservations.store(t.len(), Relaxed);
    }
    res.close();
}

/// Run the control loop until the device goes, the reservation lapses or is taken over.
async fn serve_reservation(
    inner: &Arc<Inner>,
    conn: Conn,
    lines: LineReader,
    res: &Arc<Reservation>,
) -> String {
    let ctl = Control::new(
        conn,
        lines,
        inner.cfg.tuning.report_interval,
        inner.stats.clone(),
    );
    let handler = Holder {
        res: res.clone(),
        ttl: inner.ttl(),
        tick: inner.cfg.tuning.report_interval,
    };
    let expiry = async {
        loop {
            Timer::at(res.expires()).await;
            if res.expired(Instant::now()) {
                return Ended::Expired;
            }
        }
    };
    let end = async { Ended::Control(ctl.run(handler).await) }
        .or(expiry)
        .or(async {
            res.end.wait().await;
            Ended::Control(End::Replaced)
        })
        .or(async {
            inner.shutdown.wait().await;
            Ended::Control(End::Shutdown)
        })
        .await;
    match end {
        Ended::Control(e) => e.to_string(),
        Ended::Expired => "expired (no refresh within the ttl)".into(),
    }
}

/// The relay's side of a reservation's control channel.
struct Holder {
    res: Arc<Reservation>,
    ttl: Duration,
    tick: Duration,
}

impl Handler for Holder {
    fn signal(&mut self, sig: Signal<'_>) -> std::result::Result<(), ProtoError> {
        match sig {
            Signal::Refresh => self.res.refresh(Instant::now(), self.ttl),
            Signal::Trim(n) => self.res.trim(n as usize),
            Signal::Flush => self.res.trim(usize::MAX),
            _ => return Err(ProtoError::Unexpected("signal not for the relay")),
        }
        Ok(())
    }

    fn tick(&mut self) -> (Option<Signal<'static>>, Duration) {
        (None, self.tick)
    }
}

/// A pool connection of a reservation: `pooled <id>`, then it waits in the reservation's
/// queue for a visitor.
async fn pool_conn(
    inner: &Arc<Inner>,
    mut conn: Conn,
    sid: Option<[u8; SID_LEN]>,
    peer: SocketAddr,
    guard: ConnGuard,
) {
    let found = sid.and_then(|sid| inner.table().by_sid(&sid));
    let Some(res) = found else {
        return inner
            .refuse(
                &mut conn,
                peer,
                204,
                "no reservation for this pool connection",
            )
            .await;
    };
    if res.idle_len() >= res.max {
        return inner.refuse(&mut conn, peer, 201, "pool full").await;
    }
    let id = res.next_id();
    if send(&mut conn, &Signal::Pooled { id }).await.is_err() {
        return;
    }
    if res.push_idle(Idle { id, conn, guard }).is_err() {
        log::debug!(
            "relay: {}: pool connection {id} from {peer} not queued",
            res.name
        );
    }
}
