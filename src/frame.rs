//! UDP datagram framing on a pool connection: a 2-byte big-endian length, then the payload.
//!
//! After a `udp <id> <addr>` line every datagram crosses the tunnel as one frame, both ways.
//! Like [`crate::signal`], this is pure: callers read bytes, hand them to [`parse_frame`],
//! and write [`frame_header`] followed by the payload.

use std::fmt;

/// Bytes in a frame header (the big-endian payload length).
pub const HEADER_LEN: usize = 2;
/// Largest payload a header can announce: the length is a `u16`.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

/// Why bytes are not (yet) a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The header or the payload is not all there yet: read more.
    Incomplete,
    /// The header announces more than the caller's `max`.
    TooLarge,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameError::Incomplete => "incomplete datagram frame",
            FrameError::TooLarge => "datagram frame larger than allowed",
        })
    }
}

impl std::error::Error for FrameError {}

/// The header for a payload of `len` bytes, or `None` if `len` exceeds [`MAX_PAYLOAD`].
///
/// # Examples
/// ```
/// use edgepass::frame::frame_header;
/// assert_eq!(frame_header(258), Some([1, 2]));
/// assert_eq!(frame_header(70_000), None);
/// ```
pub fn frame_header(len: usize) -> Option<[u8; HEADER_LEN]> {
    u16::try_from(len).ok().map(u16::to_be_bytes)
}

/// Parses one frame from the front of `buf`, refusing payloads longer than `max`.
///
/// Returns the payload (borrowed from `buf`) and the number of bytes consumed, header
/// included; what follows is the next frame.
///
/// # Errors
/// [`FrameError::Incomplete`] until the whole frame is in `buf`; [`FrameError::TooLarge`] as
/// soon as the header announces more than `max` bytes (the payload is not waited for).
///
/// # Examples
/// ```
/// use edgepass::frame::{parse_frame, FrameError};
/// assert_eq!(parse_frame(b"\x00\x02hi!", 1500), Ok((&b"hi"[..], 4)));
/// assert_eq!(parse_frame(b"\x00\x02h", 1500), Err(FrameError::Incomplete));
/// assert_eq!(parse_frame(b"\x00\x02", 1), Err(FrameError::TooLarge));
/// ```
pub fn parse_frame(buf: &[u8], max: usize) -> Result<(&[u8], usize), FrameError> {
    let (header, rest) = buf
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(FrameError::Incomplete)?;
    let len = usize::from(u16::from_be_bytes(*header));
    if len > max {
        return Err(FrameError::TooLarge);
    }
    let payload = rest.get(..len).ok_or(FrameError::Incomplete)?;
    Ok((payload, HEADER_LEN + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header plus payload, as a sender writes them.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = frame_header(payload.len()).unwrap().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn headers() {
        let cases = [
            (0, Some([0, 0])),
            (1, Some([0, 1])),
            (256, Some([1, 0])),
            (65535, Some([0xff, 0xff])),
            (65536, None),
            (usize::MAX, None),
        ];
        for (len, want) in cases {
            assert_eq!(frame_header(len), want, "{len}");
        }
    }

    #[test]
    fn byte_at_a_time() {
        let big = vec![0x5a; MAX_PAYLOAD];
        let payloads: [&[u8]; 4] = [b"", b"x", b"hello\n", &big];
        for payload in payloads {
            let mut stream = frame(payload);
            let end = stream.len();
            stream.extend_from_slice(b"\x00\x01z");
            for cut in 0..end {
                assert_eq!(
                    parse_frame(&stream[..cut], MAX_PAYLOAD),
                    Err(FrameError::Incomplete),
                    "len {} cut at {cut}",
                    payload.len()
                );
            }
            for cut in end..=stream.len() {
                assert_eq!(parse_frame(&stream[..cut], MAX_PAYLOAD), Ok((payload, end)));
            }
            let next = stream.get(end..).unwrap();
            assert_eq!(parse_frame(next, MAX_PAYLOAD), Ok((&b"z"[..], 3)));
        }
    }

    #[test]
    fn too_large_is_reported_from_the_header() {
        assert_eq!(parse_frame(&[0x05, 0xdd], 1500), Err(FrameError::TooLarge));
        assert_eq!(
            parse_frame(&[0x05, 0xdc], 1500),
            Err(FrameError::Incomplete)
        );
        assert_eq!(parse_frame(&[0, 1, 9], 0), Err(FrameError::TooLarge));
        assert_eq!(parse_frame(&[0, 0], 0), Ok((&[][..], 2)));
        assert_eq!(
            parse_frame(&[0xff, 0xff], usize::MAX),
            Err(FrameError::Incomplete)
        );
    }
}
