//! Single-end forwarding (client `mode=1`): a plain local TCP and UDP port forwarder.
//!
//! `client://127.0.0.1:8080/10.0.0.5:80?mode=1` listens on the "tunnel" address itself and
//! sends every connection and every UDP flow straight to the targets (round robin with
//! failover, PROXY header, `rate`, `slot`, `read`), with no server and no pool: NodePass's
//! single-end mode. With `mode=0` a client picks this mode when it can bind its tunnel address
//! locally, as NodePass does.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use smol::Async;

use crate::arena::Arena;
use crate::client::{self, Inner};
use crate::config::Config;
use crate::error::Result;
use crate::net;
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::stream::Conn;
use crate::util::{accept_next, RateLimit};

/// A bound single-end forwarder.
pub struct Forward {
    inner: Arc<Inner>,
    tcp: Async<TcpListener>,
    #[cfg(feature = "udp")]
    udp: Option<Async<std::net::UdpSocket>>,
    refusals: RateLimit,
}

impl Forward {
    /// Bind the listen address (`cfg.tunnel`) for TCP, and for UDP unless `noudp`.
    pub async fn bind(
        cfg: Config,
        stats: Arc<Stats>,
        bufs: (Arc<Arena>, Option<Arc<Arena>>),
        shutdown: Shutdown,
    ) -> Result<Forward> {
        let tcp = net::listen(&cfg.tunnel, &cfg.tuning).await?;
        Self::with_listener(tcp, cfg, stats, bufs, shutdown).await
    }

    /// Use an already bound TCP listener (`mode=0` found the address bindable).
    pub async fn with_listener(
        tcp: Async<TcpListener>,
        cfg: Config,
        stats: Arc<Stats>,
        bufs: (Arc<Arena>, Option<Arc<Arena>>),
        shutdown: Shutdown,
    ) -> Result<Forward> {
        #[cfg(feature = "udp")]
        let (tcp, udp) = if bufs.1.is_some() {
            let hp = cfg.tunnel.clone();
            let (t, u) = crate::udp::bind_beside(tcp, &hp, &cfg.tuning).await?;
            (t, Some(u))
        } else {
            (tcp, None)
        };
        Ok(Forward {
            inner: Arc::new(Inner::new(cfg, stats, bufs, shutdown)?),
            tcp,
            #[cfg(feature = "udp")]
            udp,
            refusals: RateLimit::new(Duration::from_secs(1)),
        })
    }

    /// The local address users connect to.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.tcp.get_ref().local_addr()?)
    }

    /// Forward until shutdown.
    pub async fn run(self) -> Result<()> {
        let Forward {
            inner,
            tcp,
            refusals,
            ..
        } = self;
        let targets: Vec<String> = inner.cfg.targets.iter().map(|t| t.to_string()).collect();
        log::info!(
            "forward: {} -> {} (single-end, no server)",
            tcp.get_ref().local_addr()?,
            targets.join(",")
        );
        #[cfg(feature = "udp")]
        let udp_task = self
            .udp
            .map(|u| crate::rt::spawn(udp_flows(inner.clone(), u)));
        let t = crate::rt::spawn(accept(inner.clone(), tcp, refusals));
        inner.shutdown.wait().await;
        t.cancel().await;
        #[cfg(feature = "udp")]
        if let Some(u) = udp_task {
            u.cancel().await;
        }
        Ok(())
    }
}

async fn accept(inner: Arc<Inner>, l: Async<TcpListener>, refusals: RateLimit) {
    let mut errors = 0u32;
    loop {
        let (s, peer) = accept_next("forward", &l, &mut errors).await;
        if inner.cfg.notcp {
            continue;
        }
        if inner.stats.active() >= inner.cfg.slot {
            inner.stats.refused.fetch_add(1, Relaxed);
            if refusals.allow() {
                log::warn!(
                    "forward: user {peer} refused: all {} slots in use",
                    inner.cfg.slot
                );
            }
            continue;
        }
        let inner = inner.clone();
        crate::rt::spawn(async move { client::serve_tcp(&inner, Conn::Plain(s), &[], peer).await })
            .detach();
    }
}

#[cfg(feature = "udp")]
use flows::udp_flows;

#[cfg(feature = "udp")]
mod flows {
    //! UDP in single-end mode: one connected socket towards a target per source address.

    use std::collections::HashMap;
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use smol::future::FutureExt;
    use smol::{Async, Timer};

    use crate::client::Inner;
    use crate::stats::ActiveGuard;
    use crate::timeout::within;
    use crate::udp::flows::RecvBudget;
    use crate::util::RateLimit;

    /// One flow: the socket towards the target and when the source last sent.
    struct Flow {
        sock: Arc<Async<UdpSocket>>,
        /// Milliseconds since `epoch` of the last datagram from the source (wraps after 49
        /// days; only differences are used). 32 bits: MIPS32 has no 64-bit atomics.
        last: AtomicU32,
    }

    type Table = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

    fn ms(epoch: Instant) -> u32 {
        epoch.elapsed().as_millis() as u32
    }

    pub(super) async fn udp_flows(inner: Arc<Inner>, sock: Async<UdpSocket>) {
        let Some(arena) = inner.udp_arena.clone() else {
            return;
        };
        let wait = inner.cfg.tuning.pool_get_timeout;
        let Some(mut buf) = arena.lease(wait).await else {
            log::error!("forward: no UDP buffer; UDP off");
            return;
        };
        let sock = Arc::new(sock);
        let table: Table = Arc::new(Mutex::new(HashMap::new()));
        let epoch = Instant::now();
        let drops = RateLimit::new(Duration::from_secs(1));
        let max = inner.cfg.tuning.udp_buf;
        let mut budget = RecvBudget::default();
        loop {
            let (n, src) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    log::debug!("forward: UDP receive failed: {e}");
                    Timer::after(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // Or a flood starves every other task on the thread.
            budget.spend().await;
            if n > max {
                inner.stats.udp_dropped.fetch_add(1, Relaxed);
                continue;
            }
            let existing = table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&src)
                .cloned();
            let flow = match existing {
                Some(f) => f,
                None => {
                    if inner.stats.active() >= inner.cfg.slot {
                        // As the server counts a flow it cannot take: dropped and refused.
                        inner.stats.udp_dropped.fetch_add(1, Relaxed);
                        inner.stats.refused.fetch_add(1, Relaxed);
                        if drops.allow() {
                            log::warn!("forward: UDP flow from {src} dropped: all slots in use");
                        }
                        continue;
                    }
                    // Counted before the next datagram is looked at, so the slot check above
                    // sees this flow (its task may not run before the loop reads again).
                    let active = ActiveGuard::new(&inner.stats, true);
                    let target = match crate::udp::dial(&inner).await {
                        Ok(t) => Arc::new(t),
                        Err(e) => {
                            inner.stats.udp_dropped.fetch_add(1, Relaxed);
                            if drops.allow() {
                                log::warn!("forward: UDP flow from {src}: no target: {e}");
                            }
                            continue;
                        }
                    };
                    let flow = Arc::new(Flow {
                        sock: target,
                        last: AtomicU32::new(ms(epoch)),
                    });
                    table
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(src, flow.clone());
                    let task = replies(inner.clone(), sock.clone(), flow.clone(), src, epoch);
                    let table = table.clone();
                    crate::rt::spawn(async move {
                        task.await;
                        table.lock().unwrap_or_else(|e| e.into_inner()).remove(&src);
                        drop(active);
                    })
                    .detach();
                    flow
                }
            };
            flow.last.store(ms(epoch), Relaxed);
            match flow.sock.send(&buf[..n]).await {
                Ok(_) => inner.stats.udp_rx.add(n as u64),
                Err(e) => log::debug!("forward: UDP to target for {src}: {e}"),
            }
        }
    }

    /// Replies from the target go back to `src` until the flow is silent both ways for
    /// `UDP_READ_TIMEOUT`.
    async fn replies(
        inner: Arc<Inner>,
        listener: Arc<Async<UdpSocket>>,
        flow: Arc<Flow>,
        src: SocketAddr,
        epoch: Instant,
    ) {
        let Some(arena) = inner.udp_arena.clone() else {
            return;
        };
        let Some(mut buf) = arena.lease(inner.cfg.tuning.pool_get_timeout).await else {
            inner.stats.udp_dropped.fetch_add(1, Relaxed);
            return;
        };
        let idle = inner.cfg.tuning.udp_read_timeout;
        let idle_ms = idle.as_millis().min(u32::MAX as u128) as u32;
        let mut last_rx = ms(epoch);
        loop {
            let got = within(idle, flow.sock.recv(&mut buf))
                .or(async {
                    inner.shutdown.wait().await;
                    None
                })
                .await;
            match got {
                Some(Ok(n)) if n <= inner.cfg.tuning.udp_buf => {
                    last_rx = ms(epoch);
                    if listener.send_to(&buf[..n], src).await.is_ok() {
                        inner.stats.udp_tx.add(n as u64);
                    }
                }
                Some(Ok(_)) => {
                    inner.stats.udp_dropped.fetch_add(1, Relaxed);
                }
                Some(Err(e)) => {
                    log::debug!("forward: UDP flow {src}: {e}");
                    return;
                }
                None => {
                    let now = ms(epoch);
                    let quiet_tx = now.wrapping_sub(flow.last.load(Relaxed));
                    let quiet_rx = now.wrapping_sub(last_rx);
                    if inner.shutdown.is_triggered() || (quiet_tx >= idle_ms && quiet_rx >= idle_ms)
                    {
                        log::debug!("forward: UDP flow {src} ended after {idle:?} idle");
                        return;
                    }
                }
            }
        }
    }
}
