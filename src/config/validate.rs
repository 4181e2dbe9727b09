//! Checks across keys and per role, after every key of the URL is set.

use super::values::err;
use super::{Config, ConfigError, Role, TlsMode};

/// Cross-key and per-role checks, after every key is set. `base` is the URL before `?`.
pub(super) fn validate(cfg: &Config, base: &str) -> Result<(), ConfigError> {
    if cfg.min > cfg.max {
        let part = format!("min={}&max={}", cfg.min, cfg.max);
        let why =
            "min must not exceed max (min= and max=, or MIN_POOL_CAPACITY and MAX_POOL_CAPACITY)";
        return Err(err(&part, why));
    }
    if cfg.tls == TlsMode::Files && matches!(cfg.role, Role::Server | Role::Relay) {
        if cfg.crt.is_none() {
            return Err(err("crt", "tls=2 needs a certificate file"));
        }
        if cfg.key_file.is_none() {
            return Err(err("key", "tls=2 needs a private key file"));
        }
    }
    // Certificate files anywhere else would be ignored: a user who meant TLS (or took
    // `--key-file` for a file holding the shared key) would run in plaintext unawares.
    let files = [("crt", cfg.crt.is_some()), ("key", cfg.key_file.is_some())];
    if let Some(&(part, _)) = files.iter().find(|(_, set)| *set) {
        if !matches!(cfg.role, Role::Server | Role::Relay) {
            return Err(err(
                part,
                "crt= and key= are a server's or relay's certificate and private key files",
            ));
        }
        if cfg.tls != TlsMode::Files {
            return Err(err(
                part,
                "crt= and key= (relay flags --crt, --key-file) are the certificate and private key files of tls=2: add tls=2",
            ));
        }
    }
    let dials = matches!(cfg.role, Role::Client | Role::Visit);
    let verify = [("ca", cfg.ca.is_some()), ("sni", cfg.sni.is_some())];
    if let Some(&(part, _)) = verify.iter().find(|(_, set)| *set) {
        if !dials {
            return Err(err(
                part,
                "ca= and sni= are how a client or visitor checks tls=2's certificate; a server's is crt= and key=",
            ));
        }
        if cfg.tls == TlsMode::SelfSigned && part == "ca" {
            return Err(err(
                part,
                "ca= checks a certificate chain (tls=2), tls=1 pins the server's own certificate: drop one",
            ));
        }
    }
    if cfg.notcp && cfg.noudp && cfg.role != Role::Relay {
        return Err(err("notcp=1&noudp=1", "nothing left to forward"));
    }
    match cfg.role {
        Role::Server | Role::Client if cfg.targets.is_empty() => Err(err(
            base,
            "missing target: add /host:port after the tunnel address",
        )),
        Role::Relay if !cfg.targets.is_empty() => Err(err(base, "a relay takes no target")),
        Role::Visit if cfg.targets.len() != 1 => Err(err(
            base,
            "visit takes exactly one local listen address after `/`",
        )),
        Role::Visit if cfg.name.is_none() => Err(err("name", "visit needs name=<reservation>")),
        _ => Ok(()),
    }?;
    no_port_0_dialed(cfg)
}

/// Port 0 lets a listener pick a port; dialed, it fails every time and the client would
/// retry forever. Refused where an address is dialed: the server or relay a client (unless
/// it may forward locally) or a visitor connects to, a client's targets, and the targets of a
/// server in forward flow (`mode=2`).
fn no_port_0_dialed(cfg: &Config) -> Result<(), ConfigError> {
    let dials_tunnel = match cfg.role {
        Role::Client => !cfg.may_forward_locally(),
        Role::Visit => true,
        Role::Server | Role::Relay => false,
    };
    if dials_tunnel && cfg.tunnel.port == 0 {
        let what = "port 0 cannot be dialed: give the port the server or relay listens on";
        return Err(err(&cfg.tunnel.to_string(), what));
    }
    let zero = cfg.targets.iter().find(|t| t.port == 0);
    match zero {
        Some(t) if cfg.role == Role::Client || (cfg.role == Role::Server && cfg.mode == 2) => {
            Err(err(
                &t.to_string(),
                "port 0 cannot be dialed: give the target's port",
            ))
        }
        _ => Ok(()),
    }
}
