//! The control connection loop: heartbeats both ways, dead-link detection, and the role's own
//! signals handed to a [`Handler`].

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::future::FutureExt;
use smol::Timer;

use crate::error::{Error, ProtoError};
use crate::lines::{send, LineReader};
use crate::poke::Poke;
use crate::signal::Signal;
use crate::stats::Stats;
use crate::stream::Conn;

/// Heartbeats that may go unanswered before the link counts as dead.
pub const MISSED_BEATS: u32 = 3;

/// Why a control loop ended.
#[derive(Debug)]
pub enum End {
    /// Nothing arrived for [`MISSED_BEATS`] report intervals.
    Dead,
    /// The connection closed or failed.
    Closed(Error),
    /// The peer sent something it must not.
    Protocol(ProtoError),
    /// A newer session took over.
    Replaced,
    /// Shutdown was requested.
    Shutdown,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Dead => write!(f, "no heartbeat for {MISSED_BEATS} intervals, link dead"),
            End::Closed(e) => write!(f, "control connection lost: {e}"),
            End::Protocol(e) => write!(f, "protocol violation: {e}"),
            End::Replaced => f.write_str("replaced by a newer session"),
            End::Shutdown => f.write_str("shutting down"),
        }
    }
}

/// What a role does with its control connection besides heartbeats.
pub trait Handler {
    /// A signal other than `ping`/`pong` arrived. An error ends the session.
    fn signal(&mut self, sig: Signal<'_>) -> Result<(), ProtoError>;
    /// Periodic work; returns a signal to send, if any, and the delay to the next tick.
    fn tick(&mut self) -> (Option<Signal<'static>>, Duration);
    /// While the handler sleeps through a long delay: what wakes it for a tick at once.
    fn poke(&self) -> Option<&Poke> {
        None
    }
}

/// A control connection after the handshake.
pub struct Control {
    conn: Conn,
    lines: LineReader,
    interval: Duration,
    stats: Arc<Stats>,
}

impl Control {
    /// Wrap an authenticated control connection; `interval` is `REPORT_INTERVAL`.
    pub fn new(conn: Conn, lines: LineReader, interval: Duration, stats: Arc<Stats>) -> Self {
        Control {
            conn,
            lines,
            interval,
            stats,
        }
    }

    /// Run until the link dies, the peer misbehaves or the connection closes.
    pub async fn run<H: Handler>(self, mut h: H) -> End {
        let Control {
            mut conn,
            mut lines,
            interval,
            stats,
        } = self;
        let start = Instant::now();
        let mut last_rx = start;
        let mut next_ping = start + interval;
        let mut next_tick = start;
        let mut seq = 0u32;
        let mut sent_at = start;
        loop {
            let wake = next_ping.min(next_tick);
            let poke = h.poke();
            let mut poked = false;
            let ev = async { Some(lines.next(&mut conn).await) }
                .or(async {
                    Timer::at(wake).await;
                    None
                })
                .or(async {
                    match poke {
                        Some(p) => p.poked().await,
                        None => std::future::pending().await,
                    }
                    poked = true;
                    None
                })
                .await;
            if poked {
                next_tick = Instant::now();
            }
            let out = match ev {
                Some(Err(e)) => return End::Closed(e),
                Some(Ok(sig)) => {
                    last_rx = Instant::now();
                    match sig {
                        Signal::Ping(n) => Some(Signal::Pong(n)),
                        Signal::Pong(n) => {
                            if n == seq {
                                let rtt = sent_at.elapsed().as_micros();
                                stats
                                    .ping_us
                                    .store(rtt.min(usize::MAX as u128) as usize, Relaxed);
                            }
                            None
                        }
                        other => {
                            if let Err(e) = h.signal(other) {
                                return End::Protocol(e);
                            }
                            None
                        }
                    }
                }
                None => {
                    let now = Instant::now();
                    let mut out = None;
                    if now >= next_tick {
                        let (sig, delay) = h.tick();
                        out = sig;
                        next_tick = now + delay;
                    }
                    if now >= next_ping {
                        if now.duration_since(last_rx) > interval * MISSED_BEATS {
                            return End::Dead;
                        }
                        seq = seq.wrapping_add(1);
                        sent_at = now;
                        next_ping = now + interval;
                        if let Err(e) = send_bounded(&mut conn, &Signal::Ping(seq), interval).await
                        {
                            return End::Closed(e);
                        }
                    }
                    out
                }
            };
            if let Some(sig) = out {
                if let Err(e) = send_bounded(&mut conn, &sig, interval).await {
                    return End::Closed(e);
                }
            }
        }
    }
}

/// Send a line, giving up after `limit` (a peer that stops reading must not stall us).
async fn send_bounded(conn: &mut Conn, sig: &Signal<'_>, limit: Duration) -> Result<(), Error> {
    crate::timeout::bounded(limit, "control write", send(conn, sig)).await
}
