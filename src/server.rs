//! The server role: one client session on the tunnel port, users on the public port.
//!
//! In reverse flow (the default) the server is the pool *taker*: it queues the client's idle
//! pool connections and hands one to each user connection, with the `tcp` line written in
//! front of the user's bytes (docs/PROTOCOL.md).

#[cfg(feature = "udp")]
use std::net::UdpSocket;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smol::future::FutureExt;
use smol::Async;

use crate::arena::Arena;
use crate::auth::Key;
use crate::client;
use crate::config::Config;
use crate::control::{self, Control, Handler};
use crate::error::{Error, ProtoError, Result};
use crate::handshake::{self, refuse};
use crate::lines::{send, LineReader};
use crate::net;
use crate::pending::{Pending, Ticket, EVICTED};
use crate::rate::Limits;
use crate::shutdown::Shutdown;
use crate::signal::{Kind, Signal, MAC_LEN};
use crate::stats::Stats;
use crate::stream::Conn;
use crate::timeout::bounded;
#[cfg(feature = "tls")]
use crate::tls::ServerTls;
use crate::util::{accept_next, RateLimit};

mod session;
mod users;

pub use session::{PoolConn, Session};
pub(crate) use users::accept_users;
#[cfg(feature = "udp")]
pub(crate) use users::take_pool;

pub(crate) struct Inner {
    pub cfg: Config,
    /// `None` for the ingress of a forward-flow client, which authenticates nobody.
    pub key: Option<Key>,
    pub stats: Arc<Stats>,
    pub arena: Arc<Arena>,
    pub shutdown: Shutdown,
    session: Mutex<Option<Arc<Session>>>,
    /// Tunnel-port connections mid-handshake (evict-oldest past the cap).
    pending: Pending,
    refusals: RateLimit,
    /// Warnings about tunnel-port peers that fail the handshake (a flood would make one each;
    /// the rest go to debug, and every one is counted in `bad_peers`).
    bad_log: RateLimit,
    /// `rate=`: the process's token buckets.
    limits: Option<Limits>,
    /// Forward flow (`mode=2`): the server dials the targets for the client's users, with the
    /// client's own machinery (dialer, failover, PROXY header, UDP).
    egress: Option<Arc<client::Inner>>,
    /// The certificate and its configuration (tls=1, tls=2).
    #[cfg(feature = "tls")]
    tls: Option<Arc<ServerTls>>,
}

impl Inner {
    /// The user-facing half of a taker, for a client in forward flow: users arrive on the
    /// client and ride the pool connections it queues in the current session.
    pub(crate) fn ingress(
        cfg: Config,
        stats: Arc<Stats>,
        arena: Arc<Arena>,
        shutdown: Shutdown,
    ) -> Arc<Inner> {
        // No key: the ingress authenticates nobody.
        Inner::new(cfg, None, stats, arena, shutdown, None, None)
    }

    fn new(
        cfg: Config,
        key: Option<Key>,
        stats: Arc<Stats>,
        arena: Arc<Arena>,
        shutdown: Shutdown,
        egress: Option<Arc<client::Inner>>,
        tls: Option<TlsHandle>,
    ) -> Arc<Inner> {
        #[cfg(not(feature = "tls"))]
        let _ = tls;
        let pending = Pending::new(cfg.tuning.semaphore_limit);
        Arc::new(Inner {
            limits: Limits::new(cfg.rate),
            cfg,
            key,
            stats,
            arena,
            shutdown,
            session: Mutex::new(None),
            pending,
            refusals: RateLimit::new(Duration::from_secs(1)),
            bad_log: RateLimit::new(Duration::from_secs(1)),
            egress,
            #[cfg(feature = "tls")]
            tls,
        })
    }

    /// Make `sess` the session users are served from (`None`: no session now).
    pub(crate) fn set_session(&self, sess: Option<Arc<Session>>) {
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = sess;
    }

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
    /// The public listener; `None` in forward flow (the client accepts users).
    users: Option<Async<TcpListener>>,
    /// The UDP socket on the public address, and the arena its flows lease buffers from.
    #[cfg(feature = "udp")]
    udp: Option<(Arc<Async<UdpSocket>>, Arc<Arena>)>,
}

impl Server {
    /// Load the TLS certificate (tls=1, tls=2), then bind the tunnel and public listeners.
    /// A bad certificate or key file is an [`Error::Config`] and nothing is bound.
    pub async fn bind(
        cfg: Config,
        stats: Arc<Stats>,
        (arena, udp_arena): (Arc<Arena>, Option<Arc<Arena>>),
        shutdown: Shutdown,
    ) -> Result<Server> {
        #[cfg(feature = "tls")]
        let tls = ServerTls::new(&cfg)?;
        let t = &cfg.tuning;
        let tunnel = net::listen(&cfg.tunnel, t).await?;
        let target = cfg
            .targets
            .first()
            .ok_or(Error::Proto(ProtoError::Unexpected("no public address")))?;
        // NodePass's server modes: 1 reverse (users here), 2 forward (users on the client,
        // targets dialed here), 0 reverse if the address binds here and forward otherwise.
        let users = match cfg.mode {
            2 => None,
            1 => Some(net::listen(target, t).await?),
            _ => match net::listen(target, t).await {
                Ok(l) => Some(l),
                Err(e) => {
                    log::info!(
                        "mode=0: {e}: forward flow, the client accepts users and this server dials {target}"
                    );
                    None
                }
            },
        };
        let egress = match users {
            Some(_) => None,
            None => Some(Arc::new(client::Inner::new(
                cfg.clone(),
                stats.clone(),
                (arena.clone(), udp_arena.clone()),
                shutdown.clone(),
            )?)),
        };
        #[cfg(feature = "udp")]
        let (users, udp) = match (users, udp_arena) {
            (Some(users), Some(a)) => {
                let (users, sock) = crate::udp::bind_beside(users, target, t).await?;
                (Some(users), Some((Arc::new(sock), a)))
            }
            (users, _) => (users, None),
        };
        #[cfg(not(feature = "udp"))]
        drop(udp_arena);
        let key = Some(Key::fresh(&cfg.key_bytes()));
        #[cfg(not(feature = "tls"))]
        let tls = None;
        let inner = Inner::new(cfg, key, stats, arena, shutdown, egress, tls);
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

    /// The public (user) port's address; `None` in forward flow.
    pub fn public_addr(&self) -> Result<Option<SocketAddr>> {
        Ok(match &self.users {
            Some(u) => Some(u.get_ref().local_addr()?),
            None => None,
        })
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
        if users.is_some() && inner.cfg.proxy != 0 {
            log::warn!(
                "proxy={} is read by the side that dials the target, here the client: set it in the client's URL",
                inner.cfg.proxy
            );
        }
        match &users {
            Some(u) => log::info!(
                "server: tunnel on {}, users on {} ({proto})",
                tunnel.get_ref().local_addr()?,
                u.get_ref().local_addr()?
            ),
            None => log::info!(
                "server: tunnel on {}, forward flow: users connect to the client, this server dials {}",
                tunnel.get_ref().local_addr()?,
                inner.cfg.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")
            ),
        }
        let t = crate::rt::spawn(accept_tunnel(inner.clone(), tunnel));
        let u = users.map(|users| crate::rt::spawn(accept_users(inner.clone(), users)));
        #[cfg(feature = "udp")]
        let d = udp
            .map(|(sock, arena)| crate::rt::spawn(crate::udp::serve(inner.clone(), sock, arena)));
        #[cfg(feature = "tls")]
        let w = inner.tls.clone().map(|tls| crate::rt::spawn(tls.watch()));
        inner.shutdown.wait().await;
        t.cancel().await;
        if let Some(u) = u {
            u.cancel().await;
        }
        #[cfg(feature = "udp")]
        if let Some(d) = d {
            d.cancel().await;
        }
        #[cfg(feature = "tls")]
        if let Some(w) = w {
            w.cancel().await;
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
        let (s, peer) = accept_next("tunnel", &l, &mut errors).await;
        // Registered here, not in the task: a burst is accepted before any task runs.
        let ticket = inner.pending.enter();
        crate::rt::spawn(tunnel_conn(inner.clone(), s, peer, ticket)).detach();
    }
}

/// `ticket` is this connection's entry in `inner.pending` (see `accept_tunnel`).
async fn tunnel_conn(inner: Arc<Inner>, s: Async<TcpStream>, peer: SocketAddr, ticket: Ticket) {
    let mut lines = LineReader::new();
    let timeout = inner.cfg.tuning.handshake_timeout;
    let shake = async {
        #[cfg(feature = "tls")]
        let handle = inner.tls.as_ref();
        #[cfg(not(feature = "tls"))]
        let handle: Option<&TlsHandle> = None;
        let (mut conn, tls, fp) = transport(handle, s, &mut lines).await?;
        let hello = handshake::accept(&mut conn, &mut lines, inner.key.as_ref(), tls, fp).await?;
        Ok((conn, hello))
    };
    let shake = bounded(timeout, "handshake", shake);
    let res = inner
        .pending
        .run(ticket, shake)
        .await
        .unwrap_or(Err(Error::Proto(ProtoError::Unexpected(EVICTED))));
    let (mut conn, hello) = match res {
        Ok(x) => x,
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // Port probes and health checks connect and leave without a byte: not worth a warning.
            inner.stats.bad_peers.fetch_add(1, Relaxed);
            log::debug!("tunnel: {peer} closed before authenticating");
            return;
        }
        Err(Error::Proto(ProtoError::NeedTls(mode))) => {
            log::debug!("tunnel: {peer} spoke plaintext; told it to use tls={mode}");
            return;
        }
        Err(Error::Proto(ProtoError::Unexpected(EVICTED))) => {
            inner.stats.bad_peers.fetch_add(1, Relaxed);
            log::debug!("tunnel: {peer} {EVICTED}");
            return;
        }
        Err(e) => {
            inner.stats.bad_peers.fetch_add(1, Relaxed);
            if inner.bad_log.allow() {
                log::warn!("tunnel: {peer} refused: {e}");
            } else {
                log::debug!("tunnel: {peer} refused: {e}");
            }
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
            let max = inner.cfg.max;
            // Forward flow: counted before `pooled` is sent, so a burst cannot pass the check
            // all at once.
            let watched = match inner.egress {
                Some(_) => sess.watch_slot(max),
                None => None,
            };
            let full = match inner.egress {
                Some(_) => watched.is_none(),
                None => sess.idle_len() >= max,
            };
            if full {
                refuse(&mut conn, 201, "pool full").await;
                return;
            }
            let id = sess.next_id.fetch_add(1, Relaxed);
            if send(&mut conn, &Signal::Pooled { id }).await.is_err() {
                return;
            }
            if let Some(egress) = &inner.egress {
                // Forward flow: the client takes this connection for a user; wait for its
                // opening line here and dial the target. It counts against `max` only while
                // it waits, as an idle one does in reverse flow.
                let proto = (!inner.cfg.notcp, crate::udp_enabled(&inner.cfg));
                let mut watched = watched;
                let on = |ev| match ev {
                    client::PoolEvent::Back => {
                        watched.get_or_insert_with(|| sess.watch_again());
                    }
                    _ => drop(watched.take()),
                };
                client::watch(egress, conn, lines, id, &sess.end, proto, on).await;
            } else if sess.offer(PoolConn { id, conn }) {
                inner.stats.pool_idle.store(sess.idle_len(), Relaxed);
            }
        }
    }
}

/// The transport of a tunnel-port connection: plain TCP for tls=0. For tls=1 and tls=2, a TLS
/// accept when the first byte is a TLS record; otherwise the peer is a client that has not
/// learned our mode yet: its plaintext `hello` gets `tls <mode>` and the connection ends
/// (returned as [`ProtoError::NeedTls`]). Returns the connection, its mode and the fingerprint
/// of the certificate it was accepted with.
pub(crate) async fn transport(
    tls: Option<&TlsHandle>,
    s: Async<TcpStream>,
    lines: &mut LineReader,
) -> Result<(Conn, u8, Option<[u8; MAC_LEN]>)> {
    #[cfg(feature = "tls")]
    if let Some(tls) = tls {
        let mut first = [0u8; 1];
        if s.peek(&mut first).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        if first[0] == crate::handshake::TLS_HANDSHAKE_RECORD {
            let (conn, fp) = tls.accept(s).await?;
            return Ok((conn, tls.mode(), Some(fp)));
        }
        let mut conn = Conn::Plain(s);
        return match lines.next(&mut conn).await? {
            Signal::Hello { .. } => {
                send(&mut conn, &Signal::UseTls { mode: tls.mode() }).await?;
                Err(ProtoError::NeedTls(tls.mode()).into())
            }
            _ => Err(ProtoError::Unexpected("expected hello or a TLS ClientHello").into()),
        };
    }
    #[cfg(not(feature = "tls"))]
    let _ = (tls, lines);
    Ok((Conn::Plain(s), 0, None))
}

/// The server side of TLS on a listening port (`ServerTls`; nothing without the feature).
#[cfg(feature = "tls")]
pub(crate) type TlsHandle = Arc<ServerTls>;
/// The server side of TLS on a listening port (`ServerTls`; nothing without the feature).
#[cfg(not(feature = "tls"))]
pub(crate) type TlsHandle = ();

async fn control_conn(inner: Arc<Inner>, mut conn: Conn, lines: LineReader, peer: SocketAddr) {
    let sess = Session::new(inner.cfg.max);
    let sig = Signal::Session {
        sid: sess.sid,
        forward: inner.egress.is_some(),
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
    let cipher = conn.cipher().map(|c| format!(" ({c})")).unwrap_or_default();
    if let Some(old) = old {
        log::info!("tunnel: client {peer} authenticated{cipher}, replacing the previous session");
        old.close();
    } else {
        log::info!("tunnel: client {peer} authenticated{cipher}, session up");
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
    /// Close up to `n` idle pool connections, the newest first; never one in use.
    fn trim(&self, n: usize) {
        self.sess.trim(n);
        self.stats.pool_idle.store(self.sess.idle_len(), Relaxed);
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
        self.stats.pool_idle.store(self.sess.idle_len(), Relaxed);
        (None, self.tick)
    }
}
