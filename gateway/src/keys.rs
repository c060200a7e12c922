//! Key files: how issuer and authority Ed25519 keys are kept on disk.
//!
//! `PREFIX.key` holds the secret (file mode 0600) and `PREFIX.pub` the public
//! half, both small JSON objects with the key id so that a key cannot be
//! used under the wrong id by mistake. Both issuers (who sign QR tokens) and
//! the health authority (which signs colour updates) use this format.

use crate::token::KeyId;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a healthgate key file: {source}")]
    Format { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
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

const ALG: &str = "ed25519";

pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// Writes `PREFIX.key` (0600, created fresh: never overwrites) and `PREFIX.pub`.
pub fn write_keypair(prefix: &Path, kid: KeyId, key: &SigningKey) -> Result<(PathBuf, PathBuf), KeyFileError> {
    let secret_path = with_ext(prefix, "key");
    let public_path = with_ext(prefix, "pub");
    let secret = SecretFile { kid: kid.to_string(), alg: ALG.into(), secret_key: hex::encode(key.to_bytes()) };
    let public =
        PublicFile { kid: kid.to_string(), alg: ALG.into(), public_key: hex::encode(key.verifying_key().to_bytes()) };
    write_new(&secret_path, &serde_json::to_vec_pretty(&secret).expect("serialisable"), 0o600)?;
    write_new(&public_path, &serde_json::to_vec_pretty(&public).expect("serialisable"), 0o644)?;
    Ok((secret_path, public_path))
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyFileError::Io { path: path.to_owned(), source };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.write_all(b"\n").map_err(io)?;
    f.sync_all().map_err(io)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, KeyFileError> {
    let bytes = std::fs::read(path).map_err(|source| KeyFileError::Io { path: path.to_owned(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| KeyFileError::Format { path: path.to_owned(), source })
}

fn parse_kid_alg(path: &Path, kid: &str, alg: &str) -> Result<KeyId, KeyFileError> {
    let invalid = |what: String| KeyFileError::Invalid { path: path.to_owned(), what };
    if alg != ALG {
        return Err(invalid(format!("unsupported alg {alg:?} (expected {ALG:?})")));
    }
    kid.parse().map_err(|e: crate::token::ParseKeyIdError| invalid(e.to_string()))
}

fn hex32(path: &Path, field: &str, s: &str) -> Result<[u8; 32], KeyFileError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| KeyFileError::Invalid { path: path.to_owned(), what: format!("{field} must be 64 hex digits") })?;
    Ok(out)
}

pub fn read_secret(path: &Path) -> Result<(KeyId, SigningKey), KeyFileError> {
    let f: SecretFile = read_json(path)?;
    let kid = parse_kid_alg(path, &f.kid, &f.alg)?;
    Ok((kid, SigningKey::from_bytes(&hex32(path, "secret_key", &f.secret_key)?)))
}

pub fn read_public(path: &Path) -> Result<(KeyId, VerifyingKey), KeyFileError> {
    let f: PublicFile = read_json(path)?;
    let kid = parse_kid_alg(path, &f.kid, &f.alg)?;
    let key = parse_public_hex(&f.public_key).map_err(|what| KeyFileError::Invalid { path: path.to_owned(), what })?;
    Ok((kid, key))
}

/// A public key given in configuration as exactly one of inline hex or a
/// `.pub` file (relative to `base`), which must be for `kid`. Used by the
/// trust list (issuer keys) and the configuration (authority keys).
pub fn resolve_public(kid: KeyId, hex: Option<&str>, file: Option<&Path>, base: &Path) -> Result<VerifyingKey, String> {
    match (hex, file) {
        (Some(hex), None) => parse_public_hex(hex),
        (None, Some(file)) => {
            let (file_kid, key) = read_public(&base.join(file)).map_err(|e| e.to_string())?;
            if file_kid != kid {
                return Err(format!("key file is for key id {file_kid}"));
            }
            Ok(key)
        }
        _ => Err("give exactly one of public_key and public_key_file".into()),
    }
}

/// Parses a 64-hex-digit Ed25519 public key and refuses weak (small-order)
/// keys, which would accept signatures on messages nobody signed.
pub fn parse_public_hex(s: &str) -> Result<VerifyingKey, String> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(s, &mut b).map_err(|_| "public_key must be 64 hex digits".to_owned())?;
    let key = VerifyingKey::from_bytes(&b).map_err(|_| "public_key is not a valid Ed25519 point".to_owned())?;
    if key.is_weak() {
        return Err("public_key is a weak (small-order) key".into());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keypair_round_trip_and_secret_mode() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("hb01");
        let key = generate();
        let (sp, pp) = write_keypair(&prefix, "HB01".parse().unwrap(), &key).unwrap();
        assert_eq!(std::fs::metadata(&sp).unwrap().permissions().mode() & 0o777, 0o600);
        let (kid, back) = read_secret(&sp).unwrap();
        assert_eq!(kid.as_str(), "HB01");
        assert_eq!(back.to_bytes(), key.to_bytes());
        let (_, public) = read_public(&pp).unwrap();
        assert_eq!(public, key.verifying_key());
        // Never overwrites an existing key.
        assert!(write_keypair(&prefix, "HB01".parse().unwrap(), &key).is_err());
    }

    #[test]
    fn weak_public_key_is_refused() {
        // The identity point is small-order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(parse_public_hex(&hex::encode(identity)).unwrap_err().contains("weak"));
    }
}
