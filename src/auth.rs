//! Challenge–response proofs: HMAC-SHA256 over both nonces, the TLS binding and the session.
//!
//! Pure functions; see docs/PROTOCOL.md "Authentication". ring (already in the tree through
//! rustls) provides HMAC, SHA-256 and the system random generator.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::signal::{Kind, MAC_LEN, NONCE_LEN, SID_LEN};

const SERVER_LABEL: &[u8] = b"edgepass/1 server";
const CLIENT_LABEL: &[u8] = b"edgepass/1 client";

/// The key, ready for HMAC. Its Debug output never shows the secret.
#[derive(Clone)]
pub struct Key(hmac::Key);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Wrap the shared key bytes.
    pub fn new(secret: &[u8]) -> Self {
        Key(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }
}

/// What both proofs of one connection cover.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    /// The connection's purpose token (`ctl`, `pool`, ...).
    pub kind: &'a str,
    /// The client's nonce.
    pub cnonce: [u8; NONCE_LEN],
    /// The server's nonce.
    pub snonce: [u8; NONCE_LEN],
    /// The server's TLS mode digit.
    pub tls: u8,
    /// The server certificate's SHA-256, if any.
    pub fp: Option<[u8; MAC_LEN]>,
}

impl Transcript<'_> {
    fn sign(&self, key: &Key, label: &[u8], sid: Option<&[u8; SID_LEN]>) -> hmac::Context {
        let mut ctx = hmac::Context::with_key(&key.0);
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(self.kind.as_bytes());
        ctx.update(&[0]);
        ctx.update(&self.cnonce);
        ctx.update(&self.snonce);
        ctx.update(&[b'0' + self.tls]);
        // A presence byte keeps "no certificate" apart from an all-zero fingerprint.
        ctx.update(&[u8::from(self.fp.is_some())]);
        ctx.update(&self.fp.unwrap_or([0; MAC_LEN]));
        if let Some(sid) = sid {
            ctx.update(sid);
        }
        ctx
    }

    /// The server's proof.
    pub fn server_proof(&self, key: &Key) -> [u8; MAC_LEN] {
        to_array(self.sign(key, SERVER_LABEL, None).sign())
    }

    /// The client's proof, binding the session it joins (zeros for a control connection).
    pub fn client_proof(&self, key: &Key, sid: Option<[u8; SID_LEN]>) -> [u8; MAC_LEN] {
        let sid = sid.unwrap_or([0; SID_LEN]);
        to_array(self.sign(key, CLIENT_LABEL, Some(&sid)).sign())
    }

    /// Constant-time check of a server proof.
    pub fn verify_server(&self, key: &Key, proof: &[u8; MAC_LEN]) -> bool {
        verify(&self.server_proof(key), proof)
    }

    /// Constant-time check of a client proof.
    pub fn verify_client(&self, key: &Key, sid: Option<[u8; SID_LEN]>, proof: &[u8]) -> bool {
        verify(&self.client_proof(key, sid), proof)
    }
}

/// The ASCII token of a connection kind.
pub fn kind_token(kind: Kind) -> &'static str {
    match kind {
        Kind::Ctl => "ctl",
        Kind::Pool => "pool",
        Kind::Reserve => "reserve",
        Kind::Connect => "connect",
    }
}

fn to_array(tag: hmac::Tag) -> [u8; MAC_LEN] {
    let mut out = [0; MAC_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

fn verify(expected: &[u8; MAC_LEN], got: &[u8]) -> bool {
    if got.len() != MAC_LEN {
        return false;
    }
    // Fold every byte so the time does not depend on where they differ.
    expected
        .iter()
        .zip(got)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Fresh random bytes from the OS (nonces, session ids).
pub fn random<const N: usize>() -> [u8; N] {
    let mut out = [0; N];
    // The OS generator only fails when the kernel has none; fall back to the clock so the
    // process keeps running rather than aborting, and log it loudly.
    if SystemRandom::new().fill(&mut out).is_err() {
        log::error!("system random generator failed; nonces are weak");
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            .to_le_bytes();
        for (i, b) in out.iter_mut().enumerate() {
            *b = t[i % t.len()] ^ (i as u8);
        }
    }
    out
}

/// SHA-256 of bytes (certificate fingerprints).
pub fn sha256(data: &[u8]) -> [u8; MAC_LEN] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0; MAC_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Transcript<'static> {
        Transcript {
            kind: "ctl",
            cnonce: [1; 16],
            snonce: [2; 16],
            tls: 0,
            fp: None,
        }
    }

    #[test]
    fn proofs_verify_with_the_right_key_only() {
        let k = Key::new(b"s3cret");
        let wrong = Key::new(b"s3creT");
        let p = t().server_proof(&k);
        assert!(t().verify_server(&k, &p));
        assert!(!t().verify_server(&wrong, &p));
        let c = t().client_proof(&k, None);
        assert!(t().verify_client(&k, None, &c));
        assert!(!t().verify_client(&k, Some([9; 16]), &c));
        assert!(!t().verify_client(&wrong, None, &c));
    }

    #[test]
    fn server_and_client_proofs_differ() {
        let k = Key::new(b"k");
        assert_ne!(t().server_proof(&k), t().client_proof(&k, None));
    }

    #[test]
    fn every_field_is_covered() {
        let k = Key::new(b"k");
        let base = t().server_proof(&k);
        let variants = [
            Transcript {
                kind: "pool",
                ..t()
            },
            Transcript {
                cnonce: [3; 16],
                ..t()
            },
            Transcript {
                snonce: [3; 16],
                ..t()
            },
            Transcript { tls: 1, ..t() },
            Transcript {
                fp: Some([0; 32]),
                ..t()
            },
            Transcript {
                fp: Some([7; 32]),
                ..t()
            },
        ];
        for v in variants {
            assert_ne!(v.server_proof(&k), base, "{v:?}");
        }
    }

    #[test]
    fn random_is_random() {
        assert_ne!(random::<16>(), random::<16>());
    }
}
