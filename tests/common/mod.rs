//! Shared test harness: echo targets on 127.0.0.1:0 and tunnels run in-process.
#![allow(dead_code)]

pub mod bin;
pub mod fake_server;
pub mod hostile;
pub mod link;
pub mod procfs;
pub mod udp;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgepass::auth::{self, Key, Transcript};
use edgepass::config::{self, Config};
use edgepass::lines::{send, LineReader};
use edgepass::shutdown::Shutdown;
use edgepass::signal::{Kind, Signal, NONCE_LEN, SID_LEN};
use edgepass::stats::Stats;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Task, Timer};

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(20);

/// Parse a URL with an empty environment, panicking with the error (test input is ours).
pub fn cfg(url: &str) -> Config {
    cfg_env(url, &[])
}

/// Parse a URL with the environment variables `env` (name, value) and no others.
pub fn cfg_env(url: &str, env: &[(&str, &str)]) -> Config {
    let lookup = |k: &str| {
        env.iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
    };
    config::parse(url, &lookup).unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// Timings for tests that wait on reconnects and handshakes: a client retries after about
/// 100 ms, and a silent tunnel-port peer is dropped after 500 ms.
pub const FAST: &[(&str, &str)] = &[
    ("SERVICE_COOLDOWN", "100ms"),
    ("HANDSHAKE_TIMEOUT", "500ms"),
];

pub use edgepass::timeout::within;

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
    echo_server_at(([127, 0, 0, 1], 0).into())
}

/// [`echo_server`] on `addr`.
pub fn echo_server_at(addr: SocketAddr) -> (SocketAddr, Task<()>) {
    let l = Async::<TcpListener>::bind(addr).expect("bind echo");
    let addr = l.get_ref().local_addr().expect("addr");
    let task = smol::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                // Out of descriptors, say: a pause, not a spin that starves the other tasks.
                smol::Timer::after(std::time::Duration::from_millis(10)).await;
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
    start_env(url, &[]).await
}

/// Bind and start a role from a URL and environment variables.
pub async fn start_env(url: &str, env: &[(&str, &str)]) -> Running {
    start_cfg(cfg_env(url, env)).await
}

/// Bind and start a role from a parsed configuration.
pub async fn start_cfg(cfg: Config) -> Running {
    start_cfg_on(cfg, false).await
}

/// [`start_cfg`]; with `one_thread`, the role's own loops run on edgepass's runtime thread
/// beside every task they spawn, as in the binary (else on smol's, so a test's roles do not
/// wait on each other).
pub async fn start_cfg_on(cfg: Config, one_thread: bool) -> Running {
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
        task: if one_thread {
            edgepass::rt::spawn(node.run())
        } else {
            smol::spawn(node.run())
        },
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
    tunnel_env(key, target, query, &[]).await
}

/// [`tunnel`] with environment variables for both roles.
pub async fn tunnel_env(
    key: &str,
    target: SocketAddr,
    query: &str,
    env: &[(&str, &str)],
) -> Tunnel {
    let server = start_env(
        &format!("server://{key}@127.0.0.1:0/127.0.0.1:0{query}"),
        env,
    )
    .await;
    let tunnel = server.tunnel.expect("tunnel addr");
    let client = start_env(&format!("client://{key}@{tunnel}/{target}{query}"), env).await;
    // The server side of the pool: a user connection arriving now finds one at once.
    let stats = server.stats.clone();
    wait_until("a warm pool", || idle(&stats) > 0).await;
    let public = server.public.expect("public addr");
    Tunnel {
        server,
        client,
        public,
    }
}

impl Running {
    /// Stop the role and wait (bounded) until it has finished.
    pub async fn stop(self) {
        self.stop.trigger();
        within(WAIT, self.task)
            .await
            .expect("role did not stop in time")
            .expect("role failed");
    }
}

/// Idle pool connections a role holds now.
pub fn idle(stats: &Stats) -> usize {
    stats.pool_idle.load(std::sync::atomic::Ordering::Relaxed)
}

/// Tunnel-port connections a server refused so far.
pub fn bad_peers(stats: &Stats) -> usize {
    stats.bad_peers.load(std::sync::atomic::Ordering::Relaxed)
}

/// A target on 127.0.0.1:0 that reads the request until EOF (the user's FIN must have crossed
/// the tunnel) and only then answers with the request followed by `reply`, and closes.
pub fn reply_after_eof_server(reply: Vec<u8>) -> (SocketAddr, Task<()>) {
    let l = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind target");
    let addr = l.get_ref().local_addr().expect("addr");
    let reply = Arc::new(reply);
    let task = smol::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                // Out of descriptors, say: a pause, not a spin that starves the other tasks.
                smol::Timer::after(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let reply = reply.clone();
            smol::spawn(async move {
                let mut req = Vec::new();
                if s.read_to_end(&mut req).await.is_err() {
                    return;
                }
                if s.write_all(&req).await.is_ok() && s.write_all(&reply).await.is_ok() {
                    let _ = s.get_ref().shutdown(std::net::Shutdown::Write);
                }
            })
            .detach();
        }
    });
    (addr, task)
}

/// Open a raw tunnel-port connection and run the handshake by hand up to the challenge (whose
/// proof is not checked); returns what the client proof must cover.
pub async fn raw_hello(
    tunnel: SocketAddr,
    kind: Kind,
) -> (Async<TcpStream>, LineReader, Transcript<'static>) {
    let mut s = Async::<TcpStream>::connect(tunnel).await.expect("connect");
    let cnonce = auth::random::<NONCE_LEN>();
    send(&mut s, &Signal::Hello { kind, cnonce })
        .await
        .expect("send hello");
    let mut lines = LineReader::new();
    let t = match within(WAIT, lines.next(&mut s))
        .await
        .expect("no challenge")
        .expect("bad challenge")
    {
        Signal::Challenge {
            snonce,
            salt,
            tls,
            fp,
        } => Transcript {
            kind: auth::kind_token(kind),
            cnonce,
            snonce,
            salt,
            tls,
            fp,
        },
        other => panic!("expected a challenge, got {other:?}"),
    };
    (s, lines, t)
}

/// Finish a [`raw_hello`]: send `auth` with `key`'s proof (naming `sid` on a pool connection)
/// and check the `proof` the server answers with.
pub async fn authenticate(
    s: &mut Async<TcpStream>,
    lines: &mut LineReader,
    tr: &Transcript<'_>,
    key: &str,
    sid: Option<[u8; SID_LEN]>,
) {
    let key = Key::derive(key.as_bytes(), tr.salt);
    let proof = tr.client_proof(&key, sid);
    send(s, &Signal::Auth { proof, sid })
        .await
        .expect("send auth");
    match within(WAIT, lines.next(s)).await.expect("no proof") {
        Ok(Signal::Proof { proof }) => assert!(tr.verify_server(&key, &proof), "bad proof"),
        other => panic!("expected the server's proof, got {other:?}"),
    }
}

/// A hand-made client: authenticate a control connection with `key`; returns it (keep it to
/// keep the session) and the session id its pool connections name.
pub async fn raw_session(tunnel: SocketAddr, key: &str) -> (Async<TcpStream>, [u8; SID_LEN]) {
    let (mut ctl, mut lines, tr) = raw_hello(tunnel, Kind::Ctl).await;
    authenticate(&mut ctl, &mut lines, &tr, key, None).await;
    match within(WAIT, lines.next(&mut ctl)).await.expect("no reply") {
        Ok(Signal::Session { sid, .. }) => (ctl, sid),
        other => panic!("expected a session, got {other:?}"),
    }
}

/// A hand-made pool connection of session `sid`, authenticated with `key`; returns it and the
/// server's answer: `Ok(id)` for `pooled <id>`, `Err(code)` for `err <code>`.
pub async fn raw_pool(
    tunnel: SocketAddr,
    key: &str,
    sid: [u8; SID_LEN],
) -> (Async<TcpStream>, Result<u32, u16>) {
    let (mut pool, mut lines, tr) = raw_hello(tunnel, Kind::Pool).await;
    authenticate(&mut pool, &mut lines, &tr, key, Some(sid)).await;
    let reply = match within(WAIT, lines.next(&mut pool)).await.expect("no reply") {
        Ok(Signal::Pooled { id }) => Ok(id),
        Ok(Signal::Err { code, .. }) => Err(code),
        other => panic!("expected pooled or err, got {other:?}"),
    };
    (pool, reply)
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

/// Connect, send `data`, read it back (checked), and return the connection still open.
pub async fn echo_once(addr: SocketAddr, data: &[u8]) -> Async<TcpStream> {
    let mut s = Async::<TcpStream>::connect(addr).await.expect("connect");
    s.write_all(data).await.expect("write");
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).await.expect("read");
    assert_eq!(back, data, "wrong echo");
    s
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
