//! Challenge–response proofs: HMAC-SHA256 over both nonces, the TLS binding and the session,
//! with a key stretched from the shared secret by PBKDF2.
//!
//! See docs/PROTOCOL.md "Authentication". ring (already in the tree through rustls) provides
//! PBKDF2, HMAC, SHA-256 and the system random generator.

use std::num::NonZeroU32;
use std::sync::Mutex;

use ring::rand::{SecureRandom, SystemRandom};
use ring::{hmac, pbkdf2};

use crate::signal::{Kind, MAC_LEN, NONCE_LEN, SALT_LEN, SID_LEN};

const SERVER_LABEL: &[u8] = b"edgepass/1 server";
const CLIENT_LABEL: &[u8] = b"edgepass/1 client";
const KEY_LABEL: &[u8] = b"edgepass/1 key";

/// PBKDF2-HMAC-SHA256 rounds from the shared secret to the HMAC key. Every guess of the secret
/// tested against a recorded proof costs this many rounds (two SHA-256 blocks each), where a
/// bare HMAC would cost one. Each side pays it once per salt: a server at start, a client when
/// it first meets a server's salt (again after the server restarts). About 4 ms on an x86_64
/// VPS core; the mipsel build under qemu took 0.34 s more to start a server with it (a MIPS
/// router is of that order: a few tenths of a second, not measured on one).
pub const ROUNDS: u32 = 20_000;

/// The HMAC key stretched from the shared secret with one salt. Its Debug output never shows
/// the key.
#[derive(Clone)]
pub struct Key {
    mac: hmac::Key,
    salt: [u8; SALT_LEN],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Stretch `secret` with `salt` ([`ROUNDS`] of PBKDF2; the label keeps the result apart
    /// from any other use of the same secret).
    pub fn derive(secret: &[u8], salt: [u8; SALT_LEN]) -> Self {
        let mut full = [0; KEY_LABEL.len() + SALT_LEN];
        full[..KEY_LABEL.len()].copy_from_slice(KEY_LABEL);
        full[KEY_LABEL.len()..].copy_from_slice(&salt);
        let mut out = [0; MAC_LEN];
        let rounds = NonZeroU32::new(ROUNDS).unwrap_or(NonZeroU32::MIN);
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, rounds, &full, secret, &mut out);
        Key {
            mac: hmac::Key::new(hmac::HMAC_SHA256, &out),
            salt,
        }
    }

    /// A server's key: `secret` stretched with a fresh random salt, which its challenges name.
    pub fn fresh(secret: &[u8]) -> Self {
        Key::derive(secret, random())
    }

    /// The salt this key was stretched with.
    pub fn salt(&self) -> [u8; SALT_LEN] {
        self.salt
    }
}

/// The shared secret on the dialing side. A server names its salt in every challenge; the key
/// for it is stretched on first use and kept until another salt comes (a restarted server), so
/// pool connections do not pay the stretching. Its Debug output never shows the secret.
pub struct Secret {
    bytes: Box<[u8]>,
    last: Mutex<Option<Key>>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Keep the shared secret's bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Secret {
            bytes: bytes.into(),
            last: Mutex::new(None),
        }
    }

    /// The key for `salt`: the one kept if it has that salt, else stretched now and kept.
    pub fn key(&self, salt: [u8; SALT_LEN]) -> Key {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some(k) if k.salt == salt => k.clone(),
            _ => {
                let k = Key::derive(&self.bytes, salt);
                *last = Some(k.clone());
                k
            }
        }
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
    /// The salt the server's key was stretched with.
    pub salt: [u8; SALT_LEN],
    /// The server's TLS mode digit.
    pub tls: u8,
    /// The server certificate's SHA-256, if any.
    pub fp: Option<[u8; MAC_LEN]>,
}

impl Transcript<'_> {
    fn sign(&self, key: &Key, label: &[u8], sid: Option<&[u8; SID_LEN]>) -> hmac::Context {
        let mut ctx = hmac::Context::with_key(&key.mac);
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(self.kind.as_bytes());
        ctx.update(&[0]);
        ctx.update(&self.cnonce);
        ctx.update(&self.snonce);
        ctx.update(&self.salt);
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
            salt: SALT,
            tls: 0,
            fp: None,
        }
    }

    const SALT: [u8; SALT_LEN] = [4; SALT_LEN];

    #[test]
    fn proofs_verify_with_the_right_key_only() {
        let k = Key::derive(b"s3cret", SALT);
        let wrong = Key::derive(b"s3creT", SALT);
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
        let k = Key::derive(b"k", SALT);
        assert_ne!(t().server_proof(&k), t().client_proof(&k, None));
    }

    #[test]
    fn every_field_is_covered() {
        let k = Key::derive(b"k", SALT);
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
            Transcript {
                salt: [5; SALT_LEN],
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

    /// The key depends on the secret and on the salt, and is PBKDF2-HMAC-SHA256 of them as
    /// docs/PROTOCOL.md states it (checked against the RFC 2898 construction written out).
    #[test]
    fn the_key_is_stretched_with_the_salt() {
        let proof = |k: &Key| t().server_proof(k);
        let k = Key::derive(b"k", SALT);
        assert_ne!(proof(&k), proof(&Key::derive(b"k", [5; SALT_LEN])));
        assert_ne!(proof(&k), proof(&Key::derive(b"K", SALT)));
        assert_eq!(k.salt(), SALT);

        // One block of PBKDF2 by hand: U1 = HMAC(P, S || 1), Ui = HMAC(P, Ui-1), T = xor of all.
        let p = hmac::Key::new(hmac::HMAC_SHA256, b"k");
        let mut u = hmac::sign(&p, &[KEY_LABEL, &SALT[..], &[0, 0, 0, 1]].concat());
        let mut t_block = [0u8; MAC_LEN];
        for _ in 0..ROUNDS {
            for (a, b) in t_block.iter_mut().zip(u.as_ref()) {
                *a ^= b;
            }
            u = hmac::sign(&p, u.as_ref());
        }
        let by_hand = Key {
            mac: hmac::Key::new(hmac::HMAC_SHA256, &t_block),
            salt: SALT,
        };
        assert_eq!(proof(&k), proof(&by_hand));
    }

    #[test]
    fn a_secret_keeps_the_key_of_the_last_salt() {
        let s = Secret::new(b"k");
        let proof = |k: &Key| t().server_proof(k);
        let a = s.key(SALT);
        assert_eq!(proof(&a), proof(&Key::derive(b"k", SALT)));
        assert_eq!(format!("{s:?} {a:?}"), "Secret(..) Key(..)");
        let b = s.key([5; SALT_LEN]);
        assert_eq!(proof(&b), proof(&Key::derive(b"k", [5; SALT_LEN])));
        assert_eq!(s.key([5; SALT_LEN]).salt(), [5; SALT_LEN]);
    }

    #[test]
    fn random_is_random() {
        assert_ne!(random::<16>(), random::<16>());
    }
}
