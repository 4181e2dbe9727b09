//! Reading and writing signal lines on a connection, keeping bytes that follow a line.

use std::io;

use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::Result;
use crate::signal::{Signal, SignalError, MAX_LINE};

/// A fixed buffer that yields one signal line at a time. Bytes that arrive after a line (the
/// first user bytes on a pool connection) stay available through [`LineReader::leftover`].
#[derive(Debug)]
pub struct LineReader {
    buf: [u8; MAX_LINE],
    len: usize,
    /// Length of the line returned last; dropped from the front on the next call.
    pending: usize,
}

impl Default for LineReader {
    fn default() -> Self {
        Self::new()
    }
}

impl LineReader {
    /// An empty reader.
    pub const fn new() -> Self {
        LineReader {
            buf: [0; MAX_LINE],
            len: 0,
            pending: 0,
        }
    }

    /// Read until one whole line is buffered and return it. EOF before a whole line is an
    /// `UnexpectedEof` error; bad bytes are a [`SignalError`].
    pub async fn next<S: AsyncRead + Unpin>(&mut self, s: &mut S) -> Result<Signal<'_>> {
        self.buf.copy_within(self.pending..self.len, 0);
        self.len -= self.pending;
        self.pending = 0;
        loop {
            match Signal::parse(&self.buf[..self.len]) {
                Err(SignalError::Incomplete) => {}
                Err(e) => return Err(e.into()),
                Ok((_, n)) => {
                    self.pending = n;
                    break;
                }
            }
            let n = s.read(&mut self.buf[self.len..]).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            self.len += n;
        }
        // Parsed once above to find the end; parse again to hand out a borrow of the buffer.
        Ok(Signal::parse(&self.buf[..self.len])?.0)
    }

    /// Bytes received after the last line returned.
    pub fn leftover(&self) -> &[u8] {
        &self.buf[self.pending..self.len]
    }

    /// Forget the [`LineReader::leftover`] bytes (the caller used them): the next line is
    /// read from what arrives after them.
    pub fn discard_leftover(&mut self) {
        self.len = self.pending;
    }
}

/// Write one signal line and flush it.
pub async fn send<S: AsyncWrite + Unpin>(s: &mut S, sig: &Signal<'_>) -> Result<()> {
    s.write_all(&sig.encode()).await?;
    s.flush().await?;
    Ok(())
}
