//! TLS test helpers: a private CA with rcgen, temp PEM files, a log capture, a TLS probe and a
//! TLS-terminating man in the middle.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use futures_rustls::{TlsAcceptor, TlsConnector};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, ServerConfig, SignatureScheme};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Task};

// ---------------------------------------------------------------------------------------------
// Log capture: the library logs through `log`; the tests look for reasons in its lines.

struct Capture(Mutex<Vec<String>>);

/// Most lines kept: enough for any test here, bounded all the same.
const MAX_LINES: usize = 20_000;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target().starts_with("edgepass")
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let mut v = self.0.lock().unwrap();
            if v.len() < MAX_LINES {
                v.push(format!("{} {}", r.level(), r.args()));
            }
        }
    }
    fn flush(&self) {}
}

static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();

/// Start capturing the library's log lines (idempotent).
pub fn capture_logs() {
    CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        let _ = log::set_logger(c);
        log::set_max_level(log::LevelFilter::Debug);
        c
    });
}

/// Whether some captured line contains every one of `words`.
pub fn logged(words: &[&str]) -> bool {
    let c = CAPTURE.get().expect("capture_logs() first");
    let lines = c.0.lock().unwrap();
    lines.iter().any(|l| words.iter().all(|w| l.contains(w)))
}

/// The captured lines containing `word` (for failure messages).
pub fn lines_with(word: &str) -> Vec<String> {
    let c = CAPTURE.get().expect("capture_logs() first");
    let lines = c.0.lock().unwrap();
    lines.iter().filter(|l| l.contains(word)).cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Files.

/// A fresh directory under the system temp dir, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Relaxed);
        let p = std::env::temp_dir().join(format!("edgepass-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    /// Write `name` with its mtime pushed `ahead` seconds into the future (so that a rewrite
    /// within one clock tick is still seen as a change). Returns the path.
    pub fn write(&self, name: &str, data: &str, ahead: u64) -> String {
        let p = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, data).unwrap();
        let f = std::fs::File::options().write(true).open(&tmp).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(ahead))
            .unwrap();
        drop(f);
        // Renamed into place, as ACME clients do: a reader never sees half a file.
        std::fs::rename(&tmp, &p).unwrap();
        self.path(name)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates.

/// A private CA.
pub struct Ca {
    pub issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    /// A CA whose certificate carries `name` as its common name.
    pub fn new(name: &str) -> Ca {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `name` with a fresh key: (cert PEM, key PEM, leaf DER).
    pub fn server(&self, name: &str) -> (String, String, Vec<u8>) {
        self.server_for(vec![name.to_string()])
    }

    /// [`Ca::server`] for every name in `names`.
    pub fn server_for(&self, names: Vec<String>) -> (String, String, Vec<u8>) {
        let kp = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let c = p.signed_by(&kp, &self.issuer).unwrap();
        (c.pem(), kp.serialize_pem(), c.der().to_vec())
    }
}

/// A self-signed certificate: (cert PEM, key PEM, DER), valid between the two years.
pub fn self_signed(from: i32, to: i32) -> (String, String, Vec<u8>) {
    let kp = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["tunnel.test".to_string()]).unwrap();
    p.not_before = rcgen::date_time_ymd(from, 1, 1);
    p.not_after = rcgen::date_time_ymd(to, 1, 1);
    let c = p.self_signed(&kp).unwrap();
    (c.pem(), kp.serialize_pem(), c.der().to_vec())
}

/// SHA-256, as the fingerprint.
pub fn sha256(b: &[u8]) -> [u8; 32] {
    edgepass::auth::sha256(b)
}

// ---------------------------------------------------------------------------------------------
// TLS clients and servers for probing and for the man in the middle.

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate whose handshake signature verifies: what an attacker's own client
/// (or a curious probe) would use.
#[derive(Debug)]
struct AnyCert(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A client that accepts any certificate, every protocol version the build has.
pub fn any_cert_client() -> TlsConnector {
    any_cert_client_with(provider())
}

/// [`any_cert_client`] with the cipher suites of `p`, in its order.
fn any_cert_client_with(p: Arc<rustls::crypto::CryptoProvider>) -> TlsConnector {
    let algs = p.signature_verification_algorithms;
    let c = ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(algs)))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(c))
}

/// TLS-connect to `addr` with [`any_cert_client`]: the negotiated version and the leaf's
/// fingerprint.
pub async fn probe(addr: SocketAddr) -> (ProtocolVersion, [u8; 32]) {
    let s = handshake(addr, any_cert_client()).await;
    let c = s.get_ref().1;
    let v = c.protocol_version().unwrap();
    let fp = sha256(c.peer_certificates().unwrap()[0].as_ref());
    (v, fp)
}

/// The cipher suite `addr` picks for a client that offers `suites` in that order.
pub async fn suite_for(
    addr: SocketAddr,
    suites: Vec<rustls::SupportedCipherSuite>,
) -> rustls::CipherSuite {
    let p = rustls::crypto::CryptoProvider {
        cipher_suites: suites,
        ..rustls::crypto::ring::default_provider()
    };
    let s = handshake(addr, any_cert_client_with(Arc::new(p))).await;
    s.get_ref().1.negotiated_cipher_suite().unwrap().suite()
}

/// A TLS handshake with `addr` through `client`, under the name `probe.test`.
async fn handshake(
    addr: SocketAddr,
    client: TlsConnector,
) -> futures_rustls::client::TlsStream<Async<TcpStream>> {
    let tcp = Async::<TcpStream>::connect(addr).await.unwrap();
    let name = ServerName::try_from("probe.test").unwrap();
    client.connect(name, tcp).await.unwrap()
}

/// A TLS server config with a fresh self-signed certificate.
fn own_server_config() -> Arc<ServerConfig> {
    let kp = rcgen::KeyPair::generate().unwrap();
    let c = rcgen::CertificateParams::new(vec!["edgepass".to_string()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![c.der().clone()], key)
        .unwrap();
    Arc::new(cfg)
}

/// A TLS-terminating man in the middle in front of `upstream`: it relays plaintext
/// connections as they are, and for TLS ones shows its own certificate, dials the upstream
/// with TLS and relays the decrypted bytes, recording what the client sent.
pub struct Mitm {
    pub addr: SocketAddr,
    /// TLS connections relayed to their end.
    pub tls_done: Arc<AtomicUsize>,
    /// What each TLS client sent, decrypted.
    pub from_client: Arc<Mutex<Vec<Vec<u8>>>>,
    _task: Task<()>,
}

pub fn mitm(upstream: SocketAddr) -> Mitm {
    let l = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
    let addr = l.get_ref().local_addr().unwrap();
    let tls_done = Arc::new(AtomicUsize::new(0));
    let from_client = Arc::new(Mutex::new(Vec::new()));
    let (done, rec) = (tls_done.clone(), from_client.clone());
    let acceptor = TlsAcceptor::from(own_server_config());
    let task = smol::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let (done, rec, acceptor) = (done.clone(), rec.clone(), acceptor.clone());
            smol::spawn(async move {
                let mut first = [0u8; 1];
                if s.peek(&mut first).await.unwrap_or(0) == 0 {
                    return;
                }
                let Ok(up) = Async::<TcpStream>::connect(upstream).await else {
                    return;
                };
                if first[0] != 0x16 {
                    relay(s, up, None).await;
                    return;
                }
                let Ok(down) = acceptor.accept(s).await else {
                    return;
                };
                let name = ServerName::try_from("edgepass").unwrap();
                let Ok(up) = any_cert_client().connect(name, up).await else {
                    return;
                };
                let idx = {
                    let mut r = rec.lock().unwrap();
                    r.push(Vec::new());
                    r.len() - 1
                };
                relay(down, up, Some((rec, idx))).await;
                done.fetch_add(1, Relaxed);
            })
            .detach();
        }
    });
    Mitm {
        addr,
        tls_done,
        from_client,
        _task: task,
    }
}

type Record = (Arc<Mutex<Vec<Vec<u8>>>>, usize);

/// Copy both ways until either side ends; client bytes are appended to `record`.
async fn relay<A, B>(a: A, b: B, record: Option<Record>)
where
    A: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin + Send + 'static,
    B: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin + Send + 'static,
{
    use smol::future::FutureExt;
    let (mut ar, mut aw) = smol::io::split(a);
    let (mut br, mut bw) = smol::io::split(b);
    let up = async move {
        let mut buf = vec![0u8; 16384];
        while let Ok(n @ 1..) = ar.read(&mut buf).await {
            if let Some((r, i)) = &record {
                r.lock().unwrap()[*i].extend_from_slice(&buf[..n]);
            }
            if bw.write_all(&buf[..n]).await.is_err() || bw.flush().await.is_err() {
                break;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16384];
        while let Ok(n @ 1..) = br.read(&mut buf).await {
            if aw.write_all(&buf[..n]).await.is_err() || aw.flush().await.is_err() {
                break;
            }
        }
    };
    up.or(down)
        .or(async {
            smol::Timer::after(Duration::from_secs(30)).await;
        })
        .await;
}
