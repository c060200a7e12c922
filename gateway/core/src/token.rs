//! Token format v1: the signed payload behind a health-code QR.
//!
//! Layout, encoding and signing input are specified in `docs/TOKEN.md`; this
//! module is that document in code. It does no I/O, takes no locks and does
//! not allocate while decoding: [`RawToken::decode`] parses the QR text into a
//! fixed-size value; [`RawToken::check_signature`] and
//! [`RawToken::check_time`] are the token's parts of verification, which
//! `verify::verify` (one token) and `verify::verify_many` (a batch) put in
//! order; only those produce a [`VerifiedToken`], the one type the decision
//! rules accept.

mod base45;

pub use base45::Base45Error;

use crate::clock::UnixSecs;
use crate::color::Color;
use crate::holder::HolderId;
use crate::signature::{self, StrictKey};
use ed25519_dalek::{Signature, Signer, SigningKey};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// What every v1 QR text starts with. Alphanumeric-mode characters only.
pub const PREFIX: &str = "HG1:";
pub const VERSION: u8 = 1;
/// Bytes of the signed part: version, kid, holder, times, colour, serial.
pub const PAYLOAD_LEN: usize = 38;
pub const SIGNATURE_LEN: usize = signature::SIGNATURE_LEN;
pub const TOKEN_LEN: usize = PAYLOAD_LEN + SIGNATURE_LEN;
/// Length of every v1 QR text: the prefix plus 153 base45 characters.
pub const TEXT_LEN: usize = PREFIX.len() + TOKEN_LEN / 2 * 3;
/// Longest text accepted before any decoding work (a later version may be
/// longer than v1, never longer than this).
pub const MAX_TEXT_LEN: usize = 160;
/// Domain separation: a v1 signature can never be replayed as a signature
/// over anything else healthgate signs (update batches use their own).
pub const SIGNING_CONTEXT: &[u8] = b"healthgate/token/v1\0";
/// Default lifetime of a dynamic code: a screenshot is useless a minute later.
pub const DEFAULT_TTL_SECS: u64 = 60;
/// Default clock-skew budget between the issuing phone and the gateway.
pub const DEFAULT_SKEW_SECS: u64 = 30;

/// Four-byte issuer key id: one to four ASCII letters or digits, padded with
/// NUL bytes on the wire (e.g. `HB01`, `NHC`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 4]);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("key id {0:?} must be 1 to 4 ASCII letters or digits")]
pub struct ParseKeyIdError(pub String);

impl KeyId {
    /// Accepts only the canonical wire form: letters and digits, then NULs.
    pub fn from_bytes(b: [u8; 4]) -> Option<KeyId> {
        let len = b.iter().position(|&c| c == 0).unwrap_or(4);
        let ok = len > 0 && b[..len].iter().all(u8::is_ascii_alphanumeric) && b[len..].iter().all(|&c| c == 0);
        ok.then_some(KeyId(b))
    }

    pub fn as_bytes(&self) -> &[u8; 4] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&c| c == 0).unwrap_or(4);
        // Construction guarantees ASCII.
        std::str::from_utf8(&self.0[..len]).unwrap_or("")
    }
}

impl FromStr for KeyId {
    type Err = ParseKeyIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 4];
        if s.is_empty() || s.len() > 4 {
            return Err(ParseKeyIdError(s.to_owned()));
        }
        b[..s.len()].copy_from_slice(s.as_bytes());
        KeyId::from_bytes(b).ok_or_else(|| ParseKeyIdError(s.to_owned()))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.as_str())
    }
}

/// What a token says. Nothing here is trusted until [`RawToken::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub kid: KeyId,
    pub holder: HolderId,
    pub issued_at: UnixSecs,
    pub expires_at: UnixSecs,
    /// The colour when the code was issued: a hint for offline readers. The
    /// gateway decides by its own state, never by this.
    pub color: Color,
    /// Distinguishes two tokens of one holder; revocable on its own.
    pub serial: u64,
}

/// Why a text is not a well-formed v1 token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("code is {0} characters, longer than the {MAX_TEXT_LEN} accepted")]
    TooLong(usize),
    #[error("code does not start with {PREFIX:?}")]
    BadPrefix,
    #[error("bad base45: {0}")]
    Base45(#[from] Base45Error),
    #[error("token is empty")]
    Empty,
    #[error("unknown token version {0}")]
    UnknownVersion(u8),
    #[error("a v1 token is {TOKEN_LEN} bytes, this one is {0}")]
    WrongLength(usize),
    #[error("key id is not 1 to 4 letters or digits")]
    BadKeyId,
    #[error("unknown colour byte {0}")]
    BadColor(u8),
    #[error("token expires before it is issued")]
    BadValidity,
}

/// Why a well-formed token is not accepted. Each maps to one scan reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("malformed: {0}")]
    Malformed(#[from] DecodeError),
    #[error("key {0} is unknown, retired or not trusted here")]
    UnknownIssuer(KeyId),
    #[error("signature does not verify")]
    BadSignature,
    #[error("expired at {expires_at} (now {now}, skew {skew} s)")]
    Expired { expires_at: UnixSecs, now: UnixSecs, skew: u64 },
    #[error("not valid before {issued_at} (now {now}, skew {skew} s)")]
    NotYetValid { issued_at: UnixSecs, now: UnixSecs, skew: u64 },
    #[error("the holder or this code is revoked")]
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("times must fit 32-bit Unix seconds (until 2106)")]
    TimeOutOfRange,
    #[error("expiry must be after issue time")]
    BadValidity,
}

/// A decoded, not yet verified token: claims plus the exact signed bytes.
#[derive(Clone, Copy)]
pub struct RawToken {
    pub claims: Claims,
    payload: [u8; PAYLOAD_LEN],
    signature: [u8; SIGNATURE_LEN],
}

/// A token whose key, signature, validity window and revocation have been
/// checked. Only [`crate::verify::verify`] makes one (the field is private
/// and the constructor is crate-private), and the rules take nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedToken {
    claims: Claims,
}

impl VerifiedToken {
    pub(crate) fn checked(claims: Claims) -> Self {
        VerifiedToken { claims }
    }
    pub fn claims(&self) -> &Claims {
        &self.claims
    }
}

impl fmt::Debug for RawToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawToken").field("claims", &self.claims).finish()
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn signing_input(payload: &[u8; PAYLOAD_LEN]) -> [u8; SIGNING_CONTEXT.len() + PAYLOAD_LEN] {
    let mut msg = [0u8; SIGNING_CONTEXT.len() + PAYLOAD_LEN];
    msg[..SIGNING_CONTEXT.len()].copy_from_slice(SIGNING_CONTEXT);
    msg[SIGNING_CONTEXT.len()..].copy_from_slice(payload);
    msg
}

impl Claims {
    fn to_payload(self) -> Result<[u8; PAYLOAD_LEN], EncodeError> {
        let issued = u32::try_from(self.issued_at).map_err(|_| EncodeError::TimeOutOfRange)?;
        let expires = u32::try_from(self.expires_at).map_err(|_| EncodeError::TimeOutOfRange)?;
        if expires <= issued {
            return Err(EncodeError::BadValidity);
        }
        let mut p = [0u8; PAYLOAD_LEN];
        p[0] = VERSION;
        p[1..5].copy_from_slice(self.kid.as_bytes());
        p[5..21].copy_from_slice(&self.holder.0);
        p[21..25].copy_from_slice(&issued.to_be_bytes());
        p[25..29].copy_from_slice(&expires.to_be_bytes());
        p[29] = self.color as u8;
        p[30..38].copy_from_slice(&self.serial.to_be_bytes());
        Ok(p)
    }

    /// Signs these claims with `key` and returns the QR text.
    pub fn sign(&self, key: &SigningKey) -> Result<String, EncodeError> {
        let payload = self.to_payload()?;
        let signature = key.sign(&signing_input(&payload));
        let mut bytes = [0u8; TOKEN_LEN];
        bytes[..PAYLOAD_LEN].copy_from_slice(&payload);
        bytes[PAYLOAD_LEN..].copy_from_slice(&signature.to_bytes());
        let mut text = String::with_capacity(TEXT_LEN);
        text.push_str(PREFIX);
        base45::encode_into(&bytes, &mut text);
        Ok(text)
    }
}

impl RawToken {
    /// Parses a QR text. Every malformed input is an error, never a panic.
    pub fn decode(text: &str) -> Result<RawToken, DecodeError> {
        let text = text.as_bytes();
        if text.len() > MAX_TEXT_LEN {
            return Err(DecodeError::TooLong(text.len()));
        }
        let body = text.strip_prefix(PREFIX.as_bytes()).ok_or(DecodeError::BadPrefix)?;
        // One spare byte so that a too-long token is told apart from a
        // base45 error: MAX_TEXT_LEN bounds it anyway.
        let mut bytes = [0u8; (MAX_TEXT_LEN - PREFIX.len()) / 3 * 2 + 1];
        let n = base45::decode_into(body, &mut bytes)?;
        let bytes = &bytes[..n];
        match bytes.first() {
            None => return Err(DecodeError::Empty),
            Some(&VERSION) => {}
            Some(&v) => return Err(DecodeError::UnknownVersion(v)),
        }
        if n != TOKEN_LEN {
            return Err(DecodeError::WrongLength(n));
        }
        let kid = KeyId::from_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]).ok_or(DecodeError::BadKeyId)?;
        let mut holder = [0u8; 16];
        holder.copy_from_slice(&bytes[5..21]);
        let issued_at = u64::from(u32_at(bytes, 21));
        let expires_at = u64::from(u32_at(bytes, 25));
        if expires_at <= issued_at {
            return Err(DecodeError::BadValidity);
        }
        let color = Color::from_u8(bytes[29]).ok_or(DecodeError::BadColor(bytes[29]))?;
        let serial = u64::from_be_bytes(bytes[30..38].try_into().expect("8 bytes"));
        let mut payload = [0u8; PAYLOAD_LEN];
        payload.copy_from_slice(&bytes[..PAYLOAD_LEN]);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&bytes[PAYLOAD_LEN..]);
        Ok(RawToken {
            claims: Claims { kid, holder: HolderId(holder), issued_at, expires_at, color, serial },
            payload,
            signature,
        })
    }

    /// The message the issuer signed (context string plus payload).
    pub fn signing_input(&self) -> [u8; SIGNING_CONTEXT.len() + PAYLOAD_LEN] {
        signing_input(&self.payload)
    }

    pub fn signature(&self) -> Signature {
        Signature::from_bytes(&self.signature)
    }

    /// The same token with another signature (tests of this crate craft
    /// signatures no signer would make).
    #[cfg(test)]
    pub(crate) fn with_signature(&self, signature: [u8; SIGNATURE_LEN]) -> RawToken {
        RawToken { signature, ..*self }
    }

    /// The signature's 64 bytes, as signed.
    pub fn signature_bytes(&self) -> &[u8; SIGNATURE_LEN] {
        &self.signature
    }

    /// Checks the signature under the rules of [`crate::signature`]
    /// (canonical `S` and `R`, `R` not of small order, the key checked at
    /// load, the cofactored equation): the same verdict as
    /// [`crate::signature::check_many`] gives this token in a batch.
    pub fn check_signature(&self, key: &StrictKey) -> Result<(), VerifyError> {
        if signature::check_one(key, &self.signing_input(), &self.signature) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    /// Checks the validity window with a clock-skew budget. Valid when
    /// `issued_at - skew <= now <= expires_at + skew`.
    pub fn check_time(&self, now: UnixSecs, skew: u64) -> Result<(), VerifyError> {
        let c = &self.claims;
        if now.saturating_add(skew) < c.issued_at {
            return Err(VerifyError::NotYetValid { issued_at: c.issued_at, now, skew });
        }
        if now > c.expires_at.saturating_add(skew) {
            return Err(VerifyError::Expired { expires_at: c.expires_at, now, skew });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::TrustList;
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn claims() -> Claims {
        Claims {
            kid: "HB01".parse().unwrap(),
            holder: HolderId([7; 16]),
            issued_at: 1_600_000_000,
            expires_at: 1_600_000_060,
            color: Color::Green,
            serial: 42,
        }
    }

    fn trust(kid: &str, k: &SigningKey) -> TrustList {
        TrustList::single("test", kid.parse().unwrap(), StrictKey::from(k), 0, u64::from(u32::MAX))
    }

    /// Through the one verification path, offline (no region, no revocations).
    trait Verify {
        fn verify(&self, t: &TrustList, now: UnixSecs, skew_s: u64) -> Result<VerifiedToken, VerifyError>;
    }
    impl Verify for RawToken {
        fn verify(&self, t: &TrustList, now: UnixSecs, skew_s: u64) -> Result<VerifiedToken, VerifyError> {
            crate::verify::verify(self, crate::verify::Trust { list: t, skew_s }, None, None, now).map(|v| v.token)
        }
    }

    /// The test vector of docs/TOKEN.md: keep the two in step.
    #[test]
    fn the_documented_test_vector() {
        // RFC 8032 section 7.1, test 1: the secret key (seed).
        let mut seed = [0u8; 32];
        hex::decode_to_slice("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60", &mut seed).unwrap();
        let key = SigningKey::from_bytes(&seed);
        let mut holder = [0u8; 16];
        hex::decode_to_slice("00112233445566778899aabbccddeeff", &mut holder).unwrap();
        let claims = Claims {
            kid: "HB01".parse().unwrap(),
            holder: HolderId(holder),
            issued_at: 1_587_774_600, // 2020-04-25T00:30:00Z
            expires_at: 1_587_774_660,
            color: Color::Green,
            serial: 42,
        };
        let text = claims.sign(&key).unwrap();
        assert_eq!(text.len(), 157);
        assert_eq!(text, VECTOR_TEXT);
        assert_eq!(RawToken::decode(VECTOR_TEXT).unwrap().claims, claims);
    }

    const VECTOR_TEXT: &str =
        "HG1:D70OG8Y86L72TL6$ZA05F8JJGXNO2SYCWAUKZAHAUK1ZO000000000.00AMIXTK/3LY59HX5F24P3CTG2.QUON6566* P6FQ +BCZ5%QR%QT*4RFJ9YMV*FPT62VKB2P36KJVU571Q EOG0EA SJME%37";

    #[test]
    fn text_is_short_and_alphanumeric() {
        let text = claims().sign(&key(1)).unwrap();
        assert_eq!(text.len(), TEXT_LEN);
        assert!(text.len() <= MAX_TEXT_LEN);
        assert!(text.bytes().all(|b| b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:".contains(&b)));
    }

    #[test]
    fn sign_decode_verify() {
        let k = key(1);
        let text = claims().sign(&k).unwrap();
        let raw = RawToken::decode(&text).unwrap();
        assert_eq!(raw.claims, claims());
        let v = raw.verify(&trust("HB01", &k), 1_600_000_030, 30).unwrap();
        assert_eq!(*v.claims(), claims());
    }

    #[test]
    fn each_failure_has_its_own_reason() {
        let k = key(1);
        let text = claims().sign(&k).unwrap();
        let raw = RawToken::decode(&text).unwrap();
        let t = trust("HB01", &k);
        // Time edges with a 30 s skew: valid from 1_599_999_970 to 1_600_000_090.
        assert!(raw.verify(&t, 1_599_999_970, 30).is_ok());
        assert!(matches!(raw.verify(&t, 1_599_999_969, 30), Err(VerifyError::NotYetValid { .. })));
        assert!(raw.verify(&t, 1_600_000_090, 30).is_ok());
        assert!(matches!(raw.verify(&t, 1_600_000_091, 30), Err(VerifyError::Expired { .. })));
        // Another key under the same kid: forged.
        assert_eq!(raw.verify(&trust("HB01", &key(2)), 1_600_000_000, 30).unwrap_err(), VerifyError::BadSignature);
        // Unknown kid.
        assert!(matches!(raw.verify(&trust("NHC", &k), 1_600_000_000, 30), Err(VerifyError::UnknownIssuer(_))));
    }

    #[test]
    fn tampered_payload_fails_signature() {
        let k = key(1);
        let mut c = claims();
        let good = RawToken::decode(&c.sign(&k).unwrap()).unwrap();
        c.color = Color::Red;
        let other = RawToken::decode(&c.sign(&k).unwrap()).unwrap();
        // Graft the green token's signature onto the red payload.
        let forged = RawToken { signature: good.signature, ..other };
        assert_eq!(forged.check_signature(&StrictKey::from(&k)), Err(VerifyError::BadSignature));
    }

    #[test]
    fn malformed_inputs_have_typed_errors() {
        let text = claims().sign(&key(1)).unwrap();
        assert_eq!(RawToken::decode(&text.replacen("HG1:", "HC1:", 1)).unwrap_err(), DecodeError::BadPrefix);
        assert_eq!(RawToken::decode("").unwrap_err(), DecodeError::BadPrefix);
        assert_eq!(RawToken::decode("HG1:").unwrap_err(), DecodeError::Empty);
        assert!(matches!(RawToken::decode(&"A".repeat(500)).unwrap_err(), DecodeError::TooLong(500)));
        assert!(matches!(RawToken::decode(&format!("{}a", &text[..text.len() - 1])), Err(DecodeError::Base45(_))));
        // Trailing bytes: one extra encoded byte.
        let mut long = text.clone();
        long.push_str("00");
        assert_eq!(RawToken::decode(&long).unwrap_err(), DecodeError::WrongLength(TOKEN_LEN + 1));
        // Truncated.
        assert!(matches!(RawToken::decode(&text[..text.len() - 3]), Err(DecodeError::WrongLength(100))));
        // Version 2 is rejected before its length is judged.
        let mut bytes = [0u8; TOKEN_LEN];
        bytes[0] = 2;
        let mut v2 = PREFIX.to_owned();
        base45::encode_into(&bytes, &mut v2);
        assert_eq!(RawToken::decode(&v2).unwrap_err(), DecodeError::UnknownVersion(2));
    }

    fn with_byte(text: &str, at: usize, value: u8) -> String {
        let mut bytes = [0u8; TOKEN_LEN];
        let n = base45::decode_into(&text.as_bytes()[PREFIX.len()..], &mut bytes).unwrap();
        assert_eq!(n, TOKEN_LEN);
        bytes[at] = value;
        let mut out = PREFIX.to_owned();
        base45::encode_into(&bytes, &mut out);
        out
    }

    #[test]
    fn field_level_validation() {
        let text = claims().sign(&key(1)).unwrap();
        assert_eq!(RawToken::decode(&with_byte(&text, 29, 9)).unwrap_err(), DecodeError::BadColor(9));
        assert_eq!(RawToken::decode(&with_byte(&text, 2, b'!')).unwrap_err(), DecodeError::BadKeyId);
        // A NUL inside the kid followed by a letter is a non-canonical kid.
        assert_eq!(RawToken::decode(&with_byte(&text, 3, 0)).unwrap_err(), DecodeError::BadKeyId);
        // Expiry byte zeroed: expires before issue.
        assert_eq!(RawToken::decode(&with_byte(&text, 25, 0)).unwrap_err(), DecodeError::BadValidity);
    }

    #[test]
    fn non_canonical_signature_scalar_is_rejected() {
        let k = key(1);
        let text = claims().sign(&k).unwrap();
        let raw = RawToken::decode(&text).unwrap();
        // Adding the group order L to S gives the same point check for a
        // lax verifier; strict verification must reject it.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut sig = raw.signature;
        let mut carry = 0u16;
        for i in 0..32 {
            let s = u16::from(sig[32 + i]) + u16::from(L[i]) + carry;
            sig[32 + i] = s as u8;
            carry = s >> 8;
        }
        let bad = RawToken { signature: sig, ..raw };
        assert_eq!(bad.check_signature(&StrictKey::from(&k)), Err(VerifyError::BadSignature));
    }

    fn arb_claims() -> impl Strategy<Value = Claims> {
        (any::<[u8; 16]>(), 0u32..u32::MAX - 1, 1u32..100_000, 0u8..4, any::<u64>(), "[A-Za-z0-9]{1,4}").prop_map(
            |(h, iat, ttl, c, serial, kid)| Claims {
                kid: kid.parse().unwrap(),
                holder: HolderId(h),
                issued_at: u64::from(iat),
                expires_at: u64::from(iat.saturating_add(ttl)).max(u64::from(iat) + 1),
                color: Color::from_u8(c).unwrap(),
                serial,
            },
        )
    }

    proptest! {
        #[test]
        fn encode_decode_is_identity(c in arb_claims()) {
            let text = c.sign(&key(5)).unwrap();
            prop_assert_eq!(RawToken::decode(&text).unwrap().claims, c);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,200}") {
            let _ = RawToken::decode(&s);
        }

        #[test]
        fn arbitrary_bytes_behind_prefix_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut text = PREFIX.to_owned();
            base45::encode_into(&bytes, &mut text);
            let _ = RawToken::decode(&text);
        }

        #[test]
        fn mutated_tokens_never_verify(c in arb_claims(), at in 0usize..TOKEN_LEN, flip in 1u8..=255) {
            let k = key(6);
            let text = c.sign(&k).unwrap();
            let mut bytes = [0u8; TOKEN_LEN];
            base45::decode_into(&text.as_bytes()[PREFIX.len()..], &mut bytes).unwrap();
            bytes[at] ^= flip;
            let mut t2 = PREFIX.to_owned();
            base45::encode_into(&bytes, &mut t2);
            if let Ok(raw) = RawToken::decode(&t2) {
                prop_assert!(raw.check_signature(&StrictKey::from(&k)).is_err());
            }
        }
    }
}
