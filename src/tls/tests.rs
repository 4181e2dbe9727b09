//! Certificate loading and reloading: every key type we accept and every bad file we refuse.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use super::*;

const RSA_PK8: &str = include_str!("../../tests/data/rsa2048.pk8.pem");
const RSA_PKCS1: &str = include_str!("../../tests/data/rsa2048.pkcs1.pem");
const P256_PK8: &str = include_str!("../../tests/data/p256.pk8.pem");
const P256_SEC1: &str = include_str!("../../tests/data/p256.sec1.pem");

/// 2024-01-01 00:00:00 UTC: "now" for the expiry checks below.
const NOW: i64 = 1_704_067_200;

/// A fresh directory under the system temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("edgepass-tls-unit-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    /// Write `name` and push its mtime `age` seconds forward, so that a rewrite within one
    /// clock tick still looks changed.
    fn write(&self, name: &str, data: &str, age: u64) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(age))
            .unwrap();
        p.to_string_lossy().into_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed PEM certificate for `kp`, valid between the two years.
fn cert(kp: &rcgen::KeyPair, from: i32, to: i32) -> (String, Vec<u8>) {
    let mut p = rcgen::CertificateParams::new(vec!["tunnel.test".into()]).unwrap();
    p.not_before = rcgen::date_time_ymd(from, 1, 1);
    p.not_after = rcgen::date_time_ymd(to, 1, 1);
    let c = p.self_signed(kp).unwrap();
    (c.pem(), c.der().to_vec())
}

fn err_text(r: Result<(Arc<ServerConfig>, Fingerprint)>) -> String {
    match r {
        Err(Error::Config(e)) => e.to_string(),
        Err(e) => panic!("not a config error: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn every_key_type_loads() {
    let d = Dir::new();
    let cases = [
        (
            "ecdsa-pk8",
            rcgen::KeyPair::from_pem(P256_PK8).unwrap(),
            P256_PK8.to_string(),
        ),
        (
            "ecdsa-sec1",
            rcgen::KeyPair::from_pem(P256_PK8).unwrap(),
            P256_SEC1.to_string(),
        ),
        (
            "rsa-pk8",
            rcgen::KeyPair::from_pem(RSA_PK8).unwrap(),
            RSA_PK8.to_string(),
        ),
        (
            "rsa-pkcs1",
            rcgen::KeyPair::from_pem(RSA_PK8).unwrap(),
            RSA_PKCS1.to_string(),
        ),
        (
            "ed25519",
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
            String::new(),
        ),
    ];
    assert!(!cases.is_empty());
    for (name, kp, key_pem) in cases {
        let key_pem = if key_pem.is_empty() {
            kp.serialize_pem()
        } else {
            key_pem
        };
        let (pem, der) = cert(&kp, 2020, 2030);
        let crt = d.write(&format!("{name}.crt"), &pem, 0);
        let key = d.write(&format!("{name}.key"), &key_pem, 0);
        let (_, fp) = load_files(&crt, &key, NOW).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(fp, sha256(&der), "{name}");
    }
}

#[test]
fn bad_files_are_refused_with_their_name() {
    let d = Dir::new();
    let kp = rcgen::KeyPair::from_pem(P256_PK8).unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let (good_pem, _) = cert(&kp, 2020, 2030);
    let crt = d.write("good.crt", &good_pem, 0);
    let key = d.write("good.key", P256_PK8, 0);
    let missing = d.0.join("missing.pem").to_string_lossy().into_owned();
    let garbage = d.write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        0,
    );
    let empty = d.write("empty.pem", "nothing here\n", 0);
    let cut = &good_pem[..good_pem.len() / 2];
    let cut = d.write("cut.crt", cut, 0);
    let other_key = d.write("other.key", &other.serialize_pem(), 0);
    let (expired, _) = cert(&kp, 2010, 2020);
    let expired = d.write("expired.crt", &expired, 0);
    let (future, _) = cert(&kp, 2030, 2040);
    let future = d.write("future.crt", &future, 0);
    let cases: [(&str, &str, &str, &[&str]); 10] = [
        (
            &cut,
            &key,
            &cut,
            &["no -----END CERTIFICATE----- line; is the file cut short?"],
        ),
        (
            &missing,
            &key,
            &missing,
            &["cannot read the certificate file"],
        ),
        (&crt, &missing, &missing, &["cannot read the key file"]),
        (&garbage, &key, &garbage, &["not valid PEM"]),
        (&empty, &key, &empty, &["no CERTIFICATE"]),
        (&crt, &empty, &empty, &["no PRIVATE KEY"]),
        (&crt, &crt, &crt, &["no PRIVATE KEY"]),
        (
            &crt,
            &other_key,
            &other_key,
            &["does not match the certificate", "good.crt"],
        ),
        (
            &expired,
            &key,
            &expired,
            &[
                "has expired",
                "2010-01-01 00:00:00 UTC",
                "2020-01-01 00:00:00 UTC",
            ],
        ),
        (
            &future,
            &key,
            &future,
            &["is not valid yet", "2030-01-01 00:00:00 UTC"],
        ),
    ];
    for (c, k, named, words) in cases {
        let msg = err_text(load_files(c, k, NOW));
        assert!(msg.contains(named), "{msg} should name {named}");
        for w in words {
            assert!(msg.contains(w), "{msg} should say {w}");
        }
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
}

fn server_tls(crt: &str, key: &str) -> Arc<ServerTls> {
    let url = format!("server://k@127.0.0.1:0/127.0.0.1:0?tls=2&crt={crt}&key={key}");
    let cfg = crate::config::parse(&url, &|_| None).unwrap();
    ServerTls::new(&cfg).unwrap().unwrap()
}

#[test]
fn reload_swaps_good_files_and_keeps_the_old_on_bad_ones() {
    let d = Dir::new();
    let kp = rcgen::KeyPair::generate().unwrap();
    let (pem1, der1) = cert(&kp, 2020, 2090);
    let crt = d.write("a.crt", &pem1, 0);
    let key = d.write("a.key", &kp.serialize_pem(), 0);
    let t = server_tls(&crt, &key);
    assert_eq!(t.mode(), 2);
    assert_eq!(t.current().1, sha256(&der1));
    assert!(!t.reload(), "nothing changed");

    // A renewed certificate with a new key: the key file lags behind (mismatch), then lands.
    let kp2 = rcgen::KeyPair::generate().unwrap();
    let (pem2, der2) = cert(&kp2, 2020, 2090);
    d.write("a.crt", &pem2, 10);
    assert!(!t.reload(), "new cert, old key: refused");
    assert_eq!(t.current().1, sha256(&der1), "old certificate kept");
    assert!(!t.reload(), "same bad files: not tried again");
    d.write("a.key", &kp2.serialize_pem(), 20);
    assert!(t.reload());
    assert_eq!(t.current().1, sha256(&der2));

    // A broken file keeps the current certificate.
    d.write("a.crt", "garbage", 30);
    assert!(!t.reload());
    assert_eq!(t.current().1, sha256(&der2));
}

#[test]
fn self_signed_is_fresh_each_start() {
    let cfg = crate::config::parse("server://k@127.0.0.1:0/127.0.0.1:0?tls=1", &|_| None).unwrap();
    let a = ServerTls::new(&cfg).unwrap().unwrap();
    let b = ServerTls::new(&cfg).unwrap().unwrap();
    assert_eq!(a.mode(), 1);
    assert_ne!(a.current().1, b.current().1);
    assert!(!a.reload(), "tls=1 has no files");
    let off = crate::config::parse("server://k@127.0.0.1:0/127.0.0.1:0", &|_| None).unwrap();
    assert!(ServerTls::new(&off).unwrap().is_none());
}

#[test]
fn initial_client_mode() {
    let m = |q: &str| {
        let cfg = crate::config::parse(&format!("client://k@h.test:1/127.0.0.1:2{q}"), &|_| None)
            .unwrap();
        client::initial_mode(&cfg)
    };
    assert_eq!(m(""), 0);
    assert_eq!(m("?tls=1"), 1);
    assert_eq!(m("?tls=2"), 2);
    assert_eq!(m("?sni=x.test"), 2);
    assert_eq!(m("?ca=/nonexistent"), 2);
}
