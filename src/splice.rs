//! Linux zero-copy relay between two plain TCP sockets: `splice(2)` through a pipe per direction.
//!
//! # Implementation
//! Bytes go socket → pipe → socket inside the kernel, never through user space, so a plaintext
//! connection costs two syscalls per chunk and no buffer of ours. Each direction is a small
//! state machine driven by async-io readiness (`poll_readable` on its source, `poll_writable`
//! on its destination), polled in one future as in [`crate::copy`]: the pipe is filled only
//! when it is empty and drained before the next fill, so `queued` is always exact.
//! A pipe is leased only while bytes move: a direction that finds its source empty gives its
//! (empty) pipe back to a process-wide free list of at most [`KEEP`] pipes, and an idle open
//! connection holds no pipe and no user-space buffer. Pipes are kernel memory (up to 64 KiB
//! each), so the number alive is bounded by the directions moving bytes at once plus [`KEEP`].
//! End of input becomes `shutdown(Write)` on the destination once the pipe is drained; the
//! idle timeout, the `rate=` buckets and the byte counters work as in the arena copy.

use std::future::Future;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustix::io::Errno;
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use smol::{Async, Timer};

use crate::rate::{Limits, Shared};
use crate::stats::Counter;

/// Splices per direction in one wake-up before yielding to other tasks.
const BUDGET: usize = 16;
/// Empty pipes kept open for reuse; more are closed when given back.
pub const KEEP: usize = 32;
/// Most bytes asked of one splice (the pipe's free room bounds it anyway).
const CHUNK: usize = 1 << 20;

/// A pipe: read end, write end.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

/// Empty pipes ready for reuse.
static FREE: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

fn free_list() -> std::sync::MutexGuard<'static, Vec<Pipe>> {
    // Push/pop only: a panic while holding the lock cannot leave the list inconsistent.
    FREE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Take an empty pipe from the free list, or make one.
fn lease() -> io::Result<Pipe> {
    if let Some(p) = free_list().pop() {
        return Ok(p);
    }
    let (r, w) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
    Ok(Pipe { r, w })
}

/// Give an empty pipe back (closed if the free list is full).
fn give_back(p: Pipe) {
    let mut free = free_list();
    if free.len() < KEEP {
        free.push(p);
    }
}

/// Pipes on the free list now (for tests and the stats).
pub fn free_pipes() -> usize {
    free_list().len()
}

fn would_block(e: Errno) -> bool {
    e == Errno::AGAIN || e == Errno::WOULDBLOCK
}

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

struct Dir<'c> {
    pipe: Option<Pipe>,
    /// Bytes in the pipe, not yet written.
    queued: usize,
    eof: bool,
    done: bool,
    bytes: u64,
    counter: &'c Counter,
    bucket: Option<&'c Shared>,
    /// Set while the rate limit holds the next read back.
    wait: Option<Timer>,
}

impl Drop for Dir<'_> {
    fn drop(&mut self) {
        // A pipe with bytes still in it is closed (dropped), never reused.
        if let Some(p) = self.pipe.take() {
            if self.queued == 0 {
                give_back(p);
            }
        }
    }
}

impl<'c> Dir<'c> {
    fn new(counter: &'c Counter, bucket: Option<&'c Shared>) -> Self {
        Dir {
            pipe: None,
            queued: 0,
            eof: false,
            done: false,
            bytes: 0,
            counter,
            bucket,
            wait: None,
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &Async<TcpStream>,
        dst: &Async<TcpStream>,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..BUDGET {
            // Drain what the pipe holds before reading more.
            if self.queued > 0 {
                let Some(pipe) = &self.pipe else {
                    return Poll::Ready(Err(io::Error::other("bytes queued without a pipe")));
                };
                match splice(&pipe.r, None, dst.get_ref(), None, self.queued, FLAGS) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.queued -= n.min(self.queued);
                        self.bytes += n as u64;
                        self.counter.add(n as u64);
                        *moved = true;
                    }
                    Err(e) if would_block(e) => {
                        ready!(dst.poll_writable(cx))?;
                    }
                    Err(e) => return Poll::Ready(Err(e.into())),
                }
                continue;
            }
            if self.eof {
                // The pipe is drained: pass the half-close on.
                match dst.get_ref().shutdown(Shutdown::Write) {
                    Err(e) if e.kind() != io::ErrorKind::NotConnected => {
                        return Poll::Ready(Err(e))
                    }
                    _ => {}
                }
                self.done = true;
                if let Some(p) = self.pipe.take() {
                    give_back(p);
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(t) = &mut self.wait {
                ready!(Pin::new(t).poll(cx));
                self.wait = None;
            }
            let pipe = match &self.pipe {
                Some(p) => p,
                None => {
                    // Lease a pipe only once there is something to move.
                    ready!(src.poll_readable(cx))?;
                    self.pipe.insert(lease()?)
                }
            };
            match splice(src.get_ref(), None, &pipe.w, None, CHUNK, FLAGS) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.queued = n;
                    *moved = true;
                    if let Some(wait) = self.bucket.and_then(|b| b.take(n)) {
                        self.wait = Some(Timer::after(wait));
                    }
                }
                Err(e) if would_block(e) => {
                    // Nothing to read: the empty pipe goes back until bytes arrive.
                    if let Some(p) = self.pipe.take() {
                        give_back(p);
                    }
                    ready!(src.poll_readable(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

struct Bidi<'a, 'c> {
    a: &'a Async<TcpStream>,
    b: &'a Async<TcpStream>,
    ab: Dir<'c>,
    ba: Dir<'c>,
    idle: Option<(Duration, Timer)>,
}

impl Future for Bidi<'_, '_> {
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut moved = false;
        let ab = this.ab.poll(cx, this.a, this.b, &mut moved)?;
        let ba = this.ba.poll(cx, this.b, this.a, &mut moved)?;
        crate::copy::both_done(
            cx,
            (ab, ba),
            (this.ab.bytes, this.ba.bytes),
            moved,
            &mut this.idle,
        )
    }
}

/// Relay `a` ⇄ `b` with splice(2) until both directions end; the same contract as
/// [`crate::copy::bidi`]: returns the bytes moved each way, `idle` ends it with
/// `TimedOut`, `a` → `b` is charged to `limits.up`.
pub async fn bidi(
    a: &Async<TcpStream>,
    b: &Async<TcpStream>,
    counters: (&Counter, &Counter),
    idle: Option<Duration>,
    limits: Option<&Limits>,
) -> io::Result<(u64, u64)> {
    Bidi {
        a,
        b,
        ab: Dir::new(counters.0, limits.map(|l| &l.up)),
        ba: Dir::new(counters.1, limits.map(|l| &l.down)),
        idle: idle.map(|d| (d, Timer::after(d))),
    }
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::io::{AsyncReadExt, AsyncWriteExt};
    use std::net::TcpListener;

    /// A connected pair of async sockets.
    async fn pair() -> (Async<TcpStream>, Async<TcpStream>) {
        let l = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
        let addr = l.get_ref().local_addr().expect("addr");
        let (c, s) = smol::future::zip(Async::<TcpStream>::connect(addr), l.accept()).await;
        (c.expect("connect"), s.expect("accept").0)
    }

    #[test]
    fn relays_both_ways_with_half_close_and_gives_pipes_back() {
        smol::block_on(async {
            // user <-> (x | y) <-> target
            let (mut user, x) = pair().await;
            let (y, mut target) = pair().await;
            let (up, down) = (Counter::default(), Counter::default());
            let relay = bidi(&x, &y, (&up, &down), Some(Duration::from_secs(10)), None);
            let peers = async {
                let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
                user.write_all(&big).await.expect("write");
                user.get_ref().shutdown(Shutdown::Write).expect("shutdown");
                let mut got = Vec::new();
                target.read_to_end(&mut got).await.expect("read");
                assert!(got == big, "bytes changed on the way");
                target.write_all(b"reply").await.expect("reply");
                target
                    .get_ref()
                    .shutdown(Shutdown::Write)
                    .expect("shutdown");
                let mut back = Vec::new();
                user.read_to_end(&mut back).await.expect("read back");
                assert_eq!(back, b"reply");
            };
            let (res, ()) = smol::future::zip(relay, peers).await;
            assert_eq!(res.expect("relay"), (300_000, 5));
            assert_eq!((up.get(), down.get()), (300_000, 5));
            assert!(free_pipes() >= 1, "the pipes went back to the free list");
        });
    }

    #[test]
    fn idle_times_out_holding_no_pipe() {
        smol::block_on(async {
            let (_user, x) = pair().await;
            let (y, _target) = pair().await;
            let (up, down) = (Counter::default(), Counter::default());
            let r = bidi(&x, &y, (&up, &down), Some(Duration::from_millis(50)), None).await;
            assert_eq!(r.expect_err("idle").kind(), io::ErrorKind::TimedOut);
        });
    }
}
