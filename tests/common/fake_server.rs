//! A hand-made tunnel server on 127.0.0.1:0 for client tests: it authenticates the client's
//! control connection and opens a session (and answers nothing on it after that), then treats
//! pool connections the way a test asks, noting when each one arrived and whether the client
//! closed it.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgepass::auth::Key;
use edgepass::handshake;
use edgepass::lines::{send, LineReader};
use edgepass::signal::{Kind, Signal, SID_LEN};
use smol::io::AsyncReadExt;
use smol::{Async, Task};

/// What the fake does with an authenticated pool connection.
#[derive(Debug, Clone, Copy)]
pub enum PoolReply {
    /// Never answers `auth`: no `pooled`, no `err`.
    Silent,
    /// Answers `pooled 1`, then closes the connection at once.
    PooledThenClose,
}

/// What the fake saw.
#[derive(Debug, Default)]
pub struct FakeStats {
    /// When each authenticated pool connection arrived.
    pub pools: Mutex<Vec<Instant>>,
    /// Pool connections the client closed ([`PoolReply::Silent`]).
    pub closed_by_client: AtomicUsize,
}

impl FakeStats {
    /// Authenticated pool connections so far.
    pub fn pools(&self) -> usize {
        self.pools.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A running fake server; dropping it stops accepting.
pub struct FakeServer {
    /// Its tunnel address.
    pub addr: SocketAddr,
    /// What it saw.
    pub stats: Arc<FakeStats>,
    _task: Task<()>,
}

/// Start a fake server with `key` that answers pool connections with `reply`.
pub fn fake_server(key: &str, reply: PoolReply) -> FakeServer {
    let l = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind fake server");
    let addr = l.get_ref().local_addr().expect("addr");
    let (key, stats) = (Key::fresh(key.as_bytes()), Arc::new(FakeStats::default()));
    let st = stats.clone();
    let task = smol::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                smol::Timer::after(Duration::from_millis(10)).await;
                continue;
            };
            let (key, st) = (key.clone(), st.clone());
            smol::spawn(async move {
                let mut lines = LineReader::new();
                let Ok(hello) = handshake::accept(&mut s, &mut lines, Some(&key), 0, None).await
                else {
                    return;
                };
                let until_closed = |mut s: Async<std::net::TcpStream>| async move {
                    let mut buf = [0u8; 512];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                };
                if hello.kind == Kind::Ctl {
                    let session = Signal::Session {
                        sid: [7; SID_LEN],
                        forward: false,
                        max: 4,
                        tcp: true,
                        udp: false,
                    };
                    if send(&mut s, &session).await.is_ok() {
                        until_closed(s).await;
                    }
                    return;
                }
                st.pools
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Instant::now());
                match reply {
                    PoolReply::Silent => {
                        until_closed(s).await;
                        st.closed_by_client.fetch_add(1, Relaxed);
                    }
                    PoolReply::PooledThenClose => {
                        let _ = send(&mut s, &Signal::Pooled { id: 1 }).await;
                    }
                }
            })
            .detach();
        }
    });
    FakeServer {
        addr,
        stats,
        _task: task,
    }
}
