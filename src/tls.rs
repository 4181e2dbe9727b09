//! TLS 1.3 on the tunnel port: the server's certificate (tls=1 self-signed at start, tls=2 from
//! PEM files with hot reload) and the accept glue. The client side is in [`client`]; the
//! stream that leases its record buffers from an arena, which every accepted connection and
//! every client pool connection uses, is in [`stream`].
//!
//! Every configuration uses rustls with the ring provider, TLS 1.3 only, and no session
//! resumption: the certificate fingerprint is checked inside the authenticated handshake on
//! every connection (docs/PROTOCOL.md), and connections are pre-dialed, so resumption would
//! save little and would show a stale certificate after a reload.

pub mod client;
pub mod stream;
pub mod suites;
pub mod x509;

use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{NoServerSessionStorage, UnbufferedServerConnection};
use rustls::ServerConfig;
use smol::{Async, Timer};

use crate::arena::Arena;
use crate::auth::sha256;
use crate::config::{Config, ConfigError, TlsMode};
use crate::error::{Error, Result};
use crate::signal::MAC_LEN;
use crate::stream::Conn;
use stream::TlsStream;

pub use client::ClientTls;

/// How often a tls=2 server looks at its certificate files' modification times. A `stat` of
/// two files: cheap enough to do often, and a renewed certificate is served within seconds.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// SHA-256 of a certificate's DER bytes.
pub type Fingerprint = [u8; MAC_LEN];

/// The crypto provider every configuration uses: ring (never aws-lc), with the cipher suites
/// in the order this CPU runs fastest ([`suites`]).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: suites::order(suites::aes_hardware()),
        ..rustls::crypto::ring::default_provider()
    })
}

/// Lower-case hex of a fingerprint, for log lines.
pub fn hex(fp: &Fingerprint) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

/// A configuration error about `file`.
fn file_err(file: &str, reason: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::Config(ConfigError {
        part: file.to_string(),
        reason: reason.into(),
    })
}

/// The configuration served now and the fingerprint of its certificate.
struct Current {
    config: Arc<ServerConfig>,
    fp: Fingerprint,
}

/// A file's modification time and length: when either changes, the file is read again.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &str) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// tls=2 bookkeeping: the files and the stamps last loaded (or last refused).
struct Files {
    crt: String,
    key: String,
    loaded: Mutex<([Stamp; 2], Option<[Stamp; 2]>)>,
}

/// The server's TLS state: the current configuration, swapped atomically on reload.
pub struct ServerTls {
    mode: u8,
    current: Mutex<Current>,
    files: Option<Files>,
    /// Record buffers of the accepted connections.
    arena: Arc<Arena>,
}

impl ServerTls {
    /// Build the server configuration for `cfg.tls`: `Ok(None)` for tls=0. For tls=2 every
    /// file problem (missing, unreadable, bad PEM, key not matching, expired) is an
    /// [`Error::Config`] naming the file, so the binary exits 2 before binding anything.
    pub fn new(cfg: &Config) -> Result<Option<Arc<ServerTls>>> {
        let (mode, (config, fp), files) = match cfg.tls {
            TlsMode::Off => return Ok(None),
            TlsMode::SelfSigned => (1, self_signed()?, None),
            TlsMode::Files => {
                let (crt, key) = files(cfg)?;
                let (crt, key) = (crt.to_owned(), key.to_owned());
                let stamps = [stamp(&crt), stamp(&key)];
                let loaded = load_files(&crt, &key, now())?;
                let files = Files {
                    crt,
                    key,
                    loaded: Mutex::new((stamps, None)),
                };
                (2, loaded, Some(files))
            }
        };
        log::info!("tls={mode}: certificate fingerprint {}", hex(&fp));
        Ok(Some(Arc::new(ServerTls {
            mode,
            current: Mutex::new(Current { config, fp }),
            files,
            arena: stream::arena(cfg.slot, cfg.max)?,
        })))
    }

    /// The mode served: 1 or 2.
    pub fn mode(&self) -> u8 {
        self.mode
    }

    /// The configuration to accept with now and its certificate's fingerprint.
    pub fn current(&self) -> (Arc<ServerConfig>, Fingerprint) {
        let c = self.current.lock().unwrap_or_else(|e| e.into_inner());
        (c.config.clone(), c.fp)
    }

    /// TLS-accept a connection with the current certificate. Returns the connection and the
    /// fingerprint to announce in the `challenge`.
    pub async fn accept(&self, tcp: Async<TcpStream>) -> Result<(Conn, Fingerprint)> {
        let (config, fp) = self.current();
        let conn =
            UnbufferedServerConnection::new(config).map_err(|e| Error::Tls(e.to_string()))?;
        let mut s = TlsStream::server(tcp, conn, self.arena.clone());
        s.handshake()
            .await
            .map_err(|e| Error::Tls(client::describe(&e, "client")))?;
        Ok((Conn::Tls(Box::new(s)), fp))
    }

    /// tls=2: if the files changed since the last look, load them and swap the configuration
    /// (open connections keep theirs). A bad new file is logged once and the previous
    /// certificate stays. Returns whether a new certificate was installed.
    pub fn reload(&self) -> bool {
        let Some(f) = &self.files else {
            return false;
        };
        let stamps = [stamp(&f.crt), stamp(&f.key)];
        let mut loaded = f.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.0 == stamps || loaded.1 == Some(stamps) {
            return false;
        }
        match load_files(&f.crt, &f.key, now()) {
            Ok((config, fp)) => {
                *loaded = (stamps, None);
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Current { config, fp };
                log::info!(
                    "tls: reloaded the certificate from {}, fingerprint {}",
                    f.crt,
                    hex(&fp)
                );
                true
            }
            Err(e) => {
                loaded.1 = Some(stamps);
                log::error!("tls: cannot reload the certificate: {e}; keeping the previous one");
                false
            }
        }
    }

    /// Look for renewed files every [`RELOAD_CHECK`] until dropped (tls=2; returns at once
    /// for tls=1).
    pub async fn watch(self: Arc<Self>) {
        if self.files.is_none() {
            return;
        }
        loop {
            Timer::after(RELOAD_CHECK).await;
            self.reload();
        }
    }
}

/// tls=2's certificate and key file names.
fn files(cfg: &Config) -> Result<(&str, &str)> {
    let crt = cfg.crt.as_deref();
    let key = cfg.key_file.as_deref();
    Ok((
        crt.ok_or_else(|| file_err("crt", "tls=2 needs crt"))?,
        key.ok_or_else(|| file_err("key", "tls=2 needs key"))?,
    ))
}

/// tls=2: load the certificate and key files as [`ServerTls::new`] does (every problem an
/// [`Error::Config`] naming the file), and drop them. Other modes have no files.
pub fn check_files(cfg: &Config) -> Result<()> {
    if cfg.tls != TlsMode::Files {
        return Ok(());
    }
    let (crt, key) = files(cfg)?;
    load_files(crt, key, now()).map(drop)
}

/// Seconds since the Unix epoch now.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A TLS 1.3-only server configuration without session resumption.
fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> std::result::Result<Arc<ServerConfig>, rustls::Error> {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    c.session_storage = Arc::new(NoServerSessionStorage {});
    c.send_tls13_tickets = 0;
    // The client's order of cipher suites decides: the side that dials knows its own CPU.
    c.ignore_client_order = false;
    Ok(Arc::new(c))
}

/// tls=1: a fresh Ed25519 certificate, in memory only.
fn self_signed() -> Result<(Arc<ServerConfig>, Fingerprint)> {
    let fail = |e: &dyn std::fmt::Display| Error::Tls(format!("self-signed certificate: {e}"));
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| fail(&e))?;
    let params =
        rcgen::CertificateParams::new(vec!["edgepass".to_string()]).map_err(|e| fail(&e))?;
    let cert = params.self_signed(&kp).map_err(|e| fail(&e))?;
    let fp = sha256(cert.der());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
    let config = server_config(vec![cert.der().clone()], key).map_err(|e| fail(&e))?;
    Ok((config, fp))
}

/// A PEM error in words (the library shows the marker or line it names as byte values).
pub(crate) fn pem_words(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    let text = |b: &[u8]| {
        let t = String::from_utf8_lossy(b);
        t.chars().take(80).collect::<String>()
    };
    match e {
        E::MissingSectionEnd { end_marker } => {
            format!(
                "no -----END {}----- line; is the file cut short?",
                text(end_marker)
            )
        }
        E::IllegalSectionStart { line } => format!("bad BEGIN line {:?}", text(line)),
        e => e.to_string(),
    }
}

/// tls=2: read and check the chain and key; `now` in Unix seconds decides expiry.
fn load_files(crt: &str, key: &str, now: i64) -> Result<(Arc<ServerConfig>, Fingerprint)> {
    let pem = std::fs::read(crt)
        .map_err(|e| file_err(crt, format!("cannot read the certificate file ({e})")))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            let e = pem_words(&e);
            file_err(crt, format!("certificate file is not valid PEM ({e})"))
        })?;
    let leaf = chain
        .first()
        .ok_or_else(|| file_err(crt, "no CERTIFICATE block in the certificate file"))?;
    let v = x509::validity(leaf)
        .ok_or_else(|| file_err(crt, "the first certificate is not valid X.509 DER"))?;
    if !v.contains(now) {
        let state = if now < v.not_before {
            "is not valid yet"
        } else {
            "has expired"
        };
        return Err(file_err(
            crt,
            format!(
                "certificate {state}: valid from {} to {}, now {}",
                x509::format_utc(v.not_before),
                x509::format_utc(v.not_after),
                x509::format_utc(now)
            ),
        ));
    }
    let fp = sha256(leaf);
    let pem =
        std::fs::read(key).map_err(|e| file_err(key, format!("cannot read the key file ({e})")))?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            file_err(key, "no PRIVATE KEY block in the key file")
        }
        e => file_err(
            key,
            format!("key file is not valid PEM ({})", pem_words(&e)),
        ),
    })?;
    let config = server_config(chain, der).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => file_err(
            key,
            format!("the private key does not match the certificate in {crt}"),
        ),
        e => file_err(key, format!("unusable private key ({e})")),
    })?;
    Ok((config, fp))
}

#[cfg(test)]
mod tests;
