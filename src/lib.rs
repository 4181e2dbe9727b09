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
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod copy;
pub mod duration;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod lines;
pub mod net;
pub mod server;
pub mod shutdown;
pub mod signal;
pub mod stats;
pub mod stream;
pub mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::Timer;

use crate::arena::Arena;
use crate::client::Client;
use crate::config::{Config, LogLevel, Role};
use crate::error::{Error, Result};
use crate::server::Server;
use crate::shutdown::Shutdown;
use crate::stats::Stats;

/// How often a draining shutdown looks at the number of open connections.
const DRAIN_POLL: Duration = Duration::from_millis(50);

enum Role_ {
    Server(Server),
    Client(Client),
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
    shutdown: Shutdown,
    tunnel: Option<SocketAddr>,
    public: Option<SocketAddr>,
}

/// Bind what the role listens on (nothing for a client) and prepare it to run.
pub async fn bind(cfg: Config, shutdown: Shutdown) -> Result<Node> {
    let stats = Arc::new(Stats::default());
    // Two buffers per concurrent session: one per direction.
    let arena = Arena::new(cfg.slot.saturating_mul(2), cfg.tuning.tcp_buf)?;
    let (log, report, drain) = (
        cfg.log,
        cfg.tuning.report_interval,
        cfg.tuning.shutdown_timeout,
    );
    let (role, tunnel, public, mode) = match cfg.role {
        Role::Server => {
            let s = Server::bind(cfg, stats.clone(), arena.clone(), shutdown.clone()).await?;
            let (t, p) = (s.tunnel_addr()?, s.public_addr()?);
            (Role_::Server(s), Some(t), Some(p), 1)
        }
        Role::Client => {
            let c = Client::new(cfg, stats.clone(), arena.clone(), shutdown.clone());
            (Role_::Client(c), None, None, 2)
        }
        Role::Relay | Role::Visit => return Err(Error::Unsupported("the relay and visit roles")),
    };
    Ok(Node {
        role,
        cfg_log: log,
        mode,
        report,
        shutdown_timeout: drain,
        stats,
        arena,
        shutdown,
        tunnel,
        public,
    })
}

impl Node {
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

    /// Run until the shutdown handle fires, then let open connections finish for up to
    /// `SHUTDOWN_TIMEOUT`.
    pub async fn run(self) -> Result<()> {
        let reporter = smol::spawn(report(
            self.stats.clone(),
            self.arena.clone(),
            self.report,
            self.cfg_log,
            self.mode,
        ));
        let res = match self.role {
            Role_::Server(s) => s.run().await,
            Role_::Client(c) => c.run().await,
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
        reporter.cancel().await;
        res
    }
}

/// Every `REPORT_INTERVAL`: the stats line, the CHECK_POINT event line, and giving idle
/// buffer pages back to the kernel.
async fn report(stats: Arc<Stats>, arena: Arc<Arena>, every: Duration, log: LogLevel, mode: u8) {
    loop {
        Timer::after(every).await;
        if stats.active() == 0 {
            arena.release_idle();
        }
        match log {
            LogLevel::Event => println!("{}", stats.checkpoint(mode)),
            LogLevel::Debug | LogLevel::Info => log::info!("{}", stats.line()),
            _ => {}
        }
    }
}
