//! The run configuration: a NodePass-style URL plus environment, parsed by pure functions.
//!
//! `scheme://[key@]host:port[/target[,target...]]?k=v&...` becomes a [`Config`]. Nothing here
//! touches sockets, files or clocks: the environment comes in as a lookup function so that the
//! precedence URL > environment > default is testable.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

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
    /// `SEMAPHORE_LIMIT`: cap on queued signals and pending handshakes.
    pub semaphore_limit: usize,
    /// `TCP_DATA_BUF_SIZE`: size of one arena buffer.
    pub tcp_buf: usize,
    /// `UDP_DATA_BUF_SIZE`: largest datagram carried.
    pub udp_buf: usize,
    /// `HANDSHAKE_TIMEOUT`: bound on the authentication exchange.
    pub handshake_timeout: Duration,
    /// `TCP_DIAL_TIMEOUT`: bound on one TCP connect.
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
}

/// A configuration error: which part of the input is bad and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending part, as the user wrote it (a key, a value, a host).
    pub part: String,
    /// Why it is refused.
    pub reason: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: `{}`", self.reason, self.part)
    }
}

impl std::error::Error for ConfigError {}
