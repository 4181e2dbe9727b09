//! Outgoing TCP connections of a role: cached name lookups (`dns=`), a source address
//! (`dial=IP`), and the addresses of a name tried RFC 8305 style, the whole dial bounded by
//! `TCP_DIAL_TIMEOUT`.
//!
//! # Implementation
//! With a source address the socket is bound to `(IP, 0)` before the connect
//! ([`net::connect_socket`]). Like NodePass, a source address that cannot be used falls back
//! to the system's choice: the first time binding fails (the address is not on this host any
//! more) a warning is logged and every later dial lets the system choose. A target of the
//! other address family than `dial=` is dialed without a source address.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use smol::{future, Async, Timer};

use crate::config::{Config, Host, HostPort};
use crate::error::{Error, Result};
use crate::net;
use crate::resolve::Cache;

/// How long one address of a name has to connect before the next one is tried beside it
/// (RFC 8305's "Connection Attempt Delay").
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// One address's connect, running beside the others of its name.
type Attempt<'a> = Pin<Box<dyn Future<Output = Result<Async<TcpStream>>> + Send + 'a>>;

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

    /// Resolve `hp` and connect to one of its addresses (TCP_NODELAY set), within the
    /// dial timeout for all of them together ([`Dialer::connect_any`]).
    pub async fn dial(&self, hp: &HostPort) -> Result<Async<TcpStream>> {
        if let Host::Ip(ip) = hp.host {
            // An IP literal: no lookup and no address list to allocate.
            return self
                .connect(SocketAddr::new(ip, hp.port), self.timeout)
                .await;
        }
        let mut addrs = self.resolve(hp).await?;
        if let Some(v4) = self.pinned() {
            // The addresses of `dial=`'s family first (stable: in the resolver's order).
            addrs.sort_by_key(|a| a.is_ipv4() != v4);
        }
        self.connect_any(&addrs).await
    }

    /// The family of the source address (`true`: IPv4) while `dial=` is set and usable.
    fn pinned(&self) -> Option<bool> {
        let ip = self.source.filter(|_| !self.fallback.load(Relaxed))?;
        Some(ip.is_ipv4())
    }

    /// Connect to the first of `addrs` that answers, RFC 8305 style: the next attempt starts
    /// when one fails or [`ATTEMPT_DELAY`] after the last one started, while the earlier ones
    /// go on; the first to connect wins and the others are dropped. The dial timeout bounds
    /// them all together (no attempt starts after it), so an address that never answers (a
    /// dead IPv6 route, a host that drops SYNs) costs a name [`ATTEMPT_DELAY`], not a whole
    /// timeout. With `dial=` set, an address of the other family (dialed without the source
    /// address) starts only once every attempt before it has failed: the user pinned the path.
    pub async fn connect_any(&self, addrs: &[SocketAddr]) -> Result<Async<TcpStream>> {
        let deadline = Instant::now() + self.timeout;
        let pinned = self.pinned();
        let mut running: Vec<Attempt<'_>> = Vec::with_capacity(addrs.len());
        let mut next = addrs.iter().peekable();
        let mut stagger = Timer::never();
        let mut last = Error::Timeout("connect");
        future::poll_fn(|cx| loop {
            let mut failed = false;
            let mut i = 0;
            while i < running.len() {
                match running[i].as_mut().poll(cx) {
                    Poll::Ready(Ok(s)) => return Poll::Ready(Ok(s)),
                    Poll::Ready(Err(e)) => {
                        last = e;
                        failed = true;
                        drop(running.swap_remove(i));
                    }
                    Poll::Pending => i += 1,
                }
            }
            // Every Pending below leaves an attempt running, polled above: its connect and
            // its timer (which ends at the deadline) wake this task.
            let now = Instant::now();
            let Some(&&addr) = next.peek().filter(|_| now < deadline) else {
                if running.is_empty() {
                    let err = std::mem::replace(&mut last, Error::Timeout("connect"));
                    return Poll::Ready(Err(err));
                }
                return Poll::Pending;
            };
            let held = pinned.is_some_and(|v4| addr.is_ipv4() != v4) && !running.is_empty();
            let due = running.is_empty() || failed || Pin::new(&mut stagger).poll(cx).is_ready();
            if held || !due {
                return Poll::Pending;
            }
            next.next();
            running.push(Box::pin(self.connect(addr, deadline - now)));
            stagger.set_after(ATTEMPT_DELAY);
        })
        .await
    }

    /// Connect to one address, from the source address when one is set and usable.
    /// `timeout` bounds the connect.
    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<Async<TcpStream>> {
        let src = match self.source {
            Some(ip) if !self.fallback.load(Relaxed) && ip.is_ipv4() == addr.is_ipv4() => ip,
            _ => return net::connect(addr, timeout).await,
        };
        let sock = net::tcp_socket(addr)?;
        if let Err(e) = rustix::net::bind(&sock, &SocketAddr::new(src, 0)) {
            if !self.fallback.swap(true, Relaxed) {
                log::warn!(
                    "dial={src}: cannot bind that address ({e}); letting the system choose from now on"
                );
            }
            return net::connect(addr, timeout).await;
        }
        net::connect_socket(sock, addr, timeout).await
    }
}
