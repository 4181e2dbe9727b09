//! edgepass: a tiny, fast and secure TCP/UDP tunnel and relay for routers and IoT devices.
//!
//! The binary parses a NodePass-style URL into a [`config::Config`], then calls [`bind`] and
//! [`Node::run`]; the integration tests call the same two functions in-process.
//!
//! # Examples
//! ```no_run
//! # smol::block_on(async {
//! let cfg = edgepass::config::parse("server://k@127.0.0.1:0/127.0.0.1:0", &|_| None).unwrap();
//! let stop = edgepass::shutdown::Shutdown::new();
//! let node = edgepass::bind(cfg, stop.clone()).await.unwrap();
//! println!("tunnel port: {:?}", node.tunnel_addr());
//! node.run().await.unwrap();
//! # });
//! ```
#![warn(missing_docs)]

pub mod arena;
pub mod auth;
pub mod chunk;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod control;
pub mod copy;
pub mod dialer;
pub mod duration;
pub mod error;
pub mod forward;
pub mod frame;
pub mod handshake;
pub mod heap;
pub mod idle;
pub mod lines;
pub mod net;
pub mod pending;
pub mod poke;
pub mod proxy;
pub mod rate;
#[cfg(feature = "relay")]
pub mod relay;
pub mod release;
pub mod resolve;
pub mod rt;
pub mod server;
pub mod shutdown;
pub mod signal;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod stats;
pub mod stream;
pub mod targets;
pub mod timeout;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "udp")]
pub mod udp;
pub mod util;
#[cfg(feature = "relay")]
pub mod visit;

use std::net::{SocketAddr, TcpListener};

use smol::Async;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::Timer;

use crate::arena::Arena;
use crate::client::Client;
use crate::config::{Config, LogLevel, Role};
use crate::error::Result;
use crate::forward::Forward;
use crate::server::Server;
use crate::shutdown::Shutdown;
use crate::stats::Stats;

/// Buffers in the UDP arena at most (two per concurrent flow): 512 x 64 KiB = 32 MiB of
/// address space, committed only while flows use it.
const MAX_UDP_FLOW_BUFFERS: usize = 512;

/// How often a draining shutdown looks at the number of open connections.
const DRAIN_POLL: Duration = Duration::from_millis(50);

enum Role_ {
    Server(Server),
    Client(Client),
    Forward(Forward),
    #[cfg(feature = "relay")]
    Relay(relay::Relay),
    #[cfg(feature = "relay")]
    Visit(visit::Visit),
}

/// A role with its listeners bound, ready to [`run`](Node::run).
pub struct Node {
    role: Role_,
    cfg_log: LogLevel,
    mode: u8,
    report: Duration,
    shutdown_timeout: Duration,
    stats: Arc<Stats>,
    arena: Arc<Arena>,
    udp_arena: Option<Arc<Arena>>,
    shutdown: Shutdown,
    tunnel: Option<SocketAddr>,
    public: Option<SocketAddr>,
    #[cfg(feature = "relay")]
    relay_stats: Option<Arc<relay::RelayStats>>,
}

/// What `edgepass --check` checks beyond the URL: what [`bind`] would refuse before binding
/// anything (a feature this build lacks, tls=2's certificate and key files, a client's `ca=`
/// file and `sni=` name), without binding, dialing or making a certificate.
pub fn check(cfg: &Config) -> Result<()> {
    in_this_build(cfg)?;
    #[cfg(feature = "tls")]
    match cfg.role {
        Role::Server | Role::Relay => tls::check_files(cfg)?,
        Role::Client | Role::Visit => drop(tls::ClientTls::new(cfg)?),
    }
    Ok(())
}

/// The role and the TLS settings `cfg` asks for are in this build.
fn in_this_build(cfg: &Config) -> Result<()> {
    #[cfg(not(feature = "tls"))]
    if cfg.tls != config::TlsMode::Off
        || (cfg.role == Role::Client && (cfg.ca.is_some() || cfg.sni.is_some()))
    {
        return Err(error::Error::Unsupported("TLS (tls=1, tls=2, ca=, sni=)"));
    }
    #[cfg(not(feature = "relay"))]
    if matches!(cfg.role, Role::Relay | Role::Visit) {
        return Err(error::Error::Unsupported("the relay and visit roles"));
    }
    let _ = cfg;
    Ok(())
}

/// Bind what the role listens on (nothing for a client) and prepare it to run.
///
/// Configuration problems found here (tls=2 certificate files, `ca=`) are [`error::Error::Config`]
/// and nothing is bound; the binary exits 2 for them.
pub async fn bind(cfg: Config, shutdown: Shutdown) -> Result<Node> {
    in_this_build(&cfg)?;
    let keyless = cfg.key.is_none();
    let stats = Arc::new(Stats::default());
    // Two buffers per concurrent session: one per direction.
    let arena = Arena::with_poke(
        cfg.slot.saturating_mul(2),
        cfg.tuning.tcp_buf,
        stats.ticker.clone(),
    )?;
    // Two per UDP flow as well (datagrams towards the tunnel, frames from it), each large
    // enough for the largest datagram; like the TCP arena, pages are committed only when used.
    let udp_arena = if udp_enabled(&cfg) {
        // Two buffers per flow, for at most MAX_UDP_FLOW_BUFFERS / 2 flows at once: 64 KiB
        // datagrams make a slot-sized UDP arena needlessly large on a router.
        let count = cfg.slot.saturating_mul(2).min(MAX_UDP_FLOW_BUFFERS);
        Some(Arena::with_poke(
            count,
            udp_buf_len(&cfg),
            stats.ticker.clone(),
        )?)
    } else {
        None
    };
    let bufs = (arena.clone(), udp_arena.clone());
    let (log, report, drain) = (
        cfg.log,
        cfg.tuning.report_interval,
        cfg.tuning.shutdown_timeout,
    );
    let (role, tunnel, public, mode) = match cfg.role {
        Role::Server => {
            let s = Server::bind(cfg, stats.clone(), bufs, shutdown.clone()).await?;
            let (t, p) = (s.tunnel_addr()?, s.public_addr()?);
            (
                Role_::Server(s),
                Some(t),
                p,
                if p.is_some() { 1 } else { 2 },
            )
        }
        Role::Client => match single_end(&cfg).await? {
            Some(listener) => {
                let f =
                    Forward::with_listener(listener, cfg, stats.clone(), bufs, shutdown.clone())
                        .await?;
                let p = f.local_addr()?;
                (Role_::Forward(f), None, Some(p), 1)
            }
            None => {
                let c = Client::new(cfg, stats.clone(), bufs, shutdown.clone())?;
                (Role_::Client(c), None, None, 2)
            }
        },
        #[cfg(feature = "relay")]
        Role::Relay => {
            let r = relay::Relay::bind(cfg, stats.clone(), arena.clone(), shutdown.clone()).await?;
            let t = r.local_addr()?;
            (Role_::Relay(r), Some(t), None, 1)
        }
        #[cfg(feature = "relay")]
        Role::Visit => {
            let v = visit::Visit::bind(cfg, stats.clone(), bufs, shutdown.clone()).await?;
            let p = v.local_addr()?;
            (Role_::Visit(v), None, Some(p), 2)
        }
        #[cfg(not(feature = "relay"))]
        Role::Relay | Role::Visit => {
            return Err(error::Error::Unsupported("the relay and visit roles"))
        }
    };
    // A single-end forwarder has no tunnel, so no key.
    if keyless && !matches!(role, Role_::Forward(_)) {
        log::warn!(
            "no key given (key@ in the URL, or EDGEPASS_KEY): the key is the tunnel port number, which anyone can guess"
        );
    }
    #[cfg(feature = "relay")]
    let relay_stats = match &role {
        Role_::Relay(r) => Some(r.relay_stats()),
        _ => None,
    };
    Ok(Node {
        role,
        cfg_log: log,
        mode,
        report,
        shutdown_timeout: drain,
        stats,
        arena,
        udp_arena,
        shutdown,
        tunnel,
        public,
        #[cfg(feature = "relay")]
        relay_stats,
    })
}

/// Whether this role forwards UDP: built with the `udp` feature and not `noudp=1`.
pub(crate) fn udp_enabled(cfg: &Config) -> bool {
    cfg!(feature = "udp") && !cfg.noudp
}

#[cfg(feature = "udp")]
fn udp_buf_len(cfg: &Config) -> usize {
    udp::buf_len(cfg.tuning.udp_buf)
}

#[cfg(not(feature = "udp"))]
fn udp_buf_len(cfg: &Config) -> usize {
    cfg.tuning.udp_buf
}

/// A client's mode: `mode=1` forwards locally (the listener is bound here, so a taken port
/// fails at start), `mode=2` is a tunnel client, and `mode=0` (NodePass's auto) forwards
/// locally when the tunnel address can be bound on this machine. Unlike NodePass, a client
/// whose URL names a key, TLS settings or a reservation always talks to a server: a tunnel
/// client started before its server on the same machine must not turn into a forwarder.
async fn single_end(cfg: &Config) -> Result<Option<Async<TcpListener>>> {
    match cfg.mode {
        1 => Ok(Some(net::listen(&cfg.tunnel, &cfg.tuning).await?)),
        0 if cfg.may_forward_locally() => {
            let l = net::listen(&cfg.tunnel, &cfg.tuning).await.ok();
            if l.is_some() {
                log::info!(
                    "mode=0: {} is a local address, forwarding without a server",
                    cfg.tunnel
                );
            }
            Ok(l)
        }
        _ => Ok(None),
    }
}

impl Node {
    /// The relay's own counters (reservations, connections, refusals by code); relay only.
    #[cfg(feature = "relay")]
    pub fn relay_stats(&self) -> Option<Arc<relay::RelayStats>> {
        self.relay_stats.clone()
    }

    /// The tunnel port (server, relay).
    pub fn tunnel_addr(&self) -> Option<SocketAddr> {
        self.tunnel
    }

    /// The port users connect to (server; visit).
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.public
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The buffers of TCP connections (two per connection).
    pub fn arena(&self) -> Arc<Arena> {
        self.arena.clone()
    }

    /// The buffers of UDP flows (two per flow); `None` when UDP is off.
    pub fn udp_arena(&self) -> Option<Arc<Arena>> {
        self.udp_arena.clone()
    }

    /// Run until the shutdown handle fires, then let open connections finish for up to
    /// `SHUTDOWN_TIMEOUT`.
    pub async fn run(self) -> Result<()> {
        // The relay reports its own figures every `stats` interval.
        #[cfg(feature = "relay")]
        let own_report = matches!(self.role, Role_::Relay(_));
        #[cfg(not(feature = "relay"))]
        let own_report = false;
        // At `warn` and below the report prints nothing: no task then, no wake-up every
        // interval.
        let prints = matches!(
            self.cfg_log,
            LogLevel::Event | LogLevel::Debug | LogLevel::Info
        );
        let reporter = (!own_report && prints).then(|| {
            crate::rt::spawn(report(
                self.stats.clone(),
                self.report,
                self.cfg_log,
                self.mode,
            ))
        });
        // Every role, the relay included, gives memory back after a burst.
        let releaser = crate::rt::spawn(release::run(
            self.stats.clone(),
            (self.arena.clone(), self.udp_arena.clone()),
        ));
        let res = match self.role {
            Role_::Server(s) => s.run().await,
            Role_::Client(c) => c.run().await,
            Role_::Forward(f) => f.run().await,
            #[cfg(feature = "relay")]
            Role_::Relay(r) => r.run().await,
            #[cfg(feature = "relay")]
            Role_::Visit(v) => v.run().await,
        };
        self.shutdown.trigger();
        let deadline = Instant::now() + self.shutdown_timeout;
        while self.stats.active() > 0 && Instant::now() < deadline {
            Timer::after(DRAIN_POLL).await;
        }
        let left = self.stats.active();
        if left > 0 {
            log::warn!(
                "shutdown: closing {left} connections still open after {:?}",
                self.shutdown_timeout
            );
        }
        if let Some(r) = reporter {
            r.cancel().await;
        }
        releaser.cancel().await;
        res
    }
}

/// Every `REPORT_INTERVAL`: the stats line and the CHECK_POINT event line.
async fn report(stats: Arc<Stats>, every: Duration, log: LogLevel, mode: u8) {
    loop {
        Timer::after(every).await;
        match log {
            LogLevel::Event => console::out(format_args!("{}", stats.checkpoint(mode))),
            LogLevel::Debug | LogLevel::Info => log::info!("{}", stats.line()),
            _ => {}
        }
    }
}
