//! The release ticker: memory back to the kernel after a burst, and sleep while nothing moves.
//!
//! Every `RELEASE_TICK` (a second) the pages of free buffers go back to the kernel (buffers
//! are leased only while bytes move, so free ones can go even with connections open), and the
//! heap is trimmed once when no connection is open after any activity since the last trim, so
//! memory returns to idle soon after a burst.
//!
//! After [`QUIET_TICKS`] with nothing to do, the ticker sleeps (at most [`QUIET_SLEEP`]) until
//! [`Stats::ticker`] is poked: by a session opening or closing, or by a data buffer coming
//! back to its arena. "Nothing" holds with connections open too, as long as they move no bytes
//! through the arenas (an ssh session left open, a spliced stream), so neither an idle process
//! nor one holding idle users is woken every second.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::Duration;

use smol::future::FutureExt;
use smol::Timer;

use crate::arena::Arena;
use crate::heap;
use crate::poke::{QUIET_SLEEP, QUIET_TICKS};
use crate::stats::Stats;

/// How often free buffer pages go back to the kernel while anything goes on.
const RELEASE_TICK: Duration = Duration::from_secs(1);

/// Run the ticker for one role's `stats` and its data arenas (TCP, and UDP when on).
pub async fn run(stats: Arc<Stats>, (arena, udp_arena): (Arc<Arena>, Option<Arc<Arena>>)) {
    let release_data = || arena.release_idle() + udp_arena.as_ref().map_or(0, |a| a.release_idle());
    let mut idle = IdleTrim::default();
    loop {
        let mut data = 0;
        if idle.quiet >= QUIET_TICKS {
            stats.ticker.arm();
            // One more look after arming: any change from here on pokes.
            data = release_data();
            if data == 0 && idle.seen == Seen::of(&stats) {
                let sleep = async {
                    Timer::after(QUIET_SLEEP).await;
                };
                stats.ticker.poked().or(sleep).await;
            }
            stats.ticker.disarm();
        } else {
            Timer::after(RELEASE_TICK).await;
        }
        data += release_data();
        #[cfg(feature = "tls")]
        let tls = crate::tls::stream::release_idle();
        #[cfg(not(feature = "tls"))]
        let tls = 0;
        idle.tick(Seen::of(&stats), data, tls);
    }
}

/// What the ticker compares from one tick to the next.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// Sessions open.
    active: usize,
    /// Sessions opened since start (a session opened and closed between two ticks).
    opened: usize,
    /// Idle pool connections.
    pool_idle: usize,
}

impl Seen {
    fn of(stats: &Stats) -> Seen {
        Seen {
            active: stats.active(),
            opened: stats.opened.load(SeqCst),
            pool_idle: stats.pool_idle.load(Relaxed),
        }
    }
}

/// When to trim the heap, and whether a tick found nothing to do.
///
/// The heap is trimmed once, on the first tick with nothing open after activity. Activity is a
/// connection open at a tick or opened since the last one, data buffers released (a burst that
/// starts and ends between two ticks counts too), or fewer idle pool connections than at the
/// last tick: the pool shrinks back a tick or two after a burst, and what its connections held
/// is only free after that.
#[derive(Debug, Default)]
struct IdleTrim {
    /// Something ran since the last trim.
    pending: bool,
    /// What the last tick saw.
    seen: Seen,
    /// Ticks in a row that found nothing to do.
    quiet: u32,
}

impl IdleTrim {
    /// One tick that sees `now`, after `data` buffers of the data arenas and `tls` TLS buffers
    /// were given back; trims the heap when it is time and says whether it did.
    fn tick(&mut self, now: Seen, data: usize, tls: usize) -> bool {
        // TLS buffers released do not count as something to do: a tls=1 server's control
        // connection reads a heartbeat into a TLS buffer every `REPORT_INTERVAL`, and a ticker
        // woken for that would never sleep. What such a read leaves is released at the next
        // wake-up.
        let nothing = now == self.seen && data == 0;
        if now.active > 0
            || now.opened != self.seen.opened
            || data + tls > 0
            || now.pool_idle < self.seen.pool_idle
        {
            self.pending = true;
        }
        self.seen = now;
        self.quiet = if nothing { self.quiet + 1 } else { 0 };
        let trim = now.active == 0 && self.pending;
        if !trim {
            return false;
        }
        self.pending = false;
        heap::trim();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::{IdleTrim, Seen};

    fn seen(active: usize, opened: usize, pool_idle: usize) -> Seen {
        Seen {
            active,
            opened,
            pool_idle,
        }
    }

    #[test]
    fn trims_once_after_activity_even_between_ticks() {
        let mut t = IdleTrim::default();
        assert!(!t.tick(seen(0, 0, 0), 0, 0), "nothing ran yet");
        assert!(!t.tick(seen(3, 3, 0), 2, 0), "connections open");
        assert!(t.tick(seen(0, 3, 0), 0, 0), "first idle tick after a burst");
        assert!(!t.tick(seen(0, 3, 0), 0, 0), "once");
        assert!(t.tick(seen(0, 3, 0), 4, 0), "a burst between two ticks");
        assert!(!t.tick(seen(0, 3, 0), 0, 0));
        assert!(
            t.tick(seen(0, 4, 0), 0, 0),
            "a spliced connection between two ticks (no buffer)"
        );
    }

    #[test]
    fn counts_quiet_ticks_and_starts_over_on_any_activity() {
        let mut t = IdleTrim::default();
        t.tick(seen(0, 0, 4), 0, 0); // the pool filled
        assert_eq!(t.quiet, 0);
        for n in 1..=3 {
            t.tick(seen(0, 0, 4), 0, 0);
            assert_eq!(t.quiet, n);
        }
        t.tick(seen(1, 1, 4), 0, 0);
        assert_eq!(t.quiet, 0, "a connection opened");
        t.tick(seen(1, 1, 4), 0, 0);
        assert_eq!(t.quiet, 1, "a connection held open, moving nothing");
        t.tick(seen(1, 1, 4), 2, 0);
        assert_eq!(t.quiet, 0, "it moved bytes");
        t.tick(seen(1, 2, 4), 0, 0);
        assert_eq!(t.quiet, 0, "another opened and closed");
        assert!(t.tick(seen(0, 2, 4), 0, 0), "the trim after they closed");
        assert_eq!(t.quiet, 0, "closing is a change");
        t.tick(seen(0, 2, 4), 0, 0);
        assert_eq!(t.quiet, 1);
        assert!(
            t.tick(seen(0, 2, 4), 0, 2),
            "a heartbeat's TLS buffer released (and a trim)"
        );
        assert_eq!(t.quiet, 2, "is no activity");
        t.tick(seen(0, 2, 5), 0, 0);
        assert_eq!(t.quiet, 0, "the pool grew");
        t.tick(seen(0, 2, 3), 0, 0);
        assert_eq!(t.quiet, 0, "the pool shrank");
    }

    #[test]
    fn trims_again_when_the_pool_shrinks() {
        let mut t = IdleTrim::default();
        assert!(!t.tick(seen(0, 0, 4), 0, 0), "a pool filled");
        assert!(!t.tick(seen(5, 5, 64), 0, 0), "a burst grew it");
        assert!(t.tick(seen(0, 5, 64), 0, 0), "first idle tick");
        assert!(t.tick(seen(0, 5, 4), 0, 0), "the pool shrank back");
        assert!(!t.tick(seen(0, 5, 4), 0, 0), "once");
        assert!(!t.tick(seen(0, 5, 8), 0, 0), "a pool growing frees nothing");
    }
}
