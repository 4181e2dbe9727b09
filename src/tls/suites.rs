//! The order of the TLS 1.3 cipher suites we offer: the fastest on this CPU first.
//!
//! A rustls server takes the first suite of the client's list that it also has, so the side
//! that dials (usually the router) decides for both. With AES and carry-less multiply
//! instructions (x86 AES-NI with PCLMULQDQ, ARMv8 AES with PMULL) AES-GCM is the fast one;
//! without them (MIPS) ring's AES is constant-time software, several times slower than
//! ChaCha20-Poly1305, which needs only adds, rotates and xors. ring uses no AES instructions
//! in 32-bit ARM builds, even on an ARMv8 CPU that has them, so those builds get ChaCha20
//! first too (with NEON where the CPU has it). Every side still accepts all three suites, so
//! any two edgepass builds agree on one.

use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::{CipherSuite, SupportedCipherSuite};

/// The suites in order of preference for a CPU with (`aes`) or without AES instructions.
pub fn order(aes: bool) -> Vec<SupportedCipherSuite> {
    if aes {
        vec![
            TLS13_AES_256_GCM_SHA384,
            TLS13_AES_128_GCM_SHA256,
            TLS13_CHACHA20_POLY1305_SHA256,
        ]
    } else {
        vec![
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_AES_128_GCM_SHA256,
        ]
    }
}

/// A short name of one of our suites, for log lines. (rustls' own `CipherSuite::as_str` knows
/// every registered suite: 16 KB of names in a router build.)
pub fn name(suite: SupportedCipherSuite) -> &'static str {
    match suite.suite() {
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "AES-256-GCM",
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "AES-128-GCM",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "ChaCha20-Poly1305",
        _ => "another cipher suite",
    }
}

/// Whether this CPU has the instructions AES-GCM needs to be fast.
pub fn aes_hardware() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(aes: bool) -> Vec<&'static str> {
        order(aes).into_iter().map(name).collect()
    }

    #[test]
    fn without_aes_instructions_chacha20_comes_first() {
        assert_eq!(
            names(false),
            ["ChaCha20-Poly1305", "AES-256-GCM", "AES-128-GCM"]
        );
    }

    #[test]
    fn with_aes_instructions_aes_gcm_comes_first_and_all_three_stay() {
        let n = names(true);
        assert_eq!(n[0], "AES-256-GCM");
        let mut sorted = n.clone();
        sorted.sort();
        let mut other = names(false);
        other.sort();
        assert_eq!(sorted, other);
    }
}
