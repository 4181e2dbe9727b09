//! Errors: one small enum per concern and a top-level [`Error`] with `From` impls.

use std::fmt;
use std::io;

use crate::config::ConfigError;
use crate::signal::SignalError;

/// Why a handshake or a session failed, in words that go to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoError {
    /// A line that parsed but was not expected at this point.
    Unexpected(&'static str),
    /// The client's proof did not verify: it does not know the key.
    BadProof,
    /// The server's proof did not verify: it is not the server that holds our key.
    ServerProof,
    /// The server named a certificate that is not the one we received.
    FingerprintMismatch,
    /// The server's TLS mode differs from the transport the client is on.
    TlsMismatch,
    /// The peer refused us with a status code.
    Refused(u16),
    /// A pool connection named a session that is not the current one.
    UnknownSession,
    /// The peer needs TLS: reconnect with this mode.
    NeedTls(u8),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Unexpected(what) => write!(f, "unexpected message: {what}"),
            ProtoError::BadProof => f.write_str("authentication failed (wrong key)"),
            ProtoError::ServerProof => {
                f.write_str("server failed authentication (it does not hold our key)")
            }
            ProtoError::FingerprintMismatch => {
                f.write_str("certificate fingerprint mismatch (man in the middle?)")
            }
            ProtoError::TlsMismatch => f.write_str("TLS mode mismatch (downgrade attempt?)"),
            // The client proves first, so a wrong key is learned from this refusal.
            ProtoError::Refused(202) => f.write_str("refused: permission denied (202), wrong key?"),
            ProtoError::Refused(code) => write!(f, "refused: {} ({code})", status_text(*code)),
            ProtoError::UnknownSession => f.write_str("no such session"),
            ProtoError::NeedTls(mode) => write!(f, "server requires tls={mode}"),
        }
    }
}

/// The words for a status code (see docs/PROTOCOL.md).
pub fn status_text(code: u16) -> &'static str {
    match code {
        100 => "OK",
        200 => "reservation refused",
        201 => "resource limit exceeded",
        202 => "permission denied",
        203 => "connection failed",
        204 => "no reservation",
        400 => "malformed message",
        401 => "unexpected message",
        _ => "unknown status",
    }
}

/// Every error a role can end with.
#[derive(Debug)]
pub enum Error {
    /// Socket or file failure.
    Io(io::Error),
    /// A wait ran past its bound; the text names the wait.
    Timeout(&'static str),
    /// Bad bytes from the peer.
    Signal(SignalError),
    /// A protocol rule broken, or a refusal.
    Proto(ProtoError),
    /// Bad configuration.
    Config(ConfigError),
    /// TLS setup or verification failure.
    Tls(String),
    /// Shutdown was requested.
    Shutdown,
    /// A feature this build does not have.
    Unsupported(&'static str),
    /// Not tried: an earlier attempt failed, and the next waits this much longer.
    HeldBack(std::time::Duration),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Timeout(what) => write!(f, "timed out: {what}"),
            Error::Signal(e) => write!(f, "{e}"),
            Error::Proto(e) => write!(f, "{e}"),
            Error::Config(e) => write!(f, "{e}"),
            Error::Tls(e) => write!(f, "tls: {e}"),
            Error::Shutdown => f.write_str("shutting down"),
            Error::Unsupported(what) => write!(f, "{what}: not supported by this build"),
            Error::HeldBack(left) => write!(f, "not tried for {left:.1?} after a failure"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<SignalError> for Error {
    fn from(e: SignalError) -> Self {
        Error::Signal(e)
    }
}

impl From<ProtoError> for Error {
    fn from(e: ProtoError) -> Self {
        Error::Proto(e)
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
