//! The visit role: a local listener whose every connection becomes a circuit through a relay
//! to a named reservation (`visit://key@relay:4001/127.0.0.1:2222?name=cam-7`).
//!
//! Each accepted connection dials the relay, authenticates as a visitor (`hello connect`),
//! sends `connect <name> tcp` and, on `circuit`, copies both ways. A refusal closes the local
//! connection at once and is logged in words.
//!
//! With UDP on (the `udp` feature, no `noudp=1`), the local address is bound for UDP too. Each
//! source address is a flow, kept in the same flow table as the server's
//! (`udp::flows`); a new flow opens its own circuit with `connect <name> udp`, whose
//! opening the device answers as a `udp` line in the plain tunnel, and carries framed
//! datagrams both ways until `UDP_READ_TIMEOUT` of silence closes it.

#[cfg(feature = "udp")]
use std::net::UdpSocket;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use smol::future::FutureExt;
use smol::io::AsyncWriteExt;
use smol::Async;

use crate::arena::Arena;
use crate::client::{self, Inner};
use crate::config::Config;
use crate::copy;
use crate::error::{Error, ProtoError, Result};
use crate::lines::{send, LineReader};
use crate::net;
use crate::shutdown::Shutdown;
use crate::signal::{Kind, Signal};
use crate::stats::{ActiveGuard, Stats};
use crate::stream::Conn;
use crate::timeout::bounded;
use crate::util::{accept_next, RateLimit};

/// A bound visitor, ready to run.
pub struct Visit {
    inner: Arc<Inner>,
    name: String,
    listener: Async<TcpListener>,
    /// The UDP socket beside the listener (UDP on).
    #[cfg(feature = "udp")]
    udp: Option<Arc<Async<UdpSocket>>>,
    warn: Arc<RateLimit>,
}

impl Visit {
    /// Bind the local listener, and with `udp_arena` (UDP on) a UDP socket on its address.
    pub async fn bind(
        cfg: Config,
        stats: Arc<Stats>,
        (arena, udp_arena): (Arc<Arena>, Option<Arc<Arena>>),
        shutdown: Shutdown,
    ) -> Result<Visit> {
        let local = cfg
            .targets
            .first()
            .ok_or(Error::Proto(ProtoError::Unexpected("no local address")))?;
        let listener = net::listen(local, &cfg.tuning).await?;
        #[cfg(feature = "udp")]
        let (listener, udp) = match &udp_arena {
            Some(_) => {
                let t = &cfg.tuning;
                let (l, sock) = crate::udp::bind_beside(listener, local, t).await?;
                (l, Some(Arc::new(sock)))
            }
            None => (listener, None),
        };
        let name = cfg
            .name
            .clone()
            .ok_or(Error::Proto(ProtoError::Unexpected("visit needs name=")))?;
        Ok(Visit {
            inner: Arc::new(Inner::new(cfg, stats, (arena, udp_arena), shutdown)?),
            name,
            listener,
            #[cfg(feature = "udp")]
            udp,
            warn: Arc::new(RateLimit::new(Duration::from_secs(1))),
        })
    }

    /// The local listener's address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.get_ref().local_addr()?)
    }

    /// Serve until shutdown.
    pub async fn run(self) -> Result<()> {
        let Visit {
            inner,
            name,
            listener,
            #[cfg(feature = "udp")]
            udp,
            warn,
        } = self;
        #[cfg(feature = "udp")]
        let proto = if udp.is_some() { "TCP and UDP" } else { "TCP" };
        #[cfg(not(feature = "udp"))]
        let proto = "TCP";
        log::info!(
            "visit: {} ({proto}) reaches {name} through relay {}",
            listener.get_ref().local_addr()?,
            inner.cfg.tunnel
        );
        let name: Arc<str> = name.into();
        #[cfg(feature = "udp")]
        let flows = match (udp, &inner.udp_arena) {
            (Some(sock), Some(arena)) => Some(crate::rt::spawn(udp::serve(
                inner.clone(),
                name.clone(),
                sock,
                arena.clone(),
            ))),
            _ => None,
        };
        let mut errors = 0u32;
        let accept = async {
            loop {
                let (s, peer) = accept_next("visit", &listener, &mut errors).await;
                if inner.stats.active() >= inner.cfg.slot {
                    inner.stats.refused.fetch_add(1, Relaxed);
                    if warn.allow() {
                        log::warn!("visit: {peer} refused: all {} slots in use", inner.cfg.slot);
                    }
                    continue;
                }
                let task = local_conn(inner.clone(), name.clone(), warn.clone(), s, peer);
                crate::rt::spawn(task).detach();
            }
        };
        accept.or(inner.shutdown.wait()).await;
        #[cfg(feature = "udp")]
        if let Some(t) = flows {
            t.cancel().await;
        }
        Ok(())
    }
}

/// Dial the relay and authenticate as a visitor, switching to the relay's TLS mode if told
/// (as the client does); a failure makes the next connection learn the mode again.
async fn dial_relay(inner: &Inner) -> Result<(Conn, LineReader)> {
    let mut res = client::open(inner, inner.tls.load(Relaxed), Kind::Connect, None).await;
    if let Some(mode) = res.as_ref().err().and_then(|e| inner.adopt_tls_hint(e)) {
        log::info!(
            "visit: relay {} uses tls={mode}; switching",
            inner.cfg.tunnel
        );
        res = client::open(inner, mode, Kind::Connect, None).await;
    }
    if res.is_err() {
        inner.forget_tls();
    }
    res
}

/// Dial the relay and ask for a TCP circuit to `name`; returns the relay connection and the
/// line reader (bytes from the device may already follow `circuit`).
async fn open_circuit(inner: &Inner, name: &str) -> Result<(Conn, LineReader)> {
    let (mut conn, mut lines) = dial_relay(inner).await?;
    send(&mut conn, &Signal::Connect { name, udp: false }).await?;
    await_circuit(inner, &mut conn, &mut lines, name).await?;
    Ok((conn, lines))
}

/// Wait for the relay's answer to `connect`: `Ok` on `circuit`, else the refusal's code.
async fn await_circuit(
    inner: &Inner,
    conn: &mut Conn,
    lines: &mut LineReader,
    name: &str,
) -> Result<()> {
    let reply = async {
        match lines.next(conn).await? {
            Signal::Circuit { .. } => Ok(()),
            Signal::Err { code, text } => {
                // The callers log the refusal in words; the relay's own go to debug.
                log::debug!("visit: the relay's words for its {code} about {name}: {text}");
                Err(ProtoError::Refused(code).into())
            }
            _ => Err(ProtoError::Unexpected("expected circuit").into()),
        }
    };
    // The relay may wait POOL_GET_TIMEOUT for the device's pool before it answers.
    let limit = inner.cfg.tuning.handshake_timeout + inner.cfg.tuning.pool_get_timeout;
    bounded(limit, "circuit reply", reply).await
}

async fn local_conn(
    inner: Arc<Inner>,
    name: Arc<str>,
    warn: Arc<RateLimit>,
    s: Async<TcpStream>,
    peer: SocketAddr,
) {
    let _active = ActiveGuard::new(&inner.stats, false);
    let mut local = Conn::Plain(s);
    let (mut relay, lines) = match open_circuit(&inner, &name).await {
        Ok(x) => x,
        Err(e) => {
            inner.stats.refused.fetch_add(1, Relaxed);
            if warn.allow() {
                log::warn!("visit: {peer}: no circuit to {name}: {e}");
            }
            // Dropping `local` closes it at once: the user sees the refusal immediately.
            return;
        }
    };
    let early = lines.leftover();
    if !early.is_empty() {
        if local.write_all(early).await.is_err() {
            return;
        }
        inner.stats.tcp_tx.add(early.len() as u64);
    }
    log::debug!("visit: {peer} -> {name} circuit open");
    let o = copy::Opts::tcp(&inner.arena, &inner.stats, inner.cfg.read, None);
    match copy::conns(&mut local, &mut relay, o, inner.cfg.tuning.splice).await {
        Ok((up, down)) => log::debug!("visit: {peer} done: {up} B up, {down} B down"),
        Err(e) => log::debug!("visit: {peer} ended: {e}"),
    }
}

/// The visitor's UDP side: the shared flow table, each flow on its own circuit.
#[cfg(feature = "udp")]
mod udp {
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use smol::io::AsyncWriteExt;
    use smol::Async;

    use super::{await_circuit, dial_relay};
    use crate::arena::Arena;
    use crate::client::Inner;
    use crate::error::{Error, ProtoError, Result};
    use crate::signal::{Line, Signal};
    use crate::udp::flows::{self, opening, Flows, Opened, Opener};
    use crate::udp::Queue;
    use crate::util::Hold;

    /// First pause of new flows after a circuit failed (doubling while they keep failing).
    const HOLD: Duration = Duration::from_secs(1);

    /// A visitor's flows open a circuit each: `connect <name> udp`, the frames queued
    /// meanwhile in the same write, then `circuit`.
    struct CircuitOpener {
        inner: Arc<Inner>,
        name: Arc<str>,
        /// After a failed circuit, new flows wait before they dial: any local sender makes a
        /// flow per source port, and without it each datagram would cost the relay a
        /// handshake while the name is refused or the relay is down.
        hold: Hold,
    }

    impl CircuitOpener {
        async fn circuit(&self, src: SocketAddr, queue: &Mutex<Queue>) -> Result<Opened> {
            let (inner, name) = (&*self.inner, &*self.name);
            let (mut conn, mut lines) = dial_relay(inner).await?;
            let line = Signal::Connect { name, udp: true }.encode();
            conn.write_all(&opening(&line, queue)).await?;
            conn.flush().await?;
            await_circuit(inner, &mut conn, &mut lines, name).await?;
            let mut early = Line::new();
            early
                .extend_from_slice(lines.leftover())
                .map_err(|_| ProtoError::Unexpected("more than a line after circuit"))?;
            log::debug!("visit: UDP flow {src} -> {name} circuit open");
            Ok(Opened { conn, early })
        }
    }

    impl Opener for CircuitOpener {
        async fn open(&self, src: SocketAddr, queue: &Mutex<Queue>) -> Result<Opened> {
            if let Some(left) = self.hold.left() {
                return Err(Error::HeldBack(left));
            }
            let opened = self.circuit(src, queue).await;
            match &opened {
                Ok(_) => self.hold.succeeded(),
                Err(Error::Shutdown) => {}
                Err(_) => self.hold.failed(),
            }
            opened
        }
    }

    /// The receive loop of the visitor's UDP socket: runs until cancelled.
    pub(super) async fn serve(
        inner: Arc<Inner>,
        name: Arc<str>,
        sock: Arc<Async<UdpSocket>>,
        arena: Arc<Arena>,
    ) {
        let (stats, shutdown) = (inner.stats.clone(), inner.shutdown.clone());
        let cfg = &inner.cfg;
        let opener = CircuitOpener {
            inner: inner.clone(),
            name,
            hold: Hold::new(HOLD),
        };
        let table = Flows::new(opener, cfg, stats, shutdown);
        flows::serve(Arc::new(table), sock, arena).await;
    }
}
