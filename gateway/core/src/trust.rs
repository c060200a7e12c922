//! The trust list: which issuers' codes are accepted, under which keys.
//!
//! Several issuers (a province, the national platform), each with one or more
//! Ed25519 keys by key id, each key with a validity window. Rotation: a new
//! key is added beside the old one; the old one keeps verifying the codes it
//! signed until its window ends, then it is `unknown_issuer`. Which issuers a
//! region accepts (mutual recognition) is region policy, in the gateway
//! configuration; here an issuer is just an index into a bit mask.
//!
//! Parsed from TOML text and validated as a whole; the result is immutable
//! and lives inside the gateway's live configuration. Reading the file, and
//! the `.pub` files it may name, is the caller's business: this module does
//! no I/O.

use crate::clock::{serde_rfc3339, UnixSecs};
use crate::signature::StrictKey;
use crate::token::KeyId;
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// At most this many issuers, so that a region's accepted set is one `u64`.
pub const MAX_ISSUERS: usize = 64;

#[derive(Debug, Error)]
pub enum TrustError {
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    #[error("trust list: {0}")]
    Invalid(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    #[serde(default)]
    issuers: Vec<RawIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    id: String,
    #[serde(default)]
    name: String,
    keys: Vec<RawKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    kid: String,
    public_key: Option<String>,
    public_key_file: Option<PathBuf>,
    #[serde(with = "serde_rfc3339")]
    not_before: UnixSecs,
    #[serde(with = "serde_rfc3339")]
    not_after: UnixSecs,
}

#[derive(Debug, Clone)]
pub struct Issuer {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub kid: KeyId,
    /// Index into [`TrustList::issuers`]; bit `issuer` of a region's mask.
    pub issuer: usize,
    /// Checked at load: canonical, of prime order (see [`StrictKey`]).
    pub key: StrictKey,
    pub not_before: UnixSecs,
    pub not_after: UnixSecs,
}

#[derive(Debug, Clone)]
pub struct TrustList {
    issuers: Vec<Issuer>,
    /// A handful of keys: a linear scan over four-byte ids beats hashing.
    keys: Vec<TrustedKey>,
}

impl TrustList {
    /// A list with one issuer and one key (tests and the demo use it).
    pub fn single(issuer: &str, kid: KeyId, key: StrictKey, not_before: UnixSecs, not_after: UnixSecs) -> Self {
        TrustList {
            issuers: vec![Issuer { id: issuer.to_owned(), name: issuer.to_owned() }],
            keys: vec![TrustedKey { kid, issuer: 0, key, not_before, not_after }],
        }
    }

    /// Parses and validates. Inline keys are hex; a key given as
    /// `public_key_file` is handed to `resolve_file` (the caller reads the
    /// file and checks that it is for this key id).
    pub fn parse(
        text: &str,
        resolve_file: impl Fn(KeyId, &Path) -> Result<VerifyingKey, String>,
    ) -> Result<Self, TrustError> {
        let raw: RawTrust = toml::from_str(text)?;
        let bad = |m: String| TrustError::Invalid(m);
        if raw.issuers.is_empty() {
            return Err(bad("no [[issuers]]: nothing would be accepted".into()));
        }
        if raw.issuers.len() > MAX_ISSUERS {
            return Err(bad(format!("{} issuers, at most {MAX_ISSUERS}", raw.issuers.len())));
        }
        let mut issuers = Vec::new();
        let mut keys: Vec<TrustedKey> = Vec::new();
        for (idx, ri) in raw.issuers.into_iter().enumerate() {
            if ri.id.is_empty() || issuers.iter().any(|i: &Issuer| i.id == ri.id) {
                return Err(bad(format!("issuers[{idx}].id {:?} is empty or repeated", ri.id)));
            }
            if ri.keys.is_empty() {
                return Err(bad(format!("issuer {:?} has no keys", ri.id)));
            }
            for rk in ri.keys {
                let at = format!("issuer {:?} key {:?}", ri.id, rk.kid);
                let kid: KeyId = rk.kid.parse().map_err(|e| bad(format!("{at}: {e}")))?;
                if keys.iter().any(|k| k.kid == kid) {
                    return Err(bad(format!("{at}: key id used twice (key ids are unique across issuers)")));
                }
                let key = match (rk.public_key.as_deref(), rk.public_key_file.as_deref()) {
                    (Some(hex), None) => crate::keyfile::parse_public_hex(hex),
                    (None, Some(file)) => resolve_file(kid, file),
                    _ => Err("give exactly one of public_key and public_key_file".into()),
                }
                .map_err(|e| bad(format!("{at}: {e}")))?;
                let key = StrictKey::try_from(key).map_err(|e| bad(format!("{at}: public key {e}")))?;
                if rk.not_before >= rk.not_after {
                    return Err(bad(format!("{at}: not_before must be before not_after")));
                }
                keys.push(TrustedKey { kid, issuer: idx, key, not_before: rk.not_before, not_after: rk.not_after });
            }
            issuers.push(Issuer { id: ri.id, name: ri.name });
        }
        Ok(TrustList { issuers, keys })
    }

    /// The key with this id if it is inside its validity window at `now`.
    pub fn key_at(&self, kid: KeyId, now: UnixSecs) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| k.kid == kid && k.not_before <= now && now <= k.not_after)
    }

    pub fn issuers(&self) -> &[Issuer] {
        &self.issuers
    }

    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    pub fn issuer_index(&self, id: &str) -> Option<usize> {
        self.issuers.iter().position(|i| i.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn pk(seed: u8) -> String {
        hex::encode(SigningKey::from_bytes(&[seed; 32]).verifying_key().to_bytes())
    }

    fn no_files(_: KeyId, _: &Path) -> Result<VerifyingKey, String> {
        Err("no files here".into())
    }

    fn two_issuers() -> String {
        format!(
            r#"
[[issuers]]
id = "hubei"
name = "Hubei"
[[issuers.keys]]
kid = "HB01"
public_key = "{}"
not_before = "2020-01-01T00:00:00Z"
not_after = "2020-06-30T23:59:59Z"
[[issuers.keys]]
kid = "HB02"
public_key = "{}"
not_before = "2020-06-01T00:00:00Z"
not_after = "2030-01-01T00:00:00Z"

[[issuers]]
id = "national"
[[issuers.keys]]
kid = "NHC1"
public_key = "{}"
not_before = "2020-01-01T00:00:00Z"
not_after = "2030-01-01T00:00:00Z"
"#,
            pk(1),
            pk(2),
            pk(3)
        )
    }

    #[test]
    fn rotation_windows() {
        let t = TrustList::parse(&two_issuers(), no_files).unwrap();
        let june = crate::clock::parse_rfc3339("2020-06-15T00:00:00Z").unwrap();
        let july = crate::clock::parse_rfc3339("2020-07-01T00:00:00Z").unwrap();
        // During the overlap both keys verify.
        assert!(t.key_at("HB01".parse().unwrap(), june).is_some());
        assert!(t.key_at("HB02".parse().unwrap(), june).is_some());
        // After the old window ends the old key is gone.
        assert!(t.key_at("HB01".parse().unwrap(), july).is_none());
        assert_eq!(t.key_at("NHC1".parse().unwrap(), july).unwrap().issuer, 1);
        assert!(t.key_at("XX".parse().unwrap(), july).is_none());
    }

    #[test]
    fn validation_errors_are_clear() {
        let dup = two_issuers().replace("NHC1", "HB02");
        assert!(TrustList::parse(&dup, no_files).unwrap_err().to_string().contains("used twice"));
        let bad_hex = two_issuers().replace(&pk(3), "abcd");
        assert!(TrustList::parse(&bad_hex, no_files).unwrap_err().to_string().contains("64 hex"));
        let window = two_issuers().replace("2030-01-01T00:00:00Z", "2019-01-01T00:00:00Z");
        assert!(TrustList::parse(&window, no_files).unwrap_err().to_string().contains("not_before"));
        let unknown = two_issuers().replace("name = \"Hubei\"", "nme = \"Hubei\"");
        assert!(TrustList::parse(&unknown, no_files).unwrap_err().to_string().contains("nme"));
        assert!(TrustList::parse("", no_files).unwrap_err().to_string().contains("no [[issuers]]"));
    }
}
