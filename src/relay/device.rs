//! A device's side of a relay reservation: `reserve <name> <device>` on the control
//! connection, the warm pool bound to the reservation's sid, and `refresh` every TTL/2.
//!
//! The client role calls [`session`] instead of its `ctl` session when `name=` is set; its
//! reconnect loop (with backoff) brings the reservation back after a relay restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{self, PoolManager};
use crate::control::{End, Handler};
use crate::error::{status_text, ProtoError, Result};
use crate::lines::send;
use crate::poke::Poke;
use crate::signal::{Kind, Signal};
use crate::timeout::bounded;

/// Shortest refresh period: half the relay's shortest TTL (it announces whole seconds, at
/// least 1).
const MIN_REFRESH: Duration = Duration::from_millis(500);

/// Reserve `name` on the relay and keep the reservation until it ends.
pub(crate) async fn session(inner: &Arc<client::Inner>, name: &str) -> Result<End> {
    let relay = &inner.cfg.tunnel;
    let (mut conn, mut lines) = client::open(
        inner,
        inner.tls.load(std::sync::atomic::Ordering::Relaxed),
        Kind::Reserve,
        None,
    )
    .await?;
    let device = inner.device;
    send(&mut conn, &Signal::Reserve { name, device }).await?;
    let reply = async {
        Ok(match lines.next(&mut conn).await? {
            Signal::Reserved { sid, ttl, max } => Ok((sid, ttl, max)),
            Signal::Err { code, text } => Err((code, text.to_owned())),
            _ => return Err(ProtoError::Unexpected("expected reserved").into()),
        })
    };
    let reply = bounded(
        inner.cfg.tuning.handshake_timeout,
        "reservation reply",
        reply,
    )
    .await?;
    let (sid, ttl, max) = match reply {
        Ok(x) => x,
        Err((code, text)) => {
            log::warn!(
                "client: relay {relay} refused the reservation of {name}: {} ({code}): {text}",
                status_text(code)
            );
            return Err(ProtoError::Refused(code).into());
        }
    };
    log::info!("client: {name} reserved on relay {relay} (expires in {ttl} s unless refreshed)");
    let every = (Duration::from_secs(u64::from(ttl)) / 2).max(MIN_REFRESH);
    // Circuits carry TCP or one UDP flow (`run_pool` leaves UDP out with `noudp=1`).
    let end = client::run_pool(
        inner,
        conn,
        lines,
        sid,
        max as usize,
        (true, true),
        None,
        |pool| Refresher {
            pool,
            every,
            next: Instant::now() + every,
        },
    )
    .await;
    Ok(end)
}

/// The pool manager, plus a `refresh` every half TTL (circuit v2 refreshes before expiry).
struct Refresher {
    pool: PoolManager,
    every: Duration,
    next: Instant,
}

impl Handler for Refresher {
    fn signal(&mut self, sig: Signal<'_>) -> std::result::Result<(), ProtoError> {
        self.pool.signal(sig)
    }

    fn poke(&self) -> Option<&Poke> {
        self.pool.poke()
    }

    fn tick(&mut self) -> (Option<Signal<'static>>, Duration) {
        let now = Instant::now();
        if now >= self.next {
            self.next = now + self.every;
            // Tick again at once so the pool's own work is not delayed by the refresh.
            return (Some(Signal::Refresh), Duration::ZERO);
        }
        let (sig, delay) = self.pool.tick();
        (sig, delay.min(self.next - now))
    }
}
