//! Value parsers for the URL: host:port, percent escapes, numbers, flags and names.
//!
//! Each function gets the raw text plus the piece to quote back in a [`ConfigError`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::{ConfigError, Host, HostPort, MAX_HOST_NAME, MAX_NAME};
use crate::duration::parse_duration;

/// Builds an error, escaping control characters and capping the length so that the message
/// stays one readable line whatever the input was.
pub(super) fn err(part: &str, reason: &'static str) -> ConfigError {
    /// Longest part quoted back: enough to recognise it, short enough for one log line.
    const MAX_PART: usize = 120;
    let mut out = String::new();
    for (i, c) in part.chars().enumerate() {
        if i == MAX_PART {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    ConfigError {
        part: out,
        reason: reason.into(),
    }
}

/// The URL user part: percent-decoded, non-empty.
pub(super) fn parse_key(user: &str) -> Result<String, ConfigError> {
    if user.is_empty() {
        return Err(err("@", "empty key before `@`"));
    }
    // The key is not quoted back: error lines end up in logs.
    percent_decode(user).ok_or_else(|| {
        err(
            "***@",
            "bad percent escape in the key (not shown; write a % in it as %25)",
        )
    })
}

/// Decodes `%XX` escapes; `None` on a malformed escape or a result that is not UTF-8.
pub(super) fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// `host:port`, `[v6]:port` or (with a default port) a bare host. An empty host is
/// `0.0.0.0`: all interfaces for a listener, this machine for a dialer (NodePass `:10101`).
pub(super) fn parse_host_port(s: &str, default_port: Option<u16>) -> Result<HostPort, ConfigError> {
    let (host, port) = if let Some(inner) = s.strip_prefix('[') {
        let (v6, after) = inner
            .split_once(']')
            .ok_or_else(|| err(s, "missing `]` after IPv6 address"))?;
        let ip: Ipv6Addr = v6.parse().map_err(|_| err(s, "bad IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| err(s, "expected `:` after `]`"))?,
            ),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = match s.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        };
        if host.contains(':') {
            return Err(err(s, "IPv6 addresses need brackets, as in [::1]:80"));
        }
        (parse_host(host).map_err(|reason| err(s, reason))?, port)
    };
    let port = match port {
        Some(p) => number(p, s, 0, u16::MAX).map_err(|_| err(s, "port must be 0-65535"))?,
        None => default_port.ok_or_else(|| err(s, "missing port"))?,
    };
    Ok(HostPort { host, port })
}

/// An IPv4 literal, a DNS name, or empty for `0.0.0.0`.
fn parse_host(h: &str) -> Result<Host, &'static str> {
    /// Longest DNS label.
    const MAX_LABEL: usize = 63;
    if h.is_empty() {
        return Ok(Host::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
    }
    if let Ok(ip) = h.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    if h.len() > MAX_HOST_NAME {
        return Err("host name longer than 253 characters");
    }
    let name = h.strip_suffix('.').unwrap_or(h);
    let mut all_numeric = true;
    for label in name.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL {
            return Err("host name labels must be 1-63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("host names take only letters, digits, `-` and `.`");
        }
        all_numeric &= label.bytes().all(|b| b.is_ascii_digit());
    }
    if all_numeric {
        return Err("bad IPv4 address");
    }
    Ok(Host::Name(h.to_owned()))
}

/// A decimal number without sign in `lo..=hi`.
pub(super) fn number<T>(v: &str, seg: &str, lo: T, hi: T) -> Result<T, ConfigError>
where
    T: TryFrom<u64> + PartialOrd + Copy,
{
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(seg, "expected a decimal number without sign"));
    }
    v.parse::<u64>()
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .filter(|n| *n >= lo && *n <= hi)
        .ok_or_else(|| err(seg, "number out of range"))
}

/// `0` or `1`.
pub(super) fn flag(v: &str, seg: &str) -> Result<bool, ConfigError> {
    match v {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(err(seg, "expected 0 or 1")),
    }
}

/// A Go-style duration.
pub(super) fn duration(v: &str, seg: &str) -> Result<Duration, ConfigError> {
    parse_duration(v).map_err(|reason| err(seg, reason))
}

/// Refuses a zero duration where zero would mean "never" or "spin".
pub(super) fn positive(d: Duration, seg: &str) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(err(seg, "duration must be more than 0"));
    }
    Ok(d)
}

/// A non-empty string value (file path, server name, key).
pub(super) fn text(v: &str, seg: &str) -> Result<String, ConfigError> {
    if v.is_empty() {
        return Err(err(seg, "empty value"));
    }
    Ok(v.to_owned())
}

/// A reservation name: 1-63 characters of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
