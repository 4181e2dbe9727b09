//! Bidirectional copy on arena buffers, with write half-close and an idle timeout; [`conns`]
//! picks splice(2) instead for two plain TCP connections on Linux.
//!
//! # Implementation
//! One future polls both directions in turn, so neither stream needs splitting (TLS streams
//! cannot be shared between two tasks without a lock). End of input on one side becomes a
//! write half-close (`poll_close`: FIN, after close_notify for TLS) on the other, and the copy
//! ends when both directions have ended, on the first error, or after `idle` with no bytes.
//! With `rate=` each read is charged to the direction's shared token bucket; when the bucket
//! is in debt the direction keeps a timer and reads again only when it fires.
//! A direction holds an arena buffer only while bytes move: after a read finds nothing (and
//! everything read is written) the buffer goes back to the arena, and the next one is leased
//! when the socket underneath becomes readable ([`Readable`]). The first read of a direction
//! is tried at once, because a TLS stream may hold decrypted bytes its socket no longer shows.
//! So an idle open connection holds no buffer, and the pages in use follow the connections
//! moving bytes, not the connections open.

use std::future::Future;
use std::io;
use std::net::TcpStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use smol::io::{AsyncRead, AsyncWrite};
use smol::{Async, Timer};

use std::sync::Arc;

use crate::arena::{Arena, Lease};
use crate::chunk::{self, Dechunk, HEADER_LEN, MAX_CHUNK};
use crate::rate::{Limits, Shared};
use crate::stats::{Counter, Stats};
use crate::stream::Conn;

/// Reads per direction in one wake-up before yielding, so one busy connection cannot starve
/// the others on a single-threaded executor.
const BUDGET: usize = 16;

/// A stream whose socket can be awaited for readability without reading, so that a copy can
/// wait for bytes without holding a buffer.
pub trait Readable {
    /// Ready when a read may find bytes (or the end of input, or an error).
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Readable for Async<TcpStream> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Async::poll_readable(self, cx)
    }
}

impl Readable for Conn {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            #[cfg(feature = "tls")]
            Conn::Tls(s) => s.poll_readable(cx),
            _ => self.tcp().poll_readable(cx),
        }
    }
}

/// What a direction does to the bytes it moves.
enum Mode {
    /// Bytes as they are; end of input becomes a write half-close.
    Raw,
    /// Into chunks on a reusable pool connection ([`crate::chunk`]); end of input becomes the
    /// end chunk, and the pool connection stays open.
    Encode,
    /// Out of chunks; the end chunk becomes a write half-close. Reads never go past it.
    Decode(Dechunk),
}

struct Dir<'c> {
    arena: &'c Arc<Arena>,
    mode: Mode,
    /// Leased while bytes move; `None` while the source is idle.
    buf: Option<Lease>,
    /// A read found nothing: wait for readability before leasing a buffer again.
    parked: bool,
    /// Set while no arena buffer is free.
    retry: Option<Timer>,
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
    fn new(
        arena: &'c Arc<Arena>,
        mode: Mode,
        counter: &'c Counter,
        bucket: Option<&'c Shared>,
    ) -> Self {
        // An end chunk that came with the opening line: nothing to read, only to pass on.
        let eof = matches!(&mode, Mode::Decode(d) if d.ended());
        Dir {
            arena,
            mode,
            buf: None,
            parked: false,
            retry: None,
            pos: 0,
            cap: 0,
            eof,
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
        R: AsyncRead + Readable + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..BUDGET {
            while self.pos < self.cap {
                let Some(buf) = &self.buf else {
                    return Poll::Ready(Err(io::Error::other("bytes pending without a buffer")));
                };
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                if !matches!(self.mode, Mode::Encode) {
                    // (Encode counts payload bytes when it reads them: no header bytes.)
                    self.bytes += n as u64;
                    self.counter.add(n as u64);
                }
                self.unflushed = true;
                *moved = true;
            }
            if self.eof {
                self.buf = None;
                if matches!(self.mode, Mode::Encode) {
                    // The end chunk is written: the pool connection itself stays open.
                    ready!(Pin::new(&mut *w).poll_flush(cx))?;
                } else {
                    // Flushes, then shuts down the write side: the half-close is passed on.
                    ready!(Pin::new(&mut *w).poll_close(cx))?;
                }
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
            if self.buf.is_none() && self.parked {
                // A write may have left bytes in the writer (a TLS record the socket did not
                // take whole): keep pushing them while waiting, with both wakers registered.
                // Nothing else flushes them once the other direction has ended.
                if self.unflushed {
                    if let Poll::Ready(res) = Pin::new(&mut *w).poll_flush(cx) {
                        res?;
                        self.unflushed = false;
                    }
                }
                ready!(r.poll_readable(cx))?;
            }
            // The arena has two buffers per slot, so a wait here only happens when it is
            // shared more widely.
            let buf = ready!(self.arena.poll_lease(&mut self.buf, &mut self.retry, cx));
            let room = match &self.mode {
                Mode::Raw => &mut buf[..],
                Mode::Encode => {
                    let end = buf.len().min(HEADER_LEN + MAX_CHUNK);
                    &mut buf[HEADER_LEN..end]
                }
                Mode::Decode(d) => {
                    let end = buf.len().min(d.want());
                    &mut buf[..end]
                }
            };
            match Pin::new(&mut *r).poll_read(cx, room) {
                Poll::Ready(Ok(0)) => {
                    self.eof = true;
                    match &self.mode {
                        Mode::Raw => {}
                        Mode::Encode => {
                            buf[..HEADER_LEN].copy_from_slice(&chunk::END);
                            self.cap = HEADER_LEN;
                        }
                        Mode::Decode(_) => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "pool connection closed in the middle of a chunked stream",
                            )))
                        }
                    }
                }
                Poll::Ready(Ok(n)) => {
                    self.cap = match &mut self.mode {
                        Mode::Raw => n,
                        Mode::Encode => {
                            buf[..HEADER_LEN].copy_from_slice(&chunk::header(n));
                            self.bytes += n as u64;
                            self.counter.add(n as u64);
                            n + HEADER_LEN
                        }
                        Mode::Decode(d) => {
                            let payload = d
                                .split(&buf[..n])
                                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                            self.eof = d.ended();
                            payload
                        }
                    };
                    self.parked = false;
                    *moved = true;
                    if let Some(wait) = self.bucket.and_then(|b| b.take(n)) {
                        self.wait = Some(Timer::after(wait));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Idle: the buffer goes back until the source is readable again.
                    self.buf = None;
                    self.parked = true;
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
    A: AsyncRead + AsyncWrite + Readable + Unpin,
    B: AsyncRead + AsyncWrite + Readable + Unpin,
{
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut moved = false;
        let ab = this.ab.poll(cx, this.a, this.b, &mut moved)?;
        let ba = this.ba.poll(cx, this.b, this.a, &mut moved)?;
        both_done(
            cx,
            (ab, ba),
            (this.ab.bytes, this.ba.bytes),
            moved,
            &mut this.idle,
        )
    }
}

/// The end of one poll of a two-direction copy (arena or splice): done when both directions
/// are; otherwise the idle timer restarts when bytes moved and fails the copy when it fires.
pub(crate) fn both_done(
    cx: &mut Context<'_>,
    (ab, ba): (Poll<()>, Poll<()>),
    bytes: (u64, u64),
    moved: bool,
    idle: &mut Option<(Duration, Timer)>,
) -> Poll<io::Result<(u64, u64)>> {
    if ab.is_ready() && ba.is_ready() {
        return Poll::Ready(Ok(bytes));
    }
    if let Some((d, timer)) = idle {
        if moved {
            timer.set_after(*d);
        }
        if Pin::new(timer).poll(cx).is_ready() {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
    }
    Poll::Pending
}

/// What a copy of one user's bytes needs besides the two connections.
#[derive(Clone, Copy)]
pub struct Opts<'c> {
    /// Where buffers are leased from, while bytes move.
    pub arena: &'c Arc<Arena>,
    /// Bytes moved `a` → `b` and `b` → `a`.
    pub counters: (&'c Counter, &'c Counter),
    /// Fail with `TimedOut` after this long without a byte in either direction.
    pub idle: Option<Duration>,
    /// `rate=`: `a` → `b` is charged to `limits.up` (user → target: `a` must be the user's
    /// side), `b` → `a` to `limits.down`.
    pub limits: Option<&'c Limits>,
}

impl<'c> Opts<'c> {
    /// A user's TCP bytes, counted in `stats`' TCP counters (`a` → `b` in, `b` → `a` out).
    pub fn tcp(
        arena: &'c Arc<Arena>,
        stats: &'c Stats,
        idle: Option<Duration>,
        limits: Option<&'c Limits>,
    ) -> Self {
        Opts {
            arena,
            counters: (&stats.tcp_rx, &stats.tcp_tx),
            idle,
            limits,
        }
    }
}

/// Copy `a` → `b` and `b` → `a` until both directions end, on arena buffers. Returns the bytes
/// moved each way.
pub async fn bidi<A, B>(a: &mut A, b: &mut B, o: Opts<'_>) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Readable + Unpin,
    B: AsyncRead + AsyncWrite + Readable + Unpin,
{
    copy_modes(a, b, (Mode::Raw, Mode::Raw), o).await
}

/// The two-direction copy of [`bidi`] and [`chunked`], each direction in its mode.
async fn copy_modes<A, B>(
    a: &mut A,
    b: &mut B,
    (ab, ba): (Mode, Mode),
    o: Opts<'_>,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Readable + Unpin,
    B: AsyncRead + AsyncWrite + Readable + Unpin,
{
    Bidi {
        a,
        b,
        ab: Dir::new(o.arena, ab, o.counters.0, o.limits.map(|l| &l.up)),
        ba: Dir::new(o.arena, ba, o.counters.1, o.limits.map(|l| &l.down)),
        idle: o.idle.map(|d| (d, Timer::after(d))),
    }
    .await
}

/// Which side of a [`chunked`] copy is the reusable pool connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// `a` (the dialing side: pool connection → target).
    A,
    /// `b` (the taking side: user → pool connection).
    B,
}

/// [`bidi`] with one side a reusable pool connection speaking chunks ([`crate::chunk`]);
/// `dechunk` is the state of its incoming direction (it may already hold part of a header, or
/// the end, from bytes that came with the opening line). `Ok` means both end chunks crossed
/// and the pool connection is clean: it may carry the next user. Any error leaves it
/// mid-stream: close it.
pub async fn chunked<A, B>(
    a: &mut A,
    b: &mut B,
    (pool, dechunk): (Pool, Dechunk),
    o: Opts<'_>,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Readable + Unpin,
    B: AsyncRead + AsyncWrite + Readable + Unpin,
{
    let modes = match pool {
        Pool::A => (Mode::Decode(dechunk), Mode::Encode),
        Pool::B => (Mode::Encode, Mode::Decode(dechunk)),
    };
    copy_modes(a, b, modes, o).await
}

/// Relay two connections as [`bidi`] does, with splice(2) when both are plain TCP on Linux
/// and `splice` is on (no user-space copy, no arena buffer), else on arena buffers.
pub async fn conns(
    a: &mut Conn,
    b: &mut Conn,
    o: Opts<'_>,
    splice: bool,
) -> io::Result<(u64, u64)> {
    #[cfg(target_os = "linux")]
    if let (true, Conn::Plain(x), Conn::Plain(y)) = (splice, &*a, &*b) {
        return crate::splice::bidi(x, y, o.counters, o.idle, o.limits).await;
    }
    let _ = splice;
    bidi(a, b, o).await
}
