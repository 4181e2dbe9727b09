//! The command line: `edgepass URL`, `--check`, `--help`, `--version`, and the relay flag
//! form.
//!
//! `edgepass relay -port 4001 -max-conns 1000` (the DeP2P relay server's flags, single or
//! double dash, `--flag value` or `--flag=value`) is rewritten into the equivalent
//! `relay://[key@]host:port?max-conns=1000` and parsed by [`config::parse`], so both forms
//! accept exactly the same values. Nothing here reads the process environment: the lookup
//! function comes in from `main`.

use std::ffi::OsString;
use std::fmt;

use pico_args::Arguments;

use crate::config::{self, Config, ConfigError};

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
// One value, built once at start: boxing the config would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Print [`HELP`] and exit 0.
    Help,
    /// Print [`VERSION`] and exit 0.
    Version,
    /// Run the role described by the configuration.
    Run(Config),
    /// `--check`: check the configuration ([`crate::check`]) and exit, 0 or 2.
    Check(Config),
}

/// A command line error; its `Display` is one line naming the bad part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// A flag or argument problem.
    Usage {
        /// The offending argument as written (a flag, a value, an extra argument).
        part: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The URL, or the URL built from the relay flags, is invalid.
    Config(ConfigError),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Nothing to quote (no argument at all): the reason alone.
            CliError::Usage { part, reason } if part.is_empty() => f.write_str(reason),
            CliError::Usage { part, reason } => write!(f, "{reason}: `{part}`"),
            CliError::Config(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CliError {}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Config(e)
    }
}

/// The version line printed by `--version`.
pub const VERSION: &str = concat!("edgepass ", env!("CARGO_PKG_VERSION"));

/// The `--help` text.
pub const HELP: &str = concat!(
    "edgepass ",
    env!("CARGO_PKG_VERSION"),
    r#": a tiny, fast and secure TCP/UDP tunnel and relay for routers and IoT devices

USAGE:
    edgepass URL
    edgepass relay [--port 4001] [--host 0.0.0.0] [--key K] [--max-conns N] ...
    edgepass --check URL | --check relay ...   check it (and the files it names) and exit:
                                               0 if it would start, 2 and why if not
    edgepass --help | --version

ROLES (URL = scheme://[key@]host:port[/target[,target...]][?key=value&...]):
    server  accepts one client on the tunnel address, serves users on the target address
            (TCP and UDP on the same port; each UDP source address is one flow)
            edgepass 'server://secret@:10101/127.0.0.1:8080?tls=1'
    client  dials the server (or a relay) and forwards to the local target(s)
            edgepass 'client://secret@vps.example.com:10101/127.0.0.1:8080'
            edgepass 'client://secret@[2001:db8::1]:10101/10.0.0.5:80,10.0.0.6:80?proxy=1'
            edgepass 'client://secret@relay.example.com:4001/127.0.0.1:554?name=cam-7'
    relay   rendezvous for named reservations (default port 4001)
            edgepass 'relay://secret@0.0.0.0:4001?max-conns=1000&max-reservations=128'
            edgepass relay -port 4001 -max-conns 1000 -max-reservations 128
    visit   local listener whose connections reach a named reservation through a relay
            (TCP and UDP on the same port; each UDP source address is one flow/circuit)
            edgepass 'visit://secret@relay.example.com:4001/127.0.0.1:8554?name=cam-7'
    Without key@ the key is the tunnel port. IPv6 hosts go in brackets: [::1]:80;
    a [::] listener takes IPv4 users too (dual stack, the Linux default).
    Quote the URL in a shell: `&` and `?` are special there.

QUERY KEYS (default in brackets):
    log=none|debug|info|warn|error|event [info]   tls=0|1|2 plain|self-signed|files [0]
    crt=FILE key=FILE  PEM certificate and key for tls=2 (server, relay); re-read on change
    ca=FILE sni=NAME   roots and name the client verifies with tls=2 [system roots, host]
    A client learns tls=1/2 from the server; tls=, ca= or sni= on a client start with TLS.
    min=N [4]  max=N [64]  warm pool size    slot=N [1024]  TCP users + UDP flows, more refused
    read=DUR [0=none]  idle timeout          mode=0|1|2 [0]  0 auto, see MODES below
    rate=MBIT [0=unlimited]  token bucket per direction, shared by the process's connections
    proxy=0|1|2 [0]    PROXY v1 (text) / v2 (binary) header with the user's address, sent
                       first to the target; read by the side that dials the target
    dial=IP|auto [auto]  source address of outgoing dials (server and targets); falls
                       back to auto, with a warning, once IP cannot be bound
    dns=DUR [5m]       cache host name lookups for DUR, then look up again (0: every dial)
    notcp=0|1 [0]  noudp=0|1 [0]  protocol off  name=NAME  reservation (1-63 of A-Za-z0-9._-)
    Targets a,b,c: round robin; one that fails is skipped for 10s while others work.
  relay:
    max-conns=N [1000]  max-reservations=N [128]  max-per-ip=N [8]  max-circuits=N [16]
    circuit-duration=DUR [0=unlimited]  circuit-bytes=N [0=unlimited]  ttl=DUR [1h]
    stats=DUR [30s]  visit-key=KEY  a separate key for visitors (it cannot reserve)
    rate=MBIT paces each circuit. A device (client with name=) refreshes every ttl/2 and
    re-reserves by itself after a relay restart; refusals are logged with their code.
    DUR is a Go duration: 500ms, 5s, 1m30s, 2h, 1.5s.
    Relay flag form (-flag or --flag, VALUE or =VALUE): --port [4001] --host [0.0.0.0]
    --key KEY (shared key) --key-file FILE (key=: tls=2's private key file, with --crt),
    and --log --tls --crt --slot --read --rate --dial --dns and each relay key above as
    --NAME VALUE.

MODES (mode=):
    0  server: reverse flow (users connect to its target address), or forward flow if it
       cannot bind there; client: as 1 if it has no key (URL or EDGEPASS_KEY), tls=1|2,
       ca, sni or name and its address binds here, else a tunnel client
    1  server: reverse flow only; client: single-end TCP+UDP forwarder, no server
    2  server: forward flow (the client listens on its target address, the server dials
       its own target); client: always a tunnel client

ENVIRONMENT (NP_NAME is read first, then NAME; the URL wins over both):
    SEMAPHORE_LIMIT [256]       TCP_DATA_BUF_SIZE [16384]   UDP_DATA_BUF_SIZE [65535]
    HANDSHAKE_TIMEOUT [5s]      TCP_DIAL_TIMEOUT [5s]       UDP_READ_TIMEOUT [30s]
    POOL_GET_TIMEOUT [5s]       MIN_POOL_INTERVAL [100ms]   MAX_POOL_INTERVAL [1s]
    REPORT_INTERVAL [5s]        SERVICE_COOLDOWN [3s]       SHUTDOWN_TIMEOUT [5s]
    MIN_POOL_CAPACITY [4]       MAX_POOL_CAPACITY [64]      (defaults of min and max)
    TCP_SPLICE [1]              (0: copy plain TCP through user-space buffers, not splice(2))
    TCP_KEEPALIVE [60s]         (0: off; probes for accepted connections silent that long)
    POOL_REUSE [2]              (pool connections carry user after user: 0 no, 1 TLS ones, 2 all)
    SEMAPHORE_LIMIT: connections mid-handshake at once per listening port, at most 256
                                (a larger one, up to 1048576, acts as 256); a new connection
                                past it closes the oldest pending one
  Read as NAME only (no NP_ form):
    EDGEPASS_KEY                the key when the URL has none (keeps it off the command line)
    SSL_CERT_FILE               CA roots for tls=2 without ca=, tried before the system bundle

EXIT CODES:
    0 success (or stopped by a signal), 1 runtime failure, 2 bad usage or configuration;
    a second signal while open connections finish exits at once with 1, cutting them
"#
);

/// Relay flags that become query keys: (flag, query key).
const RELAY_FLAGS: &[(&str, &str)] = &[
    ("--log", "log"),
    ("--tls", "tls"),
    ("--crt", "crt"),
    ("--key-file", "key"),
    ("--slot", "slot"),
    ("--read", "read"),
    ("--rate", "rate"),
    ("--dial", "dial"),
    ("--dns", "dns"),
    ("--max-conns", "max-conns"),
    ("--max-reservations", "max-reservations"),
    ("--max-per-ip", "max-per-ip"),
    ("--max-circuits", "max-circuits"),
    ("--circuit-duration", "circuit-duration"),
    ("--circuit-bytes", "circuit-bytes"),
    ("--ttl", "ttl"),
    ("--stats", "stats"),
    ("--visit-key", "visit-key"),
];

/// Relay flags that are parts of the URL rather than query keys.
const ADDRESS_FLAGS: [&str; 3] = ["--port", "--host", "--key"];

/// Parses the arguments (without `argv[0]`); `env` looks environment variables up.
///
/// ```
/// use edgepass::cli::{parse_args, Command};
///
/// let args = ["relay", "-port", "4001", "-max-conns", "10"].map(Into::into).to_vec();
/// match parse_args(args, &|_| None).unwrap() {
///     Command::Run(cfg) => assert_eq!((cfg.tunnel.port, cfg.relay.max_conns), (4001, 10)),
///     other => panic!("{other:?}"),
/// }
/// ```
pub fn parse_args(
    args: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, CliError> {
    let mut p = Arguments::from_vec(normalize(args)?);
    if p.contains(["-h", "--help"]) {
        return Ok(Command::Help);
    }
    if p.contains(["-V", "--version"]) {
        return Ok(Command::Version);
    }
    let check = p.contains("--check");
    let url = match p.subcommand().map_err(pico)? {
        Some(word) if word == "help" => return Ok(Command::Help),
        Some(word) if word == "relay" => relay_url(&mut p)?,
        Some(url) => url,
        None => match p.finish().first() {
            Some(flag) => return Err(usage(&flag.to_string_lossy(), "unknown flag")),
            None => {
                return Err(usage(
                    "",
                    "missing URL: give a role's URL, e.g. 'server://KEY@:10101/:8080'",
                ))
            }
        },
    };
    if let Some(extra) = p.finish().first() {
        let s = extra.to_string_lossy();
        let reason = if s.starts_with('-') {
            "unknown or repeated flag"
        } else {
            "unexpected argument"
        };
        return Err(usage(&s, reason));
    }
    let cfg = config::parse(&url, env)?;
    Ok(if check {
        Command::Check(cfg)
    } else {
        Command::Run(cfg)
    })
}

/// Rewrites `-flag` to `--flag` and `--flag=value` to `--flag value`, for flags only: the
/// value after a value-taking flag is copied as it is, even when it starts with `-`.
fn normalize(args: Vec<OsString>) -> Result<Vec<OsString>, CliError> {
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let s = arg
            .into_string()
            .map_err(|a| usage(&a.to_string_lossy(), "argument is not UTF-8"))?;
        if !s.starts_with('-') || s.len() < 2 {
            out.push(s.into());
            continue;
        }
        let long = if s.starts_with("--") || s.chars().count() == 2 {
            s
        } else {
            format!("-{s}")
        };
        let (flag, inline) = match long.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (long, None),
        };
        let takes_value =
            ADDRESS_FLAGS.contains(&flag.as_str()) || RELAY_FLAGS.iter().any(|&(f, _)| f == flag);
        out.push(flag.into());
        match inline {
            Some(value) => out.push(value.into()),
            None if takes_value => out.extend(args.next()),
            None => {}
        }
    }
    Ok(out)
}

/// Builds `relay://[key@]host:port?k=v&...` from the relay flags.
fn relay_url(p: &mut Arguments) -> Result<String, CliError> {
    let port = match value(p, "--port")? {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|_| port.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| usage(&format!("--port {port}"), "port must be 0-65535"))?,
        None => config::DEFAULT_RELAY_PORT,
    };
    let host = value(p, "--host")?.unwrap_or_else(|| "0.0.0.0".to_owned());
    if host.contains(['/', '?', '@', '#', '%', '[', ']']) {
        return Err(usage(&format!("--host {host}"), "bad host"));
    }
    let mut url = String::from("relay://");
    if let Some(key) = value(p, "--key")? {
        url.push_str(&encode(&key));
        url.push('@');
    }
    if host.contains(':') {
        url.push_str(&format!("[{host}]:{port}"));
    } else {
        url.push_str(&format!("{host}:{port}"));
    }
    let mut sep = '?';
    for &(flag, key) in RELAY_FLAGS {
        if let Some(v) = value(p, flag)? {
            url.push_str(&format!("{sep}{key}={}", encode(&v)));
            sep = '&';
        }
    }
    Ok(url)
}

/// Takes one `--flag value`; refuses an empty value and a flag given twice.
fn value(p: &mut Arguments, flag: &'static str) -> Result<Option<String>, CliError> {
    let v: Option<String> = p.opt_value_from_str(flag).map_err(pico)?;
    if v.as_deref() == Some("") {
        return Err(usage(flag, "flag needs a value"));
    }
    if v.is_some() && p.contains(flag) {
        return Err(usage(flag, "flag given twice"));
    }
    Ok(v)
}

/// Percent-encodes what would change the URL's structure, so any value survives the trip.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '&' | '/' | '?' | '@' | '#' | ' ') || c.is_control() {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A usage error; control characters are escaped and the part is capped so that the
/// message stays one line.
fn usage(part: &str, reason: &'static str) -> CliError {
    /// Longest part quoted back.
    const MAX_PART: usize = 120;
    let mut out = String::new();
    for c in part.chars().take(MAX_PART) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    CliError::Usage { part: out, reason }
}

/// Maps a pico-args error to a usage error.
fn pico(e: pico_args::Error) -> CliError {
    match e {
        pico_args::Error::OptionWithoutAValue(flag) => usage(flag, "flag needs a value"),
        pico_args::Error::NonUtf8Argument => usage("", "argument is not UTF-8"),
        other => usage(&other.to_string(), "bad argument"),
    }
}

#[cfg(test)]
mod tests;
