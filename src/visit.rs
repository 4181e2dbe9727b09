//! The visit role: a local listener whose every connection becomes a circuit through a relay
//! to a named reservation (`visit://key@relay:4001/127.0.0.1:2222?name=cam-7`).
//!
//! Each accepted connection dials the relay, authenticates as a visitor (`hello connect`),
//! sends `connect <name>` and, on `circuit`, copies both ways. A refusal closes the local
//! connection at once and is logged in words.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use smol::future::FutureExt;
use smol::io::AsyncWriteExt;
use smol::{Async, Timer};

use crate::arena::Arena;
use crate::client::{self, Inner};
use crate::config::Config;
use crate::copy;
use crate::error::{status_text, Error, ProtoError, Result};
use crate::lines::{send, LineReader};
use crate::net;
use crate::shutdown::Shutdown;
use crate::signal::{Kind, Signal};
use crate::stats::{ActiveGuard, Stats};
use crate::stream::Conn;
use crate::util::{accept_backoff, RateLimit};

/// A bound visitor, ready to run.
pub struct Visit {
    inner: Arc<Inner>,
    name: String,
    listener: Async<TcpListener>,
    warn: Arc<RateLimit>,
}

impl Visit {
    /// Bind the local listener.
    pub async fn bind(
        cfg: Config,
        stats: Arc<Stats>,
        arena: Arc<Arena>,
        shutdown: Shutdown,
    ) -> Result<Visit> {
        let local = cfg
            .targets
            .first()
            .ok_or(Error::Proto(ProtoError::Unexpected("no local address")))?;
        let listener = net::listen(local, cfg.tuning.dial_timeout).await?;
        let name = cfg
            .name
            .clone()
            .ok_or(Error::Proto(ProtoError::Unexpected("visit needs name=")))?;
        Ok(Visit {
            inner: Arc::new(Inner::new(cfg, stats, (arena, None), shutdown)),
            name,
            listener,
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
            warn,
        } = self;
        log::info!(
            "visit: {} reaches {name} through relay {}",
            listener.get_ref().local_addr()?,
            inner.cfg.tunnel
        );
        let name: Arc<str> = name.into();
        let mut errors = 0u32;
        let accept = async {
            loop {
                let (s, peer) = match listener.accept().await {
                    Ok(x) => {
                        errors = 0;
                        x
                    }
                    Err(e) => {
                        accept_backoff("visit", &e, &mut errors).await;
                        continue;
                    }
                };
                if inner.stats.active() >= inner.cfg.slot {
                    inner.stats.refused.fetch_add(1, Relaxed);
                    if warn.allow() {
                        log::warn!("visit: {peer} refused: all {} slots in use", inner.cfg.slot);
                    }
                    continue;
                }
                let _ = s.get_ref().set_nodelay(true);
                let task = local_conn(inner.clone(), name.clone(), warn.clone(), s, peer);
                crate::rt::spawn(task).detach();
            }
        };
        accept.or(inner.shutdown.wait()).await;
        Ok(())
    }
}

/// Dial the relay and ask for a circuit to `name`; returns the relay connection and the line
/// reader (bytes from the device may already follow `circuit`).
async fn open_circuit(inner: &Inner, name: &str) -> Result<(Conn, LineReader)> {
    let (mut conn, mut lines) = match client::open(inner, Kind::Connect, None).await {
        Err(Error::Proto(ProtoError::NeedTls(mode))) => {
            log::info!(
                "visit: relay {} uses tls={mode}; switching",
                inner.cfg.tunnel
            );
            inner.tls.store(mode, Relaxed);
            client::open(inner, Kind::Connect, None).await?
        }
        r => r?,
    };
    send(&mut conn, &Signal::Connect { name }).await?;
    let reply = async {
        Ok(match lines.next(&mut conn).await? {
            Signal::Circuit { .. } => Ok(()),
            Signal::Err { code, text } => Err((code, text.to_owned())),
            _ => return Err(ProtoError::Unexpected("expected circuit").into()),
        })
    }
    .or(async {
        // The relay may wait POOL_GET_TIMEOUT for the device's pool before it answers.
        Timer::after(inner.cfg.tuning.handshake_timeout + inner.cfg.tuning.pool_get_timeout).await;
        Err(Error::Timeout("circuit reply"))
    })
    .await?;
    match reply {
        Ok(()) => Ok((conn, lines)),
        Err((code, text)) => {
            log::warn!(
                "visit: relay {} refused a circuit to {name}: {} ({code}): {text}",
                inner.cfg.tunnel,
                status_text(code)
            );
            Err(ProtoError::Refused(code).into())
        }
    }
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
            if !matches!(e, Error::Proto(ProtoError::Refused(_))) && warn.allow() {
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
    let st = &inner.stats;
    match copy::conns(
        &mut local,
        &mut relay,
        &inner.arena,
        (&st.tcp_rx, &st.tcp_tx),
        inner.cfg.read,
        None,
        inner.cfg.tuning.splice,
    )
    .await
    {
        Ok((up, down)) => log::debug!("visit: {peer} done: {up} B up, {down} B down"),
        Err(e) => log::debug!("visit: {peer} ended: {e}"),
    }
}
