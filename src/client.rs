//! The client role: keep a session with the server and a warm pool of data connections, and
//! forward each signalled connection to a local target. Reconnects forever with backoff.

#[cfg(feature = "udp")]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use smol::future::FutureExt;
use smol::Timer;

use crate::arena::Arena;
use crate::auth::Secret;
use crate::config::Config;
use crate::control::End;
use crate::dialer::Dialer;
use crate::error::{Error, ProtoError, Result};
use crate::handshake;
use crate::lines::LineReader;
use crate::rate::Limits;
use crate::server;
use crate::shutdown::Shutdown;
use crate::signal::{Kind, Signal, MAC_LEN, SID_LEN};
use crate::stats::Stats;
use crate::stream::Conn;
use crate::targets::Targets;
use crate::timeout::bounded;
#[cfg(feature = "tls")]
use crate::tls::{self, ClientTls};
use crate::util::{backoff, RateLimit};

mod carry;
mod pool;

pub(crate) use carry::{serve_tcp, watch, PoolEvent};
pub(crate) use pool::run_pool;
#[cfg(feature = "relay")]
pub(crate) use pool::PoolManager;

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
                        // A relay answers a tunnel session's `hello` with 401.
                        let hint = match e {
                            Error::Proto(ProtoError::Refused(401)) => {
                                " (is it a relay? a device reserves a name there with name=)"
                            }
                            _ => "",
                        };
                        log::warn!("client: cannot open a session with {server}: {e}{hint}");
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
