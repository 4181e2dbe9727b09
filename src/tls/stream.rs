//! A TLS stream over rustls' unbuffered API whose record buffers are leased from an arena only
//! while bytes move, so an idle open TLS connection holds no buffer. (futures-rustls keeps a
//! 4 KiB read buffer per connection for as long as the connection lives.) Pool connections and
//! every connection the server accepts use it; the client's control connection keeps
//! futures-rustls.
//!
//! # Implementation
//! One arena buffer of [`BUF`] bytes, leased while bytes move in either direction, in three
//! parts: decrypted plaintext the reader has not taken yet (the stash), ciphertext read from
//! the socket, and records waiting for the socket. One buffer for both directions: a stream
//! never holds a buffer while it waits for another, so streams cannot lock each other out
//! of an empty arena (pages of a part not used are never touched, so never resident).
//!
//! Handshake records, and the rare post-handshake messages such as a key update, are
//! encoded into a heap vector (the handshake allocates anyway) that is freed once sent.
//! rustls joins a handshake message split over records in the buffer it reads from; when one
//! is larger than the ciphertext part (a long certificate chain), the incoming ciphertext
//! moves to a heap vector, bounded, until the handshake ends.
//!
//! A read takes bytes from the stash first. Only when the stash is empty does it read the
//! socket, and then it processes every complete record in the buffer: plaintext goes to the
//! caller's buffer while it has room and to the stash after. So the stash never holds more
//! than one buffer of ciphertext decrypts to, and no complete record is left behind for a
//! write to find. Everything queued for the socket is sent before anything new is encrypted,
//! so records leave in the order rustls made them. A record larger than the ciphertext part
//! is refused (the largest legal one fits).

use std::io;
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};

use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus,
};
use rustls::CommonState;
use smol::io::{AsyncRead, AsyncWrite};
use smol::{Async, Timer};

use crate::arena::{Arena, Lease};
use crate::copy::Readable;
use crate::pending::MAX_PENDING;

/// One part of a buffer: room for the largest TLS 1.3 record (5-byte header,
/// 2^14 bytes of plaintext, 256 bytes of expansion: 16,645 bytes), rounded up.
pub const REC: usize = 17 * 1024;
/// Size of one arena buffer: stash, incoming ciphertext, outgoing records.
pub const BUF: usize = 3 * REC;
/// Where the incoming ciphertext starts in the buffer.
const IN: usize = REC;
/// Where the outgoing records start in the buffer.
const OUT: usize = 2 * REC;
/// Plaintext encrypted per write: one full record, whose ciphertext fits [`REC`].
const MAX_PLAIN: usize = 16 * 1024;
/// Most incoming ciphertext held during the handshake. rustls joins a handshake message that
/// spans records in the buffer it reads from, so a message larger than a record (a long
/// certificate chain) needs more than [`REC`]. rustls refuses messages over 64 KiB; the
/// ciphertext of one that size, with the records around it, fits five.
const HANDSHAKE_IN: usize = 5 * REC;

/// Every TLS arena of this process, for [`release_idle`].
static ARENAS: Mutex<Vec<Weak<Arena>>> = Mutex::new(Vec::new());

/// The arena for one role's TLS streams: a buffer for each of `slot` sessions, `max` pool
/// connections and [`MAX_PENDING`] handshakes moving bytes at once, and a few more for control
/// connections. Only pages written are ever resident; when every buffer is taken a stream
/// waits for one (asking again every 5 ms) under its caller's timeouts.
pub fn arena(slot: usize, max: usize) -> io::Result<Arc<Arena>> {
    let count = slot.saturating_add(max).saturating_add(MAX_PENDING + 16);
    let a = Arena::new(count, BUF)?;
    let mut all = ARENAS.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(&a));
    Ok(a)
}

/// Give the pages of every free TLS buffer back to the kernel; returns how many buffers.
pub fn release_idle() -> usize {
    let all = ARENAS.lock().unwrap_or_else(|e| e.into_inner());
    all.iter()
        .filter_map(Weak::upgrade)
        .map(|a| a.release_idle())
        .sum()
}

/// The rustls connection of either side.
enum Side {
    Client(UnbufferedClientConnection),
    Server(UnbufferedServerConnection),
}

/// What a [`TlsStream`] runs over: a byte stream that can also be awaited for readability
/// without reading ([`Readable`]: an idle stream waits that way, holding no buffer). TCP in
/// the tunnel; an in-memory transport in the fuzz target.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Readable {}

impl<T: AsyncRead + AsyncWrite + Unpin + Readable> Transport for T {}

/// A TLS connection over TCP (or another [`Transport`]).
pub struct TlsStream<S = Async<TcpStream>> {
    tcp: S,
    side: Side,
    arena: Arc<Arena>,
    /// Stash in `[st_pos..st_len]`, ciphertext in `[IN..IN + ct_len]` (or `hs_in[..ct_len]`
    /// during a large handshake), records for the socket
    /// in `[OUT + tx_pos..OUT + tx_len]`; `None` while all three are empty.
    buf: Option<Lease>,
    st_pos: usize,
    st_len: usize,
    ct_len: usize,
    tx_pos: usize,
    tx_len: usize,
    /// Handshake and other non-data records for the socket, sent after the buffer's.
    spill: Vec<u8>,
    /// Incoming ciphertext, in place of the buffer's part, while the handshake needs more
    /// room than that (up to [`HANDSHAKE_IN`]); empty otherwise, and freed when it ends.
    hs_in: Vec<u8>,
    /// Set while no arena buffer is free.
    retry: Option<Timer>,
    /// close_notify was received: reads end once the stash is empty.
    peer_closed: bool,
    /// close_notify was queued: no more writes.
    sent_close: bool,
    /// Record processing failed (a fatal alert is queued): rustls is not called again.
    failed: bool,
}

/// What the caller wants from one round of record processing.
#[derive(Clone, Copy)]
enum Want<'a> {
    Read,
    Write(&'a [u8]),
    Close,
}

/// What one round of record processing came to.
#[derive(Debug, PartialEq)]
enum Step {
    /// Progress was made; process again.
    Again,
    /// Records wait for the socket; send them, then process again.
    Flush,
    /// More ciphertext is needed (handshake blocked, or nothing left to decrypt).
    NeedInput,
    /// The handshake is done and nothing is left to read.
    Writable,
    /// `n` bytes of plaintext were encrypted into the outgoing buffer.
    Wrote(usize),
    PeerClosed,
    Closed,
}

/// The buffers a round of record processing may fill.
struct Sink<'a> {
    out: &'a mut [u8],
    filled: &'a mut usize,
    stash: &'a mut [u8],
    st_pos: usize,
    st_len: &'a mut usize,
    tx: Option<&'a mut [u8]>,
    tx_pos: usize,
    tx_len: &'a mut usize,
    spill: &'a mut Vec<u8>,
}

impl Sink<'_> {
    /// Decrypted plaintext: to the caller's buffer while it has room (and nothing older waits
    /// in the stash), the rest to the stash.
    fn take(&mut self, mut payload: &[u8]) -> io::Result<()> {
        if self.st_pos == *self.st_len && *self.filled < self.out.len() {
            let n = payload.len().min(self.out.len() - *self.filled);
            self.out[*self.filled..*self.filled + n].copy_from_slice(&payload[..n]);
            *self.filled += n;
            payload = &payload[n..];
        }
        let end = *self.st_len + payload.len();
        let room = self
            .stash
            .get_mut(*self.st_len..end)
            .ok_or_else(|| invalid("more TLS plaintext than its buffer holds"))?;
        room.copy_from_slice(payload);
        *self.st_len = end;
        Ok(())
    }

    /// A non-data record, appended to the spill vector.
    fn encode<D>(&mut self, e: &mut EncodeTlsData<'_, D>) -> io::Result<()> {
        let need = match e.encode(&mut []) {
            Err(EncodeError::InsufficientSize(s)) => s.required_size,
            Ok(_) => return Ok(()),
            Err(e) => return Err(io::Error::other(e)),
        };
        let old = self.spill.len();
        self.spill.resize(old + need, 0);
        let n = e.encode(&mut self.spill[old..]).map_err(io::Error::other)?;
        self.spill.truncate(old + n);
        Ok(())
    }

    fn nothing_to_send(&self) -> bool {
        self.tx_pos == *self.tx_len && self.spill.is_empty()
    }

    /// The free tail of the outgoing buffer.
    fn tx_room(&mut self) -> io::Result<&mut [u8]> {
        let at = *self.tx_len;
        self.tx
            .as_deref_mut()
            .and_then(|t| t.get_mut(at..))
            .ok_or_else(|| io::Error::other("no outgoing TLS buffer"))
    }
}

/// A rustls error as an I/O error that still carries it (see `tls::client::describe`).
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn encrypt_error(e: EncryptError) -> io::Error {
    io::Error::other(e)
}

/// Handle the state one `process_tls_records` call returned. Returns the bytes to discard
/// from the front of the ciphertext and what it came to.
fn step<D>(
    status: UnbufferedStatus<'_, '_, D>,
    want: Want<'_>,
    sink: &mut Sink<'_>,
) -> io::Result<(usize, Step)> {
    let mut discard = status.discard;
    let step = match status.state.map_err(tls_error)? {
        ConnectionState::ReadTraffic(mut r) => {
            while let Some(rec) = r.next_record() {
                let rec = rec.map_err(tls_error)?;
                discard += rec.discard;
                sink.take(rec.payload)?;
            }
            Step::Again
        }
        ConnectionState::EncodeTlsData(mut e) => {
            sink.encode(&mut e)?;
            Step::Again
        }
        ConnectionState::TransmitTlsData(t) => {
            if sink.nothing_to_send() {
                t.done();
                Step::Again
            } else {
                Step::Flush
            }
        }
        ConnectionState::BlockedHandshake => Step::NeedInput,
        ConnectionState::PeerClosed => Step::PeerClosed,
        ConnectionState::Closed => Step::Closed,
        ConnectionState::WriteTraffic(mut w) => match want {
            Want::Read => Step::Writable,
            Want::Write(data) => {
                let n = data.len().min(MAX_PLAIN);
                let k = w
                    .encrypt(&data[..n], sink.tx_room()?)
                    .map_err(encrypt_error)?;
                *sink.tx_len += k;
                Step::Wrote(n)
            }
            Want::Close => {
                let k = w
                    .queue_close_notify(sink.tx_room()?)
                    .map_err(encrypt_error)?;
                *sink.tx_len += k;
                Step::Wrote(0)
            }
        },
        // Early data is never enabled.
        _ => return Err(invalid("unexpected TLS early data")),
    };
    Ok((discard, step))
}

impl<S: Transport> TlsStream<S> {
    /// Start a client connection; the handshake runs in [`TlsStream::handshake`].
    pub fn client(tcp: S, conn: UnbufferedClientConnection, arena: Arc<Arena>) -> Self {
        Self::new(tcp, Side::Client(conn), arena)
    }

    /// Start a server connection; the handshake runs in [`TlsStream::handshake`].
    pub fn server(tcp: S, conn: UnbufferedServerConnection, arena: Arc<Arena>) -> Self {
        Self::new(tcp, Side::Server(conn), arena)
    }

    fn new(tcp: S, side: Side, arena: Arc<Arena>) -> Self {
        TlsStream {
            tcp,
            side,
            arena,
            buf: None,
            st_pos: 0,
            st_len: 0,
            ct_len: 0,
            tx_pos: 0,
            tx_len: 0,
            spill: Vec::new(),
            hs_in: Vec::new(),
            retry: None,
            peer_closed: false,
            sent_close: false,
            failed: false,
        }
    }

    /// The TCP socket (transport) underneath.
    pub fn tcp(&self) -> &S {
        &self.tcp
    }

    /// The transport underneath, to change (the fuzz target's in-memory wire).
    pub fn tcp_mut(&mut self) -> &mut S {
        &mut self.tcp
    }

    /// The TLS state: peer certificates, negotiated suite.
    pub fn state(&self) -> &CommonState {
        match &self.side {
            Side::Client(c) => c,
            Side::Server(s) => s,
        }
    }

    /// Whether nothing is buffered in either direction (for a pool connection put back).
    pub fn is_quiet(&self) -> bool {
        self.buffer_empty() && self.spill.is_empty()
    }

    /// Whether the buffer's three parts hold nothing.
    fn buffer_empty(&self) -> bool {
        self.ct_len == 0 && self.st_pos == self.st_len && self.tx_pos == self.tx_len
    }

    /// Run the handshake to its end.
    pub async fn handshake(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_handshake(cx)).await
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_send(cx))?;
            match self.process(Want::Read, &mut [], &mut 0)? {
                Step::Again | Step::Flush | Step::Wrote(_) => {}
                Step::Writable => {
                    self.spill = Vec::new();
                    self.end_large_handshake()?;
                    return Poll::Ready(Ok(()));
                }
                Step::NeedInput => {
                    if ready!(self.poll_fill(cx, true))? {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Step::PeerClosed | Step::Closed => {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
                }
            }
        }
    }

    /// One `process_tls_records` round over the ciphertext held, then the discard. After an
    /// error every call fails at once: the other direction of a copy may still read or write,
    /// and rustls must not meet the bad records again (it would queue a second fatal alert).
    fn process(&mut self, want: Want<'_>, out: &mut [u8], filled: &mut usize) -> io::Result<Step> {
        if self.failed {
            return Err(invalid("the TLS connection failed earlier"));
        }
        let r = self.process_records(want, out, filled);
        self.failed = r.is_err();
        r
    }

    fn process_records(
        &mut self,
        want: Want<'_>,
        out: &mut [u8],
        filled: &mut usize,
    ) -> io::Result<Step> {
        let TlsStream {
            side,
            buf,
            st_pos,
            st_len,
            ct_len,
            tx_pos,
            tx_len,
            spill,
            hs_in,
            ..
        } = self;
        let (discard, step) = {
            let (stash, part, out_tls): (&mut [u8], &mut [u8], _) = match buf.as_deref_mut() {
                Some(b) => {
                    let (s, rest) = b.split_at_mut(IN);
                    let (c, o) = rest.split_at_mut(OUT - IN);
                    (s, c, Some(o))
                }
                None => (&mut [], &mut [], None),
            };
            let held = if hs_in.is_empty() {
                part
            } else {
                &mut hs_in[..]
            };
            let cipher = held
                .get_mut(..*ct_len)
                .ok_or_else(|| io::Error::other("TLS ciphertext without a buffer"))?;
            let mut sink = Sink {
                out,
                filled,
                stash,
                st_pos: *st_pos,
                st_len,
                tx: out_tls,
                tx_pos: *tx_pos,
                tx_len,
                spill,
            };
            match side {
                Side::Client(c) => step(c.process_tls_records(cipher), want, &mut sink)?,
                Side::Server(s) => step(s.process_tls_records(cipher), want, &mut sink)?,
            }
        };
        if discard > 0 {
            if !hs_in.is_empty() {
                hs_in.copy_within(discard..*ct_len, 0);
            } else if let Some(b) = buf.as_deref_mut() {
                b.copy_within(IN + discard..IN + *ct_len, IN);
            }
            *ct_len -= discard;
        }
        Ok(step)
    }

    /// Read the socket into the ciphertext part. Ready(true) at the end of input. With `grow`
    /// (the handshake) a full part moves to the heap, which may grow up to [`HANDSHAKE_IN`].
    fn poll_fill(&mut self, cx: &mut Context<'_>, grow: bool) -> Poll<io::Result<bool>> {
        let b = ready!(self.arena.poll_lease(&mut self.buf, &mut self.retry, cx));
        let ct_len = self.ct_len;
        let full = if self.hs_in.is_empty() {
            ct_len == OUT - IN
        } else {
            ct_len == self.hs_in.len()
        };
        if full {
            if !grow {
                return Poll::Ready(Err(invalid("TLS record larger than the buffer")));
            }
            if self.hs_in.len() >= HANDSHAKE_IN {
                return Poll::Ready(Err(invalid("TLS handshake message larger than 64 KiB")));
            }
            if self.hs_in.is_empty() {
                self.hs_in = vec![0; 2 * REC];
                self.hs_in[..ct_len].copy_from_slice(&b[IN..IN + ct_len]);
            } else {
                let len = (2 * self.hs_in.len()).min(HANDSHAKE_IN);
                self.hs_in.resize(len, 0);
            }
        }
        let room = if self.hs_in.is_empty() {
            &mut b[IN + ct_len..OUT]
        } else {
            &mut self.hs_in[ct_len..]
        };
        match Pin::new(&mut self.tcp).poll_read(cx, room) {
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(true)),
            Poll::Ready(Ok(n)) => {
                self.ct_len += n;
                Poll::Ready(Ok(false))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.release();
                Poll::Pending
            }
        }
    }

    /// At the end of a handshake that needed the heap for its input: what is left of the
    /// ciphertext (less than a record: every complete one is processed) goes back to the
    /// buffer's part, and the heap is freed.
    fn end_large_handshake(&mut self) -> io::Result<()> {
        if self.hs_in.is_empty() {
            return Ok(());
        }
        let n = self.ct_len;
        if n > 0 {
            let part = self
                .buf
                .as_deref_mut()
                .and_then(|b| b.get_mut(IN..OUT))
                .and_then(|p| p.get_mut(..n))
                .ok_or_else(|| invalid("TLS record larger than the buffer"))?;
            part.copy_from_slice(&self.hs_in[..n]);
        }
        self.hs_in = Vec::new();
        Ok(())
    }

    /// The buffer goes back when it holds nothing, and the spill's memory once it is sent.
    fn release(&mut self) {
        if self.buffer_empty() {
            self.buf = None;
            self.st_pos = 0;
            self.st_len = 0;
        }
        if self.spill.is_empty() && self.spill.capacity() > 0 {
            self.spill = Vec::new();
        }
    }

    /// Send everything queued: the buffer's records, then the spill. The buffer stays leased
    /// until [`Self::release`].
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tx_pos < self.tx_len {
            let Some(b) = self.buf.as_deref() else {
                return Poll::Ready(Err(io::Error::other("records pending without a buffer")));
            };
            let out = &b[OUT + self.tx_pos..OUT + self.tx_len];
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tx_pos += n;
        }
        self.tx_pos = 0;
        self.tx_len = 0;
        while !self.spill.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.spill))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.spill.drain(..n);
        }
        Poll::Ready(Ok(()))
    }

    /// Drive record processing for a write (`Want::Write` or `Want::Close`): send what is
    /// queued, then process until the data is encrypted.
    fn poll_encrypt(&mut self, cx: &mut Context<'_>, want: Want<'_>) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_send(cx))?;
            ready!(self.arena.poll_lease(&mut self.buf, &mut self.retry, cx));
            match self.process(want, &mut [], &mut 0)? {
                Step::Wrote(n) => return Poll::Ready(Ok(n)),
                Step::Again | Step::Flush | Step::Writable => {}
                Step::PeerClosed => {
                    self.peer_closed = true;
                    self.ct_len = 0;
                }
                Step::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Step::NeedInput => return Poll::Ready(Err(invalid("TLS handshake not complete"))),
            }
        }
    }

    /// Ready when a read may find bytes: plaintext in the stash, the end of input, or a
    /// readable socket. Records waiting for the socket are pushed out meanwhile.
    pub fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.st_pos < self.st_len || self.peer_closed {
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        self.tcp.poll_readable(cx)
    }
}

impl<S: Transport> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        if this.st_pos < this.st_len {
            let Some(b) = this.buf.as_deref() else {
                return Poll::Ready(Err(io::Error::other("plaintext without a buffer")));
            };
            let n = buf.len().min(this.st_len - this.st_pos);
            buf[..n].copy_from_slice(&b[this.st_pos..this.st_pos + n]);
            this.st_pos += n;
            if this.st_pos == this.st_len {
                this.st_pos = 0;
                this.st_len = 0;
                this.release();
            }
            return Poll::Ready(Ok(n));
        }
        if this.peer_closed || buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut filled = 0;
        loop {
            match this.process(Want::Read, buf, &mut filled)? {
                Step::Again | Step::Wrote(_) => continue,
                Step::Flush => {
                    if this.poll_send(cx)?.is_ready() {
                        continue;
                    }
                }
                Step::PeerClosed => {
                    this.peer_closed = true;
                    this.ct_len = 0;
                    this.release();
                    return Poll::Ready(Ok(filled));
                }
                Step::Closed => return Poll::Ready(Ok(filled)),
                Step::NeedInput | Step::Writable => {}
            }
            // Every complete record is processed.
            if filled > 0 || this.st_pos < this.st_len {
                this.release();
                return Poll::Ready(Ok(filled));
            }
            if ready!(this.poll_fill(cx, false))? {
                let why = if this.ct_len > 0 {
                    "the peer closed the connection in the middle of a TLS record"
                } else {
                    "the peer closed the connection without a TLS close_notify"
                };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, why)));
            }
        }
    }
}

impl<S: Transport> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.sent_close {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_encrypt(cx, Want::Write(data)))?;
        // Send at once; what the socket does not take now goes at the next write or flush.
        if let Poll::Ready(r) = this.poll_send(cx) {
            r?;
            this.release();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        this.release();
        Poll::Ready(Ok(()))
    }

    /// Queue close_notify and send everything. (The TCP half-close is the caller's.)
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.sent_close {
            match this.poll_encrypt(cx, Want::Close) {
                Poll::Ready(Ok(_)) => {}
                // Both sides have closed already: nothing to send.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => {}
                other => return other.map_ok(|_| ()),
            }
            this.sent_close = true;
        }
        ready!(this.poll_send(cx))?;
        this.release();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests;
