//! Per-circuit limits on the visitor's leg: a byte cap per direction and a rate (token bucket).
//!
//! [`Limited`] wraps the visitor connection; reads are the visitor→device direction, writes the
//! device→visitor direction, so one wrapper sees every byte of the circuit. [`Bucket`] is pure
//! (time passed in) and tested on its own.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use smol::io::{AsyncRead, AsyncWrite};
use smol::Timer;

/// Smallest burst a bucket allows: one full read buffer, so a low rate still moves data.
const MIN_BURST: f64 = 16_384.0;

/// A token bucket: `rate` bytes per second, bursts up to a tenth of a second's worth.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket for `rate` bytes per second (at least 1).
    pub fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (rate / 10.0).max(MIN_BURST);
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// How long to wait at `now` before any byte may pass; `None` when bytes may pass now.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        (self.tokens <= 0.0).then(|| Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }

    /// `n` bytes passed (the balance may go negative: a large read is paid for afterwards).
    pub fn take(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// One direction's limits.
#[derive(Debug)]
struct Side {
    /// Bytes still allowed; `None` is unlimited.
    left: Option<u64>,
    bucket: Option<Bucket>,
    timer: Option<Timer>,
}

impl Side {
    fn new(cap: Option<u64>, rate: Option<u64>) -> Self {
        Side {
            left: cap,
            bucket: rate.map(|r| Bucket::new(r, Instant::now())),
            timer: None,
        }
    }

    /// Wait for the rate, then return how many bytes the next call may move.
    fn poll_allow(&mut self, cx: &mut Context<'_>) -> Poll<usize> {
        if let Some(b) = &mut self.bucket {
            loop {
                if let Some(t) = &mut self.timer {
                    ready!(Pin::new(t).poll(cx));
                    self.timer = None;
                }
                match b.wait(Instant::now()) {
                    Some(d) => self.timer = Some(Timer::after(d)),
                    None => break,
                }
            }
        }
        Poll::Ready(
            self.left
                .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX)),
        )
    }

    fn used(&mut self, n: usize) {
        if let Some(l) = &mut self.left {
            *l = l.saturating_sub(n as u64);
        }
        if let Some(b) = &mut self.bucket {
            b.take(n);
        }
    }
}

fn cut() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "circuit byte limit reached",
    )
}

/// A connection under per-direction byte caps and rates.
#[derive(Debug)]
pub struct Limited<S> {
    inner: S,
    read: Side,
    write: Side,
}

impl<S> Limited<S> {
    /// Wrap `inner`: each direction may carry `cap` bytes (`None` unlimited) at `rate` bytes
    /// per second (`None` unlimited).
    pub fn new(inner: S, cap: Option<u64>, rate: Option<u64>) -> Self {
        Limited {
            inner,
            read: Side::new(cap, rate),
            write: Side::new(cap, rate),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let allow = ready!(this.read.poll_allow(cx));
        // With the cap used up, read one byte only to tell a clean end from one byte too many.
        let len = buf.len().min(allow.max(1));
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf[..len]))?;
        if allow == 0 && n > 0 {
            return Poll::Ready(Err(cut()));
        }
        this.read.used(n);
        Poll::Ready(Ok(n))
    }
}

impl<S: crate::copy::Readable> crate::copy::Readable for Limited<S> {
    /// Waits out the read rate first, so an idle copy does not wake on bytes it may not take.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.read.poll_allow(cx));
        self.inner.poll_readable(cx)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let allow = ready!(this.write.poll_allow(cx));
        if allow == 0 && !buf.is_empty() {
            return Poll::Ready(Err(cut()));
        }
        let len = buf.len().min(allow);
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..len]))?;
        this.write.used(n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::io::{AsyncReadExt, AsyncWriteExt, Cursor};

    #[test]
    fn bucket_paces_to_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100_000, t0);
        assert_eq!(b.wait(t0), None);
        b.take(16_384 + 50_000);
        // 50 000 bytes of debt at 100 kB/s: half a second.
        let w = b.wait(t0).unwrap();
        assert!((w.as_secs_f64() - 0.5).abs() < 0.01, "{w:?}");
        assert_eq!(b.wait(t0 + Duration::from_millis(510)), None);
        // Refill never exceeds the burst.
        let mut b = Bucket::new(1_000_000, t0);
        b.wait(t0 + Duration::from_secs(100));
        b.take(100_001);
        assert!(b.wait(t0 + Duration::from_secs(100)).is_some());
    }

    #[test]
    fn byte_cap_allows_exactly_the_cap() {
        smol::block_on(async {
            let mut l = Limited::new(Cursor::new(vec![7u8; 10]), Some(10), None);
            let mut out = Vec::new();
            assert_eq!(l.read_to_end(&mut out).await.unwrap(), 10);
            let mut l = Limited::new(Cursor::new(vec![7u8; 11]), Some(10), None);
            let mut out = Vec::new();
            let e = l.read_to_end(&mut out).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
            assert_eq!(out.len(), 10);
            let mut l = Limited::new(Cursor::new(Vec::new()), Some(4), None);
            assert!(l.write_all(b"1234").await.is_ok());
            assert!(l.write_all(b"5").await.is_err());
        });
    }

    #[test]
    fn rate_limits_reads() {
        smol::block_on(async {
            // 16 KiB burst, then 100 kB/s: 36 KiB takes about 0.2 s.
            let mut l = Limited::new(Cursor::new(vec![1u8; 36_864]), None, Some(100_000));
            let start = Instant::now();
            let mut out = Vec::new();
            l.read_to_end(&mut out).await.unwrap();
            let took = start.elapsed();
            assert_eq!(out.len(), 36_864);
            assert!(took >= Duration::from_millis(150), "{took:?}");
            assert!(took < Duration::from_secs(2), "{took:?}");
        });
    }
}
