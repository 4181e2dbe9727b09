//! Chunked TCP on a reusable pool connection: after a `tcpr <id> <addr>` line each direction
//! carries chunks, a 2-byte big-endian length then that many bytes, and a zero-length chunk
//! ends the direction (the half-close that a one-shot pool connection signals with FIN).
//!
//! Pure, like [`crate::signal`] and [`crate::frame`]: the copy reads bytes and hands them to
//! [`Dechunk`]. A reader that never asks for more than [`Dechunk::want`] bytes never reads
//! past the end chunk, so the next signal line stays on the socket for the line reader.

use std::fmt;

/// Bytes in a chunk header.
pub const HEADER_LEN: usize = 2;
/// The end chunk: a header announcing no bytes.
pub const END: [u8; HEADER_LEN] = [0, 0];
/// Largest payload one chunk carries.
pub const MAX_CHUNK: usize = u16::MAX as usize;

/// Bytes that break the chunk stream: the connection cannot be trusted any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Bytes after the end chunk (the peer may only speak again after both ends finished).
    AfterEnd,
    /// [`Dechunk::split`] was given more than [`Dechunk::want`] bytes.
    Overread,
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkError::AfterEnd => "bytes after the end of a chunked stream",
            ChunkError::Overread => "read past the current chunk",
        })
    }
}

impl std::error::Error for ChunkError {}

/// The header of a chunk of `len` payload bytes (1..=[`MAX_CHUNK`]; 0 is [`END`]).
pub fn header(len: usize) -> [u8; HEADER_LEN] {
    debug_assert!(len <= MAX_CHUNK);
    (len.min(MAX_CHUNK) as u16).to_be_bytes()
}

/// What the front of some input holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This many payload bytes, at the front of the input.
    Payload(usize),
    /// This many header bytes at the front were taken; the stream goes on.
    Header(usize),
    /// The end chunk's header was completed by this many bytes at the front.
    End(usize),
}

/// The receiving side of one chunked direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dechunk {
    /// Payload bytes still to come in the current chunk.
    remaining: usize,
    /// Header bytes seen so far.
    hdr: [u8; HEADER_LEN],
    have: usize,
    ended: bool,
}

impl Dechunk {
    /// A direction about to receive its first chunk header.
    pub const fn new() -> Self {
        Dechunk {
            remaining: 0,
            hdr: [0; HEADER_LEN],
            have: 0,
            ended: false,
        }
    }

    /// Whether the end chunk has arrived.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The most bytes a read may take without going past the end chunk: the rest of the
    /// current payload and the next header. Zero once ended.
    pub fn want(&self) -> usize {
        if self.ended {
            0
        } else {
            self.remaining + (HEADER_LEN - self.have)
        }
    }

    /// Take what the front of `input` holds (input must not be empty unless ended).
    ///
    /// # Errors
    /// [`ChunkError::AfterEnd`] for any byte after the end chunk.
    ///
    /// # Examples
    /// ```
    /// use edgepass::chunk::{Dechunk, Step};
    /// let mut d = Dechunk::new();
    /// assert_eq!(d.step(b"\x00\x02hi\x00\x00"), Ok(Step::Header(2)));
    /// assert_eq!(d.step(b"hi\x00\x00"), Ok(Step::Payload(2)));
    /// assert_eq!(d.step(b"\x00\x00"), Ok(Step::End(2)));
    /// assert!(d.ended());
    /// ```
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        if self.ended {
            return Err(ChunkError::AfterEnd);
        }
        if self.remaining > 0 {
            let n = self.remaining.min(input.len());
            self.remaining -= n;
            return Ok(Step::Payload(n));
        }
        let n = (HEADER_LEN - self.have).min(input.len());
        self.hdr[self.have..self.have + n].copy_from_slice(&input[..n]);
        self.have += n;
        if self.have < HEADER_LEN {
            return Ok(Step::Header(n));
        }
        self.have = 0;
        match u16::from_be_bytes(self.hdr) as usize {
            0 => {
                self.ended = true;
                Ok(Step::End(n))
            }
            len => {
                self.remaining = len;
                Ok(Step::Header(n))
            }
        }
    }

    /// Take `input` (stream bytes, in any pieces), handing each payload piece to `payload`,
    /// until the end chunk. Returns how many bytes were taken: all of `input`, or fewer when
    /// the end chunk came before its end (what follows is not this stream's).
    ///
    /// # Errors
    /// [`ChunkError::AfterEnd`] when the end chunk had arrived before this call.
    ///
    /// # Examples
    /// ```
    /// use edgepass::chunk::Dechunk;
    /// let (mut d, mut out) = (Dechunk::new(), Vec::new());
    /// assert_eq!(d.feed(b"\x00\x02hi\x00", |p| out.extend_from_slice(p)), Ok(5));
    /// assert_eq!(d.feed(b"\x00tcpr", |p| out.extend_from_slice(p)), Ok(1));
    /// assert!(d.ended() && out == b"hi");
    /// ```
    pub fn feed(
        &mut self,
        input: &[u8],
        mut payload: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut at = 0;
        while at < input.len() {
            match self.step(&input[at..])? {
                Step::Payload(n) => {
                    payload(&input[at..at + n]);
                    at += n;
                }
                Step::Header(n) => at += n,
                Step::End(n) => return Ok(at + n),
            }
        }
        Ok(at)
    }

    /// Take a read of at most [`Dechunk::want`] bytes, as the copy does: returns how many
    /// payload bytes are at its front (the rest were header bytes).
    ///
    /// # Errors
    /// [`ChunkError::AfterEnd`] for any byte after the end chunk, [`ChunkError::Overread`]
    /// when `read` is longer than [`Dechunk::want`] was.
    pub fn split(&mut self, read: &[u8]) -> Result<usize, ChunkError> {
        let mut at = 0;
        let mut payload = 0;
        while at < read.len() {
            match self.step(&read[at..])? {
                Step::Payload(n) => {
                    if at != 0 {
                        // Only when more than `want()` bytes were passed.
                        return Err(ChunkError::Overread);
                    }
                    payload = n;
                    at += n;
                }
                Step::Header(n) | Step::End(n) => at += n,
            }
        }
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encode `chunks` (empty ones skipped) and the end chunk.
    fn encode(chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend_from_slice(&header(c.len()));
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&END);
        out
    }

    /// Decode `input` fed in pieces of `piece` bytes.
    fn decode_steps(input: &[u8], piece: usize) -> Result<(Vec<u8>, bool), ChunkError> {
        let mut d = Dechunk::new();
        let mut out = Vec::new();
        for part in input.chunks(piece) {
            d.feed(part, |p| out.extend_from_slice(p))?;
        }
        Ok((out, d.ended()))
    }

    /// Decode as the copy does: reads of at most `want()` and at most `cap` bytes.
    fn decode_reads(input: &[u8], cap: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = Dechunk::new();
        let mut out = Vec::new();
        let mut at = 0;
        while !d.ended() && at < input.len() {
            let n = d.want().min(cap).min(input.len() - at);
            let read = &input[at..at + n];
            let p = d.split(read)?;
            out.extend_from_slice(&read[..p]);
            at += n;
        }
        Ok((out, at))
    }

    #[test]
    fn round_trip_in_any_pieces() {
        let big = vec![7u8; MAX_CHUNK];
        let wire = encode(&[b"hello", b"", b"x", &big, b"tail"]);
        let mut want = b"hellox".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"tail");
        for piece in [1, 2, 3, 5, 64, 4096, wire.len()] {
            assert_eq!(decode_steps(&wire, piece), Ok((want.clone(), true)));
        }
    }

    #[test]
    fn reads_bounded_by_want_stop_exactly_at_the_end() {
        let mut wire = encode(&[b"abc", b"defgh"]);
        let end = wire.len();
        wire.extend_from_slice(b"tcpr 2 1.2.3.4:5\n");
        for cap in [1, 2, 3, 7, 16_384] {
            assert_eq!(decode_reads(&wire, cap), Ok((b"abcdefgh".to_vec(), end)));
        }
    }

    #[test]
    fn bytes_after_the_end_are_refused() {
        let mut d = Dechunk::new();
        assert_eq!(d.step(&END), Ok(Step::End(2)));
        assert_eq!(d.want(), 0);
        assert_eq!(d.step(b"x"), Err(ChunkError::AfterEnd));
        assert_eq!(d.split(b"x"), Err(ChunkError::AfterEnd));
        // More than want() in one split: refused rather than misread.
        let mut d = Dechunk::new();
        assert_eq!(d.split(b"\x00\x01a\x00\x01b"), Err(ChunkError::Overread));
    }

    #[test]
    fn header_split_across_reads() {
        let mut d = Dechunk::new();
        assert_eq!(d.split(&[0]), Ok(0));
        assert_eq!(d.want(), 1);
        assert_eq!(d.split(&[3]), Ok(0));
        assert_eq!(d.want(), 5);
        assert_eq!(d.split(b"xyz\x00"), Ok(3));
        assert_eq!(d.split(&[0]), Ok(0));
        assert!(d.ended());
    }
}
