//! The key-file format (docs/KEYS.md), as bytes in and out.
//!
//! A secret key file is a JSON object `{"kid", "alg": "ed25519",
//! "secret_key"}`, the secret being the 32-byte RFC 8032 seed in hex; a
//! public key file is `{"kid", "alg": "ed25519", "public_key"}`. Unknown
//! fields are refused, so a typo never goes unnoticed. Issuers (who sign QR
//! tokens) and the health authority (which signs colour updates) use the
//! same format. Reading and writing the files (mode 0600 for secrets) is the
//! server's business; this module only encodes and parses.

use crate::signature::StrictKey;
use crate::token::{KeyId, ParseKeyIdError};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The only algorithm of format v1.
pub const ALG: &str = "ed25519";

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("not a healthgate key file: {0}")]
    Format(#[from] serde_json::Error),
    #[error("unsupported alg {0:?} (expected \"ed25519\")")]
    Alg(String),
    #[error("{0}")]
    KeyId(#[from] ParseKeyIdError),
    #[error("{0}")]
    Key(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFile {
    kid: String,
    alg: String,
    secret_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicFile {
    kid: String,
    alg: String,
    public_key: String,
}

/// The secret key file's bytes (pretty JSON with a final newline).
pub fn encode_secret(kid: KeyId, key: &SigningKey) -> Vec<u8> {
    let f = SecretFile { kid: kid.to_string(), alg: ALG.into(), secret_key: hex::encode(key.to_bytes()) };
    pretty(&f)
}

/// The public key file's bytes for the public half of `key`.
pub fn encode_public(kid: KeyId, key: &VerifyingKey) -> Vec<u8> {
    let f = PublicFile { kid: kid.to_string(), alg: ALG.into(), public_key: hex::encode(key.to_bytes()) };
    pretty(&f)
}

fn pretty<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain structs of strings always serialise.
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

fn kid_alg(kid: &str, alg: &str) -> Result<KeyId, KeyFileError> {
    if alg != ALG {
        return Err(KeyFileError::Alg(alg.to_owned()));
    }
    Ok(kid.parse()?)
}

pub fn parse_secret(bytes: &[u8]) -> Result<(KeyId, SigningKey), KeyFileError> {
    let f: SecretFile = serde_json::from_slice(bytes)?;
    let kid = kid_alg(&f.kid, &f.alg)?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(&f.secret_key, &mut seed)
        .map_err(|_| KeyFileError::Key("secret_key must be 64 hex digits".into()))?;
    Ok((kid, SigningKey::from_bytes(&seed)))
}

pub fn parse_public(bytes: &[u8]) -> Result<(KeyId, VerifyingKey), KeyFileError> {
    let f: PublicFile = serde_json::from_slice(bytes)?;
    let kid = kid_alg(&f.kid, &f.alg)?;
    Ok((kid, parse_public_hex(&f.public_key).map_err(KeyFileError::Key)?))
}

/// Parses a 64-hex-digit Ed25519 public key and refuses what
/// [`StrictKey`] refuses: weak (small-order) keys, which would accept
/// signatures on messages nobody signed, non-canonical encodings and keys
/// with a small-order component, which no honest key generation makes and
/// on which one-by-one and batch verification could disagree.
pub fn parse_public_hex(s: &str) -> Result<VerifyingKey, String> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(s, &mut b).map_err(|_| "public_key must be 64 hex digits".to_owned())?;
    let key = StrictKey::from_bytes(&b).map_err(|e| format!("public_key {e}"))?;
    Ok(*key.verifying_key())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let kid: KeyId = "HB01".parse().unwrap();
        let (k, back) = parse_secret(&encode_secret(kid, &key)).unwrap();
        assert_eq!((k, back.to_bytes()), (kid, key.to_bytes()));
        let (k, public) = parse_public(&encode_public(kid, &key.verifying_key())).unwrap();
        assert_eq!((k, public), (kid, key.verifying_key()));
    }

    #[test]
    fn the_documented_example_parses() {
        // docs/KEYS.md: the RFC 8032 test 1 seed under kid HB01.
        let text = r#"{"kid": "HB01", "alg": "ed25519",
            "secret_key": "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"}"#;
        let (_, key) = parse_secret(text.as_bytes()).unwrap();
        assert_eq!(
            hex::encode(key.verifying_key().to_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }

    #[test]
    fn unknown_fields_wrong_alg_and_weak_keys_are_refused() {
        let extra = r#"{"kid": "HB01", "alg": "ed25519", "public_key": "00", "comment": "x"}"#;
        assert!(parse_public(extra.as_bytes()).unwrap_err().to_string().contains("comment"));
        let alg = r#"{"kid": "HB01", "alg": "rsa", "public_key": "00"}"#;
        assert!(matches!(parse_public(alg.as_bytes()), Err(KeyFileError::Alg(_))));
        // The identity point is small-order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(parse_public_hex(&hex::encode(identity)).unwrap_err().contains("weak"));
    }
}
