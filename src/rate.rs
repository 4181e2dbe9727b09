//! `rate=Mbps`: token buckets limiting throughput, one per direction, shared by a process.
//!
//! # Implementation
//! [`Bucket`] is pure: time comes in as `now: Instant`. A read is charged after it happened
//! (the bytes are already in the buffer), so the bucket may go into debt; the copier then
//! waits the time the debt takes to pay off before its next read. Over any period longer than
//! the burst the average stays at the rate. As in NodePass, the limit is shared by every
//! connection of the process: one bucket for user→target bytes, one for target→user bytes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes per second in one Mbit/s (NodePass multiplies `rate` by the same figure).
pub const BYTES_PER_MBIT: u64 = 125_000;
/// Smallest burst: one default TCP buffer, so a single read is never split by the limit.
pub const MIN_BURST: u64 = 16 * 1024;
/// Burst as a fraction of a second of traffic: a quarter second keeps bursts short.
const BURST_DIVISOR: u64 = 4;
const NANOS: u128 = 1_000_000_000;

/// A token bucket: `tokens` bytes may pass now; it refills at `rate_bytes_per_s` up to `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Refill rate (never 0).
    pub rate_bytes_per_s: u64,
    /// Most tokens held.
    pub burst: u64,
    /// Tokens now; negative is debt from reads charged after the fact.
    pub tokens: i64,
    /// When `tokens` was last brought up to date.
    pub last: Instant,
}

impl Bucket {
    /// A full bucket for `rate_bytes_per_s` (at least 1).
    pub fn new(rate_bytes_per_s: u64, now: Instant) -> Bucket {
        let rate = rate_bytes_per_s.max(1);
        let burst = (rate / BURST_DIVISOR).max(MIN_BURST);
        Bucket {
            rate_bytes_per_s: rate,
            burst,
            tokens: burst as i64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let rate = self.rate_bytes_per_s as u128;
        let add = elapsed * rate / NANOS;
        if add == 0 {
            return;
        }
        let room = (self.burst as i128 - self.tokens as i128).max(0) as u128;
        if add >= room {
            self.tokens = self.burst as i64;
            self.last = now;
        } else {
            self.tokens += add as i64;
            // Advance by the time those whole tokens took, keeping the fraction for later.
            self.last += Duration::from_nanos((add * NANOS / rate) as u64);
        }
    }

    /// Charge `n` bytes at `now`. `None`: go on; `Some(wait)`: wait that long before the
    /// next read (the debt is paid off then).
    pub fn take(&mut self, n: usize, now: Instant) -> Option<Duration> {
        self.refill(now);
        self.tokens = self.tokens.saturating_sub(n.min(i64::MAX as usize) as i64);
        if self.tokens >= 0 {
            return None;
        }
        let debt = self.tokens.unsigned_abs() as u128;
        let nanos = (debt * NANOS).div_ceil(self.rate_bytes_per_s as u128);
        Some(Duration::from_nanos(nanos.min(u64::MAX as u128) as u64))
    }
}

/// A bucket shared by the connections of a process.
#[derive(Debug)]
pub struct Shared(Mutex<Bucket>);

impl Shared {
    /// Charge `n` bytes now; see [`Bucket::take`].
    pub fn take(&self, n: usize) -> Option<Duration> {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        b.take(n, Instant::now())
    }
}

/// The two buckets of a process: user→target (`up`) and target→user (`down`).
#[derive(Debug)]
pub struct Limits {
    /// Bytes from users towards targets.
    pub up: Shared,
    /// Bytes from targets back to users.
    pub down: Shared,
}

impl Limits {
    /// Limits for `rate=mbps`, or `None` when unlimited (absent or 0).
    pub fn new(mbps: Option<u32>) -> Option<Limits> {
        let mbps = mbps.filter(|&m| m > 0)?;
        let rate = u64::from(mbps) * BYTES_PER_MBIT;
        let now = Instant::now();
        Some(Limits {
            up: Shared(Mutex::new(Bucket::new(rate, now))),
            down: Shared(Mutex::new(Bucket::new(rate, now))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn full_bucket_passes_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1_000_000, t0);
        assert_eq!(b.burst, 250_000);
        assert_eq!(b.take(250_000, t0), None);
        // One more byte is debt: 1 µs at 1 MB/s.
        assert_eq!(b.take(1, t0), Some(Duration::from_micros(1)));
    }

    #[test]
    fn debt_becomes_a_wait_and_refills_pay_it() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1_000_000, t0);
        assert_eq!(b.take(350_000, t0), Some(100 * MS));
        // After the wait the debt is paid: the next small read passes only a little late.
        assert_eq!(b.take(0, t0 + 100 * MS), None);
        assert_eq!(b.tokens, 0);
        assert_eq!(b.take(1000, t0 + 101 * MS), None);
        assert_eq!(b.take(1, t0 + 101 * MS), Some(Duration::from_micros(1)));
    }

    #[test]
    fn refill_stops_at_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1_000_000, t0);
        b.take(250_000, t0);
        b.refill(t0 + Duration::from_secs(10));
        assert_eq!(b.tokens, 250_000);
        assert_eq!(b.last, t0 + Duration::from_secs(10));
    }

    #[test]
    fn fractions_are_not_lost() {
        // 3 bytes/s (burst is the 16 KiB floor): 1000 steps of 1 ms add exactly 3 tokens.
        let t0 = Instant::now();
        let mut b = Bucket::new(3, t0);
        b.tokens = 0;
        for i in 1..=1000u32 {
            b.refill(t0 + MS * i);
        }
        assert_eq!(b.tokens, 3);
    }

    #[test]
    fn average_rate_holds_over_many_reads() {
        // 10 MiB in 16 KiB reads, each made when the previous wait ends.
        let t0 = Instant::now();
        let mut b = Bucket::new(1_000_000, t0);
        let mut now = t0;
        for _ in 0..640 {
            if let Some(w) = b.take(16384, now) {
                now += w;
            }
        }
        let secs = now.duration_since(t0).as_secs_f64();
        let want = (640.0 * 16384.0 - 250_000.0) / 1e6;
        assert!((secs - want).abs() < 0.01, "{secs} vs {want}");
    }

    #[test]
    fn limits_from_rate() {
        assert!(Limits::new(None).is_none());
        assert!(Limits::new(Some(0)).is_none());
        let l = Limits::new(Some(8)).unwrap();
        assert_eq!(l.up.take(1), None);
        assert_eq!(l.down.take(1), None);
        let b = l.up.0.lock().unwrap();
        assert_eq!(b.rate_bytes_per_s, 1_000_000);
    }
}
