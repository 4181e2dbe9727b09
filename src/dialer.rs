//! Outgoing TCP connections of a role: cached name lookups (`dns=`) and a source address
//! (`dial=IP`), each dial bounded by `TCP_DIAL_TIMEOUT`.
//!
//! # Implementation
//! With a source address the socket is bound to `(IP, 0)` before the connect
//! ([`net::connect_socket`]). Like NodePass, a source address that cannot be used falls back
//! to the system's choice: the first time binding fails (the address is not on this host any
//! more) a warning is logged and every later dial lets the system choose. A target of the
//! other address family than `dial=` is dialed without a source address.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use smol::Async;

use crate::config::{Config, Host, HostPort};
use crate::error::{Error, Result};
use crate::net;
use crate::resolve::Cache;

/// Dials for one role; shared by its tasks.
#[derive(Debug)]
pub struct Dialer {
    timeout: Duration,
    source: Option<IpAddr>,
    /// Set once binding `source` failed: from then on the system chooses.
    fallback: AtomicBool,
    cache: Mutex<Cache>,
    lookups: AtomicUsize,
}

impl Dialer {
    /// A dialer with the URL's `dial=` and `dns=` and the `TCP_DIAL_TIMEOUT`.
    pub fn new(cfg: &Config) -> Dialer {
        Dialer::with(cfg.tuning.dial_timeout, cfg.dial, cfg.dns)
    }

    /// A dialer with an explicit timeout, source address and name cache lifetime.
    pub fn with(timeout: Duration, source: Option<IpAddr>, dns: Duration) -> Dialer {
        Dialer {
            timeout,
            source,
            fallback: AtomicBool::new(false),
            cache: Mutex::new(Cache::new(dns)),
            lookups: AtomicUsize::new(0),
        }
    }

    /// Name lookups done so far (cache misses).
    pub fn lookups(&self) -> usize {
        self.lookups.load(Relaxed)
    }

    /// The addresses of `hp`, from the cache while fresh.
    pub async fn resolve(&self, hp: &HostPort) -> Result<Vec<SocketAddr>> {
        let Host::Name(name) = &hp.host else {
            return net::resolve(hp, self.timeout).await;
        };
        let cached = {
            let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            c.get(name, Instant::now()).map(|ips| {
                ips.iter()
                    .map(|ip| SocketAddr::new(*ip, hp.port))
                    .collect::<Vec<_>>()
            })
        };
        if let Some(addrs) = cached {
            return Ok(addrs);
        }
        self.lookups.fetch_add(1, Relaxed);
        let addrs = net::resolve(hp, self.timeout).await?;
        let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(name, &ips, Instant::now());
        Ok(addrs)
    }

    /// Resolve `hp` and connect to its addresses in turn (TCP_NODELAY set).
    pub async fn dial(&self, hp: &HostPort) -> Result<Async<TcpStream>> {
        if let Host::Ip(ip) = hp.host {
            // An IP literal: no lookup and no address list to allocate.
            return self.connect(SocketAddr::new(ip, hp.port)).await;
        }
        let addrs = self.resolve(hp).await?;
        let mut last = Error::Timeout("connect");
        for addr in addrs {
            match self.connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Connect to one address, from the source address when one is set and usable.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Async<TcpStream>> {
        let src = match self.source {
            Some(ip) if !self.fallback.load(Relaxed) && ip.is_ipv4() == addr.is_ipv4() => ip,
            _ => return net::connect(addr, self.timeout).await,
        };
        let sock = net::tcp_socket(addr)?;
        if let Err(e) = rustix::net::bind(&sock, &SocketAddr::new(src, 0)) {
            if !self.fallback.swap(true, Relaxed) {
                log::warn!(
                    "dial={src}: cannot bind that address ({e}); letting the system choose from now on"
                );
            }
            return net::connect(addr, self.timeout).await;
        }
        net::connect_socket(sock, addr, self.timeout).await
    }
}
