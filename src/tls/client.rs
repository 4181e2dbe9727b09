//! The client's TLS: a pinning verifier for tls=1, webpki verification for tls=2 (`ca=` or the
//! system's roots), the server name to verify, and the connect glue.

use std::io;
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};

use futures_rustls::TlsConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, UnbufferedClientConnection, WebPkiServerVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use smol::Async;

use super::stream::{self, TlsStream};
use super::{file_err, provider, Fingerprint};
use crate::arena::Arena;
use crate::auth::sha256;
use crate::config::{Config, ConfigError, Host, TlsMode};
use crate::error::{Error, Result};
use crate::stream::Conn;

/// Where the system's CA bundle usually lives (Debian/Ubuntu/Alpine/OpenWrt, Fedora/RHEL,
/// macOS/BSD). `SSL_CERT_FILE` comes first when set.
pub const SYSTEM_ROOTS: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The client's TLS configurations.
pub struct ClientTls {
    /// tls=1: built on first use, so that a client of a tls=0 server never runs (or maps the
    /// pages of) the TLS code.
    pin: OnceLock<std::result::Result<Arc<ClientConfig>, String>>,
    /// tls=2: built at start when the URL asks for TLS (so a bad `ca=` stops the start), else
    /// on first use, so that a client of a tls=0 or tls=1 server never loads the system bundle.
    webpki: OnceLock<std::result::Result<Arc<ClientConfig>, String>>,
    ca: Option<String>,
    /// Record buffers of the pool connections, made on first use; sized from `slot` and `max`.
    arena: OnceLock<std::result::Result<Arc<Arena>, String>>,
    sizes: (usize, usize),
    /// The name to verify; an error only matters once TLS is used.
    name: std::result::Result<ServerName<'static>, ConfigError>,
}

/// The mode a client starts in: the URL's `tls=` if set, 2 when `ca=` or `sni=` is given (a
/// client that names its roots or its server wants verification from the first byte), else 0
/// (plain, then learn the server's mode from its `tls` reply).
pub fn initial_mode(cfg: &Config) -> u8 {
    match cfg.tls {
        TlsMode::SelfSigned => 1,
        TlsMode::Files => 2,
        TlsMode::Off if cfg.ca.is_some() || cfg.sni.is_some() => 2,
        TlsMode::Off => 0,
    }
}

/// The name the certificate must carry: `sni=`, else the tunnel host.
fn server_name(cfg: &Config) -> std::result::Result<ServerName<'static>, ConfigError> {
    let bad = |part: &String, reason: &'static str| ConfigError {
        part: part.clone(),
        reason: reason.into(),
    };
    match (&cfg.sni, &cfg.tunnel.host) {
        (Some(s), _) => ServerName::try_from(s.clone())
            .map_err(|_| bad(s, "sni is not a DNS name or an IP address")),
        (None, Host::Ip(ip)) => Ok(ServerName::IpAddress((*ip).into())),
        (None, Host::Name(n)) => ServerName::try_from(n.clone()).map_err(|_| {
            bad(
                n,
                "the tunnel host is not a valid TLS server name; set sni=",
            )
        }),
    }
}

/// The tls=2 configuration: roots from `ca` or the system bundle.
fn webpki_for(ca: Option<&str>) -> Result<Arc<ClientConfig>> {
    let roots = match ca {
        Some(ca) => load_roots(ca)?,
        None => system_roots().map_err(|e| {
            Error::Config(ConfigError {
                part: "tls=2".into(),
                reason: e.into(),
            })
        })?,
    };
    webpki_config(roots)
}

impl ClientTls {
    /// Prepare the configurations. When the URL asks for TLS (`tls=`, `ca=`, `sni=`), a bad
    /// `ca=` file, a bad name or missing roots are an [`Error::Config`] here.
    pub fn new(cfg: &Config) -> Result<ClientTls> {
        let name = server_name(cfg);
        let webpki = OnceLock::new();
        match initial_mode(cfg) {
            0 => {}
            mode => {
                if let Err(e) = &name {
                    return Err(Error::Config(e.clone()));
                }
                if mode == 2 {
                    let _ = webpki.set(Ok(webpki_for(cfg.ca.as_deref())?));
                }
            }
        }
        Ok(ClientTls {
            pin: OnceLock::new(),
            webpki,
            ca: cfg.ca.clone(),
            arena: OnceLock::new(),
            sizes: (cfg.slot, cfg.max),
            name,
        })
    }

    /// TLS-connect in `mode` (1 pinning, 2 webpki). Returns the connection and the fingerprint
    /// of the certificate the server showed, which the handshake compares with the `fp` the
    /// server proves. A `pooled` connection (one that carries users and may sit idle in the
    /// pool) leases its record buffers from an arena ([`stream`]); a control connection
    /// goes through futures-rustls.
    pub async fn connect(
        &self,
        mode: u8,
        tcp: Async<TcpStream>,
        pooled: bool,
    ) -> Result<(Conn, Fingerprint)> {
        let config = match mode {
            1 => self
                .pin
                .get_or_init(|| pinning_config().map_err(|e| e.to_string()))
                .clone()
                .map_err(Error::Tls)?,
            2 => self
                .webpki
                .get_or_init(|| webpki_for(self.ca.as_deref()).map_err(|e| e.to_string()))
                .clone()
                .map_err(Error::Tls)?,
            _ => return Err(Error::Tls(format!("unknown tls mode {mode}"))),
        };
        let name = self.name.clone().map_err(|e| Error::Tls(e.to_string()))?;
        let failed = |e: io::Error| Error::Tls(describe(&e, "server"));
        if pooled {
            let arena = self
                .arena
                .get_or_init(|| {
                    stream::arena(self.sizes.0, self.sizes.1).map_err(|e| e.to_string())
                })
                .clone()
                .map_err(Error::Tls)?;
            let conn = UnbufferedClientConnection::new(config, name)
                .map_err(|e| Error::Tls(e.to_string()))?;
            let mut s = TlsStream::client(tcp, conn, arena);
            s.handshake().await.map_err(failed)?;
            let fp = leaf_fingerprint(s.state().peer_certificates())?;
            return Ok((Conn::Tls(Box::new(s)), fp));
        }
        let s = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(failed)?;
        let fp = leaf_fingerprint(s.get_ref().1.peer_certificates())?;
        Ok((Conn::TlsClient(Box::new(s)), fp))
    }
}

/// The fingerprint of the certificate the server showed first.
fn leaf_fingerprint(certs: Option<&[CertificateDer<'_>]>) -> Result<Fingerprint> {
    certs
        .and_then(|c| c.first())
        .map(|c| sha256(c.as_ref()))
        .ok_or_else(|| Error::Tls("the server showed no certificate".into()))
}

/// The tls=1 configuration: any certificate passes the TLS handshake, whose signature must
/// still verify; the certificate is pinned afterwards (see `AcceptAnyCert`).
pub fn pinning_config() -> Result<Arc<ClientConfig>> {
    let algs = provider().signature_verification_algorithms;
    config(Arc::new(AcceptAnyCert { algs }))
}

/// A TLS 1.3-only client configuration without resumption, with `verifier`.
fn config(verifier: Arc<dyn ServerCertVerifier>) -> Result<Arc<ClientConfig>> {
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    c.resumption = Resumption::disabled();
    Ok(Arc::new(c))
}

fn webpki_config(roots: RootCertStore) -> Result<Arc<ClientConfig>> {
    let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| Error::Tls(format!("certificate verifier: {e}")))?;
    config(v)
}

/// The roots in a PEM file given with `ca=`.
fn load_roots(path: &str) -> Result<RootCertStore> {
    let pem = std::fs::read(path)
        .map_err(|e| file_err(path, format!("cannot read the CA file ({e})")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            let e = crate::tls::pem_words(&e);
            file_err(path, format!("CA file is not valid PEM ({e})"))
        })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(file_err(path, "no usable CERTIFICATE in the CA file"));
    }
    Ok(roots)
}

/// The system's roots: `SSL_CERT_FILE`, else the first bundle of [`SYSTEM_ROOTS`] with any.
fn system_roots() -> std::result::Result<RootCertStore, String> {
    let env = std::env::var("SSL_CERT_FILE").ok();
    for path in env.iter().map(String::as_str).chain(SYSTEM_ROOTS) {
        if let Ok(roots) = load_roots(path) {
            log::debug!("tls: {} system roots from {path}", roots.len());
            return Ok(roots);
        }
    }
    Err(format!(
        "no system CA roots found in {} (set ca=FILE or SSL_CERT_FILE)",
        SYSTEM_ROOTS.join(", ")
    ))
}

/// Why a TLS handshake with `peer` ("server" or "client") failed, in words for the log.
pub fn describe(e: &io::Error, peer: &str) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            CertificateError::UnknownIssuer => {
                "unknown issuer: the certificate is not signed by a trusted CA".into()
            }
            CertificateError::BadSignature => {
                "bad signature: the certificate is not signed by the trusted CA it names".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("name mismatch: {c}")
            }
            c => format!("bad certificate: {c}"),
        },
        Some(e) => e.to_string(),
        None if e.kind() == io::ErrorKind::UnexpectedEof && peer == "server" => {
            "the server closed the connection during the TLS handshake (is it tls=0?)".into()
        }
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            format!("the {peer} closed the connection during the TLS handshake")
        }
        None => format!("handshake failed: {e}"),
    }
}

/// tls=1: any certificate passes the TLS handshake, whose signature must still verify against
/// it (so the certificate shown is really held by the peer). The certificate is then pinned by
/// the handshake: its fingerprint must equal the one in the `challenge`, which the server's
/// proof covers.
#[derive(Debug)]
struct AcceptAnyCert {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered.
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
