//! One UDP flow's two directions over its pool connection, polled as one future.
//!
//! # Implementation
//! Like [`crate::copy`], a single future polls both directions, so the pool connection (plain
//! or TLS) is never split. Towards the connection, datagrams come either from a [`Queue`]
//! that the server's receive loop fills (the server shares one socket among all its flows),
//! or straight from the flow's own connected socket (client). Away from the connection,
//! frames are cut with [`parse_frame`] and each payload leaves as one datagram. Each
//! direction does a bounded amount of work per wake-up, and the flow ends after `idle` with
//! no datagram either way.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use smol::io::{AsyncRead, AsyncWrite};
use smol::{Async, Timer};

use crate::arena::Lease;
use crate::frame::{frame_header, parse_frame, FrameError, HEADER_LEN};
use crate::stats::Counter;

/// Datagrams or reads per direction in one wake-up before yielding, so one busy flow cannot
/// starve the others on a single-threaded executor.
const BUDGET: usize = 16;

/// Bytes one UDP arena buffer needs: a frame header, the largest datagram, and one byte more
/// so that a datagram longer than `udp_buf` arrives as `udp_buf + 1` bytes and is detected
/// (the kernel truncates silently to the buffer size).
pub fn buf_len(udp_buf: usize) -> usize {
    HEADER_LEN + udp_buf + 1
}

/// Frames waiting to be written on a flow's pool connection. The server's receive loop
/// appends; the flow's task writes them out. Bounded by its one arena buffer.
pub struct Queue {
    buf: Lease,
    pos: usize,
    len: usize,
    closed: bool,
    waker: Option<Waker>,
}

/// What became of a datagram given to [`Queue::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Framed and queued.
    Queued,
    /// No room: the pool connection is slower than the source (or not up yet). Dropped.
    Full,
    /// The flow has ended; the datagram starts a new flow.
    Closed,
}

impl Queue {
    /// An empty queue in `buf`.
    pub fn new(buf: Lease) -> Self {
        Queue {
            buf,
            pos: 0,
            len: 0,
            closed: false,
            waker: None,
        }
    }

    /// Frame `d` at the end of the queue and wake the flow's task.
    pub fn push(&mut self, d: &[u8]) -> Push {
        if self.closed {
            return Push::Closed;
        }
        let Some(header) = frame_header(d.len()) else {
            return Push::Full;
        };
        let need = HEADER_LEN + d.len();
        if self.len + need > self.buf.len() && self.pos > 0 {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        let end = self.len + need;
        if end > self.buf.len() {
            return Push::Full;
        }
        self.buf[self.len..self.len + HEADER_LEN].copy_from_slice(&header);
        self.buf[self.len + HEADER_LEN..end].copy_from_slice(d);
        self.len = end;
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        Push::Queued
    }

    /// Move the queued frames to the end of `out` if they all fit, so that a flow's opening
    /// line and its first datagrams leave in one write. Returns whether they were moved.
    pub fn take_into(&mut self, out: &mut Vec<u8>, room: usize) -> bool {
        let queued = &self.buf[self.pos..self.len];
        if out.len() + queued.len() > room {
            return false;
        }
        out.extend_from_slice(queued);
        (self.pos, self.len) = (0, 0);
        true
    }

    /// Refuse further datagrams (the flow is ending).
    pub fn close(&mut self) {
        self.closed = true;
    }
}

/// Lock a queue; a panic elsewhere cannot leave it inconsistent (indices only).
pub fn lock(q: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    q.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the datagrams bound for the pool connection come from.
pub enum Source<'a> {
    /// The server's receive loop (shared socket).
    Queue(&'a Mutex<Queue>),
    /// The flow's own connected socket (client); `buf` holds one frame at a time.
    Socket {
        /// One framed datagram being written.
        buf: Lease,
        /// Written so far.
        pos: usize,
        /// Frame length.
        len: usize,
    },
}

impl<'a> Source<'a> {
    /// Datagrams read from the flow's own socket, framed in `buf`.
    pub fn socket(buf: Lease) -> Self {
        Source::Socket {
            buf,
            pos: 0,
            len: 0,
        }
    }
}

/// Counters a flow updates.
pub struct Meters<'a> {
    /// Payload bytes read from the socket towards the pool connection (client side only;
    /// the server counts when it queues).
    pub to_conn: &'a Counter,
    /// Payload bytes sent as datagrams from the pool connection.
    pub from_conn: &'a Counter,
    /// Datagrams dropped (oversize, or a send that failed).
    pub dropped: &'a AtomicUsize,
}

type Wait<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>;

/// The relay future: `Ok(())` when the pool connection closes, `Err(TimedOut)` after `idle`
/// of silence, another error when the connection fails or breaks the framing.
pub struct Relay<'a, C> {
    conn: &'a mut C,
    sock: &'a Async<UdpSocket>,
    /// `send_to` this address (server); `None`: the socket is connected (client).
    dest: Option<SocketAddr>,
    src: Source<'a>,
    meters: Meters<'a>,
    rbuf: Lease,
    rpos: usize,
    rlen: usize,
    max: usize,
    unflushed: bool,
    writable: Option<Wait<'a>>,
    idle: Duration,
    last: Instant,
    timer: Timer,
}

impl<'a, C: AsyncRead + AsyncWrite + Unpin> Relay<'a, C> {
    /// Relay between `conn` and `sock`. `rbuf` (at least [`buf_len`]`(max)` bytes) collects
    /// frames from the connection; `early` are bytes of the frame stream already read.
    pub fn new(
        conn: &'a mut C,
        (sock, dest): (&'a Async<UdpSocket>, Option<SocketAddr>),
        src: Source<'a>,
        mut rbuf: Lease,
        early: &[u8],
        meters: Meters<'a>,
        (max, idle): (usize, Duration),
    ) -> Self {
        let rlen = early.len().min(rbuf.len());
        rbuf[..rlen].copy_from_slice(&early[..rlen]);
        let last = Instant::now();
        Relay {
            conn,
            sock,
            dest,
            src,
            meters,
            rbuf,
            rpos: 0,
            rlen,
            max,
            unflushed: false,
            writable: None,
            idle,
            last,
            timer: Timer::at(last + idle),
        }
    }

    /// Datagrams to frames on the connection. Never `Ready(Ok)`: only errors end it.
    fn poll_to_conn(&mut self, cx: &mut Context<'_>, moved: &mut bool) -> Poll<io::Result<()>> {
        match &mut self.src {
            Source::Queue(q) => poll_queue(cx, &mut *self.conn, q, &mut self.unflushed, moved),
            Source::Socket { buf, pos, len } => {
                for _ in 0..BUDGET {
                    while *pos < *len {
                        let n = ready!(Pin::new(&mut *self.conn).poll_write(cx, &buf[*pos..*len]))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        *pos += n;
                        self.unflushed = true;
                    }
                    match self.sock.get_ref().recv(&mut buf[HEADER_LEN..]) {
                        Ok(n) if n > self.max => {
                            self.meters.dropped.fetch_add(1, Relaxed);
                            log::debug!("udp: datagram over UDP_DATA_BUF_SIZE dropped");
                        }
                        Ok(n) => {
                            // n <= max <= u16::MAX, so the header exists.
                            let header = frame_header(n).unwrap_or_default();
                            buf[..HEADER_LEN].copy_from_slice(&header);
                            (*pos, *len) = (0, HEADER_LEN + n);
                            self.meters.to_conn.add(n as u64);
                            *moved = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if self.unflushed {
                                ready!(Pin::new(&mut *self.conn).poll_flush(cx))?;
                                self.unflushed = false;
                            }
                            ready!(self.sock.poll_readable(cx))?;
                        }
                        // An ICMP error for an earlier datagram (target port closed): UDP
                        // carries on, as the target may come up.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    /// Frames from the connection to datagrams. `Ready(Ok)` when the connection closed.
    fn poll_from_conn(&mut self, cx: &mut Context<'_>, moved: &mut bool) -> Poll<io::Result<()>> {
        for _ in 0..BUDGET {
            loop {
                let (payload, n) = match parse_frame(&self.rbuf[self.rpos..self.rlen], self.max) {
                    Ok(x) => x,
                    Err(FrameError::Incomplete) => break,
                    Err(FrameError::TooLarge) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "frame larger than UDP_DATA_BUF_SIZE",
                        )))
                    }
                };
                if let Some(w) = &mut self.writable {
                    ready!(w.as_mut().poll(cx))?;
                    self.writable = None;
                }
                let sent = match self.dest {
                    Some(d) => self.sock.get_ref().send_to(payload, d),
                    None => self.sock.get_ref().send(payload),
                };
                match sent {
                    Ok(_) => {
                        self.meters.from_conn.add(payload.len() as u64);
                        *moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Several flows share the server's socket: `writable()` keeps one
                        // waker per waiting flow (poll_writable keeps only one).
                        self.writable = Some(Box::pin(self.sock.writable()));
                        continue;
                    }
                    Err(e) => {
                        self.meters.dropped.fetch_add(1, Relaxed);
                        log::debug!("udp: send of {} B failed: {e}", payload.len());
                    }
                }
                self.rpos += n;
            }
            if self.rpos > 0 {
                self.rbuf.copy_within(self.rpos..self.rlen, 0);
                self.rlen -= self.rpos;
                self.rpos = 0;
            }
            // A partial frame is at most HEADER_LEN + max - 1 bytes: there is always room.
            let n = ready!(Pin::new(&mut *self.conn).poll_read(cx, &mut self.rbuf[self.rlen..]))?;
            if n == 0 {
                if self.rlen > 0 {
                    log::debug!("udp: pool connection closed inside a frame");
                }
                return Poll::Ready(Ok(()));
            }
            self.rlen += n;
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Write the queued frames out; park the task's waker in the queue when it is empty.
fn poll_queue<C: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    conn: &mut C,
    q: &Mutex<Queue>,
    unflushed: &mut bool,
    moved: &mut bool,
) -> Poll<io::Result<()>> {
    for _ in 0..BUDGET {
        let mut g = lock(q);
        if g.pos == g.len {
            if !g.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                g.waker = Some(cx.waker().clone());
            }
            drop(g);
            if *unflushed {
                ready!(Pin::new(&mut *conn).poll_flush(cx))?;
                *unflushed = false;
            }
            return Poll::Pending;
        }
        // The lock is held only for this one non-blocking write.
        let n = ready!(Pin::new(&mut *conn).poll_write(cx, &g.buf[g.pos..g.len]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        g.pos += n;
        if g.pos == g.len {
            (g.pos, g.len) = (0, 0);
        }
        *unflushed = true;
        *moved = true;
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

impl<C: AsyncRead + AsyncWrite + Unpin> Future for Relay<'_, C> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut moved = false;
        if let Poll::Ready(r) = this.poll_to_conn(cx, &mut moved) {
            return Poll::Ready(r);
        }
        if let Poll::Ready(r) = this.poll_from_conn(cx, &mut moved) {
            return Poll::Ready(r);
        }
        if moved {
            this.last = Instant::now();
        }
        // The timer is re-armed only when it fires, at the last activity plus `idle`.
        while Pin::new(&mut this.timer).poll(cx).is_ready() {
            let deadline = this.last + this.idle;
            if Instant::now() >= deadline {
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
            this.timer.set_at(deadline);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::Arena;

    fn queue(size: usize) -> Queue {
        let arena = Arena::new(1, size).expect("map");
        Queue::new(arena.try_lease().expect("lease"))
    }

    #[test]
    fn push_frames_until_full_then_compacts() {
        let mut q = queue(10);
        assert_eq!(q.push(b"abc"), Push::Queued);
        assert_eq!(q.push(b""), Push::Queued);
        assert_eq!(&q.buf[..q.len], b"\x00\x03abc\x00\x00");
        assert_eq!(q.push(b"xyz"), Push::Full, "7 + 5 > 10");
        // The writer has taken the first frame: the next push moves the rest to the front.
        q.pos = 5;
        assert_eq!(q.push(b"xyz"), Push::Queued);
        assert_eq!((q.pos, q.len), (0, 7));
        assert_eq!(&q.buf[..q.len], b"\x00\x00\x00\x03xyz");
        q.close();
        assert_eq!(q.push(b"late"), Push::Closed);
    }

    #[test]
    fn queued_frames_join_the_opening_line_if_they_fit() {
        let mut q = queue(64);
        assert_eq!(q.push(b"hi"), Push::Queued);
        let mut out = b"udp 1 1.2.3.4:5\n".to_vec();
        assert!(!q.take_into(&mut out, 19), "16 + 4 > 19");
        assert!(q.take_into(&mut out, 20));
        assert_eq!(out, b"udp 1 1.2.3.4:5\n\x00\x02hi");
        assert_eq!((q.pos, q.len), (0, 0));
    }

    #[test]
    fn push_wakes_the_flow_task() {
        let mut q = queue(64);
        let waker = smol::block_on(async {
            std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await
        });
        q.waker = Some(waker);
        assert_eq!(q.push(b"x"), Push::Queued);
        assert!(q.waker.is_none(), "waker taken and woken");
    }

    #[test]
    fn buffers_fit_a_header_and_one_byte_more_than_allowed() {
        assert_eq!(buf_len(65_535), 65_538);
        assert_eq!(buf_len(1024) - HEADER_LEN, 1025);
    }
}
