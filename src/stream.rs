//! One connection type for every leg: plain TCP, or TLS (client or server side) over TCP.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};

use smol::io::{AsyncRead, AsyncWrite};
use smol::Async;

/// A tunnel, pool, user or target connection.
pub enum Conn {
    /// Plain TCP.
    Plain(Async<TcpStream>),
    /// TLS through futures-rustls: the client's control (or relay reservation) connection.
    #[cfg(feature = "tls")]
    TlsClient(Box<futures_rustls::client::TlsStream<Async<TcpStream>>>),
    /// TLS with arena-leased record buffers ([`crate::tls::stream`]): pool connections and
    /// every connection the server accepts.
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::stream::TlsStream>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Conn::Plain(_) => "plain",
            #[cfg(feature = "tls")]
            Conn::TlsClient(_) => "tls-client",
            #[cfg(feature = "tls")]
            Conn::Tls(_) => "tls",
        };
        write!(f, "Conn({kind}, {:?})", self.peer_addr().ok())
    }
}

impl Conn {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &Async<TcpStream> {
        match self {
            Conn::Plain(s) => s,
            #[cfg(feature = "tls")]
            Conn::TlsClient(s) => s.get_ref().0,
            #[cfg(feature = "tls")]
            Conn::Tls(s) => s.tcp(),
        }
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().get_ref().peer_addr()
    }

    /// Whether an idle connection is still usable: nothing to read (no FIN, no stray bytes,
    /// no TLS close_notify) and no socket error. Does not block.
    pub fn idle_ok(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Conn::Tls(s) = self {
            if !s.is_quiet() {
                return false;
            }
        }
        let mut b = [0u8; 1];
        matches!(self.tcp().get_ref().peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Whether this connection is TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Conn::Plain(_))
    }

    /// The TLS cipher suite this connection negotiated, for log lines (`None` for plain TCP).
    pub fn cipher(&self) -> Option<&'static str> {
        match self {
            Conn::Plain(_) => None,
            #[cfg(feature = "tls")]
            Conn::TlsClient(s) => suite_name(s.get_ref().1.negotiated_cipher_suite()),
            #[cfg(feature = "tls")]
            Conn::Tls(s) => suite_name(s.state().negotiated_cipher_suite()),
        }
    }
}

#[cfg(feature = "tls")]
fn suite_name(suite: Option<rustls::SupportedCipherSuite>) -> Option<&'static str> {
    suite.map(crate::tls::suites::name)
}

macro_rules! delegate {
    ($this:expr, $s:ident => $e:expr) => {
        match $this {
            Conn::Plain($s) => $e,
            #[cfg(feature = "tls")]
            Conn::TlsClient($s) => $e,
            #[cfg(feature = "tls")]
            Conn::Tls($s) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    /// A write half-close: TLS sends close_notify, then the TCP write side is shut down.
    /// (`Async<TcpStream>`'s own `poll_close` only flushes.)
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(delegate!(&mut *this, s => Pin::new(s).poll_close(cx)))?;
        match this.tcp().get_ref().shutdown(std::net::Shutdown::Write) {
            // Already shut down or reset by the peer: the half-close has nothing left to do.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            r => Poll::Ready(r),
        }
    }
}
