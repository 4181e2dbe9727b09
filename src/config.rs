//! The run configuration: a NodePass-style URL plus environment, parsed by pure functions.
//!
//! `scheme://[key@]host:port[/target[,target...]]?k=v&...` becomes a [`Config`]. Nothing here
//! touches sockets, files or clocks: the environment comes in as a lookup function so that the
//! precedence URL > environment > default is testable.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

mod env;
#[cfg(test)]
mod tests;
mod validate;
mod values;

use validate::validate;
pub use values::valid_name;
use values::{
    duration, err, flag, number, parse_host_port, parse_key, percent_decode, positive, text,
};

/// Relay listen port when `relay://host` has none (the port DeP2P relays are deployed on).
pub const DEFAULT_RELAY_PORT: u16 = 4001;
/// Default `min` (smallest warm pool) when neither URL nor `MIN_POOL_CAPACITY` sets it.
pub const DEFAULT_MIN: usize = 4;
/// Default `max` (largest warm pool) when neither URL nor `MAX_POOL_CAPACITY` sets it.
pub const DEFAULT_MAX: usize = 64;
/// Largest `min`/`max`: each pool entry is an open socket, and routers have few to spare.
pub const MAX_POOL: usize = 65_536;
/// Default `slot`: concurrent sessions; with 16 KiB buffers this bounds the arena to tens of MiB.
pub const DEFAULT_SLOT: usize = 1024;
/// Largest `slot`: the arena is sized from it at start, so it must stay allocatable.
pub const MAX_SLOT: usize = 1 << 20;
/// Default `dns`: NodePass re-resolves host names every 5 minutes (suits DDNS).
pub const DEFAULT_DNS: Duration = Duration::from_secs(5 * 60);
/// Longest `name`: one DNS label, so a reservation name can double as a host label.
pub const MAX_NAME: usize = 63;
/// Longest DNS name accepted as a host.
pub const MAX_HOST_NAME: usize = 253;

/// Which program this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts one client's control connection and listens for users.
    Server,
    /// Dials a server (or relay) and forwards signalled connections to a local target.
    Client,
    /// Multi-tenant rendezvous for named reservations.
    Relay,
    /// Local listener whose connections become circuits to a named reservation.
    Visit,
}

/// A host as written in the URL: an IP literal or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IPv4 or IPv6 literal (`[::1]` in the URL).
    Ip(IpAddr),
    /// A DNS name, resolved when dialing or binding.
    Name(String),
}

/// `host:port` from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// The host part.
    pub host: Host,
    /// The port part (0 allowed for listeners: the OS picks).
    pub port: u16,
}

/// Log verbosity from `log=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// No output.
    None,
    /// Everything, including per-connection lines.
    Debug,
    /// Start, stop, sessions and stats (default).
    Info,
    /// Problems only.
    Warn,
    /// Failures only.
    Error,
    /// Warnings plus the NodePass `CHECK_POINT` event line.
    Event,
}

/// Transport security from `tls=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Off,
    /// Self-signed certificate made at start, pinned by the client through the handshake.
    SelfSigned,
    /// Certificate and key files, verified normally.
    Files,
}

/// Timings and sizes from the NodePass environment variables (bare or `NP_` prefixed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// `SEMAPHORE_LIMIT`: connections allowed to be mid-handshake at once on each listening
    /// port (server tunnel port, relay port), at most
    /// [`MAX_PENDING`](crate::pending::MAX_PENDING); past it, a new connection closes the
    /// oldest pending one. Nothing else reads it.
    pub semaphore_limit: usize,
    /// `TCP_DATA_BUF_SIZE`: size of one arena buffer.
    pub tcp_buf: usize,
    /// `UDP_DATA_BUF_SIZE`: largest datagram carried.
    pub udp_buf: usize,
    /// `HANDSHAKE_TIMEOUT`: bound on the authentication exchange.
    pub handshake_timeout: Duration,
    /// `TCP_DIAL_TIMEOUT`: bound on one TCP dial (all the addresses of a name together).
    pub dial_timeout: Duration,
    /// `UDP_READ_TIMEOUT`: a UDP flow ends after this much silence.
    pub udp_read_timeout: Duration,
    /// `POOL_GET_TIMEOUT`: how long a user waits for a pool connection.
    pub pool_get_timeout: Duration,
    /// `MIN_POOL_INTERVAL`: fastest pool refill tick.
    pub min_pool_interval: Duration,
    /// `MAX_POOL_INTERVAL`: slowest pool refill tick.
    pub max_pool_interval: Duration,
    /// `REPORT_INTERVAL`: heartbeat and stats period.
    pub report_interval: Duration,
    /// `SERVICE_COOLDOWN`: first reconnect delay (then doubled, capped, jittered).
    pub service_cooldown: Duration,
    /// `SHUTDOWN_TIMEOUT`: how long open connections may finish after a stop signal.
    pub shutdown_timeout: Duration,
    /// `TCP_SPLICE` (0 or 1, default 1): relay plain TCP with splice(2) on Linux.
    pub splice: bool,
    /// `TCP_KEEPALIVE` (default 60s, `0` off): a connection accepted by any of our listeners
    /// that carries nothing for this long gets TCP keepalive probes, and is closed when
    /// [`KEEPALIVE_PROBES`](crate::net::KEEPALIVE_PROBES) go unanswered (a user that vanished
    /// without a FIN: power lost, a NAT mapping dropped).
    pub keepalive: Option<Duration>,
    /// `POOL_REUSE`: which pool connections carry TCP users in chunks and are reused after
    /// them (`tcpr`) instead of closed (`tcp`).
    pub reuse: Reuse,
}

/// `POOL_REUSE`: when a taker reuses a pool connection for the next TCP user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// `0`: never; every pool connection carries one user, then closes.
    Never,
    /// `1`: TLS pool connections only (plain ones carry one user each, with splice(2)).
    Tls,
    /// `2` (default): every pool connection (no TCP connect, TLS handshake or authentication
    /// per user).
    Always,
}

impl Reuse {
    /// Whether a pool connection (TLS or not) is reused.
    pub fn applies(self, tls: bool) -> bool {
        match self {
            Reuse::Never => false,
            Reuse::Tls => tls,
            Reuse::Always => true,
        }
    }
}

/// Everything a role needs to run, fully validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The role from the scheme.
    pub role: Role,
    /// The shared key (URL user part); `None` means derived from the tunnel port.
    pub key: Option<String>,
    /// Server/relay: where to listen for clients. Client/visit: the server or relay to dial.
    pub tunnel: HostPort,
    /// Server: user listeners. Client: the local targets (round robin). Visit: local listener.
    pub targets: Vec<HostPort>,
    /// `log`.
    pub log: LogLevel,
    /// `tls` (server and relay; a client adopts the server's).
    pub tls: TlsMode,
    /// `crt`: PEM certificate chain file for `tls=2`.
    pub crt: Option<String>,
    /// `key` query key: PEM private key file for `tls=2`.
    pub key_file: Option<String>,
    /// `ca`: PEM file of CA roots the client trusts for `tls=2`.
    pub ca: Option<String>,
    /// `sni`: server name the client verifies for `tls=2`.
    pub sni: Option<String>,
    /// `min`: smallest warm pool.
    pub min: usize,
    /// `max`: largest warm pool.
    pub max: usize,
    /// `slot`: concurrent TCP+UDP sessions.
    pub slot: usize,
    /// `read`: idle timeout; `None` (or `read=0`) means none.
    pub read: Option<Duration>,
    /// `mode`: 0 auto, 1, 2 (NodePass meanings per role).
    pub mode: u8,
    /// `rate`: Mbit/s limit; `None` means unlimited.
    pub rate: Option<u32>,
    /// `proxy`: 0 off, 1 PROXY v1, 2 PROXY v2.
    pub proxy: u8,
    /// `dial`: source IP for outgoing connections.
    pub dial: Option<IpAddr>,
    /// `dns`: re-resolve host names after this long.
    pub dns: Duration,
    /// `notcp=1`.
    pub notcp: bool,
    /// `noudp=1`.
    pub noudp: bool,
    /// `name`: the reservation name (client through a relay, visit).
    pub name: Option<String>,
    /// Environment-driven timings and sizes.
    pub tuning: Tuning,
    /// Relay limits (`max-conns`, `ttl`, ...); parsed for every role, used by the relay.
    pub relay: RelayLimits,
}

/// The relay's limits from its query keys (libp2p circuit v2 style resource limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// `max-conns`: open connections of all kinds (control, pool, visitors).
    pub max_conns: usize,
    /// `max-reservations`: live named reservations.
    pub max_reservations: usize,
    /// `max-per-ip`: reservations held by one source IPv4 address or IPv6 /64 (an IPv4-mapped
    /// IPv6 address counts as its IPv4 address).
    pub max_per_ip: usize,
    /// `max-circuits`: concurrent circuits through one reservation.
    pub max_circuits: usize,
    /// `circuit-duration`: a circuit is closed after this long; `None` (`0`) is unlimited.
    pub circuit_duration: Option<Duration>,
    /// `circuit-bytes`: a circuit is closed after this many bytes; `None` (`0`) is unlimited.
    pub circuit_bytes: Option<u64>,
    /// `ttl`: a reservation expires this long after it was made or last refreshed.
    pub ttl: Duration,
    /// `stats`: period of the relay's counters log line.
    pub stats: Duration,
    /// `visit-key`: a separate key for visitors; `None` means visitors use the relay key.
    pub visit_key: Option<String>,
}

/// A configuration error: which part of the input is bad and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending part, as the user wrote it (a key, a value, a host).
    pub part: String,
    /// Why it is refused: a fixed text, or one with details (a file's dates, an OS error).
    pub reason: Cow<'static, str>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: `{}`", self.reason, self.part)
    }
}

impl std::error::Error for ConfigError {}

impl Default for RelayLimits {
    /// The relay defaults: 1000 connections, 128 reservations, 8 per IP, 16 circuits per
    /// reservation, unlimited circuit duration and bytes, 1 h reservation TTL, stats every 30 s.
    fn default() -> Self {
        RelayLimits {
            max_conns: 1000,
            max_reservations: 128,
            max_per_ip: 8,
            max_circuits: 16,
            circuit_duration: None,
            circuit_bytes: None,
            ttl: Duration::from_secs(60 * 60),
            stats: Duration::from_secs(30),
            visit_key: None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Server => "server",
            Role::Client => "client",
            Role::Relay => "relay",
            Role::Visit => "visit",
        })
    }
}

impl fmt::Display for HostPort {
    /// `host:port`, with an IPv6 literal in brackets (`[::1]:80`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl Config {
    /// Client: whether its first address may be a local listener (single-end forwarding):
    /// always with `mode=1`; with `mode=0` only when nothing in the URL needs a server (no
    /// key, TLS, `ca`, `sni` or `name`), and then only if the address binds.
    pub fn may_forward_locally(&self) -> bool {
        match self.mode {
            1 => true,
            0 => {
                self.name.is_none()
                    && self.key.is_none()
                    && self.tls == TlsMode::Off
                    && self.ca.is_none()
                    && self.sni.is_none()
            }
            _ => false,
        }
    }

    /// The shared key as bytes: the URL user part (or [`KEY_VAR`]), or when there is none the
    /// decimal tunnel port as ASCII (NodePass also derives its default key from the port).
    ///
    /// ```
    /// let cfg = edgepass::config::parse("server://:10101/:8080", &|_| None).unwrap();
    /// assert_eq!(cfg.key_bytes(), b"10101");
    /// ```
    pub fn key_bytes(&self) -> Vec<u8> {
        match &self.key {
            Some(key) => key.as_bytes().to_vec(),
            None => self.tunnel.port.to_string().into_bytes(),
        }
    }
}

/// Parses a NodePass-style URL, with NodePass environment variables from `env`, into a
/// validated [`Config`].
///
/// `env` looks a variable up by name (pass `&|k| std::env::var(k).ok()` in the binary). The
/// URL wins over the environment, which wins over the defaults.
///
/// ```
/// use edgepass::config::{parse, Role};
///
/// let cfg = parse("client://secret@vps.example.com:10101/127.0.0.1:22?min=8", &|_| None)
///     .unwrap();
/// assert_eq!(cfg.role, Role::Client);
/// assert_eq!(cfg.tunnel.to_string(), "vps.example.com:10101");
/// assert_eq!(cfg.min, 8);
///
/// let err = parse("ftp://host:1", &|_| None).unwrap_err();
/// assert_eq!(err.part, "ftp");
/// ```
pub fn parse(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| err(&without_key(url), "expected scheme://host:port"))?;
    let role = match scheme.to_ascii_lowercase().as_str() {
        "server" => Role::Server,
        "client" => Role::Client,
        "relay" => Role::Relay,
        "visit" => Role::Visit,
        _ => {
            return Err(err(
                scheme,
                "unknown scheme (server, client, relay or visit)",
            ))
        }
    };
    let (base, query) = match rest.split_once('?') {
        Some((base, query)) => (base, query),
        None => (rest, ""),
    };
    let (authority, path) = match base.split_once('/') {
        Some((authority, path)) => (authority, path),
        None => (base, ""),
    };
    let (key, address) = match authority.rsplit_once('@') {
        Some((user, address)) => (Some(parse_key(user)?), address),
        // The key from the environment keeps it out of the command line, which every local
        // user can read (`/proc/<pid>/cmdline`); the environment only the process's owner.
        None => (env(KEY_VAR).filter(|k| !k.is_empty()), authority),
    };
    if address.is_empty() {
        return Err(err(&without_key(url), "missing host:port"));
    }
    let default_port = (role == Role::Relay).then_some(DEFAULT_RELAY_PORT);
    let tunnel = parse_host_port(address, default_port)?;
    let mut targets = Vec::new();
    if !path.is_empty() {
        for target in path.split(',') {
            if target.is_empty() {
                return Err(err(path, "empty target"));
            }
            targets.push(parse_host_port(target, None)?);
        }
    }

    let (min, max) = env::pool_capacity(env)?;
    let mut cfg = Config {
        role,
        key,
        tunnel,
        targets,
        log: LogLevel::Info,
        tls: TlsMode::Off,
        crt: None,
        key_file: None,
        ca: None,
        sni: None,
        min,
        max,
        slot: DEFAULT_SLOT,
        read: None,
        mode: 0,
        rate: None,
        proxy: 0,
        dial: None,
        dns: DEFAULT_DNS,
        notcp: false,
        noudp: false,
        name: None,
        tuning: Tuning::from_env(env)?,
        relay: RelayLimits::default(),
    };

    let mut seen: Vec<&str> = Vec::new();
    for segment in query.split('&').filter(|s| !s.is_empty()) {
        let (k, raw) = segment
            .split_once('=')
            .ok_or_else(|| err(segment, "expected key=value"))?;
        if seen.contains(&k) {
            return Err(err(k, "duplicate query key"));
        }
        seen.push(k);
        // A secret is named, not quoted: error lines end up in logs.
        let shown = if SECRET_KEYS.contains(&k) {
            format!("{k}=***")
        } else {
            segment.to_owned()
        };
        let value = percent_decode(raw).ok_or_else(|| err(&shown, "bad percent escape"))?;
        apply(&mut cfg, k, &value, segment)?;
    }
    validate(
        &cfg,
        &without_key(url.split_once('?').map_or(url, |(before, _)| before)),
    )?;
    Ok(cfg)
}

/// The environment variable that gives the key when the URL has no `key@`.
pub const KEY_VAR: &str = "EDGEPASS_KEY";

/// Query keys whose values are secrets, never quoted back.
const SECRET_KEYS: [&str; 1] = ["visit-key"];

/// `url` with the key (the user part before `@`) shown as `***`, for quoting in an error:
/// error lines end up in logs, and a service manager may log one every few seconds.
fn without_key(url: &str) -> String {
    let (head, rest) = url.split_once("://").unwrap_or(("", url));
    let sep = if head.is_empty() { "" } else { "://" };
    // The authority ends at the first `/` or `?`; without `://` there is no telling where it
    // starts, so anything before an `@` counts.
    let ends = if sep.is_empty() {
        &['?'][..]
    } else {
        &['/', '?'][..]
    };
    let end = rest.find(ends).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{head}{sep}***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// Sets one query key on `cfg`; `seg` is the `key=value` text for error messages.
fn apply(cfg: &mut Config, k: &str, v: &str, seg: &str) -> Result<(), ConfigError> {
    let r = &mut cfg.relay;
    match k {
        "log" => {
            cfg.log = match v {
                "none" => LogLevel::None,
                "debug" => LogLevel::Debug,
                "info" => LogLevel::Info,
                "warn" => LogLevel::Warn,
                "error" => LogLevel::Error,
                "event" => LogLevel::Event,
                _ => {
                    return Err(err(
                        seg,
                        "log must be none, debug, info, warn, error or event",
                    ))
                }
            }
        }
        "tls" => {
            cfg.tls = match v {
                "0" => TlsMode::Off,
                "1" => TlsMode::SelfSigned,
                "2" => TlsMode::Files,
                _ => return Err(err(seg, "tls must be 0, 1 or 2")),
            }
        }
        "crt" => cfg.crt = Some(text(v, seg)?),
        "key" => cfg.key_file = Some(text(v, seg)?),
        "ca" => cfg.ca = Some(text(v, seg)?),
        "sni" => cfg.sni = Some(text(v, seg)?),
        "min" => cfg.min = number(v, seg, 0, MAX_POOL)?,
        "max" => cfg.max = number(v, seg, 1, MAX_POOL)?,
        "slot" => cfg.slot = number(v, seg, 1, MAX_SLOT)?,
        "read" => cfg.read = Some(duration(v, seg)?).filter(|d| !d.is_zero()),
        "mode" => cfg.mode = number(v, seg, 0, 2)?,
        "rate" => cfg.rate = Some(number(v, seg, 0, u32::MAX)?).filter(|&n| n > 0),
        "proxy" => cfg.proxy = number(v, seg, 0, 2)?,
        "dial" => {
            cfg.dial = match v {
                "auto" => None,
                _ => Some(
                    v.parse()
                        .map_err(|_| err(seg, "dial must be an IP address or auto"))?,
                ),
            }
        }
        "dns" => cfg.dns = duration(v, seg)?,
        "notcp" => cfg.notcp = flag(v, seg)?,
        "noudp" => cfg.noudp = flag(v, seg)?,
        "name" => {
            if !valid_name(v) {
                return Err(err(
                    seg,
                    "name must be 1-63 characters of A-Z a-z 0-9 . _ -",
                ));
            }
            cfg.name = Some(v.to_owned());
        }
        "max-conns" => r.max_conns = number(v, seg, 1, usize::MAX)?,
        "max-reservations" => r.max_reservations = number(v, seg, 1, usize::MAX)?,
        "max-per-ip" => r.max_per_ip = number(v, seg, 1, usize::MAX)?,
        "max-circuits" => r.max_circuits = number(v, seg, 1, usize::MAX)?,
        "circuit-duration" => r.circuit_duration = Some(duration(v, seg)?).filter(|d| !d.is_zero()),
        "circuit-bytes" => r.circuit_bytes = Some(number(v, seg, 0, u64::MAX)?).filter(|&n| n > 0),
        "ttl" => r.ttl = positive(duration(v, seg)?, seg)?,
        "stats" => r.stats = positive(duration(v, seg)?, seg)?,
        "visit-key" => r.visit_key = Some(text(v, seg)?),
        _ => return Err(err(k, "unknown query key")),
    }
    Ok(())
}
