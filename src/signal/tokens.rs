//! One token of a signal line: reading it (numbers, names, codes, text, addresses, hex) and
//! writing it. Pure functions over bytes, like the rest of the parser.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::{bad, Line, SignalError, ERR_CODES, MAX_ADDR, MAX_ERR_TEXT, MAX_NAME};

/// Space-separated tokens of one line, each required to be non-empty.
pub(super) struct Tokens<'a> {
    /// What follows the last space taken; `None` once the last token was taken.
    pub(super) rest: Option<&'a [u8]>,
}

impl<'a> Tokens<'a> {
    /// The next token.
    pub(super) fn next(&mut self) -> Result<&'a [u8], SignalError> {
        let rest = self.rest.ok_or(bad("missing token"))?;
        let (token, after) = match rest.iter().position(|&b| b == b' ') {
            Some(i) => {
                let (token, after) = rest.split_at(i);
                (token, after.get(1..))
            }
            None => (rest, None),
        };
        if token.is_empty() {
            return Err(bad(if after.is_none() {
                "trailing space"
            } else {
                "extra space"
            }));
        }
        self.rest = after;
        Ok(token)
    }

    /// Requires that every token was taken.
    pub(super) fn end(self) -> Result<(), SignalError> {
        match self.rest {
            None => Ok(()),
            Some([]) => Err(bad("trailing space")),
            Some(_) => Err(bad("extra token")),
        }
    }
}

/// A decimal u32, with the same rules as [`parse_u64`].
pub(super) fn parse_u32(token: &[u8]) -> Result<u32, SignalError> {
    u32::try_from(parse_u64(token)?).map_err(|_| bad("number overflow"))
}

/// A decimal u64: digits only, no leading zero except `0` itself.
pub(super) fn parse_u64(token: &[u8]) -> Result<u64, SignalError> {
    if token.len() > 1 && token.first() == Some(&b'0') {
        return Err(bad("leading zero"));
    }
    if token.is_empty() || !token.iter().all(u8::is_ascii_digit) {
        return Err(bad("bad number"));
    }
    token
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(bad("number overflow"))
}

/// Whether `b` may appear in a reservation name.
pub(super) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// A reservation name: 1 to [`MAX_NAME`] bytes of `A-Z a-z 0-9 . _ -`.
pub(super) fn parse_name(token: &[u8]) -> Result<&str, SignalError> {
    if token.len() > MAX_NAME {
        return Err(bad("name too long"));
    }
    if !token.iter().all(|&b| is_name_byte(b)) {
        return Err(bad("bad name"));
    }
    std::str::from_utf8(token).map_err(|_| bad("bad name"))
}

/// Appends a name, brought into the grammar: other bytes become `_`, cut to [`MAX_NAME`],
/// empty becomes `_`.
pub(super) fn push_name(line: &mut Line, name: &str) {
    if name.is_empty() {
        put(line, b"_");
    }
    for &b in name.as_bytes().iter().take(MAX_NAME) {
        let _ = line.push(if is_name_byte(b) { b } else { b'_' });
    }
}

/// A three-digit status code in `100..=599`.
pub(super) fn parse_code(token: &[u8]) -> Result<u16, SignalError> {
    let code = match token {
        &[a, b, c] if token.iter().all(u8::is_ascii_digit) => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(bad("bad code")),
    };
    if ERR_CODES.contains(&code) {
        Ok(code)
    } else {
        Err(bad("bad code"))
    }
}

/// `err` text: 1 to [`MAX_ERR_TEXT`] printable ASCII bytes.
pub(super) fn parse_text(text: &[u8]) -> Result<&str, SignalError> {
    if text.is_empty() {
        return Err(bad("missing token"));
    }
    if text.len() > MAX_ERR_TEXT {
        return Err(bad("text too long"));
    }
    if !text.is_ascii() {
        return Err(bad("non-ASCII text"));
    }
    if !text.iter().all(|&b| is_printable(b)) {
        return Err(bad("control byte in text"));
    }
    std::str::from_utf8(text).map_err(|_| bad("non-ASCII text"))
}

/// Printable ASCII, space included.
pub(super) fn is_printable(b: u8) -> bool {
    (0x20..=0x7e).contains(&b)
}

/// A socket address in the exact form `Display` writes (`1.2.3.4:5`, `[::1]:5`).
pub(super) fn parse_addr(token: &[u8]) -> Result<SocketAddr, SignalError> {
    let addr: SocketAddr = core::str::from_utf8(token)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(bad("bad address"))?;
    // One canonical form: `[0::1]:05` parses but is refused, so that encode(parse(x)) == x.
    let mut canon = heapless::Vec::<u8, MAX_ADDR>::new();
    match write!(canon, "{addr}") {
        Ok(()) if canon == token => Ok(addr),
        _ => Err(bad("non-canonical address")),
    }
}

/// A fixed-size value as lower-case hex.
pub(super) fn hex<const N: usize>(token: &[u8]) -> Result<[u8; N], SignalError> {
    hex_decode(token).ok_or(bad("bad hex"))
}

/// Lower-case hex, or `-` for none.
pub(super) fn hex_or_dash<const N: usize>(token: &[u8]) -> Result<Option<[u8; N]>, SignalError> {
    match token {
        b"-" => Ok(None),
        _ => hex(token).map(Some),
    }
}

/// Decodes exactly `2 * N` lower-case hex digits into `N` bytes.
pub(super) fn hex_decode<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *byte = (nibble(*hi)? << 4) | nibble(*lo)?;
    }
    Some(out)
}

/// The value of one lower-case hex digit.
pub(super) fn nibble(d: u8) -> Option<u8> {
    match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    }
}

/// The lower-case hex digit for the low four bits of `n`.
pub(super) fn hex_digit(n: u8) -> u8 {
    let n = n & 0x0f;
    if n < 10 {
        b'0' + n
    } else {
        b'a' + n - 10
    }
}

/// Appends `bytes` as lower-case hex.
pub(super) fn push_hex(line: &mut Line, bytes: &[u8]) {
    for &b in bytes {
        let _ = line.push(hex_digit(b >> 4));
        let _ = line.push(hex_digit(b));
    }
}

/// Appends raw bytes (lines are bounded by construction, see [`Signal::encode`]).
pub(super) fn put(line: &mut Line, bytes: &[u8]) {
    let _ = line.extend_from_slice(bytes);
}
