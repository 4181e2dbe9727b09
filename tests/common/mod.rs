//! Shared test harness: echo targets on 127.0.0.1:0 and tunnels run in-process.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgepass::config::{self, Config};
use edgepass::shutdown::Shutdown;
use edgepass::stats::Stats;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Task, Timer};

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(20);

/// Parse a URL with an empty environment, panicking with the error (test input is ours).
pub fn cfg(url: &str) -> Config {
    config::parse(url, &|_| None).unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// Poll `cond` every few milliseconds until it holds, failing the test after [`WAIT`].
pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        Timer::after(Duration::from_millis(5)).await;
    }
}

/// A TCP echo server on 127.0.0.1:0: echoes until EOF, then half-closes.
pub fn echo_server() -> (SocketAddr, Task<()>) {
    let l = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind echo");
    let addr = l.get_ref().local_addr().expect("addr");
    let task = smol::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            smol::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.get_ref().shutdown(std::net::Shutdown::Write);
            })
            .detach();
        }
    });
    (addr, task)
}

/// A role running in-process.
pub struct Running {
    /// Its tunnel address (server).
    pub tunnel: Option<SocketAddr>,
    /// Its public address (server).
    pub public: Option<SocketAddr>,
    /// Its counters.
    pub stats: Arc<Stats>,
    /// Stops it.
    pub stop: Shutdown,
    /// Finishes when it has stopped.
    pub task: Task<edgepass::error::Result<()>>,
}

/// Bind and start a role from a URL.
pub async fn start(url: &str) -> Running {
    start_cfg(cfg(url)).await
}

/// Bind and start a role from a parsed configuration.
pub async fn start_cfg(cfg: Config) -> Running {
    let stop = Shutdown::new();
    let what = format!("{:?} {}", cfg.role, cfg.tunnel);
    let node = edgepass::bind(cfg, stop.clone())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    Running {
        tunnel: node.tunnel_addr(),
        public: node.public_addr(),
        stats: node.stats(),
        stop,
        task: smol::spawn(node.run()),
    }
}

/// A server on 127.0.0.1:0 and a client forwarding to `target`, with the client's pool warm.
pub struct Tunnel {
    /// The server role.
    pub server: Running,
    /// The client role.
    pub client: Running,
    /// Where users connect.
    pub public: SocketAddr,
}

/// Start a tunnel with `key` to `target`; `query` is appended to both URLs (e.g. `?max=8`).
pub async fn tunnel(key: &str, target: SocketAddr, query: &str) -> Tunnel {
    let server = start(&format!("server://{key}@127.0.0.1:0/127.0.0.1:0{query}")).await;
    let tunnel = server.tunnel.expect("tunnel addr");
    let client = start(&format!("client://{key}@{tunnel}/{target}{query}")).await;
    let stats = client.stats.clone();
    wait_until("a warm pool", || {
        stats.pool_idle.load(std::sync::atomic::Ordering::Relaxed) > 0
    })
    .await;
    let public = server.public.expect("public addr");
    Tunnel {
        server,
        client,
        public,
    }
}

/// Connect, send `data`, half-close, and read everything back (writing and reading at once,
/// so transfers larger than the socket buffers cannot deadlock).
pub async fn round_trip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let s = Arc::new(Async::<TcpStream>::connect(addr).await.expect("connect"));
    let w = s.clone();
    let data = data.to_vec();
    let writer = smol::spawn(async move {
        (&*w).write_all(&data).await.expect("write");
        w.get_ref()
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
    });
    let mut out = Vec::new();
    (&*s).read_to_end(&mut out).await.expect("read");
    writer.await;
    out
}

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
