//! Resolving, dialing and listening, each bounded in time.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use smol::lock::Semaphore;
use smol::Async;

use crate::config::{Host, HostPort, Tuning};
use crate::error::{Error, Result};
use crate::timeout::bounded;

/// Upper bound on addresses tried for one name.
const MAX_ADDRS: usize = 8;
/// Upper bound on addresses read from one lookup, before [`interleave`] picks the
/// [`MAX_ADDRS`] tried: a name with eight IPv6 addresses still gets its IPv4 ones tried.
const MAX_LOOKED_UP: usize = 64;

/// Name lookups running at once. Each holds a thread while the system resolver works, and a
/// lookup that times out here keeps its thread until the resolver answers: with a hung
/// resolver (and `dns=0`, a lookup per dial) every user would add a thread, up to the blocking
/// pool's 500. Past this many, a lookup waits for one to finish, within its own timeout.
const MAX_LOOKUPS: usize = 4;
static LOOKUPS: Semaphore = Semaphore::new(MAX_LOOKUPS);

/// Resolve `hp` to socket addresses (IP literals need no lookup), within `timeout`: at most
/// eight, in [`interleave`]'s order.
pub async fn resolve(hp: &HostPort, timeout: Duration) -> Result<Vec<SocketAddr>> {
    match &hp.host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, hp.port)]),
        Host::Name(name) => {
            let query = (name.clone(), hp.port);
            let lookup = async {
                let permit = LOOKUPS.acquire().await;
                smol::unblock(move || {
                    // Held until the resolver answers, even after the wait here timed out.
                    let _permit = permit;
                    query.to_socket_addrs().map(|it| {
                        let mut addrs: Vec<_> = it.take(MAX_LOOKED_UP).collect();
                        interleave(&mut addrs);
                        addrs.truncate(MAX_ADDRS);
                        addrs
                    })
                })
                .await
            };
            let lookup = async { lookup.await.map_err(Error::Io) };
            let addrs = bounded(timeout, "name lookup", lookup).await?;
            if addrs.is_empty() {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{name}: no addresses"),
                )));
            }
            Ok(addrs)
        }
    }
}

/// Connect to one address within `timeout`, with TCP_NODELAY set.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Async<TcpStream>> {
    connect_socket(tcp_socket(addr)?, addr, timeout).await
}

/// A non-blocking TCP socket of `addr`'s family with TCP_NODELAY set (signals and small
/// requests must not wait for Nagle), not yet bound or connected.
pub fn tcp_socket(addr: SocketAddr) -> io::Result<TcpStream> {
    let fam = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let s = TcpStream::from(rustix::net::socket_with(
        fam,
        SocketType::STREAM,
        flags,
        None,
    )?);
    s.set_nodelay(true)?;
    Ok(s)
}

/// Connect `s` (from [`tcp_socket`]) to `addr` within `timeout`.
///
/// # Implementation
/// A non-blocking connect to a near host (loopback, the LAN) has often completed by the time
/// the call returns, and `getpeername` tells: then the socket is used at once, with no round
/// through the reactor for writability and no timer. Otherwise (`ENOTCONN`: still in
/// progress, or failed already) the reactor waits for writability, bounded by `timeout`, and
/// `SO_ERROR` says how it went.
pub async fn connect_socket(
    s: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Async<TcpStream>> {
    match rustix::net::connect(&s, &addr) {
        Ok(()) => {}
        Err(e) if e == Errno::INPROGRESS => {}
        Err(e) => return Err(Error::Io(e.into())),
    }
    let done = rustix::net::getpeername(&s).is_ok();
    let s = Async::new_nonblocking(s)?;
    if done {
        return Ok(s);
    }
    let connected = async {
        s.writable().await?;
        let err = rustix::net::sockopt::socket_error(s.get_ref()).map_err(io::Error::from)?;
        err.map_err(io::Error::from)?;
        Ok(())
    };
    bounded(timeout, "connect", connected).await?;
    Ok(s)
}

/// Resolve `hp` and connect a UDP socket to it, bound to the unspecified address of the
/// target's family (the first address that works).
pub async fn dial_udp(hp: &HostPort, timeout: Duration) -> Result<Async<UdpSocket>> {
    let addrs = resolve(hp, timeout).await?;
    let mut last = None;
    for addr in addrs {
        let local: SocketAddr = if addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = Async::<UdpSocket>::bind(local).and_then(|s| {
            s.get_ref().connect(addr)?;
            Ok(s)
        });
        match sock {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Io(last.unwrap_or_else(|| {
        io::Error::other("no address to connect to")
    })))
}

/// Connections a listener queues before they are accepted (the kernel caps it at
/// `net.core.somaxconn`). The standard library listens with 128: a burst of more users than
/// that at once (or a client refilling a large pool) overflowed it, and the kernel fell back
/// to SYN cookies and dropped handshakes, which cost the users a SYN retransmit (a second or
/// more) and, now and then, left a connection open on our side that its user had no record
/// of.
pub const BACKLOG: i32 = 4096;

/// Unanswered keepalive probes after which the kernel closes a connection.
pub const KEEPALIVE_PROBES: u32 = 3;

/// Bind a listener on `hp` (the first address that binds, looked up within
/// `tuning.dial_timeout`), with a queue of [`BACKLOG`], TCP_NODELAY, and keepalive after
/// `tuning.keepalive` of silence (probes a third of that apart, [`KEEPALIVE_PROBES`] of
/// them). Linux copies these options to every connection the listener accepts, so they cost
/// no syscall per connection.
pub async fn listen(hp: &HostPort, tuning: &Tuning) -> Result<Async<TcpListener>> {
    let addrs = resolve(hp, tuning.dial_timeout).await?;
    let mut last = None;
    for addr in addrs {
        match Async::<TcpListener>::bind(addr) {
            Ok(l) => {
                // Listening again on a listening socket sets its queue length.
                rustix::net::listen(&l, BACKLOG).map_err(io::Error::from)?;
                rustix::net::sockopt::set_tcp_nodelay(&l, true).map_err(io::Error::from)?;
                if let Some(idle) = tuning.keepalive {
                    keepalive(&l, idle).map_err(io::Error::from)?;
                }
                return Ok(l);
            }
            Err(e) => last = Some(bind_error("TCP", addr, e)),
        }
    }
    Err(Error::Io(
        last.unwrap_or_else(|| io::Error::other("nothing to bind")),
    ))
}

/// `e` naming the address that could not be bound, of the same kind (callers look at it).
pub fn bind_error(proto: &str, addr: SocketAddr, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot listen on {addr} ({proto}): {e}"))
}

/// TCP keepalive on `s`: probes after `idle` without traffic, then every third of it.
fn keepalive(s: &impl std::os::fd::AsFd, idle: Duration) -> rustix::io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(s, true)?;
    sockopt::set_tcp_keepidle(s, idle)?;
    sockopt::set_tcp_keepintvl(s, (idle / 3).max(Duration::from_secs(1)))?;
    sockopt::set_tcp_keepcnt(s, KEEPALIVE_PROBES)
}

/// Put the addresses of a name in RFC 8305's order: the resolver's first address, then the
/// first of the other family, and so on alternating, each family in the resolver's order. A
/// host whose IPv6 route is dead then tries IPv4 second, not after every IPv6 address.
pub fn interleave(addrs: &mut [SocketAddr]) {
    let Some(first) = addrs.first() else { return };
    let mut want_v4 = !first.is_ipv4();
    for i in 1..addrs.len() {
        // Bring the next address of the wanted family to `i`, keeping the order of the rest.
        if let Some(j) = (i..addrs.len()).find(|&j| addrs[j].is_ipv4() == want_v4) {
            addrs[i..=j].rotate_right(1);
            want_v4 = !want_v4;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With every lookup slot taken (by lookups stuck in a hung resolver, say), a lookup waits
    /// for one within its own timeout instead of taking another thread; once one is free, it
    /// runs.
    #[test]
    fn lookups_wait_for_a_free_slot_within_their_timeout() {
        smol::block_on(async {
            let local = HostPort {
                host: Host::Name("localhost".into()),
                port: 7,
            };
            let held: Vec<_> = take_every_slot().await;
            let r = resolve(&local, Duration::from_millis(50)).await;
            assert!(matches!(r, Err(Error::Timeout("name lookup"))), "{r:?}");
            drop(held);
            let addrs = resolve(&local, Duration::from_secs(20))
                .await
                .expect("lookup");
            assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 7));
        });
    }

    async fn take_every_slot() -> Vec<smol::lock::SemaphoreGuard<'static>> {
        let mut held = Vec::new();
        for _ in 0..MAX_LOOKUPS {
            held.push(LOOKUPS.acquire().await);
        }
        held
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn interleave_alternates_families_from_the_first() {
        let mut a = addrs(&["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1", "10.0.0.2:1"]);
        interleave(&mut a);
        let want = addrs(&["[::1]:1", "10.0.0.1:1", "[::2]:1", "10.0.0.2:1", "[::3]:1"]);
        assert_eq!(a, want);

        let mut a = addrs(&["10.0.0.1:1", "10.0.0.2:1", "[::1]:1"]);
        interleave(&mut a);
        assert_eq!(a, addrs(&["10.0.0.1:1", "[::1]:1", "10.0.0.2:1"]));
    }

    #[test]
    fn interleave_keeps_one_family_and_empty_lists_as_they_are() {
        let one = addrs(&["10.0.0.3:1", "10.0.0.1:1", "10.0.0.2:1"]);
        let mut a = one.clone();
        interleave(&mut a);
        assert_eq!(a, one);
        let mut none: Vec<SocketAddr> = Vec::new();
        interleave(&mut none);
        assert!(none.is_empty());
    }
}
