//! Password hashes as RabbitMQ stores them (`rabbit_password_hashing_*`): a 4-byte random
//! salt, `hash(salt ++ password)`, and `base64(salt ++ digest)`. A hash exported from
//! RabbitMQ verifies here with the same password.

use base64::Engine;
use md5::Md5;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// RabbitMQ's default algorithm (3.6 and later).
pub const SHA256: &str = "rabbit_password_hashing_sha256";
/// Accepted on import.
pub const SHA512: &str = "rabbit_password_hashing_sha512";
/// Accepted on import (RabbitMQ before 3.6).
pub const MD5: &str = "rabbit_password_hashing_md5";

/// Whether Warren knows `algorithm`.
pub fn known_algorithm(algorithm: &str) -> bool {
    matches!(algorithm, SHA256 | SHA512 | MD5)
}

fn digest(algorithm: &str, salt: &[u8], password: &[u8]) -> Option<Vec<u8>> {
    let mut input = Vec::with_capacity(salt.len() + password.len());
    input.extend_from_slice(salt);
    input.extend_from_slice(password);
    Some(match algorithm {
        SHA256 => Sha256::digest(&input).to_vec(),
        SHA512 => Sha512::digest(&input).to_vec(),
        MD5 => Md5::digest(&input).to_vec(),
        _ => return None,
    })
}

/// A new SHA-256 hash of `password` with a random salt.
pub fn hash(password: &str) -> String {
    let salt: [u8; 4] = rand::random();
    hash_with_salt(SHA256, salt, password)
}

fn hash_with_salt(algorithm: &str, salt: [u8; 4], password: &str) -> String {
    let mut out = salt.to_vec();
    out.extend(digest(algorithm, &salt, password.as_bytes()).unwrap_or_default());
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Whether `password` matches `stored` (constant time in the digest).
pub fn verify(algorithm: &str, stored: &str, password: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(stored) else {
        return false;
    };
    if raw.len() < 5 {
        return false;
    }
    let (salt, expected) = raw.split_at(4);
    let Some(got) = digest(algorithm, salt, password.as_bytes()) else {
        return false;
    };
    got.len() == expected.len() && bool::from(got.ct_eq(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_hash_verifies_and_a_wrong_password_does_not() {
        let h = hash("s3cret");
        assert!(verify(SHA256, &h, "s3cret"));
        assert!(!verify(SHA256, &h, "s3cre"));
        assert_ne!(hash("s3cret"), h, "salted");
    }

    #[test]
    fn rabbitmq_hashes_verify() {
        // `rabbitmqctl hash_password guest`-style values, computed with RabbitMQ's scheme
        // (salt 0x908dc60a): one per algorithm.
        for alg in [SHA256, SHA512, MD5] {
            let h = hash_with_salt(alg, [0x90, 0x8d, 0xc6, 0x0a], "guest");
            assert!(verify(alg, &h, "guest"), "{alg}");
            assert!(!verify(alg, &h, "Guest"), "{alg}");
        }
    }

    #[test]
    fn garbage_hashes_never_verify() {
        for h in ["", "!!!", "AAAA", "AAAAAA=="] {
            assert!(!verify(SHA256, h, ""));
        }
        assert!(!verify("rabbit_password_hashing_rot13", &hash("a"), "a"));
    }
}
