//! The arena-leasing TLS stream against itself and against futures-rustls, over loopback:
//! bytes survive odd read sizes in both directions, an idle connection holds no buffer, and a
//! hostile or truncated peer is an error, not a panic.

use std::net::{SocketAddr, TcpListener};

use smol::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::stream::Conn;
use crate::tls::{ClientTls, ServerTls};

fn server_tls() -> Arc<ServerTls> {
    let cfg = crate::config::parse("server://k@127.0.0.1:0/127.0.0.1:0?tls=1&slot=4", &|_| None)
        .expect("server url");
    ServerTls::new(&cfg).expect("tls").expect("tls=1")
}

fn client_tls() -> ClientTls {
    let cfg = crate::config::parse("client://k@127.0.0.1:1/127.0.0.1:2?tls=1&slot=4", &|_| None)
        .expect("client url");
    ClientTls::new(&cfg).expect("client tls")
}

fn listener() -> (Async<TcpListener>, SocketAddr) {
    let l = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
    let a = l.get_ref().local_addr().expect("addr");
    (l, a)
}

/// A connected pair: the client side `pooled` (this stream) or not (futures-rustls), the
/// server side always this stream.
async fn pair(s: &ServerTls, pooled: bool) -> (Conn, Conn) {
    let (l, addr) = listener();
    let c = client_tls();
    let (client, server) = smol::future::zip(
        async {
            let tcp = Async::<TcpStream>::connect(addr).await.expect("connect");
            c.connect(1, tcp, pooled).await.expect("client handshake").0
        },
        async {
            let (tcp, _) = l.accept().await.expect("accept");
            s.accept(tcp).await.expect("server handshake").0
        },
    )
    .await;
    assert!(matches!(server, Conn::Tls(_)));
    assert_eq!(matches!(client, Conn::Tls(_)), pooled);
    (client, server)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Echo until the end of input, reading in sizes that cut records anywhere, then close.
async fn echo(mut c: Conn) -> Conn {
    const SIZES: [usize; 6] = [1, 7, 300, 5_000, 16_384, 40_000];
    let mut buf = vec![0u8; 40_000];
    let mut i = 0;
    loop {
        let want = SIZES[i % SIZES.len()];
        i += 1;
        let n = c.read(&mut buf[..want]).await.expect("echo read");
        if n == 0 {
            break;
        }
        c.write_all(&buf[..n]).await.expect("echo write");
    }
    c.close().await.expect("echo close");
    c
}

/// Send `data` in 10,000-byte writes and half-close, while reading everything back.
async fn round_trip(c: Conn, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = smol::io::split(c);
    let (got, ()) = smol::future::zip(
        async {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.expect("read back");
            got
        },
        async {
            for piece in data.chunks(10_000) {
                w.write_all(piece).await.expect("write");
            }
            w.close().await.expect("close");
        },
    )
    .await;
    got
}

#[test]
fn bytes_survive_both_ways_against_itself_and_futures_rustls() {
    smol::block_on(async {
        let s = server_tls();
        for pooled in [true, false] {
            let (client, server) = pair(&s, pooled).await;
            let data = pattern(1 << 20);
            let (got, _server) = smol::future::zip(round_trip(client, &data), echo(server)).await;
            assert!(got == data, "1 MiB echoed intact (pooled client: {pooled})");
        }
    });
}

/// Whether `c`, this stream, holds an arena buffer.
fn leased(c: &Conn) -> bool {
    match c {
        Conn::Tls(s) => s.buf.is_some(),
        _ => panic!("not the arena stream"),
    }
}

#[test]
fn an_idle_connection_holds_no_buffer() {
    smol::block_on(async {
        let s = server_tls();
        let (mut client, mut server) = pair(&s, true).await;
        // A request and a reply larger than one record, read in small pieces.
        let req = pattern(50_000);
        client.write_all(&req).await.expect("write");
        client.flush().await.expect("flush");
        let mut got = vec![0u8; req.len()];
        let mut at = 0;
        while at < got.len() {
            let end = (at + 999).min(got.len());
            at += server.read(&mut got[at..end]).await.expect("read");
        }
        assert!(got == req);
        server.write_all(&got).await.expect("reply");
        server.flush().await.expect("flush");
        client.read_exact(&mut got).await.expect("read reply");
        assert!(got == req);
        assert!(!leased(&client), "client holds no buffer when idle");
        assert!(!leased(&server), "server holds no buffer when idle");
        assert_eq!(s.arena.available(), s.arena.capacity());
        assert!(client.idle_ok() && server.idle_ok());
    });
}

#[test]
fn a_peer_that_closes_in_the_middle_of_a_record_is_an_error() {
    smol::block_on(async {
        let s = server_tls();
        let (client, mut server) = pair(&s, true).await;
        let Conn::Tls(c) = client else {
            panic!("pooled client")
        };
        // The header of an application-data record announcing 100 bytes, and only 10 of them.
        let mut raw = c.tcp().get_ref();
        std::io::Write::write_all(&mut raw, &[23, 3, 3, 0, 100, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
            .expect("raw write");
        raw.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let e = server.read(&mut [0u8; 64]).await.expect_err("truncated");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().contains("middle of a TLS record"), "{e}");
    });
}

#[test]
fn garbage_after_the_handshake_closes_with_a_reason_and_stays_closed() {
    smol::block_on(async {
        let s = server_tls();
        for junk in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            // An application-data record that does not decrypt.
            &[
                23, 3, 3, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ][..],
            // A record longer than TLS allows.
            &[23, 3, 3, 0xff, 0xff, 0][..],
        ] {
            let (client, mut server) = pair(&s, true).await;
            let Conn::Tls(c) = client else {
                panic!("pooled client")
            };
            std::io::Write::write_all(&mut c.tcp().get_ref(), junk).expect("raw write");
            let e = server.read(&mut [0u8; 64]).await.expect_err("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert!(
                e.get_ref()
                    .is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some()),
                "carries the rustls error: {e}"
            );
            // The other direction of a copy may go on using the stream: it fails at once,
            // without handing rustls the bad records again (a second fatal alert, which rustls
            // debug-asserts against).
            server
                .write_all(b"late")
                .await
                .expect_err("write after the failure");
            server
                .read(&mut [0u8; 64])
                .await
                .expect_err("read after the failure");
        }
    });
}

#[test]
fn a_plaintext_peer_fails_the_handshake() {
    smol::block_on(async {
        let s = server_tls();
        let (l, addr) = listener();
        let (e, ()) = smol::future::zip(
            async {
                let (tcp, _) = l.accept().await.expect("accept");
                s.accept(tcp).await.expect_err("not TLS")
            },
            async {
                let mut tcp = Async::<TcpStream>::connect(addr).await.expect("connect");
                tcp.write_all(b"hello ctl 0123456789abcdef\n")
                    .await
                    .expect("write");
                let _ = tcp.read(&mut [0u8; 16]).await;
            },
        )
        .await;
        assert!(matches!(e, crate::error::Error::Tls(_)), "{e}");
    });
}

#[test]
fn a_key_update_from_the_peer_keeps_the_stream_working() {
    smol::block_on(async {
        let s = server_tls();
        let (mut client, mut server) = pair(&s, false).await;
        let Conn::TlsClient(c) = &mut client else {
            panic!("futures-rustls client")
        };
        // The next record carries a KeyUpdate that asks the server to update its keys too.
        c.get_mut().1.refresh_traffic_keys().expect("key update");
        for round in 0..3u8 {
            let msg = [round; 300];
            client.write_all(&msg).await.expect("write");
            client.flush().await.expect("flush");
            let mut got = [0u8; 300];
            server.read_exact(&mut got).await.expect("server read");
            assert_eq!(got, msg);
            server.write_all(&got).await.expect("reply");
            server.flush().await.expect("flush");
            client.read_exact(&mut got).await.expect("client read");
            assert_eq!(
                got, msg,
                "round {round}: the reply decrypts after the key update"
            );
        }
        assert!(!leased(&server));
    });
}

#[test]
fn a_stream_waits_for_a_buffer_when_the_arena_is_empty() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    smol::block_on(async {
        let s = server_tls();
        let (l, addr) = listener();
        // The server's stream gets an arena of one buffer, held here until its handshake has
        // been polled (and found no buffer): it can only go on once the buffer comes back.
        let arena = Arena::new(1, BUF).expect("arena");
        let held = arena.try_lease().expect("the only buffer");
        let started = AtomicBool::new(false);
        let c = client_tls();
        let ((client, server), ()) = smol::future::zip(
            smol::future::zip(
                async {
                    let tcp = Async::<TcpStream>::connect(addr).await.expect("connect");
                    c.connect(1, tcp, false).await.expect("client handshake").0
                },
                async {
                    let (tcp, _) = l.accept().await.expect("accept");
                    let conn = UnbufferedServerConnection::new(s.current().0).expect("conn");
                    let mut t = TlsStream::server(tcp, conn, arena.clone());
                    let hs = t.handshake();
                    started.store(true, SeqCst);
                    hs.await.expect("server handshake after the wait");
                    Conn::Tls(Box::new(t))
                },
            ),
            async {
                while !started.load(SeqCst) {
                    smol::future::yield_now().await;
                }
                // The handshake's first poll ran in the same poll that set the flag.
                smol::future::yield_now().await;
                assert_eq!(arena.available(), 0, "still held");
                drop(held);
            },
        )
        .await;
        let data = pattern(100_000);
        let (got, _server) = smol::future::zip(round_trip(client, &data), echo(server)).await;
        assert!(got == data, "echoed through a one-buffer arena");
        assert_eq!(arena.available(), 1);
    });
}

/// A real TCP socket whose writes stop, once `armed`, after `room` more bytes, until the test
/// opens it: "the socket did not take the record whole" exactly when the test wants it,
/// instead of by pacing a slow reader.
struct Gate {
    tcp: Async<TcpStream>,
    ctl: Arc<Mutex<GateCtl>>,
}

#[derive(Default)]
struct GateCtl {
    /// Bytes a write may still pass; `None` while open.
    room: Option<usize>,
    /// The writer that found no room, woken when the gate opens.
    waiting: Option<std::task::Waker>,
}

impl GateCtl {
    fn open(&mut self) {
        self.room = None;
        if let Some(w) = self.waiting.take() {
            w.wake();
        }
    }
}

impl AsyncRead for Gate {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let room = {
            let mut ctl = self.ctl.lock().expect("gate");
            match ctl.room {
                Some(0) => {
                    ctl.waiting = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                room => room.unwrap_or(usize::MAX),
            }
        };
        let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &data[..data.len().min(room)]))?;
        if let Some(r) = &mut self.ctl.lock().expect("gate").room {
            *r -= n;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_close(cx)
    }
}

impl Readable for Gate {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_readable(cx)
    }
}

impl Readable for TlsStream<Gate> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TlsStream::poll_readable(self, cx)
    }
}

/// user → (plain `a` | this stream `b`) → far, with far's direction ended first: a record
/// the socket took only part of when `a` ran dry still reaches far once the socket has room.
/// Only the copy's own flush can push it out then: nothing reads or writes `b` any more.
#[test]
fn the_tail_of_a_burst_reaches_the_far_side_after_the_other_direction_ended() {
    use smol::future::FutureExt;
    use std::time::Duration;
    /// Longer than any pause of a working copy on loopback, however loaded the machine.
    const STALL: Duration = Duration::from_secs(5);
    smol::block_on(async {
        let s = server_tls();
        let ctl = Arc::new(Mutex::new(GateCtl::default()));
        let (l, addr) = listener();
        let (mut far, mut b) = smol::future::zip(
            async {
                let tcp = Async::<TcpStream>::connect(addr).await.expect("connect");
                client_tls()
                    .connect(1, tcp, false)
                    .await
                    .expect("client handshake")
                    .0
            },
            async {
                let (tcp, _) = l.accept().await.expect("accept");
                let conn = UnbufferedServerConnection::new(s.current().0).expect("rustls");
                let gate = Gate {
                    tcp,
                    ctl: ctl.clone(),
                };
                let mut b = TlsStream::server(gate, conn, s.arena.clone());
                b.handshake().await.expect("server handshake");
                b
            },
        )
        .await;
        // One exchange each way: whatever the handshake left to send (session tickets) is
        // out before the gate counts.
        let mut one = [0u8; 1];
        far.write_all(b"x").await.expect("far write");
        b.read_exact(&mut one).await.expect("b read");
        b.write_all(b"y").await.expect("b write");
        b.flush().await.expect("b flush");
        far.read_exact(&mut one).await.expect("far read");
        let (user, a) = smol::future::zip(
            async { Async::<TcpStream>::connect(addr).await.expect("connect") },
            async { l.accept().await.expect("accept").0 },
        )
        .await;
        let mut a = Conn::Plain(a);
        let arena = Arena::new(4, 16384).expect("arena");
        let stats = crate::stats::Stats::default();
        // One write of the user, one record: the socket takes all of it but 16 bytes.
        let data = pattern(1000);
        let copy = async {
            let o = crate::copy::Opts::tcp(&arena, &stats, Some(STALL * 4), None);
            let r = crate::copy::bidi(&mut a, &mut b, o).await;
            panic!("the copy ended before far had every byte: {r:?}");
        };
        let test = async {
            // far → user ends first, and the user sees it end.
            far.close().await.expect("far half-close");
            let mut rest = Vec::new();
            (&user).read_to_end(&mut rest).await.expect("user read");
            assert!(rest.is_empty());
            ctl.lock().expect("gate").room = Some(data.len() + 6);
            (&user).write_all(&data).await.expect("user write");
            // The copy took every byte, and its write of the record met the closed gate.
            while stats.tcp_rx.get() < data.len() as u64
                || ctl.lock().expect("gate").waiting.is_none()
            {
                Timer::after(Duration::from_millis(5)).await;
            }
            ctl.lock().expect("gate").open();
            let mut got = vec![0u8; data.len()];
            let read = async { Some(far.read_exact(&mut got).await) };
            let stalled = async {
                Timer::after(STALL).await;
                None
            };
            read.or(stalled)
                .await
                .expect("the record's tail stayed in the stream")
                .expect("far read");
            assert!(got == data, "far got the user's bytes, in order");
            // The user stays connected and silent meanwhile: only the copy's flush moved them.
        };
        copy.or(test).await;
    });
}
