//! Fuzzes the server side of the handshake (`handshake::accept`) with arbitrary client bytes
//! over an in-memory stream: no panic, no hang, never an authenticated result without the key,
//! and what the server writes is at most a well-formed `challenge` and an `err` line: never a
//! `proof`, which would give a key guesser something to check guesses against offline.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use edgepass::auth::Key;
use edgepass::handshake;
use edgepass::lines::LineReader;
use edgepass::signal::Signal;
use libfuzzer_sys::fuzz_target;
use smol::io::{AsyncRead, AsyncWrite};

/// The client's bytes, handed out `chunk` at a time (short reads exercise the line buffer);
/// EOF after them. Everything written goes to `out`.
struct Mem<'a> {
    input: &'a [u8],
    chunk: usize,
    out: Vec<u8>,
}

impl AsyncRead for Mem<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = self.input.len().min(buf.len()).min(self.chunk);
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Mem<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte: low 7 bits pick the read size (0 = whole buffer), the top bit puts a valid
    // `hello` in front so the search starts at the `auth` line half of the time.
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let chunk = match usize::from(ctl & 0x7f) {
        0 => usize::MAX,
        n => n,
    };
    let mut input = Vec::with_capacity(rest.len() + 64);
    if ctl & 0x80 != 0 {
        input.extend_from_slice(b"hello ctl 000102030405060708090a0b0c0d0e0f\n");
    }
    input.extend_from_slice(rest);
    let mut s = Mem {
        input: &input,
        chunk,
        out: Vec::new(),
    };
    let mut lines = LineReader::new();
    // Stretched once: a key per input would spend the run in PBKDF2.
    static KEY: OnceLock<Key> = OnceLock::new();
    let key = KEY.get_or_init(|| Key::fresh(b"fuzz-key"));
    // The stream never returns Pending, so this finishes in one pass.
    let res = smol::block_on(handshake::accept(&mut s, &mut lines, Some(key), 0, None));
    assert!(res.is_err(), "authenticated without the key: {res:?}");
    // Output: nothing, or a challenge, optionally followed by `err 202`; never a `proof`.
    let mut out = &s.out[..];
    let mut n = 0;
    while !out.is_empty() {
        let (sig, used) = Signal::parse(out).expect("the server wrote an unparsable line");
        match (n, sig) {
            (
                0,
                Signal::Challenge {
                    tls: 0, fp: None, ..
                },
            ) => {}
            (1, Signal::Err { code: 202, .. }) => {}
            (i, other) => panic!("line {i}: unexpected {other:?}"),
        }
        out = &out[used..];
        n += 1;
    }
});
