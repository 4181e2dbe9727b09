//! Wire signals: the short ASCII lines of the handshake, the control channel and pool openings.
//!
//! Every line is at most [`MAX_LINE`] bytes including its `\n`, tokens are separated by one
//! space, and parsing borrows from the input without allocating. No I/O happens here: callers
//! read bytes, hand them to [`Signal::parse`] and write what [`Signal::encode`] produces.
//! See `docs/PROTOCOL.md` for the grammar.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;

mod tokens;

use tokens::*;

/// Longest signal line, `\n` included.
pub const MAX_LINE: usize = 256;
/// Bytes in a nonce (sent as 32 hex digits).
pub const NONCE_LEN: usize = 16;
/// Bytes in the salt a server's key is stretched with (sent as 32 hex digits).
pub const SALT_LEN: usize = 16;
/// Bytes in an HMAC-SHA256 proof or a SHA-256 fingerprint (sent as 64 hex digits).
pub const MAC_LEN: usize = 32;
/// Bytes in a session id (sent as 32 hex digits).
pub const SID_LEN: usize = 16;

/// What a new connection on the tunnel port is for (`hello <kind> ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The control connection of a session.
    Ctl,
    /// A pool (data) connection of a session (or of a relay reservation).
    Pool,
    /// A device's control connection to a relay; `reserve <name> <device>` follows `auth`.
    Reserve,
    /// A visitor's connection to a relay; `connect <name> <tcp|udp>` follows `auth`.
    Connect,
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
    /// Server answers: `challenge <snonce> <salt> <tls> <fp|->`. Nothing in it depends on
    /// the key.
    Challenge {
        /// The server's fresh nonce.
        snonce: [u8; NONCE_LEN],
        /// The salt the server's key was stretched with (fixed for the server process).
        salt: [u8; SALT_LEN],
        /// The server's TLS mode (0, 1, 2).
        tls: u8,
        /// SHA-256 of the server's certificate (DER) when `tls` is 1 or 2.
        fp: Option<[u8; MAC_LEN]>,
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
    /// Server proves the key, only after the client's proof checked out: `proof <proof>`.
    Proof {
        /// HMAC proving the server knows the key.
        proof: [u8; MAC_LEN],
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
    /// A pool connection carries a TCP user from now on: `tcp <id> <addr>`, or `tcpr <id>
    /// <addr>` when the user's bytes travel in chunks and the pool connection is reused
    /// afterwards ([`crate::chunk`]).
    Tcp {
        /// The pool connection's id.
        id: u32,
        /// The user's address (for logs and PROXY headers).
        peer: SocketAddr,
        /// `tcpr`: chunked, and reused once both directions have ended.
        reuse: bool,
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
    /// Device asks a relay for a named reservation: `reserve <name> <device>`.
    Reserve {
        /// The reservation name (1 to [`MAX_NAME`] bytes of `A-Z a-z 0-9 . _ -`).
        name: &'a str,
        /// The device's random id for this process: the same device may take its name over.
        device: [u8; NONCE_LEN],
    },
    /// Relay grants a reservation (status 100): `reserved <sid> <ttl> <max>`.
    Reserved {
        /// The id pool connections of this reservation name in `auth`.
        sid: [u8; SID_LEN],
        /// Seconds until the reservation expires unless refreshed.
        ttl: u32,
        /// Largest pool the relay keeps for this reservation.
        max: u32,
    },
    /// Device refreshes its reservation on the control connection: `refresh`.
    Refresh,
    /// Visitor asks for a circuit to a reservation: `connect <name> <tcp|udp>`.
    Connect {
        /// The reservation name.
        name: &'a str,
        /// `true` (`udp`): the circuit carries one UDP flow as frames; `false` (`tcp`): a
        /// byte stream.
        udp: bool,
    },
    /// Relay opened the circuit (status 100): `circuit <secs> <bytes>`; data follows.
    Circuit {
        /// Longest life of the circuit in seconds; 0 is unlimited.
        secs: u32,
        /// Bytes allowed in each direction; 0 is unlimited.
        bytes: u64,
    },
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

/// Longest `err` text in bytes: keeps every `err` line well under [`MAX_LINE`].
pub const MAX_ERR_TEXT: usize = 200;
/// Longest reservation name: one DNS label (the same bound as `name=` in the URL).
pub const MAX_NAME: usize = 63;
/// Status codes are three digits, `1xx` to `5xx` (after libp2p circuit relay v2).
const ERR_CODES: std::ops::RangeInclusive<u16> = 100..=599;
/// Longest canonical socket address: `[` 39-char IPv6 `%` 10-digit scope `]:` 5-digit port.
const MAX_ADDR: usize = 64;

impl<'a> Signal<'a> {
    /// Parses one line from the front of `buf`.
    ///
    /// Returns the signal and the number of bytes consumed (the line and its `\n`); the bytes
    /// after it are not looked at, so the caller forwards them as data. Only the canonical form
    /// is accepted: one space between tokens, lower-case hex, decimals without leading zeros,
    /// no `\r`. The `err` text is the rest of the line, taken verbatim (1 to
    /// [`MAX_ERR_TEXT`] printable ASCII bytes, spaces included).
    ///
    /// # Errors
    /// [`SignalError::Incomplete`] when there is no `\n` yet and fewer than [`MAX_LINE`]
    /// bytes, [`SignalError::TooLong`] when the first [`MAX_LINE`] bytes hold no `\n`, and
    /// [`SignalError::Malformed`] when the line is not a signal.
    ///
    /// # Examples
    /// ```
    /// use edgepass::signal::{Signal, SignalError};
    /// assert_eq!(Signal::parse(b"ping 7\nrest"), Ok((Signal::Ping(7), 7)));
    /// assert_eq!(Signal::parse(b"ping 7"), Err(SignalError::Incomplete));
    /// ```
    pub fn parse(buf: &'a [u8]) -> Result<(Signal<'a>, usize), SignalError> {
        let window = buf.get(..MAX_LINE).unwrap_or(buf);
        let Some(nl) = window.iter().position(|&b| b == b'\n') else {
            return Err(if buf.len() < MAX_LINE {
                SignalError::Incomplete
            } else {
                SignalError::TooLong
            });
        };
        let (line, _) = window.split_at(nl);
        Ok((parse_line(line)?, nl + 1))
    }

    /// Encodes the signal as one canonical line, `\n` included, that [`Signal::parse`]
    /// accepts and returns equal.
    ///
    /// Values the grammar cannot carry are brought into range so the line always parses:
    /// `err` text is sanitized (bytes outside `0x20..=0x7e` become `?`, cut to
    /// [`MAX_ERR_TEXT`], an empty text becomes `?`), an `err` code is clamped to `100..=599`,
    /// a `challenge` mode to `0..=2`, a `tls` mode to `1..=2`, a `session` with neither
    /// TCP nor UDP is sent as `tu`, and a reservation name is sanitized (bytes outside
    /// `A-Z a-z 0-9 . _ -` become `_`, cut to [`MAX_NAME`], an empty name becomes `_`).
    ///
    /// # Examples
    /// ```
    /// use edgepass::signal::Signal;
    /// let line = Signal::Err { code: 202, text: "permission denied" }.encode();
    /// assert_eq!(&line[..], b"err 202 permission denied\n");
    /// ```
    pub fn encode(&self) -> Line {
        let mut line = Line::new();
        // Every line is shorter than MAX_LINE by construction (`err` is at most 209 bytes;
        // `challenge`, the longest of the handshake, 142), so the pushes below cannot run out
        // of room.
        match *self {
            Signal::Hello { kind, cnonce } => {
                put(&mut line, b"hello ");
                put(&mut line, kind.token());
                put(&mut line, b" ");
                push_hex(&mut line, &cnonce);
            }
            Signal::Challenge {
                snonce,
                salt,
                tls,
                fp,
            } => {
                put(&mut line, b"challenge ");
                push_hex(&mut line, &snonce);
                put(&mut line, b" ");
                push_hex(&mut line, &salt);
                let _ = write!(line, " {} ", tls.min(2));
                match fp {
                    Some(fp) => push_hex(&mut line, &fp),
                    None => put(&mut line, b"-"),
                }
            }
            Signal::UseTls { mode } => {
                let _ = write!(line, "tls {}", mode.clamp(1, 2));
            }
            Signal::Auth { proof, sid } => {
                put(&mut line, b"auth ");
                push_hex(&mut line, &proof);
                put(&mut line, b" ");
                match sid {
                    Some(sid) => push_hex(&mut line, &sid),
                    None => put(&mut line, b"-"),
                }
            }
            Signal::Proof { proof } => {
                put(&mut line, b"proof ");
                push_hex(&mut line, &proof);
            }
            Signal::Session {
                sid,
                forward,
                max,
                tcp,
                udp,
            } => {
                put(&mut line, b"session ");
                push_hex(&mut line, &sid);
                let flow = if forward { "f" } else { "r" };
                let proto = match (tcp, udp) {
                    (true, false) => "t",
                    (false, true) => "u",
                    _ => "tu",
                };
                let _ = write!(line, " {flow} {max} {proto}");
            }
            Signal::Pooled { id } => {
                let _ = write!(line, "pooled {id}");
            }
            Signal::Err { code, text } => {
                let code = code.clamp(*ERR_CODES.start(), *ERR_CODES.end());
                let _ = write!(line, "err {code} ");
                let text = text.as_bytes();
                if text.is_empty() {
                    put(&mut line, b"?");
                }
                for &b in text.iter().take(MAX_ERR_TEXT) {
                    let b = if is_printable(b) { b } else { b'?' };
                    let _ = line.push(b);
                }
            }
            Signal::Tcp { id, peer, reuse } => {
                let r = if reuse { "r" } else { "" };
                let _ = write!(line, "tcp{r} {id} {peer}");
            }
            Signal::Udp { id, peer } => {
                let _ = write!(line, "udp {id} {peer}");
            }
            Signal::Ping(n) => {
                let _ = write!(line, "ping {n}");
            }
            Signal::Pong(n) => {
                let _ = write!(line, "pong {n}");
            }
            Signal::Flush => put(&mut line, b"flush"),
            Signal::Trim(n) => {
                let _ = write!(line, "trim {n}");
            }
            Signal::Reserve { name, device } => {
                put(&mut line, b"reserve ");
                push_name(&mut line, name);
                put(&mut line, b" ");
                push_hex(&mut line, &device);
            }
            Signal::Reserved { sid, ttl, max } => {
                put(&mut line, b"reserved ");
                push_hex(&mut line, &sid);
                let _ = write!(line, " {ttl} {max}");
            }
            Signal::Refresh => put(&mut line, b"refresh"),
            Signal::Connect { name, udp } => {
                put(&mut line, b"connect ");
                push_name(&mut line, name);
                put(&mut line, if udp { b" udp" } else { b" tcp" });
            }
            Signal::Circuit { secs, bytes } => {
                let _ = write!(line, "circuit {secs} {bytes}");
            }
        }
        put(&mut line, b"\n");
        line
    }
}

impl Kind {
    /// The token for this kind in `hello`.
    fn token(self) -> &'static [u8] {
        match self {
            Kind::Ctl => b"ctl",
            Kind::Pool => b"pool",
            Kind::Reserve => b"reserve",
            Kind::Connect => b"connect",
        }
    }
}

/// Shorthand for a malformed-line error.
const fn bad(why: &'static str) -> SignalError {
    SignalError::Malformed(why)
}

/// Parses one line without its `\n`.
fn parse_line(line: &[u8]) -> Result<Signal<'_>, SignalError> {
    if line.is_empty() {
        return Err(bad("empty line"));
    }
    if line.last() == Some(&b'\r') {
        return Err(bad("carriage return"));
    }
    let mut t = Tokens { rest: Some(line) };
    let word = t.next()?;
    let signal = match word {
        b"hello" => {
            let kind = match t.next()? {
                b"ctl" => Kind::Ctl,
                b"pool" => Kind::Pool,
                b"reserve" => Kind::Reserve,
                b"connect" => Kind::Connect,
                _ => return Err(bad("bad kind")),
            };
            let cnonce = hex(t.next()?)?;
            Signal::Hello { kind, cnonce }
        }
        b"challenge" => {
            let snonce = hex(t.next()?)?;
            let salt = hex(t.next()?)?;
            let tls = match t.next()? {
                b"0" => 0,
                b"1" => 1,
                b"2" => 2,
                _ => return Err(bad("bad tls mode")),
            };
            let fp = hex_or_dash(t.next()?)?;
            Signal::Challenge {
                snonce,
                salt,
                tls,
                fp,
            }
        }
        b"tls" => {
            let mode = match t.next()? {
                b"1" => 1,
                b"2" => 2,
                _ => return Err(bad("bad tls mode")),
            };
            Signal::UseTls { mode }
        }
        b"auth" => {
            let proof = hex(t.next()?)?;
            let sid = hex_or_dash(t.next()?)?;
            Signal::Auth { proof, sid }
        }
        b"proof" => Signal::Proof {
            proof: hex(t.next()?)?,
        },
        b"session" => {
            let sid = hex(t.next()?)?;
            let forward = match t.next()? {
                b"r" => false,
                b"f" => true,
                _ => return Err(bad("bad flow")),
            };
            let max = parse_u32(t.next()?)?;
            let (tcp, udp) = match t.next()? {
                b"tu" => (true, true),
                b"t" => (true, false),
                b"u" => (false, true),
                _ => return Err(bad("bad proto")),
            };
            Signal::Session {
                sid,
                forward,
                max,
                tcp,
                udp,
            }
        }
        b"pooled" => Signal::Pooled {
            id: parse_u32(t.next()?)?,
        },
        b"err" => {
            let code = parse_code(t.next()?)?;
            // The text is the rest of the line, spaces and all: nothing follows it.
            return Ok(Signal::Err {
                code,
                text: parse_text(t.rest.ok_or(bad("missing token"))?)?,
            });
        }
        b"tcp" | b"tcpr" => Signal::Tcp {
            id: parse_u32(t.next()?)?,
            peer: parse_addr(t.next()?)?,
            reuse: word == b"tcpr",
        },
        b"udp" => Signal::Udp {
            id: parse_u32(t.next()?)?,
            peer: parse_addr(t.next()?)?,
        },
        b"ping" => Signal::Ping(parse_u32(t.next()?)?),
        b"pong" => Signal::Pong(parse_u32(t.next()?)?),
        b"flush" => Signal::Flush,
        b"trim" => Signal::Trim(parse_u32(t.next()?)?),
        b"reserve" => Signal::Reserve {
            name: parse_name(t.next()?)?,
            device: hex(t.next()?)?,
        },
        b"reserved" => Signal::Reserved {
            sid: hex(t.next()?)?,
            ttl: parse_u32(t.next()?)?,
            max: parse_u32(t.next()?)?,
        },
        b"refresh" => Signal::Refresh,
        b"connect" => Signal::Connect {
            name: parse_name(t.next()?)?,
            udp: match t.next()? {
                b"tcp" => false,
                b"udp" => true,
                _ => return Err(bad("bad proto")),
            },
        },
        b"circuit" => Signal::Circuit {
            secs: parse_u32(t.next()?)?,
            bytes: parse_u64(t.next()?)?,
        },
        _ => return Err(bad("unknown signal")),
    };
    t.end()?;
    Ok(signal)
}

#[cfg(test)]
mod tests;
