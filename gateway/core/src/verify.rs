//! The one verification path: a decoded token, the trust list and skew of
//! the live configuration, the checkpoint's region, the revocations and the
//! clock reading in; a [`VerifiedToken`] or the exact [`Reason`] out.
//!
//! The scan and the check-in of the server, `healthgate verify` and the load
//! generator's own checks all call [`verify`], and [`VerifyError::reason`]
//! is the only place a verification failure becomes a scan reason, so the
//! four can never disagree on why a code was refused.
//!
//! The order is fixed: key (rule 11: trusted, inside its window and its
//! issuer accepted in the region), signature, validity window, revocation.
//! A forged code never learns whether it has expired or been revoked.

use crate::clock::UnixSecs;
use crate::policy::{Reason, Region};
use crate::revocation::{Check, Revocations};
use crate::token::{RawToken, VerifiedToken, VerifyError};
use crate::trust::{TrustList, TrustedKey};

/// What verification needs of the live configuration.
#[derive(Clone, Copy)]
pub struct Trust<'a> {
    pub list: &'a TrustList,
    /// Clock-skew budget on both ends of the validity window.
    pub skew_s: u64,
}

/// A token that verified, with the key that verified it.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'t> {
    pub token: VerifiedToken,
    pub key: &'t TrustedKey,
    /// The revocation filter matched but the exact set did not: the
    /// operator's sign that the filter is too small (counted in metrics).
    pub filter_false_positive: bool,
}

impl VerifyError {
    /// The scan reason of a verification failure (the one mapping).
    pub const fn reason(&self) -> Reason {
        match self {
            VerifyError::Malformed(_) => Reason::Malformed,
            VerifyError::UnknownIssuer(_) => Reason::UnknownIssuer,
            VerifyError::BadSignature => Reason::BadSignature,
            VerifyError::Expired { .. } => Reason::Expired,
            VerifyError::NotYetValid { .. } => Reason::NotYetValid,
            VerifyError::Revoked => Reason::Revoked,
        }
    }
}

/// Verifies `raw` for a checkpoint of `region` (`None`: any trusted issuer,
/// as the offline `healthgate verify` does) against `revocations` (`None`:
/// none known, offline).
pub fn verify<'t>(
    raw: &RawToken,
    trust: Trust<'t>,
    region: Option<&Region>,
    revocations: Option<&Revocations>,
    now: UnixSecs,
) -> Result<Verified<'t>, VerifyError> {
    let kid = raw.claims.kid;
    let key = match trust.list.key_at(kid, now) {
        Some(k) if region.is_none_or(|r| r.accepts_issuer(k.issuer)) => k,
        _ => return Err(VerifyError::UnknownIssuer(kid)),
    };
    raw.check_signature(&key.key)?;
    raw.check_time(now, trust.skew_s)?;
    let check = revocations.map_or(Check::Clear, |r| r.check(raw.claims.holder, raw.claims.serial, now));
    if check == Check::Revoked {
        return Err(VerifyError::Revoked);
    }
    Ok(Verified {
        token: VerifiedToken::checked(raw.claims),
        key,
        filter_false_positive: check == Check::FalsePositive,
    })
}

/// Decodes and verifies a QR text in one go (the offline tools' path).
pub fn decode_and_verify<'t>(
    text: &str,
    trust: Trust<'t>,
    region: Option<&Region>,
    revocations: Option<&Revocations>,
    now: UnixSecs,
) -> Result<Verified<'t>, VerifyError> {
    let raw = RawToken::decode(text)?;
    verify(&raw, trust, region, revocations, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::color::Color;
    use crate::feed::{Revocation, Target};
    use crate::holder::HolderId;
    use crate::revocation::FilterSettings;
    use crate::token::{Claims, KeyId};
    use ed25519_dalek::SigningKey;

    const NOW: UnixSecs = 1_600_000_000;

    fn setup() -> (SigningKey, TrustList, Claims) {
        let key = SigningKey::from_bytes(&[3; 32]);
        let kid: KeyId = "HB01".parse().unwrap();
        let list = TrustList::single("hubei", kid, key.verifying_key(), 0, u64::from(u32::MAX));
        let claims = Claims {
            kid,
            holder: HolderId([5; 16]),
            issued_at: NOW,
            expires_at: NOW + 60,
            color: Color::Green,
            serial: 9,
        };
        (key, list, claims)
    }

    fn region(accepted_issuers: u64) -> Region {
        Region {
            name: "r".into(),
            utc_offset_s: 0,
            fever_threshold_c: 37.3,
            health_record_validity_s: 3600,
            fever_quarantine_s: 3600,
            accepted_issuers,
        }
    }

    #[test]
    fn every_failure_has_its_reason() {
        let (key, list, claims) = setup();
        let trust = Trust { list: &list, skew_s: 30 };
        let text = claims.sign(&key).unwrap();
        let ok = decode_and_verify(&text, trust, Some(&region(1)), None, NOW).unwrap();
        assert_eq!(ok.token.claims(), &claims);
        let reason = |r: Result<Verified<'_>, VerifyError>| r.unwrap_err().reason();
        assert_eq!(reason(decode_and_verify("HG1:??", trust, None, None, NOW)), Reason::Malformed);
        assert_eq!(reason(decode_and_verify(&text, trust, Some(&region(2)), None, NOW)), Reason::UnknownIssuer);
        assert_eq!(reason(decode_and_verify(&text, trust, None, None, NOW + 91)), Reason::Expired);
        assert_eq!(reason(decode_and_verify(&text, trust, None, None, NOW - 31)), Reason::NotYetValid);
        let forged = claims.sign(&SigningKey::from_bytes(&[4; 32])).unwrap();
        assert_eq!(reason(decode_and_verify(&forged, trust, None, None, NOW)), Reason::BadSignature);
        let s = FilterSettings::default();
        let revs =
            Revocations::empty(s, [1; 32]).with(&[Revocation { target: Target::Serial(9), expires: None }], NOW, 1, s);
        assert_eq!(reason(decode_and_verify(&text, trust, None, Some(&revs), NOW)), Reason::Revoked);
        // A forged code is refused for its signature before its revocation.
        assert_eq!(reason(decode_and_verify(&forged, trust, None, Some(&revs), NOW)), Reason::BadSignature);
    }
}
