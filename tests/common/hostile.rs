//! Hostile peers for any listening port: garbage, oversized lines, slowloris senders, floods of
//! connections that never authenticate. Each takes only the address, so the relay and TLS
//! ports can reuse them.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Task};

use super::{pattern, within};

/// A valid first line (`hello ctl <nonce>`), for "a valid prefix, then garbage".
pub const HELLO: &[u8] = b"hello ctl 000102030405060708090a0b0c0d0e0f\n";

/// What one hostile connection saw.
#[derive(Debug)]
pub struct Outcome {
    /// When the server closed it (EOF or reset), counted from the connect; `None` if it was
    /// still open at the bound.
    pub closed_after: Option<Duration>,
    /// Bytes we managed to write.
    pub sent: usize,
    /// Bytes the server wrote back.
    pub got: Vec<u8>,
}

/// Random bytes (deterministic per seed).
pub fn random_bytes(len: usize, seed: u32) -> Vec<u8> {
    pattern(len, seed)
}

/// [`HELLO`] followed by `len` random bytes.
pub fn prefix_then_garbage(len: usize, seed: u32) -> Vec<u8> {
    let mut v = HELLO.to_vec();
    v.extend(pattern(len, seed).into_iter().map(|b| b | 0x80));
    v
}

/// A line that starts well (`hello ctl `) and never ends: `len` letters, no newline.
pub fn oversized_line(len: usize) -> Vec<u8> {
    let mut v = b"hello ctl ".to_vec();
    v.resize(len, b'a');
    v
}

/// Read until the peer closes, at most `bound`; returns what arrived and whether it closed.
async fn read_until_closed(s: &mut Async<TcpStream>, bound: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match within(left, s.read(&mut buf)).await {
            None => return (got, false),
            Some(Ok(0)) | Some(Err(_)) => return (got, true),
            Some(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Connect, write `bytes` at once (a write error just means the server closed first), and
/// wait up to `bound` for the server to close the connection.
pub async fn send_and_wait_close(addr: SocketAddr, bytes: Vec<u8>, bound: Duration) -> Outcome {
    let t0 = Instant::now();
    let mut s = Async::<TcpStream>::connect(addr).await.expect("connect");
    let sent = match s.write_all(&bytes).await {
        Ok(()) => bytes.len(),
        Err(_) => 0,
    };
    let (got, closed) = read_until_closed(&mut s, bound).await;
    Outcome {
        closed_after: closed.then(|| t0.elapsed()),
        sent,
        got,
    }
}

/// A slowloris sender: `bytes` one at a time, one every `every`, until the server closes the
/// connection or `bound` passes.
pub async fn slowloris(
    addr: SocketAddr,
    bytes: &[u8],
    every: Duration,
    bound: Duration,
) -> Outcome {
    let t0 = Instant::now();
    let mut s = Async::<TcpStream>::connect(addr).await.expect("connect");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let mut sent = 0;
    for b in bytes.iter().cycle() {
        if t0.elapsed() >= bound {
            break;
        }
        if s.write_all(std::slice::from_ref(b)).await.is_err() {
            return Outcome {
                closed_after: Some(t0.elapsed()),
                sent,
                got,
            };
        }
        sent += 1;
        // The pause doubles as the check for a close.
        match within(every, s.read(&mut buf)).await {
            None => {}
            Some(Ok(0)) | Some(Err(_)) => {
                return Outcome {
                    closed_after: Some(t0.elapsed()),
                    sent,
                    got,
                }
            }
            Some(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    Outcome {
        closed_after: None,
        sent,
        got,
    }
}

/// Open `n` connections that never send a byte; returns them (keep them to hold them open).
pub async fn silent(addr: SocketAddr, n: usize) -> Vec<Async<TcpStream>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(Async::<TcpStream>::connect(addr).await.expect("connect"));
    }
    v
}

/// For each connection, when the server closed it (from now), waiting at most `bound` in all.
pub async fn close_times(conns: Vec<Async<TcpStream>>, bound: Duration) -> Vec<Option<Duration>> {
    let t0 = Instant::now();
    let tasks: Vec<Task<Option<Duration>>> = conns
        .into_iter()
        .map(|mut s| {
            smol::spawn(async move {
                let (_, closed) = read_until_closed(&mut s, bound).await;
                closed.then(|| t0.elapsed())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await);
    }
    out
}

/// Counts of a running [`flood`].
#[derive(Debug, Default)]
pub struct FloodStats {
    /// Connections made.
    pub opened: AtomicUsize,
    /// Connections the server closed.
    pub closed: AtomicUsize,
    /// Connects that failed (listen queue full, fd limit).
    pub connect_failed: AtomicUsize,
}

/// A running flood; dropping it stops it (open connections are dropped with it).
pub struct Flood {
    /// Its counts.
    pub stats: Arc<FloodStats>,
    _task: Task<()>,
    /// Its receivers see the channel close when the flood is dropped.
    _stop: smol::channel::Sender<()>,
}

/// Flood `addr` with connections that never authenticate, at most `max_open` at a time, in
/// turn: silent, random bytes, a valid line then garbage, an oversized line. Each stays open
/// until the server closes it.
pub fn flood(addr: SocketAddr, max_open: usize) -> Flood {
    let stats = Arc::new(FloodStats::default());
    let st = stats.clone();
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let task = smol::spawn(async move {
        let slots = Arc::new(smol::lock::Semaphore::new(max_open));
        for i in 0u32.. {
            let permit = slots.acquire_arc().await;
            let payload = match i % 4 {
                0 => Vec::new(),
                1 => random_bytes(600, i),
                2 => prefix_then_garbage(100, i),
                _ => oversized_line(1000),
            };
            let st = st.clone();
            let stopped = stopped.clone();
            let Ok(mut s) = Async::<TcpStream>::connect(addr).await else {
                st.connect_failed.fetch_add(1, Relaxed);
                smol::Timer::after(Duration::from_millis(10)).await;
                continue;
            };
            st.opened.fetch_add(1, Relaxed);
            smol::spawn(async move {
                use smol::future::FutureExt;
                let _permit = permit;
                let _ = s.write_all(&payload).await;
                let closed = async { read_until_closed(&mut s, Duration::from_secs(60)).await.1 }
                    .or(async {
                        let _ = stopped.recv().await;
                        false
                    })
                    .await;
                if closed {
                    st.closed.fetch_add(1, Relaxed);
                }
            })
            .detach();
        }
    });
    Flood {
        stats,
        _task: task,
        _stop: stop,
    }
}
