//! NodePass environment variables (`NP_NAME`, then `NAME`) into [`Tuning`] and pool defaults.

use std::time::Duration;

use super::values::{err, number};
use super::{ConfigError, Reuse, Tuning, DEFAULT_MAX, DEFAULT_MIN, MAX_POOL};
use crate::duration::parse_duration;

/// The lookup function handed to [`super::parse`].
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Smallest buffer: below this every copy becomes a syscall storm.
const MIN_BUF: usize = 1024;
/// Largest TCP buffer: 1 MiB each, times `slot`, is already more than a router has.
const MAX_TCP_BUF: usize = 1 << 20;
/// Largest UDP buffer: the biggest IPv4 datagram (65507 bytes of payload fits in it).
const MAX_UDP_BUF: usize = 65_535;
/// Largest `SEMAPHORE_LIMIT`: NodePass's default; more queued work than that is a flood.
const MAX_SEMAPHORE: usize = 1 << 20;

impl Default for Tuning {
    /// The defaults used when no environment variable is set.
    fn default() -> Self {
        let ms = Duration::from_millis;
        Tuning {
            semaphore_limit: 65_536,
            tcp_buf: 16_384,
            udp_buf: MAX_UDP_BUF,
            handshake_timeout: ms(5_000),
            dial_timeout: ms(5_000),
            udp_read_timeout: ms(30_000),
            pool_get_timeout: ms(5_000),
            min_pool_interval: ms(100),
            max_pool_interval: ms(1_000),
            report_interval: ms(5_000),
            service_cooldown: ms(3_000),
            shutdown_timeout: ms(5_000),
            splice: true,
            keepalive: Some(ms(60_000)),
            reuse: Reuse::Always,
        }
    }
}

impl Tuning {
    /// Reads the NodePass variables through `env`; for each `NAME` the `NP_NAME` form is
    /// looked up first. Unset or empty variables keep their defaults; a bad value is an
    /// error whose part is `VAR=value`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use edgepass::config::Tuning;
    ///
    /// let env = |k: &str| (k == "REPORT_INTERVAL").then(|| "10s".to_string());
    /// let tuning = Tuning::from_env(&env).unwrap();
    /// assert_eq!(tuning.report_interval, Duration::from_secs(10));
    /// ```
    pub fn from_env(env: Env<'_>) -> Result<Tuning, ConfigError> {
        let d = Tuning::default();
        let t = Tuning {
            semaphore_limit: size(env, "SEMAPHORE_LIMIT", d.semaphore_limit, 1, MAX_SEMAPHORE)?,
            tcp_buf: size(env, "TCP_DATA_BUF_SIZE", d.tcp_buf, MIN_BUF, MAX_TCP_BUF)?,
            udp_buf: size(env, "UDP_DATA_BUF_SIZE", d.udp_buf, MIN_BUF, MAX_UDP_BUF)?,
            handshake_timeout: time(env, "HANDSHAKE_TIMEOUT", d.handshake_timeout, false)?,
            dial_timeout: time(env, "TCP_DIAL_TIMEOUT", d.dial_timeout, false)?,
            udp_read_timeout: time(env, "UDP_READ_TIMEOUT", d.udp_read_timeout, false)?,
            pool_get_timeout: time(env, "POOL_GET_TIMEOUT", d.pool_get_timeout, false)?,
            min_pool_interval: time(env, "MIN_POOL_INTERVAL", d.min_pool_interval, false)?,
            max_pool_interval: time(env, "MAX_POOL_INTERVAL", d.max_pool_interval, false)?,
            report_interval: time(env, "REPORT_INTERVAL", d.report_interval, false)?,
            service_cooldown: time(env, "SERVICE_COOLDOWN", d.service_cooldown, false)?,
            // Zero makes sense here: close open connections at once on a stop signal.
            shutdown_timeout: time(env, "SHUTDOWN_TIMEOUT", d.shutdown_timeout, true)?,
            splice: size(env, "TCP_SPLICE", usize::from(d.splice), 0, 1)? == 1,
            keepalive: keepalive(env, d.keepalive)?,
            reuse: match size(env, "POOL_REUSE", d.reuse as usize, 0, 2)? {
                0 => Reuse::Never,
                1 => Reuse::Tls,
                _ => Reuse::Always,
            },
        };
        if t.min_pool_interval > t.max_pool_interval {
            return Err(err(
                "MIN_POOL_INTERVAL > MAX_POOL_INTERVAL",
                "the minimum pool interval must not exceed the maximum",
            ));
        }
        Ok(t)
    }
}

/// `MIN_POOL_CAPACITY` and `MAX_POOL_CAPACITY`: the defaults of `min` and `max`.
pub(super) fn pool_capacity(env: Env<'_>) -> Result<(usize, usize), ConfigError> {
    let min = size(env, "MIN_POOL_CAPACITY", DEFAULT_MIN, 0, MAX_POOL)?;
    let max = size(env, "MAX_POOL_CAPACITY", DEFAULT_MAX, 1, MAX_POOL)?;
    Ok((min, max))
}

/// Looks `NP_<name>` up, then `<name>`; returns the variable found and its non-empty value.
fn lookup(env: Env<'_>, name: &str) -> Option<(String, String)> {
    let prefixed = format!("NP_{name}");
    let found = [prefixed.as_str(), name].into_iter().find_map(|var| {
        env(var)
            .filter(|v| !v.is_empty())
            .map(|v| (var.to_owned(), v))
    });
    found
}

/// A size or count variable in `lo..=hi`.
fn size(
    env: Env<'_>,
    name: &str,
    default: usize,
    lo: usize,
    hi: usize,
) -> Result<usize, ConfigError> {
    match lookup(env, name) {
        Some((var, value)) => number(&value, &format!("{var}={value}"), lo, hi),
        None => Ok(default),
    }
}

/// Longest `TCP_KEEPALIVE`: Linux takes at most 32,767 s of idle time.
const MAX_KEEPALIVE: Duration = Duration::from_secs(9 * 3600);

/// `TCP_KEEPALIVE`: `0` turns keepalive off, else 1 s to 9 h (the kernel counts whole seconds).
fn keepalive(env: Env<'_>, default: Option<Duration>) -> Result<Option<Duration>, ConfigError> {
    let Some((var, value)) = lookup(env, "TCP_KEEPALIVE") else {
        return Ok(default);
    };
    let part = format!("{var}={value}");
    let d = parse_duration(&value).map_err(|reason| err(&part, reason))?;
    if d.is_zero() {
        return Ok(None);
    }
    if d < Duration::from_secs(1) || d > MAX_KEEPALIVE {
        return Err(err(&part, "keepalive must be 0 (off) or from 1s to 9h"));
    }
    Ok(Some(d))
}

/// A duration variable; zero only where `zero_ok`.
fn time(
    env: Env<'_>,
    name: &str,
    default: Duration,
    zero_ok: bool,
) -> Result<Duration, ConfigError> {
    let Some((var, value)) = lookup(env, name) else {
        return Ok(default);
    };
    let part = format!("{var}={value}");
    let d = parse_duration(&value).map_err(|reason| err(&part, reason))?;
    if d.is_zero() && !zero_ok {
        return Err(err(&part, "duration must be more than 0"));
    }
    Ok(d)
}
