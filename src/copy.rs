//! Bidirectional copy on arena buffers, with write half-close and an idle timeout.
//!
//! # Implementation
//! One future polls both directions in turn, so neither stream needs splitting (TLS streams
//! cannot be shared between two tasks without a lock). End of input on one side becomes a
//! write half-close (`poll_close`: FIN, after close_notify for TLS) on the other, and the copy
//! ends when both directions have ended, on the first error, or after `idle` with no bytes.
//! With `rate=` each read is charged to the direction's shared token bucket; when the bucket
//! is in debt the direction keeps a timer and reads again only when it fires.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use smol::io::{AsyncRead, AsyncWrite};
use smol::Timer;

use crate::arena::Lease;
use crate::rate::{Limits, Shared};
use crate::stats::Counter;

/// Reads per direction in one wake-up before yielding, so one busy connection cannot starve
/// the others on a single-threaded executor.
const BUDGET: usize = 16;

struct Dir<'c> {
    buf: Lease,
    pos: usize,
    cap: usize,
    eof: bool,
    done: bool,
    unflushed: bool,
    bytes: u64,
    counter: &'c Counter,
    bucket: Option<&'c Shared>,
    /// Set while the rate limit holds the next read back.
    wait: Option<Timer>,
}

impl<'c> Dir<'c> {
    fn new(buf: Lease, counter: &'c Counter, bucket: Option<&'c Shared>) -> Self {
        Dir {
            buf,
            pos: 0,
            cap: 0,
            eof: false,
            done: false,
            unflushed: false,
            bytes: 0,
            counter,
            bucket,
            wait: None,
        }
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..BUDGET {
            while self.pos < self.cap {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.bytes += n as u64;
                self.counter.add(n as u64);
                self.unflushed = true;
                *moved = true;
            }
            if self.eof {
                // Flushes, then shuts down the write side: the half-close is passed on.
                ready!(Pin::new(&mut *w).poll_close(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            self.pos = 0;
            self.cap = 0;
            if let Some(t) = &mut self.wait {
                if Pin::new(t).poll(cx).is_pending() {
                    if self.unflushed {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                self.wait = None;
            }
            match Pin::new(&mut *r).poll_read(cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(n)) => {
                    self.cap = n;
                    *moved = true;
                    if let Some(wait) = self.bucket.and_then(|b| b.take(n)) {
                        self.wait = Some(Timer::after(wait));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if self.unflushed {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

struct Bidi<'a, 'c, A, B> {
    a: &'a mut A,
    b: &'a mut B,
    ab: Dir<'c>,
    ba: Dir<'c>,
    idle: Option<(Duration, Timer)>,
}

impl<A, B> Future for Bidi<'_, '_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut moved = false;
        let ab = this.ab.poll(cx, this.a, this.b, &mut moved)?;
        let ba = this.ba.poll(cx, this.b, this.a, &mut moved)?;
        if ab.is_ready() && ba.is_ready() {
            return Poll::Ready(Ok((this.ab.bytes, this.ba.bytes)));
        }
        if let Some((d, timer)) = &mut this.idle {
            if moved {
                timer.set_after(*d);
            }
            if Pin::new(timer).poll(cx).is_ready() {
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
        }
        Poll::Pending
    }
}

/// Copy `a` → `b` and `b` → `a` until both directions end. Returns the bytes moved each way.
/// `idle`: fail with `TimedOut` after that long without a byte in either direction.
pub async fn bidi<A, B>(
    a: &mut A,
    b: &mut B,
    bufs: (Lease, Lease),
    counters: (&Counter, &Counter),
    idle: Option<Duration>,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    bidi_limited(a, b, bufs, counters, idle, None).await
}

/// [`bidi`] with `rate=` limits: `a` → `b` is charged to `limits.up` (user → target: `a` must
/// be the user's side), `b` → `a` to `limits.down`.
pub async fn bidi_limited<A, B>(
    a: &mut A,
    b: &mut B,
    bufs: (Lease, Lease),
    counters: (&Counter, &Counter),
    idle: Option<Duration>,
    limits: Option<&Limits>,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    Bidi {
        a,
        b,
        ab: Dir::new(bufs.0, counters.0, limits.map(|l| &l.up)),
        ba: Dir::new(bufs.1, counters.1, limits.map(|l| &l.down)),
        idle: idle.map(|d| (d, Timer::after(d))),
    }
    .await
}
