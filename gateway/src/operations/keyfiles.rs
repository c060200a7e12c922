//! Key files on disk: `PREFIX.key` holds the secret (mode 0600, created
//! fresh, never overwritten) and `PREFIX.pub` the public half, in the format
//! of `healthgate_core::keyfile` (docs/KEYS.md).

use ed25519_dalek::{SigningKey, VerifyingKey};
use healthgate_core::keyfile;
use healthgate_core::token::KeyId;
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Format { path: PathBuf, source: keyfile::KeyFileError },
}

pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// Writes `PREFIX.key` (0600, created fresh: never overwrites) and `PREFIX.pub`.
pub fn write_keypair(prefix: &Path, kid: KeyId, key: &SigningKey) -> Result<(PathBuf, PathBuf), KeyFileError> {
    let secret_path = with_ext(prefix, "key");
    let public_path = with_ext(prefix, "pub");
    write_new(&secret_path, &keyfile::encode_secret(kid, key), 0o600)?;
    write_new(&public_path, &keyfile::encode_public(kid, &key.verifying_key()), 0o644)?;
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
    f.sync_all().map_err(io)
}

fn read<T>(path: &Path, parse: impl FnOnce(&[u8]) -> Result<T, keyfile::KeyFileError>) -> Result<T, KeyFileError> {
    let bytes = std::fs::read(path).map_err(|source| KeyFileError::Io { path: path.to_owned(), source })?;
    parse(&bytes).map_err(|source| KeyFileError::Format { path: path.to_owned(), source })
}

pub fn read_secret(path: &Path) -> Result<(KeyId, SigningKey), KeyFileError> {
    read(path, keyfile::parse_secret)
}

pub fn read_public(path: &Path) -> Result<(KeyId, VerifyingKey), KeyFileError> {
    read(path, keyfile::parse_public)
}

/// A public key given in configuration as exactly one of inline hex or a
/// `.pub` file (relative to `base`), which must be for `kid`. Used by the
/// trust list (issuer keys) and the configuration (authority keys).
pub fn resolve_public(kid: KeyId, hex: Option<&str>, file: Option<&Path>, base: &Path) -> Result<VerifyingKey, String> {
    match (hex, file) {
        (Some(hex), None) => keyfile::parse_public_hex(hex),
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
}
