//! The server role: one client session on the tunnel port, users on the public port.
//!
//! In reverse flow (the default) the server is the pool *taker*: it queues the client's idle
//! pool connections and hands one to each user connection, with the `tcp` line written in
//! front of the user's bytes (docs/PROTOCOL.md).

#[cfg(feature = "udp")]
use std::net::UdpSocket;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smol::channel::{bounded, Receiver, Sender};
use smol::future::FutureExt;
use smol::{Async, Timer};

use crate::arena::Arena;
use crate::auth::{self, Key};
use crate::config::Config;
use crate::control::{self, Control, Handler};
use crate::copy;
use crate::error::{Error, ProtoError, Result};
use crate::handshake::{self, refuse};
use crate::lines::{send, LineReader};
use crate::net;
use crate::rate::Limits;
use crate::shutdown::Shutdown;
use crate::signal::{Kind, Signal, SID_LEN};
use crate::stats::{ActiveGuard, Stats};
use crate::stream::Conn;
use crate::util::{accept_backoff, RateLimit};

/// Tunnel-port connections allowed to be mid-handshake at once; more are closed at accept.
pub const MAX_PENDING: usize = 256;

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
    idle_tx: Sender<PoolConn>,
    idle_rx: Receiver<PoolConn>,
    next_id: AtomicU32,
    /// Ends the session's tasks.
    pub end: Shutdown,
}

impl Session {
    fn new(max: usize) -> Arc<Session> {
        let (idle_tx, idle_rx) = bounded(max.max(1));
        Arc::new(Session {
            sid: auth::random::<SID_LEN>(),
            idle_tx,
            idle_rx,
            next_id: AtomicU32::new(1),
            end: Shutdown::new(),
        })
    }

    /// Close the session and every idle connection it holds.
    pub fn close(&self) {
        self.end.trigger();
        self.idle_tx.close();
        while self.idle_rx.try_recv().is_ok() {}
    }
}

pub(crate) struct Inner {
    pub cfg: Config,
    pub key: Key,
    pub stats: Arc<Stats>,
    pub arena: Arc<Arena>,
    pub shutdown: Shutdown,
    session: Mutex<Option<Arc<Session>>>,
    pending: AtomicUsize,
    refusals: RateLimit,
    /// `rate=`: the process's token buckets.
    limits: Option<Limits>,
}

impl Inner {
    fn current(&self) -> Option<Arc<Session>> {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A bound server, ready to run.
pub struct Server {
    inner: Arc<Inner>,
    tunnel: Async<TcpListener>,
    users: Async<TcpListener>,
    /// The UDP socket on the public address, and the arena its flows lease buffers from.
    #[cfg(feature = "udp")]
    udp: Option<(Arc<Async<UdpSocket>>, Arc<Arena>)>,
}

impl Server {
    /// Bind the tunnel and public listeners, and with `udp_arena` (UDP on) a UDP socket on
    /// the public address too.
    pub async fn bind(
        cfg: Config,
        stats: Arc<Stats>,
        (arena, udp_arena): (Arc<Arena>, Option<Arc<Arena>>),
        shutdown: Shutdown,
    ) -> Result<Server> {
        let t = cfg.tuning.dial_timeout;
        let tunnel = net::listen(&cfg.tunnel, t).await?;
        let target = cfg
            .targets
            .first()
            .ok_or(Error::Proto(ProtoError::Unexpected("no public address")))?;
        let users = net::listen(target, t).await?;
        #[cfg(feature = "udp")]
        let (users, udp) = match udp_arena {
            Some(a) => {
                let (users, sock) = crate::udp::bind_beside(users, target, t).await?;
                (users, Some((Arc::new(sock), a)))
            }
            None => (users, None),
        };
        #[cfg(not(feature = "udp"))]
        drop(udp_arena);
        let key = Key::new(&cfg.key_bytes());
        let inner = Arc::new(Inner {
            limits: Limits::new(cfg.rate),
            cfg,
            key,
            stats,
            arena,
            shutdown,
            session: Mutex::new(None),
            pending: AtomicUsize::new(0),
            refusals: RateLimit::new(Duration::from_secs(1)),
        });
        Ok(Server {
            inner,
            tunnel,
            users,
            #[cfg(feature = "udp")]
            udp,
        })
    }

    /// The tunnel port's address.
    pub fn tunnel_addr(&self) -> Result<SocketAddr> {
        Ok(self.tunnel.get_ref().local_addr()?)
    }

    /// The public (user) port's address.
    pub fn public_addr(&self) -> Result<SocketAddr> {
        Ok(self.users.get_ref().local_addr()?)
    }

    /// Serve until shutdown.
    pub async fn run(self) -> Result<()> {
        let Server {
            inner,
            tunnel,
            users,
            #[cfg(feature = "udp")]
            udp,
        } = self;
        let proto = match (inner.cfg.notcp, crate::udp_enabled(&inner.cfg)) {
            (false, true) => "TCP and UDP",
            (false, false) => "TCP",
            (true, true) => "UDP",
            (true, false) => "nothing (notcp=1, and UDP off)",
        };
        log::info!(
            "server: tunnel on {}, users on {} ({proto})",
            tunnel.get_ref().local_addr()?,
            users.get_ref().local_addr()?
        );
        let t = crate::rt::spawn(accept_tunnel(inner.clone(), tunnel));
        let u = crate::rt::spawn(accept_users(inner.clone(), users));
        #[cfg(feature = "udp")]
        let d = udp
            .map(|(sock, arena)| crate::rt::spawn(crate::udp::serve(inner.clone(), sock, arena)));
        inner.shutdown.wait().await;
        t.cancel().await;
        u.cancel().await;
        #[cfg(feature = "udp")]
        if let Some(d) = d {
            d.cancel().await;
        }
        if let Some(s) = inner.current() {
            s.close();
        }
        Ok(())
    }
}

async fn accept_tunnel(inner: Arc<Inner>, l: Async<TcpListener>) {
    let mut errors = 0u32;
    loop {
        let (s, peer) = match l.accept().await {
            Ok(x) => {
                errors = 0;
                x
            }
            Err(e) => {
                accept_backoff("tunnel", &e, &mut errors).await;
                continue;
            }
        };
        if inner.pending.load(Relaxed) >= MAX_PENDING {
            inner.stats.bad_peers.fetch_add(1, Relaxed);
            log::debug!("tunnel: {peer} dropped, {MAX_PENDING} handshakes already pending");
            continue;
        }
        let _ = s.get_ref().set_nodelay(true);
        crate::rt::spawn(tunnel_conn(inner.clone(), s, peer)).detach();
    }
}

/// Counts one pending handshake while alive.
struct Pending<'a>(&'a AtomicUsize);
impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

async fn tunnel_conn(inner: Arc<Inner>, s: Async<TcpStream>, peer: SocketAddr) {
    inner.pending.fetch_add(1, Relaxed);
    let pending = Pending(&inner.pending);
    let mut lines = LineReader::new();
    let timeout = inner.cfg.tuning.handshake_timeout;
    let shake = async {
        let mut conn = Conn::Plain(s);
        let hello = handshake::accept(&mut conn, &mut lines, &inner.key, 0, None).await?;
        Ok((conn, hello))
    };
    let res = shake
        .or(async {
            Timer::after(timeout).await;
            Err(Error::Timeout("handshake"))
        })
        .await;
    drop(pending);
    let (mut conn, hello) = match res {
        Ok(x) => x,
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // Port probes and health checks connect and leave without a byte: not worth a warning.
            inner.stats.bad_peers.fetch_add(1, Relaxed);
            log::debug!("tunnel: {peer} closed before authenticating");
            return;
        }
        Err(e) => {
            inner.stats.bad_peers.fetch_add(1, Relaxed);
            log::warn!("tunnel: {peer} refused: {e}");
            return;
        }
    };
    match hello.kind {
        Kind::Ctl => control_conn(inner, conn, lines, peer).await,
        // Relay kinds are refused by handshake::accept.
        Kind::Reserve | Kind::Connect => {}
        Kind::Pool => {
            let Some(sess) = inner.current().filter(|s| Some(s.sid) == hello.sid) else {
                refuse(&mut conn, 204, "no such session").await;
                log::debug!("tunnel: pool connection from {peer} for an old session refused");
                return;
            };
            if sess.idle_tx.len() >= inner.cfg.max {
                refuse(&mut conn, 201, "pool full").await;
                return;
            }
            let id = sess.next_id.fetch_add(1, Relaxed);
            if send(&mut conn, &Signal::Pooled { id }).await.is_err() {
                return;
            }
            if sess.idle_tx.try_send(PoolConn { id, conn }).is_ok() {
                inner.stats.pool_idle.store(sess.idle_tx.len(), Relaxed);
            }
        }
    }
}

async fn control_conn(inner: Arc<Inner>, mut conn: Conn, lines: LineReader, peer: SocketAddr) {
    let sess = Session::new(inner.cfg.max);
    let sig = Signal::Session {
        sid: sess.sid,
        forward: false,
        max: inner.cfg.max as u32,
        tcp: !inner.cfg.notcp,
        udp: crate::udp_enabled(&inner.cfg),
    };
    if let Err(e) = send(&mut conn, &sig).await {
        log::warn!("tunnel: {peer}: {e}");
        return;
    }
    let old = inner
        .session
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(sess.clone());
    if let Some(old) = old {
        log::info!("tunnel: client {peer} authenticated, replacing the previous session");
        old.close();
    } else {
        log::info!("tunnel: client {peer} authenticated, session up");
    }
    inner.stats.pool_size.store(inner.cfg.max, Relaxed);
    let ctl = Control::new(
        conn,
        lines,
        inner.cfg.tuning.report_interval,
        inner.stats.clone(),
    );
    let handler = Taker {
        sess: sess.clone(),
        stats: inner.stats.clone(),
        tick: inner.cfg.tuning.report_interval,
    };
    let end = ctl
        .run(handler)
        .or(async {
            sess.end.wait().await;
            control::End::Replaced
        })
        .or(async {
            inner.shutdown.wait().await;
            control::End::Shutdown
        })
        .await;
    log::info!("tunnel: session with {peer} ended: {end}");
    let mut cur = inner.session.lock().unwrap_or_else(|e| e.into_inner());
    if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, &sess)) {
        *cur = None;
    }
    drop(cur);
    sess.close();
    inner.stats.pool_idle.store(0, Relaxed);
}

/// The server's side of the control channel: it executes the client's `trim` and `flush`.
struct Taker {
    sess: Arc<Session>,
    stats: Arc<Stats>,
    tick: Duration,
}

impl Taker {
    /// Close up to `n` idle pool connections, oldest first; never one in use.
    fn trim(&self, n: usize) {
        for _ in 0..n {
            if self.sess.idle_rx.try_recv().is_err() {
                break;
            }
        }
        self.stats.pool_idle.store(self.sess.idle_tx.len(), Relaxed);
    }
}

impl Handler for Taker {
    fn signal(&mut self, sig: Signal<'_>) -> std::result::Result<(), ProtoError> {
        match sig {
            Signal::Trim(n) => self.trim(n as usize),
            Signal::Flush => self.trim(usize::MAX),
            _ => return Err(ProtoError::Unexpected("signal not for the server")),
        }
        Ok(())
    }

    fn tick(&mut self) -> (Option<Signal<'static>>, Duration) {
        self.stats.pool_idle.store(self.sess.idle_tx.len(), Relaxed);
        (None, self.tick)
    }
}

async fn accept_users(inner: Arc<Inner>, l: Async<TcpListener>) {
    let mut errors = 0u32;
    loop {
        let (s, peer) = match l.accept().await {
            Ok(x) => {
                errors = 0;
                x
            }
            Err(e) => {
                accept_backoff("public", &e, &mut errors).await;
                continue;
            }
        };
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
        let _ = s.get_ref().set_nodelay(true);
        crate::rt::spawn(user_conn(inner.clone(), s, peer)).detach();
    }
}

/// Take a live idle pool connection, waiting up to `POOL_GET_TIMEOUT` (also for a session).
pub(crate) async fn take_pool(inner: &Inner) -> Option<PoolConn> {
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
        let got = async { sess.idle_rx.recv().await.ok() }
            .or(async {
                Timer::at(deadline).await;
                None
            })
            .await;
        inner.stats.pool_idle.store(sess.idle_tx.len(), Relaxed);
        match got {
            Some(pc) if pc.conn.idle_ok() => return Some(pc),
            Some(pc) => log::debug!("pool connection {} was closed while idle", pc.id),
            None if Instant::now() >= deadline => return None,
            None => {}
        }
    }
}

async fn user_conn(inner: Arc<Inner>, s: Async<TcpStream>, peer: SocketAddr) {
    let _active = ActiveGuard::new(&inner.stats, false);
    let wait = inner.cfg.tuning.pool_get_timeout;
    // No pool connection comes after a stop: give up at once rather than hold the drain.
    let stopping = async {
        inner.shutdown.wait().await;
        None
    };
    let Some(mut pc) = take_pool(&inner).or(stopping).await else {
        inner.stats.refused.fetch_add(1, Relaxed);
        if inner.refusals.allow() {
            log::warn!("user {peer} refused: no pool connection from the client in {wait:?}");
        }
        return;
    };
    if let Err(e) = send(&mut pc.conn, &Signal::Tcp { id: pc.id, peer }).await {
        log::debug!("user {peer}: pool connection {} failed: {e}", pc.id);
        return;
    }
    log::debug!("user {peer} on pool connection {}", pc.id);
    let mut user = Conn::Plain(s);
    let st = &inner.stats;
    match copy::conns(
        &mut user,
        &mut pc.conn,
        &inner.arena,
        (&st.tcp_rx, &st.tcp_tx),
        inner.cfg.read,
        inner.limits.as_ref(),
        inner.cfg.tuning.splice,
    )
    .await
    {
        Ok((up, down)) => log::debug!("user {peer} done: {up} B up, {down} B down"),
        Err(e) => log::debug!("user {peer} ended: {e}"),
    }
}
