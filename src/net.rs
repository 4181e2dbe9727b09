//! Resolving, dialing and listening, each bounded in time.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use smol::future::FutureExt;
use smol::{Async, Timer};

use crate::config::{Host, HostPort};
use crate::error::{Error, Result};

/// Upper bound on addresses tried for one name.
const MAX_ADDRS: usize = 8;

/// Resolve `hp` to socket addresses (IP literals need no lookup), within `timeout`.
pub async fn resolve(hp: &HostPort, timeout: Duration) -> Result<Vec<SocketAddr>> {
    match &hp.host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, hp.port)]),
        Host::Name(name) => {
            let query = (name.clone(), hp.port);
            let lookup = smol::unblock(move || {
                query
                    .to_socket_addrs()
                    .map(|it| it.take(MAX_ADDRS).collect::<Vec<_>>())
            });
            let addrs = async { lookup.await.map_err(Error::Io) }
                .or(async {
                    Timer::after(timeout).await;
                    Err(Error::Timeout("name lookup"))
                })
                .await?;
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
    let s = async { Async::<TcpStream>::connect(addr).await.map_err(Error::Io) }
        .or(async {
            Timer::after(timeout).await;
            Err(Error::Timeout("connect"))
        })
        .await?;
    // Signals and small requests must not wait for Nagle.
    s.get_ref().set_nodelay(true)?;
    Ok(s)
}

/// Resolve and connect, trying each address in turn.
pub async fn dial(hp: &HostPort, timeout: Duration) -> Result<Async<TcpStream>> {
    if let Host::Ip(ip) = hp.host {
        // An IP literal: no lookup and no address list to allocate.
        return connect(SocketAddr::new(ip, hp.port), timeout).await;
    }
    let addrs = resolve(hp, timeout).await?;
    let mut last = Error::Timeout("connect");
    for addr in addrs {
        match connect(addr, timeout).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
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

/// Bind a listener on `hp` (the first address that binds).
pub async fn listen(hp: &HostPort, timeout: Duration) -> Result<Async<TcpListener>> {
    let addrs = resolve(hp, timeout).await?;
    let mut last = None;
    for addr in addrs {
        match Async::<TcpListener>::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Io(
        last.unwrap_or_else(|| io::Error::other("nothing to bind")),
    ))
}
