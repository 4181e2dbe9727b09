//! Wire signals: the short ASCII lines of the handshake, the control channel and pool openings.
//!
//! Every line is at most [`MAX_LINE`] bytes including its `\n`, tokens are separated by one
//! space, and parsing borrows from the input without allocating. No I/O happens here: callers
//! read bytes, hand them to [`Signal::parse`] and write what [`Signal::encode`] produces.
//! See `docs/PROTOCOL.md` for the grammar.

use std::fmt;
use std::net::SocketAddr;

/// Longest signal line, `\n` included.
pub const MAX_LINE: usize = 256;
/// Bytes in a nonce (sent as 32 hex digits).
pub const NONCE_LEN: usize = 16;
/// Bytes in an HMAC-SHA256 proof or a SHA-256 fingerprint (sent as 64 hex digits).
pub const MAC_LEN: usize = 32;
/// Bytes in a session id (sent as 32 hex digits).
pub const SID_LEN: usize = 16;

/// What a new connection on the tunnel port is for (`hello <kind> ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The control connection of a session.
    Ctl,
    /// A pool (data) connection of a session.
    Pool,
}

/// One parsed signal line. Byte fields borrow from the parsed buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal<'a> {
    /// Client opens: `hello <kind> <cnonce>`.
    Hello {
        /// What the connection is for.
        kind: Kind,
        /// The client's fresh nonce.
        cnonce: [u8; NONCE_LEN],
    },
    /// Server answers: `challenge <snonce> <tls> <fp|-> <proof>`.
    Challenge {
        /// The server's fresh nonce.
        snonce: [u8; NONCE_LEN],
        /// The server's TLS mode (0, 1, 2).
        tls: u8,
        /// SHA-256 of the server's certificate (DER) when `tls` is 1 or 2.
        fp: Option<[u8; MAC_LEN]>,
        /// HMAC proving the server knows the key.
        proof: [u8; MAC_LEN],
    },
    /// A plaintext client reached a TLS-only listener: `tls <mode>`. Unauthenticated hint.
    UseTls {
        /// The mode to reconnect with (1 or 2).
        mode: u8,
    },
    /// Client proves the key: `auth <proof> <sid|->`.
    Auth {
        /// HMAC proving the client knows the key.
        proof: [u8; MAC_LEN],
        /// The session a pool connection joins; `None` for a control connection.
        sid: Option<[u8; SID_LEN]>,
    },
    /// Server accepts a control connection: `session <sid> <flow> <max> <proto>`.
    Session {
        /// Session id pool connections must name.
        sid: [u8; SID_LEN],
        /// `true` for forward flow (client accepts users, server dials targets).
        forward: bool,
        /// Largest pool the server accepts.
        max: u32,
        /// TCP forwarded.
        tcp: bool,
        /// UDP forwarded.
        udp: bool,
    },
    /// Server accepts a pool connection: `pooled <id>`.
    Pooled {
        /// The pool connection's id within the session.
        id: u32,
    },
    /// Refusal with a status code: `err <code> <text>`.
    Err {
        /// Status code (see `docs/PROTOCOL.md`).
        code: u16,
        /// Free text, printable ASCII.
        text: &'a str,
    },
    /// A pool connection carries a TCP user from now on: `tcp <id> <addr>`.
    Tcp {
        /// The pool connection's id.
        id: u32,
        /// The user's address (for logs and PROXY headers).
        peer: SocketAddr,
    },
    /// A pool connection carries one UDP flow from now on: `udp <id> <addr>`.
    Udp {
        /// The pool connection's id.
        id: u32,
        /// The flow's source address.
        peer: SocketAddr,
    },
    /// Heartbeat: `ping <n>`.
    Ping(u32),
    /// Heartbeat answer: `pong <n>`.
    Pong(u32),
    /// Close every idle pool connection: `flush`.
    Flush,
    /// Close up to n idle pool connections (pool shrink): `trim <n>`.
    Trim(u32),
}

/// Why bytes are not a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalError {
    /// No `\n` yet and fewer than [`MAX_LINE`] bytes: read more.
    Incomplete,
    /// No `\n` within [`MAX_LINE`] bytes.
    TooLong,
    /// The line is not a valid signal; the reason names the problem.
    Malformed(&'static str),
}

impl fmt::Display for SignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignalError::Incomplete => f.write_str("incomplete signal line"),
            SignalError::TooLong => write!(f, "signal line longer than {MAX_LINE} bytes"),
            SignalError::Malformed(why) => write!(f, "malformed signal: {why}"),
        }
    }
}

impl std::error::Error for SignalError {}

/// An encoded signal line, `\n` included.
pub type Line = heapless::Vec<u8, MAX_LINE>;
