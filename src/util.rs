//! Small shared pieces: accept-error backoff, reconnect backoff with jitter, log rate limiting,
//! a hold on attempts after failures.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::net::SocketFlags;
use smol::{Async, Timer};

/// Longest pause after repeated accept errors (for example EMFILE).
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);
/// Longest reconnect delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Log an accept error and pause, doubling from 10 ms up to one second, so a full fd table
/// or a transient error never turns the accept loop into a busy spin.
pub async fn accept_backoff(what: &str, e: &io::Error, errors: &mut u32) {
    *errors = errors.saturating_add(1);
    let pause = Duration::from_millis(10u64 << (*errors).min(7)).min(MAX_ACCEPT_PAUSE);
    log::warn!("{what}: accept failed: {e}; pausing {pause:?}");
    Timer::after(pause).await;
}

/// The next connection from `l`, non-blocking and with TCP_NODELAY (inherited from a
/// listener made by [`crate::net::listen`]). Accept errors are logged and backed off (see
/// [`accept_backoff`]) until one succeeds; `errors` counts the failures in a row.
///
/// # Implementation
/// `accept4` with `SOCK_NONBLOCK` and the listener's TCP_NODELAY save the two syscalls per
/// connection that std's `accept` and a `set_nodelay` would add. It yields once first: the task
/// an accept loop spawned for the previous connection runs before the next `accept4` (which
/// usually fails with `EAGAIN`), not after it.
pub async fn accept_next(
    what: &str,
    l: &Async<TcpListener>,
    errors: &mut u32,
) -> (Async<TcpStream>, SocketAddr) {
    smol::future::yield_now().await;
    loop {
        match l.read_with(accept_one).await {
            Ok(x) => {
                *errors = 0;
                return x;
            }
            Err(e) => accept_backoff(what, &e, errors).await,
        }
    }
}

/// One `accept4` on `l`, registered with the reactor.
fn accept_one(l: &TcpListener) -> io::Result<(Async<TcpStream>, SocketAddr)> {
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let (fd, peer) = rustix::net::acceptfrom_with(l, flags)?;
    let s = TcpStream::from(fd);
    let peer = peer
        .and_then(|a| SocketAddr::try_from(a).ok())
        .ok_or_else(|| io::Error::other("accepted a connection with no IP peer address"))?;
    #[cfg(not(target_os = "linux"))]
    s.set_nodelay(true)?;
    Ok((Async::new_nonblocking(s)?, peer))
}

/// The next reconnect delay: `base * 2^attempt`, capped at [`MAX_BACKOFF`], with ±25% jitter so
/// that many devices restarting together do not reconnect in lockstep.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    let r = crate::auth::random::<2>();
    let unit = u16::from_le_bytes(r) as f64 / u16::MAX as f64; // 0..=1
    exp.mul_f64(0.75 + unit * 0.5)
}

/// Allows one event per period (for log lines that a flood could otherwise repeat).
#[derive(Debug)]
pub struct RateLimit {
    period: Duration,
    // A mutex, not an AtomicU64: MIPS32 and ARMv6 have no 64-bit atomics.
    next: Mutex<Option<Instant>>,
}

impl RateLimit {
    /// One event per `period`.
    pub fn new(period: Duration) -> Self {
        RateLimit {
            period,
            next: Mutex::new(None),
        }
    }

    /// Whether an event may happen now.
    pub fn allow(&self) -> bool {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if next.is_some_and(|n| now < n) {
            return false;
        }
        *next = Some(now + self.period);
        true
    }
}

/// A backoff for attempts that events a peer controls would start (one per datagram, say):
/// after a failure the next attempts are held back, [`backoff`] from `base` growing with each
/// failure in a row; a success lifts it.
#[derive(Debug)]
pub struct Hold {
    base: Duration,
    /// Failures in a row, and until when attempts wait.
    state: Mutex<(u32, Option<Instant>)>,
}

impl Hold {
    /// No hold yet; the first failure holds for about `base`.
    pub fn new(base: Duration) -> Self {
        Hold {
            base,
            state: Mutex::new((0, None)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (u32, Option<Instant>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How much longer attempts are held back, if they are.
    pub fn left(&self) -> Option<Duration> {
        let until = self.state().1?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// An attempt failed: hold the next ones back.
    pub fn failed(&self) {
        let mut st = self.state();
        let pause = backoff(self.base, st.0);
        *st = (st.0.saturating_add(1), Some(Instant::now() + pause));
    }

    /// An attempt succeeded: no hold.
    pub fn succeeded(&self) {
        *self.state() = (0, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_follows_failures_and_lifts_on_success() {
        let h = Hold::new(Duration::from_secs(10));
        assert_eq!(h.left(), None);
        h.failed();
        let first = h.left().expect("held after a failure");
        assert!(first > Duration::from_secs(7) && first <= Duration::from_millis(12_500));
        h.failed();
        assert!(
            h.left().expect("held") > Duration::from_secs(14),
            "it grows"
        );
        for _ in 0..10 {
            h.failed();
        }
        assert!(
            h.left().expect("held") <= MAX_BACKOFF.mul_f64(1.25),
            "up to a cap"
        );
        h.succeeded();
        assert_eq!(h.left(), None);
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let base = Duration::from_secs(1);
        for attempt in 0..20 {
            let d = backoff(base, attempt);
            let nominal = base.saturating_mul(1 << attempt.min(16)).min(MAX_BACKOFF);
            assert!(
                d >= nominal.mul_f64(0.75) && d <= nominal.mul_f64(1.25),
                "{attempt}: {d:?}"
            );
        }
    }

    #[test]
    fn rate_limit_allows_once_per_period() {
        let r = RateLimit::new(Duration::from_secs(3600));
        assert!(r.allow());
        assert!(!r.allow());
    }
}
