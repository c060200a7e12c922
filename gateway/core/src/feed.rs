//! The authority's feed: signed batches of colour changes and revocations.
//!
//! The wire format is JSON (docs/FEED.md); what is signed is not the JSON
//! text but a canonical binary encoding of the parsed batch, so that any
//! client that builds the same fields computes the same signing input,
//! whatever its JSON serialiser does with spaces and key order. Everything
//! here is pure: parse, encode, sign, verify. Applying a batch (sequence
//! check, store update) is the server's job (`healthgate::gateway::authority`).

use crate::clock::UnixSecs;
use crate::color::Color;
use crate::holder::HolderId;
use crate::state::{validate_steps, ColorChange, Step, StepsError};
use crate::token::KeyId;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Domain separation for feed signatures (tokens use their own context).
pub const SIGNING_CONTEXT: &[u8] = b"healthgate/feed/v1\0";
/// Most entries in one batch.
pub const MAX_BATCH: usize = 100_000;

const KIND_UPDATES: u8 = 1;
const KIND_REVOCATIONS: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub holder: HolderId,
    pub color: Color,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

/// `POST /v1/admin/updates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBatch {
    pub seq: u64,
    pub kid: String,
    pub changes: Vec<Change>,
    /// Ed25519 signature over [`UpdateBatch::signing_input`], 128 hex digits.
    #[serde(default)]
    pub signature: String,
}

/// What a revocation names: a holder (all their codes) or one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Holder(HolderId),
    Serial(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    #[serde(flatten)]
    pub target: Target,
    /// After this time the entry is dropped; absent means never.
    #[serde(default, with = "opt_rfc3339", skip_serializing_if = "Option::is_none")]
    pub expires: Option<UnixSecs>,
}

/// `POST /v1/admin/revocations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationBatch {
    pub seq: u64,
    pub kid: String,
    pub revocations: Vec<Revocation>,
    #[serde(default)]
    pub signature: String,
}

mod opt_rfc3339 {
    use crate::clock::{format_rfc3339, parse_rfc3339, UnixSecs};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<UnixSecs>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format_rfc3339(*t)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<UnixSecs>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| parse_rfc3339(&s).map_err(serde::de::Error::custom)).transpose()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FeedError {
    /// 400: the batch cannot be applied as it stands.
    #[error("{0}")]
    Malformed(String),
    /// 401: not signed by an authority key this gateway trusts.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// 409: a sequence number at or below the last applied one.
    #[error("sequence {got} is not after the last applied sequence {last}")]
    Replay { got: u64, last: u64 },
    /// 503: the change could not be made durable; nothing was applied.
    #[error("{0}")]
    Unavailable(String),
}

fn header(kind: u8, seq: u64, kid: KeyId, count: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + count * 20);
    m.extend_from_slice(SIGNING_CONTEXT);
    m.push(kind);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(kid.as_bytes());
    m.extend_from_slice(&(count as u32).to_be_bytes());
    m
}

fn parse_kid(kid: &str) -> Result<KeyId, FeedError> {
    kid.parse().map_err(|_| FeedError::Unauthenticated("kid is not a valid key id"))
}

fn check_len(n: usize) -> Result<(), FeedError> {
    if n == 0 {
        return Err(FeedError::Malformed("empty batch".into()));
    }
    if n > MAX_BATCH {
        return Err(FeedError::Malformed(format!("{n} entries; at most {MAX_BATCH} a batch")));
    }
    Ok(())
}

/// Checks a hex signature over `msg` with the key named `kid`.
fn verify(keys: &[(KeyId, VerifyingKey)], kid: KeyId, msg: &[u8], signature: &str) -> Result<(), FeedError> {
    if signature.is_empty() {
        return Err(FeedError::Unauthenticated("batch is not signed"));
    }
    let key = keys
        .iter()
        .find(|(k, _)| *k == kid)
        .map(|(_, v)| v)
        .ok_or(FeedError::Unauthenticated("unknown authority key"))?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(signature, &mut sig)
        .map_err(|_| FeedError::Unauthenticated("signature must be 128 hex digits"))?;
    key.verify_strict(msg, &Signature::from_bytes(&sig))
        .map_err(|_| FeedError::Unauthenticated("signature does not verify"))
}

impl UpdateBatch {
    /// The canonical bytes the authority signs (docs/FEED.md).
    pub fn signing_input(&self) -> Result<Vec<u8>, FeedError> {
        let mut m = header(KIND_UPDATES, self.seq, parse_kid(&self.kid)?, self.changes.len());
        for c in &self.changes {
            m.extend_from_slice(&c.holder.0);
            m.push(c.color as u8);
            m.push(u8::try_from(c.steps.len()).map_err(|_| FeedError::Malformed("too many steps".into()))?);
            for s in &c.steps {
                m.extend_from_slice(&s.until.to_be_bytes());
                m.push(s.then as u8);
            }
        }
        Ok(m)
    }

    pub fn sign(mut self, kid: KeyId, key: &SigningKey) -> Result<Self, FeedError> {
        self.kid = kid.to_string();
        self.signature = hex::encode(key.sign(&self.signing_input()?).to_bytes());
        Ok(self)
    }

    /// Verifies the signature, then the contents; returns the changes to apply.
    pub fn verify(&self, keys: &[(KeyId, VerifyingKey)]) -> Result<Vec<ColorChange>, FeedError> {
        check_len(self.changes.len())?;
        let kid = parse_kid(&self.kid)?;
        verify(keys, kid, &self.signing_input()?, &self.signature)?;
        self.changes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                validate_steps(&c.steps)
                    .map_err(|e: StepsError| FeedError::Malformed(format!("changes[{i}].steps: {e}")))?;
                if c.steps.iter().any(|s| u32::try_from(s.until).is_err()) {
                    return Err(FeedError::Malformed(format!("changes[{i}].steps: time after 2106")));
                }
                Ok(ColorChange { holder: c.holder, color: c.color, steps: c.steps.clone() })
            })
            .collect()
    }
}

impl RevocationBatch {
    pub fn signing_input(&self) -> Result<Vec<u8>, FeedError> {
        let mut m = header(KIND_REVOCATIONS, self.seq, parse_kid(&self.kid)?, self.revocations.len());
        for r in &self.revocations {
            match r.target {
                Target::Holder(h) => {
                    m.push(1);
                    m.extend_from_slice(&h.0);
                }
                Target::Serial(s) => {
                    m.push(2);
                    m.extend_from_slice(&s.to_be_bytes());
                }
            }
            m.extend_from_slice(&r.expires.unwrap_or(0).to_be_bytes());
        }
        Ok(m)
    }

    pub fn sign(mut self, kid: KeyId, key: &SigningKey) -> Result<Self, FeedError> {
        self.kid = kid.to_string();
        self.signature = hex::encode(key.sign(&self.signing_input()?).to_bytes());
        Ok(self)
    }

    pub fn verify(&self, keys: &[(KeyId, VerifyingKey)]) -> Result<(), FeedError> {
        check_len(self.revocations.len())?;
        let kid = parse_kid(&self.kid)?;
        verify(keys, kid, &self.signing_input()?, &self.signature)?;
        if self.revocations.iter().any(|r| r.expires == Some(0)) {
            return Err(FeedError::Malformed("expires must be after 1970".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (KeyId, SigningKey, Vec<(KeyId, VerifyingKey)>) {
        let k = SigningKey::from_bytes(&[9; 32]);
        let kid: KeyId = "AUTH".parse().unwrap();
        let keys = vec![(kid, k.verifying_key())];
        (kid, k, keys)
    }

    fn batch() -> UpdateBatch {
        UpdateBatch {
            seq: 7,
            kid: String::new(),
            changes: vec![Change {
                holder: HolderId([1; 16]),
                color: Color::Red,
                steps: vec![Step { until: 100, then: Color::Yellow }, Step { until: 200, then: Color::Green }],
            }],
            signature: String::new(),
        }
    }

    #[test]
    fn signed_batches_verify_and_any_change_breaks_them() {
        let (kid, k, keys) = key();
        let b = batch().sign(kid, &k).unwrap();
        assert_eq!(b.verify(&keys).unwrap().len(), 1);
        // The signature survives a JSON round trip with other formatting.
        let text = serde_json::to_string_pretty(&b).unwrap();
        assert!(serde_json::from_str::<UpdateBatch>(&text).unwrap().verify(&keys).is_ok());
        let mut tampered = b.clone();
        tampered.changes[0].color = Color::Green;
        assert!(matches!(tampered.verify(&keys), Err(FeedError::Unauthenticated(_))));
        let mut replayed_as_other_seq = b.clone();
        replayed_as_other_seq.seq = 8;
        assert!(replayed_as_other_seq.verify(&keys).is_err());
        let unsigned = UpdateBatch { signature: String::new(), ..b.clone() };
        assert_eq!(unsigned.verify(&keys), Err(FeedError::Unauthenticated("batch is not signed")));
        let forged = batch().sign(kid, &SigningKey::from_bytes(&[8; 32])).unwrap();
        assert!(matches!(forged.verify(&keys), Err(FeedError::Unauthenticated(_))));
    }

    #[test]
    fn an_update_signature_is_not_a_revocation_signature() {
        let (kid, k, keys) = key();
        let u = batch().sign(kid, &k).unwrap();
        let r = RevocationBatch {
            seq: u.seq,
            kid: u.kid.clone(),
            revocations: vec![Revocation { target: Target::Holder(HolderId([1; 16])), expires: None }],
            signature: u.signature.clone(),
        };
        assert!(r.verify(&keys).is_err());
    }

    #[test]
    fn contents_are_validated_after_the_signature() {
        let (kid, k, keys) = key();
        let mut b = batch();
        b.changes[0].steps.reverse();
        let b = b.sign(kid, &k).unwrap();
        assert!(matches!(b.verify(&keys), Err(FeedError::Malformed(m)) if m.contains("increase")));
        let empty = UpdateBatch { changes: vec![], ..batch() }.sign(kid, &k).unwrap();
        assert!(matches!(empty.verify(&keys), Err(FeedError::Malformed(_))));
    }

    #[test]
    fn revocation_wire_format() {
        let r: Revocation = serde_json::from_str(r#"{"serial": 42, "expires": "2030-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(r.target, Target::Serial(42));
        let h: Revocation = serde_json::from_str(r#"{"holder": "00112233445566778899aabbccddeeff"}"#).unwrap();
        assert!(matches!(h.target, Target::Holder(_)) && h.expires.is_none());
        assert!(serde_json::from_str::<Revocation>(r#"{"serial": 1, "holder": "00112233445566778899aabbccddeeff"}"#)
            .is_err());
    }
}
