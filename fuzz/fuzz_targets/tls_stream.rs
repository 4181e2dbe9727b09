//! Fuzzes the arena-leasing TLS stream (`tls::stream::TlsStream`), server or client side (the
//! first input byte), against a real rustls peer over an in-memory transport. The rest of the
//! input is a program of operations: the peer sends data, key updates and close_notify; bytes
//! are flipped or injected on the way; the transport's read size and write room change; the
//! stream reads with odd buffer sizes, writes, flushes and closes. Checked: no panic or hang;
//! the stream never reads plaintext the peer did not send (what it reads is always a prefix of
//! what was sent, even after tampering); without tampering, everything sent in either
//! direction arrives, and the stream ends cleanly exactly when the peer sent close_notify.
//!
//! A program either tampers or closes, never both: rustls 0.23 debug-asserts that a connection
//! which sent close_notify never fails after it (`send_fatal_alert`), and fuzz builds have debug
//! assertions on. (In a release build it sends a second alert and returns the error.)
#![no_main]

use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::{pin, Pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use edgepass::arena::Arena;
use edgepass::copy::Readable;
use edgepass::tls::stream::{self, TlsStream};
use edgepass::tls::ServerTls;
use libfuzzer_sys::fuzz_target;
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConnection};
use smol::io::{AsyncRead, AsyncWrite};

/// The server's configuration (tls=1: a fresh self-signed certificate), the client's, and
/// one arena for every run (a stream gives its buffer back when dropped).
fn setup() -> &'static (Arc<rustls::ServerConfig>, Arc<ClientConfig>, Arc<Arena>) {
    static SETUP: OnceLock<(Arc<rustls::ServerConfig>, Arc<ClientConfig>, Arc<Arena>)> =
        OnceLock::new();
    SETUP.get_or_init(|| {
        let url = "server://k@127.0.0.1:0/127.0.0.1:0?tls=1&slot=1";
        let cfg = edgepass::config::parse(url, &|_| None).expect("server url");
        let tls = ServerTls::new(&cfg).expect("tls").expect("tls=1");
        // The client's tls=1 configuration: any certificate, its signature checked.
        let client = edgepass::tls::client::pinning_config().expect("client config");
        let arena = stream::arena(1, 1).expect("arena");
        (tls.current().0, client, arena)
    })
}

/// The wire between the stream under test and its rustls peer, both in this thread.
struct Mem {
    peer: Connection,
    /// Bytes for the stream to read: the peer's records, with any tampering.
    inbox: Vec<u8>,
    pos: usize,
    /// At most this many bytes per read.
    chunk: usize,
    /// After the inbox: end of input (`Ok(0)`) instead of `Pending`.
    eof: bool,
    /// Bytes the stream may still write before its writes are `Pending`.
    room: usize,
    /// Plaintext the peer decrypted from the stream's records.
    got_by_peer: Vec<u8>,
    /// The peer failed on what the stream sent.
    peer_failed: bool,
}

impl Mem {
    /// Move the peer's pending records into the inbox.
    fn pull(&mut self) {
        while self.peer.wants_write() {
            if self.peer.write_tls(&mut self.inbox).is_err() {
                break;
            }
        }
    }
}

impl AsyncRead for Mem {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.pull();
        let left = self.inbox.len() - self.pos;
        if left == 0 {
            return if self.eof {
                Poll::Ready(Ok(0))
            } else {
                Poll::Pending
            };
        }
        let n = left.min(buf.len()).min(self.chunk);
        let at = self.pos;
        buf[..n].copy_from_slice(&self.inbox[at..at + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Mem {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.room == 0 {
            return Poll::Pending;
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        let mut rest = &buf[..n];
        while !rest.is_empty() && !self.peer_failed {
            match self.peer.read_tls(&mut rest) {
                Ok(0) | Err(_) => self.peer_failed = true,
                Ok(_) => {}
            }
            if self.peer.process_new_packets().is_err() {
                self.peer_failed = true;
            }
            let mut plain = [0u8; 4096];
            while let Ok(k @ 1..) = self.peer.reader().read(&mut plain) {
                self.got_by_peer.extend_from_slice(&plain[..k]);
            }
        }
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Readable for Mem {
    fn poll_readable(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.eof || self.pos < self.inbox.len() || self.peer.wants_write() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// Bytes `from..from + n` of an endless pattern, so a prefix check catches reordering.
fn pattern(from: usize, n: usize) -> Vec<u8> {
    (from..from + n).map(|i| (i * 7 + i / 251) as u8).collect()
}

const READ_SIZES: [usize; 6] = [1, 7, 300, 5_000, 16_384, 40_000];
const CHUNKS: [usize; 8] = [1, 2, 5, 17, 1_000, 16_389, 20_000, usize::MAX];

/// The stream under test and what has happened to it.
struct Run {
    s: TlsStream<Mem>,
    handshaken: bool,
    /// Plaintext the stream read.
    got: Vec<u8>,
    /// The stream's reads ended: `Some(true)` cleanly (`Ok(0)`), `Some(false)` with an error.
    ended: Option<bool>,
    /// Why the reads ended with an error.
    why: String,
    /// Plaintext the stream's writes accepted.
    wrote: usize,
    write_failed: bool,
}

impl Run {
    /// Drive the handshake (again after it failed, too: the stream must refuse at once), then
    /// up to `rounds` reads of `size`, until one is `Pending`.
    fn read(&mut self, cx: &mut Context<'_>, size: usize, rounds: usize) {
        if !self.handshaken {
            match pin!(self.s.handshake()).poll(cx) {
                Poll::Ready(Ok(())) => self.handshaken = true,
                Poll::Ready(Err(e)) => {
                    self.ended = Some(false);
                    self.why = format!("handshake: {e}");
                }
                Poll::Pending => {}
            }
        }
        let mut buf = vec![0u8; size];
        for _ in 0..rounds {
            if !self.handshaken || self.ended.is_some() {
                return;
            }
            match Pin::new(&mut self.s).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(0)) => self.ended = Some(true),
                Poll::Ready(Ok(n)) => self.got.extend_from_slice(&buf[..n]),
                Poll::Ready(Err(e)) => {
                    self.ended = Some(false);
                    self.why = e.to_string();
                }
                Poll::Pending => return,
            }
        }
    }

    fn write(&mut self, cx: &mut Context<'_>, n: usize) {
        if !self.handshaken || self.write_failed {
            return;
        }
        let data = pattern(self.wrote, n);
        let mut at = 0;
        while at < data.len() {
            match Pin::new(&mut self.s).poll_write(cx, &data[at..]) {
                Poll::Ready(Ok(k)) if k > 0 => at += k,
                Poll::Ready(_) => {
                    self.write_failed = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        self.wrote += at;
    }

    fn flush(&mut self, cx: &mut Context<'_>, close: bool) {
        if !self.handshaken || self.write_failed {
            return;
        }
        let r = if close {
            Pin::new(&mut self.s).poll_close(cx)
        } else {
            Pin::new(&mut self.s).poll_flush(cx)
        };
        if let Poll::Ready(Err(_)) = r {
            self.write_failed = true;
        }
    }
}

/// Makes the stream under test once its transport exists.
type Make = Box<dyn FnOnce(Mem) -> TlsStream<Mem>>;

/// The stream under test and its peer: the server side with a client peer, or the reverse.
fn pair(server: bool) -> Option<(Connection, Make)> {
    let (server_cfg, client_cfg, arena) = setup();
    let name = ServerName::try_from("edgepass").ok()?;
    let arena = arena.clone();
    Some(if server {
        let conn = UnbufferedServerConnection::new(server_cfg.clone()).ok()?;
        let peer = ClientConnection::new(client_cfg.clone(), name).ok()?;
        let make: Make = Box::new(move |m| TlsStream::server(m, conn, arena));
        (Connection::Client(peer), make)
    } else {
        let conn = UnbufferedClientConnection::new(client_cfg.clone(), name).ok()?;
        let peer = ServerConnection::new(server_cfg.clone()).ok()?;
        let make: Make = Box::new(move |m| TlsStream::client(m, conn, arena));
        (Connection::Server(peer), make)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&side, data)) = data.split_first() else {
        return;
    };
    let Some((peer, make)) = pair(side & 1 == 0) else {
        return;
    };
    let mem = Mem {
        peer,
        inbox: Vec::new(),
        pos: 0,
        chunk: usize::MAX,
        eof: false,
        room: usize::MAX,
        got_by_peer: Vec::new(),
        peer_failed: false,
    };
    let mut run = Run {
        s: make(mem),
        handshaken: false,
        got: Vec::new(),
        ended: None,
        why: String::new(),
        wrote: 0,
        write_failed: false,
    };
    let mut cx = Context::from_waker(Waker::noop());
    // What the peer sent, whether it sent close_notify, whether bytes were tampered with (or
    // the peer misbehaved otherwise: the checks that all arrives are off), whether the stream
    // closed.
    let (mut sent, mut closed, mut tampered, mut stream_closed) = (0usize, false, false, false);
    // Key updates since the peer last sent data: rustls allows 32 in a row, then refuses the
    // peer (`TooManyKeyUpdateRequests`), which counts as tampering here.
    let mut updates = 0;

    let mut ops = data.iter().copied();
    while let Some(op) = ops.next() {
        let arg = usize::from(ops.next().unwrap_or(0));
        let arg2 = usize::from(ops.next().unwrap_or(0)) << 8 | arg;
        match op % 12 {
            // The peer sends `arg2` bytes (up to 64 KiB, as many as its buffer takes).
            0 if !closed => {
                let m = &mut run.s.tcp_mut().peer;
                if let Ok(k @ 1..) = m.writer().write(&pattern(sent, arg2)) {
                    sent += k;
                    updates = 0;
                }
            }
            1 if !closed && (updates < 30 || !stream_closed) => {
                let _ = run.s.tcp_mut().peer.refresh_traffic_keys();
                updates += 1;
                tampered |= updates >= 30;
            }
            2 if !closed && !tampered => {
                run.s.tcp_mut().peer.send_close_notify();
                closed = true;
                // Before the handshake is over, a close_notify (in plaintext) is not a clean end
                // of the data that follows it: the stream may end with an error instead.
                tampered |= !run.handshaken;
            }
            // `arg` bytes of the input injected on the wire.
            3 if !closed && !stream_closed => {
                let m = run.s.tcp_mut();
                m.pull();
                let junk: Vec<u8> = ops.by_ref().take(arg).collect();
                tampered |= !junk.is_empty();
                m.inbox.extend_from_slice(&junk);
            }
            // One bit flipped in the bytes not read yet.
            4 if !closed && !stream_closed => {
                let m = run.s.tcp_mut();
                m.pull();
                let left = m.inbox.len() - m.pos;
                if left > 0 {
                    let at = m.pos + arg2 % left;
                    m.inbox[at] ^= 1 << (arg % 8);
                    tampered = true;
                }
            }
            5 => run.s.tcp_mut().chunk = CHUNKS[arg % CHUNKS.len()],
            6 => run.read(&mut cx, READ_SIZES[arg % READ_SIZES.len()], 64),
            7 => run.write(&mut cx, arg2),
            8 => run.s.tcp_mut().room = arg2,
            9 => run.s.tcp_mut().room = usize::MAX,
            10 => run.flush(&mut cx, false),
            11 if !tampered => {
                run.flush(&mut cx, true);
                stream_closed = true;
            }
            _ => {}
        }
        if run.ended.is_some() && run.write_failed {
            break;
        }
    }

    // End of input: everything queued goes out, everything sent is read.
    {
        let m = run.s.tcp_mut();
        m.eof = true;
        m.room = usize::MAX;
    }
    run.flush(&mut cx, false);
    for _ in 0..1_000 {
        if run.ended.is_some() {
            break;
        }
        run.read(&mut cx, 16_384, 1_000);
    }
    assert!(
        run.ended.is_some(),
        "the stream neither ended nor failed at the end of input"
    );

    let expect_in = pattern(0, sent);
    assert!(
        expect_in.starts_with(&run.got),
        "the stream read {} bytes the peer did not send",
        run.got.len()
    );
    let peer = run.s.tcp();
    assert!(
        pattern(0, run.wrote).starts_with(&peer.got_by_peer),
        "the peer decrypted bytes the stream did not write"
    );
    if !tampered && run.handshaken {
        assert_eq!(run.got.len(), sent, "bytes the peer sent were lost");
        assert_eq!(
            run.ended,
            Some(closed),
            "clean end without close_notify, or the reverse: {}",
            run.why
        );
        if !run.write_failed && !peer.peer_failed {
            assert_eq!(
                peer.got_by_peer.len(),
                run.wrote,
                "bytes the stream wrote were lost"
            );
        }
    }
});
