//! The one verification path: a decoded token, the trust list and skew of
//! the live configuration, the checkpoint's region, the revocations and the
//! clock reading in; a [`VerifiedToken`] or the exact [`Reason`] out.
//!
//! The scan and the check-in of the server, `healthgate verify` and the load
//! generator's own checks all call [`verify`], the server's verifier stage
//! calls [`verify_many`] for the scans that arrive together, and
//! [`VerifyError::reason`] is the only place a verification failure becomes
//! a scan reason, so none of them can disagree on why a code was refused.
//!
//! The order is fixed: key (rule 11: trusted, inside its window and its
//! issuer accepted in the region), signature, validity window, revocation.
//! A forged code never learns whether it has expired or been revoked.
//! Both entries run the same three steps, [`key_for`], the signature, and
//! [`finish`]; they differ only in how the signatures are checked (one
//! equation each, or one batch equation; see [`crate::signature`] for why
//! the verdicts are the same).

use crate::clock::UnixSecs;
use crate::policy::{Reason, Region};
use crate::revocation::{Check, Revocations};
use crate::signature::{self, Item};
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
    let key = key_for(raw, trust, region, now)?;
    raw.check_signature(&key.key)?;
    finish(raw, key, trust, revocations, now)
}

/// One token of a batch, with everything [`verify`] takes: tokens of one
/// batch may come from scans that loaded different configurations or
/// revocations, at different checkpoints and clock readings.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub raw: &'a RawToken,
    pub trust: Trust<'a>,
    pub region: Option<&'a Region>,
    pub revocations: Option<&'a Revocations>,
    pub now: UnixSecs,
}

/// Verifies many tokens at once: element `i` of the answer is what
/// [`verify`] answers for `requests[i]`. The signatures of the tokens whose
/// key was found are checked together ([`signature::check_many`], with
/// `seed` secret and random, drawn once by the caller).
pub fn verify_many<'a>(requests: &[Request<'a>], seed: &[u8; 32]) -> Vec<Result<Verified<'a>, VerifyError>> {
    let keys: Vec<Result<&'a TrustedKey, VerifyError>> =
        requests.iter().map(|r| key_for(r.raw, r.trust, r.region, r.now)).collect();
    let with_key: Vec<usize> = (0..requests.len()).filter(|&i| keys[i].is_ok()).collect();
    let inputs: Vec<_> = with_key.iter().map(|&i| requests[i].raw.signing_input()).collect();
    let items: Vec<Item<'_>> = with_key
        .iter()
        .zip(&inputs)
        .filter_map(|(&i, msg)| {
            let key = keys[i].as_ref().ok()?;
            Some(Item { key: &key.key, msg, sig: requests[i].raw.signature_bytes() })
        })
        .collect();
    let good = signature::check_many(&items, seed);
    let mut signed = vec![false; requests.len()];
    for (&i, ok) in with_key.iter().zip(good) {
        signed[i] = ok;
    }
    requests
        .iter()
        .zip(keys)
        .zip(signed)
        .map(|((r, key), signed)| {
            let key = key?;
            if !signed {
                return Err(VerifyError::BadSignature);
            }
            finish(r.raw, key, r.trust, r.revocations, r.now)
        })
        .collect()
}

/// Step one: the key the token names, trusted now and its issuer accepted
/// in the region.
pub fn key_for<'t>(
    raw: &RawToken,
    trust: Trust<'t>,
    region: Option<&Region>,
    now: UnixSecs,
) -> Result<&'t TrustedKey, VerifyError> {
    let kid = raw.claims.kid;
    match trust.list.key_at(kid, now) {
        Some(k) if region.is_none_or(|r| r.accepts_issuer(k.issuer)) => Ok(k),
        _ => Err(VerifyError::UnknownIssuer(kid)),
    }
}

/// Step three, once the signature holds: the validity window, then the
/// revocations. The only maker of a [`VerifiedToken`].
fn finish<'t>(
    raw: &RawToken,
    key: &'t TrustedKey,
    trust: Trust<'t>,
    revocations: Option<&Revocations>,
    now: UnixSecs,
) -> Result<Verified<'t>, VerifyError> {
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
        let list = TrustList::single("hubei", kid, crate::signature::StrictKey::from(&key), 0, u64::from(u32::MAX));
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

    /// What a token of a random batch is made to be.
    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Good,
        OtherIssuer,
        Forged,
        UnknownKid,
        NotAccepted,
        Expired,
        NotYetValid,
        Revoked,
        SPlusL,
        SmallR(usize),
        Torsioned(usize),
        ForgedAndRevoked,
    }

    fn arb_kind() -> impl proptest::strategy::Strategy<Value = Kind> {
        use proptest::prelude::*;
        prop_oneof![
            8 => Just(Kind::Good),
            2 => Just(Kind::OtherIssuer),
            1 => Just(Kind::Forged),
            1 => Just(Kind::UnknownKid),
            1 => Just(Kind::NotAccepted),
            1 => Just(Kind::Expired),
            1 => Just(Kind::NotYetValid),
            1 => Just(Kind::Revoked),
            1 => Just(Kind::SPlusL),
            1 => (0usize..64).prop_map(Kind::SmallR),
            1 => (1usize..8).prop_map(Kind::Torsioned),
            1 => Just(Kind::ForgedAndRevoked),
        ]
    }

    /// Two issuers (hubei HB01, national NHC1); revoked serial 7777.
    struct World {
        keys: [SigningKey; 2],
        list: TrustList,
        revocations: Revocations,
        regions: [Region; 2],
    }

    fn world() -> World {
        let keys = [SigningKey::from_bytes(&[3; 32]), SigningKey::from_bytes(&[4; 32])];
        let text = format!(
            "[[issuers]]\nid = \"hubei\"\n[[issuers.keys]]\nkid = \"HB01\"\npublic_key = \"{}\"\n\
             not_before = \"2000-01-01T00:00:00Z\"\nnot_after = \"2100-01-01T00:00:00Z\"\n\
             [[issuers]]\nid = \"national\"\n[[issuers.keys]]\nkid = \"NHC1\"\npublic_key = \"{}\"\n\
             not_before = \"2000-01-01T00:00:00Z\"\nnot_after = \"2100-01-01T00:00:00Z\"\n",
            hex::encode(keys[0].verifying_key().as_bytes()),
            hex::encode(keys[1].verifying_key().as_bytes())
        );
        let list = TrustList::parse(&text, |_, _| Err("no files".into())).unwrap();
        let s = FilterSettings::default();
        let revocations = Revocations::empty(s, [1; 32]).with(
            &[Revocation { target: Target::Serial(7777), expires: None }],
            NOW,
            1,
            s,
        );
        World { keys, list, revocations, regions: [region(1), region(3)] }
    }

    /// A token of `kind` and the region index it is scanned in.
    fn token(w: &World, i: usize, kind: Kind) -> (RawToken, usize) {
        let (issuer, kid) = match kind {
            Kind::OtherIssuer | Kind::NotAccepted => (1, "NHC1"),
            Kind::UnknownKid => (0, "XX9"),
            _ => (0, "HB01"),
        };
        let region = match kind {
            Kind::OtherIssuer => 1,
            Kind::NotAccepted => 0,
            _ => i % 2,
        };
        let (issued_at, serial) = match kind {
            Kind::Expired => (NOW - 200, i as u64),
            Kind::NotYetValid => (NOW + 100, i as u64),
            Kind::Revoked | Kind::ForgedAndRevoked => (NOW, 7777),
            _ => (NOW, i as u64),
        };
        let claims = Claims {
            kid: kid.parse().unwrap(),
            holder: HolderId([i as u8; 16]),
            issued_at,
            expires_at: issued_at + 60,
            color: Color::Green,
            serial,
        };
        let signer = match kind {
            Kind::Forged | Kind::ForgedAndRevoked => SigningKey::from_bytes(&[99; 32]),
            _ => w.keys[issuer].clone(),
        };
        let raw = RawToken::decode(&claims.sign(&signer).unwrap()).unwrap();
        let msg = raw.signing_input();
        let raw = match kind {
            Kind::SPlusL => raw.with_signature(craft::plus_l(*raw.signature_bytes())),
            Kind::SmallR(n) => {
                let all = craft::small_order_encodings();
                raw.with_signature(craft::small_r(&signer, &msg, all[n % all.len()]))
            }
            Kind::Torsioned(t) => raw.with_signature(craft::torsioned(&signer, &msg, 5 + i as u64, t)),
            _ => raw,
        };
        (raw, region)
    }

    use crate::signature::craft;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Random batches with random bad members: each token's answer from
        /// the batch is exactly its answer from `verify`, reason included.
        #[test]
        fn verify_many_answers_what_verify_answers(
            kinds in proptest::collection::vec(arb_kind(), 1..48),
            seed in proptest::prelude::any::<[u8; 32]>(),
        ) {
            let w = world();
            let tokens: Vec<(RawToken, usize)> = kinds.iter().enumerate().map(|(i, k)| token(&w, i, *k)).collect();
            let trust = Trust { list: &w.list, skew_s: 30 };
            let requests: Vec<Request<'_>> = tokens
                .iter()
                .map(|(raw, r)| Request { raw, trust, region: Some(&w.regions[*r]), revocations: Some(&w.revocations), now: NOW })
                .collect();
            let many = verify_many(&requests, &seed);
            proptest::prop_assert_eq!(many.len(), requests.len());
            for (i, (r, got)) in requests.iter().zip(&many).enumerate() {
                let one = verify(r.raw, r.trust, r.region, r.revocations, r.now);
                let got = got.as_ref().map(|v| v.token).map_err(|e| *e);
                proptest::prop_assert_eq!(got, one.map(|v| v.token), "token {} {:?}", i, kinds[i]);
                let expected = match kinds[i] {
                    Kind::Good | Kind::OtherIssuer | Kind::Torsioned(_) => Reason::Ok,
                    Kind::Forged | Kind::ForgedAndRevoked | Kind::SPlusL | Kind::SmallR(_) => Reason::BadSignature,
                    Kind::UnknownKid | Kind::NotAccepted => Reason::UnknownIssuer,
                    Kind::Expired => Reason::Expired,
                    Kind::NotYetValid => Reason::NotYetValid,
                    Kind::Revoked => Reason::Revoked,
                };
                proptest::prop_assert_eq!(got.map_or_else(|e| e.reason(), |_| Reason::Ok), expected, "token {} {:?}", i, kinds[i]);
            }
        }
    }
}
