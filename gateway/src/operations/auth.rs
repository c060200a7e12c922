//! API keys by role.
//!
//! Keys are configured as SHA-256 hashes (`sha256:<hex>`), so the
//! configuration file holds nothing a thief could replay. A presented key is
//! hashed and compared in constant time with the configured hashes; the
//! table is indexed by the first eight bytes of the hash only to find the
//! candidate, and a hash prefix says nothing useful about the key.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Metro and rail turnstile controllers, checkpoint gates.
    Turnstile,
    /// Checkpoint inspector apps: scans with temperatures, status lookups.
    Inspector,
    /// The health authority's platform: updates, revocations, tracing.
    Authority,
    /// Operators: reloads.
    Operator,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Turnstile, Role::Inspector, Role::Authority, Role::Operator];
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Turnstile => "turnstile",
            Role::Inspector => "inspector",
            Role::Authority => "authority",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (expected turnstile, inspector, authority or operator)"))
    }
}

#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_prefix: HashMap<[u8; 8], Vec<([u8; 32], Role)>>,
}

/// `sha256:<hex>` of a key, the form the configuration holds.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A fresh random API key (32 bytes, hex).
pub fn generate_key() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

impl ApiKeys {
    pub fn add_hash(&mut self, role: Role, hashed: &str) -> Result<(), String> {
        let hex = hashed.strip_prefix("sha256:").ok_or("key hashes are written sha256:<64 hex digits>")?;
        let mut h = [0u8; 32];
        hex::decode_to_slice(hex, &mut h).map_err(|_| "key hashes are written sha256:<64 hex digits>")?;
        let slot = self.by_prefix.entry(h[..8].try_into().expect("8 bytes")).or_default();
        if slot.iter().any(|(x, _)| *x == h) {
            return Err("the same key is configured twice".into());
        }
        slot.push((h, role));
        Ok(())
    }

    pub fn add_key(&mut self, role: Role, key: &str) {
        self.add_hash(role, &hash_key(key)).expect("hash_key makes a valid hash");
    }

    /// The role of a presented key, if any.
    pub fn role_of(&self, key: &[u8]) -> Option<Role> {
        let h: [u8; 32] = Sha256::digest(key).into();
        let candidates = self.by_prefix.get(&h[..8])?;
        let mut found = None;
        for (x, role) in candidates {
            if bool::from(x.ct_eq(&h)) {
                found = Some(*role);
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_resolve_to_roles() {
        let mut k = ApiKeys::default();
        k.add_key(Role::Turnstile, "gate-1");
        k.add_key(Role::Authority, "moh");
        assert_eq!(k.role_of(b"gate-1"), Some(Role::Turnstile));
        assert_eq!(k.role_of(b"moh"), Some(Role::Authority));
        assert_eq!(k.role_of(b"gate-2"), None);
        assert!(k.add_hash(Role::Operator, &hash_key("moh")).is_err());
        assert!(k.add_hash(Role::Operator, "md5:abc").is_err());
    }
}
