//! A visitor's circuit: `connect <name> <tcp|udp>`, an idle pool connection of that
//! reservation, the `tcp` or `udp` line on it, `circuit` to the visitor, then the splice under
//! the circuit limits. The relay does not look into a UDP circuit: its frames are spliced as
//! bytes, and the visitor and the device each run their end of the flow.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::future::FutureExt;
use smol::io::AsyncWriteExt;
use smol::Timer;

use super::limit::Limited;
use super::table::{Idle, Reservation};
use super::{next_line, Inner};
use crate::copy;
use crate::error::Error;
use crate::lines::{send, LineReader};
use crate::signal::Signal;
use crate::stats::ActiveGuard;
use crate::stream::Conn;

/// Bytes per second in one Mbit/s (`rate` is in Mbit/s, as in NodePass).
const BYTES_PER_MBIT: u64 = 125_000;

/// Counts one circuit of a reservation while alive.
struct CircuitGuard<'a>(&'a AtomicUsize);
impl Drop for CircuitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Serve one visitor connection after its handshake.
pub(super) async fn visit(
    inner: &Arc<Inner>,
    mut conn: Conn,
    mut lines: LineReader,
    peer: SocketAddr,
) {
    let req = next_line(inner, &mut conn, &mut lines, |sig| match sig {
        Signal::Connect { name, udp } => Some((name.to_owned(), udp)),
        _ => None,
    })
    .await;
    let (name, udp) = match req {
        Ok(Some(x)) => x,
        Ok(None) => return inner.refuse(&mut conn, peer, 401, "expected connect").await,
        Err(Error::Signal(_)) => {
            return inner
                .refuse(&mut conn, peer, 400, "malformed request line")
                .await
        }
        Err(e) => return log::debug!("relay: visitor {peer}: no connect line: {e}"),
    };
    let found = inner.table().by_name(&name, Instant::now());
    let Some(res) = found else {
        let text = format!("no live reservation named {name}");
        return inner.refuse(&mut conn, peer, 204, &text).await;
    };
    let max = inner.cfg.relay.max_circuits;
    if res.circuits.fetch_add(1, Relaxed) >= max {
        res.circuits.fetch_sub(1, Relaxed);
        let text = format!("{max} circuits to {name} already open");
        return inner.refuse(&mut conn, peer, 201, &text).await;
    }
    let _circuit = CircuitGuard(&res.circuits);
    let wait = inner.cfg.tuning.pool_get_timeout;
    let Some(mut pc) = take_idle(&res, wait).await else {
        let text = format!("no pool connection from {name} in {wait:?}");
        return inner.refuse(&mut conn, peer, 203, &text).await;
    };
    let st = &inner.stats;
    let (rx, tx) = if udp {
        (&st.udp_rx, &st.udp_tx)
    } else {
        (&st.tcp_rx, &st.tcp_tx)
    };
    // The device dials its target on `tcp` or `udp`; bytes the visitor sent early (the first
    // frames of a UDP flow) follow the line.
    let opened = async {
        let id = pc.id;
        let line = if udp {
            Signal::Udp { id, peer }
        } else {
            Signal::Tcp {
                id,
                peer,
                reuse: false,
            }
        };
        send(&mut pc.conn, &line).await?;
        let early = lines.leftover();
        if !early.is_empty() {
            pc.conn.write_all(early).await?;
            rx.add(early.len() as u64);
        }
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = opened {
        let text = format!("{name}: {e}");
        return inner.refuse(&mut conn, peer, 203, &text).await;
    }
    let lim = &inner.cfg.relay;
    let secs = lim.circuit_duration.map_or(0, |d| d.as_secs().max(1));
    let reply = Signal::Circuit {
        secs: u32::try_from(secs).unwrap_or(u32::MAX),
        bytes: lim.circuit_bytes.unwrap_or(0),
    };
    if send(&mut conn, &reply).await.is_err() {
        return;
    }
    let _active = ActiveGuard::new(&inner.stats, udp);
    log::debug!(
        "relay: {} circuit {peer} -> {name} on pool connection {}",
        if udp { "UDP" } else { "TCP" },
        pc.id
    );
    let rate = inner.cfg.rate.map(|m| u64::from(m) * BYTES_PER_MBIT);
    let mut visitor = Limited::new(conn, lim.circuit_bytes, rate);
    let o = copy::Opts {
        arena: &inner.arena,
        counters: (rx, tx),
        idle: inner.cfg.read,
        limits: None,
    };
    let splice = copy::bidi(&mut visitor, &mut pc.conn, o);
    let capped = async {
        match lim.circuit_duration {
            Some(d) => Timer::after(d).await,
            None => std::future::pending().await,
        };
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "circuit duration limit reached",
        ))
    };
    match splice.or(capped).await {
        Ok((up, down)) => {
            log::debug!("relay: circuit {peer} -> {name} done: {up} B up, {down} B down")
        }
        Err(e) => log::debug!("relay: circuit {peer} -> {name} cut: {e}"),
    }
}

/// Take a live idle pool connection of `res`, waiting up to `wait`.
async fn take_idle(res: &Reservation, wait: Duration) -> Option<Idle> {
    let deadline = Instant::now() + wait;
    loop {
        let got = async { res.pop_idle().await }
            .or(async {
                Timer::at(deadline).await;
                None
            })
            .await;
        match got {
            Some(pc) if pc.conn.idle_ok() => return Some(pc),
            Some(pc) => log::debug!(
                "relay: {}: idle pool connection {} was closed",
                res.name,
                pc.id
            ),
            None => return None,
        }
    }
}
