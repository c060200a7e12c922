//! Ed25519 signature checks of the token path, one at a time and in batches,
//! under one rule set, so that a code gets the same verdict whichever way it
//! was checked.
//!
//! Users: [`crate::token::RawToken::check_signature`] (one code, through
//! `verify::verify`) and `verify::verify_many` (many codes at once, the
//! server's verifier stage).
//!
//! # The rules
//!
//! A signature `(R, S)` by key `A` on message `M` is accepted when
//!
//! 1. `S` is canonical (`S < L`);
//! 2. `R` is a canonical encoding (`y < p`) of a curve point that is not
//!    of small order;
//! 3. `A` is canonical, not of small order and of prime order: checked once,
//!    when the key is loaded ([`StrictKey`]), never per signature;
//! 4. `[8]([S]B - R - [k]A)` is the identity, with `k = SHA-512(R ‖ A ‖ M)`
//!    (the *cofactored* equation).
//!
//! This is the rule set "Taming the many EdDSAs" (Chalkias, Garillot,
//! Nikolaenko, 2020) recommends so that single and batch verification agree:
//! a batch equation is a random linear combination of single equations, and
//! only the cofactored form is linear in a way that makes the combination
//! accept exactly when every member does. ed25519-dalek's `verify_strict`
//! uses the cofactorless equation (`R == [S]B - [k]A`, byte for byte), and
//! its `verify_batch` a cofactorless random combination, which accepts a
//! signature whose `R` carries a small-order component with probability
//! 1/2 to 1/8 depending on the batch: two verdicts for one code.
//!
//! With rules 1 to 3, our verdicts differ from `verify_strict` only for a
//! signature whose `R` has a small-order component added to a correct
//! nonce commitment: the cofactored equation accepts it, `verify_strict`
//! refuses it. Only the holder of the secret key can make such a signature
//! (it needs `S = r + k·a` for the new `k`), so nobody can turn an honest
//! code into a second valid one, and the issuer could sign any claims
//! anyway. Keys that are not of prime order (rule 3) are refused at load,
//! where `verify_strict` would accept some signatures under them: an honest
//! key `[a]B` is always of prime order.
//!
//! # Batches
//!
//! [`check_many`] checks the encodings of every member, then one equation
//! `[8](Σ zᵢ·Sᵢ·B − Σ zᵢ·Rᵢ − Σ_A (Σ_{i by A} zᵢ·kᵢ)·A) = 0` with 128-bit
//! coefficients `zᵢ` drawn from SHA-512 over a caller's secret seed and the
//! whole batch. The keys' terms are summed per key first (a trust list has
//! a handful of keys), so each member costs about one 128-bit point
//! multiplication instead of one 128-bit and one 253-bit one. When the
//! equation fails, the batch is split in halves until every bad member is
//! found; a member alone is checked with the single equation, so every
//! member gets its own exact verdict. Bisection is bounded: past a few
//! splits (about two bad members' worth) the rest of the batch is checked
//! one by one, so a flood of forged codes costs at most about twice their
//! single checks, not `log2 n` batch equations each.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha512};
use std::cell::Cell;
use std::fmt;
use thiserror::Error;

pub const SIGNATURE_LEN: usize = 64;

/// Why a public key is not fit to verify codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("is not a valid Ed25519 point")]
    NotAPoint,
    #[error("is not canonically encoded")]
    NonCanonical,
    #[error("is a weak (small-order) key")]
    SmallOrder,
    #[error("is not of prime order (it has a small-order component)")]
    MixedOrder,
}

/// A public key that passed the key rules: canonical, not of small order,
/// of prime order. The only way to verify a code, so the per-signature
/// checks never repeat them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StrictKey {
    key: VerifyingKey,
    /// `A` and `-A`, decompressed once.
    point: EdwardsPoint,
    minus_point: EdwardsPoint,
}

impl StrictKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<StrictKey, KeyError> {
        let point = CompressedEdwardsY(*bytes).decompress().ok_or(KeyError::NotAPoint)?;
        if point.compress().as_bytes() != bytes {
            return Err(KeyError::NonCanonical);
        }
        if point.is_small_order() {
            return Err(KeyError::SmallOrder);
        }
        if !point.is_torsion_free() {
            return Err(KeyError::MixedOrder);
        }
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::NotAPoint)?;
        Ok(StrictKey { key, point, minus_point: -point })
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }
}

impl TryFrom<VerifyingKey> for StrictKey {
    type Error = KeyError;
    fn try_from(key: VerifyingKey) -> Result<Self, KeyError> {
        StrictKey::from_bytes(key.as_bytes())
    }
}

/// A key derived from a secret always passes: `A = [a]B` with `a` a
/// non-zero multiple of 8 below `8L` (clamping), so `A` is of prime order,
/// and `compress` encodes canonically.
impl From<&SigningKey> for StrictKey {
    fn from(secret: &SigningKey) -> Self {
        let key = secret.verifying_key();
        let point = key.to_edwards();
        StrictKey { key, point, minus_point: -point }
    }
}

impl fmt::Debug for StrictKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StrictKey({})", hex::encode(self.as_bytes()))
    }
}

/// One signature to check in a batch.
#[derive(Clone, Copy)]
pub struct Item<'a> {
    pub key: &'a StrictKey,
    pub msg: &'a [u8],
    pub sig: &'a [u8; SIGNATURE_LEN],
}

/// A signature whose encodings passed rules 1 and 2, with its challenge.
struct Prepared {
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

/// Whether a 32-byte point encoding has `y < p` (`p = 2^255 - 19`). The
/// other non-canonical encodings, a set sign bit with `x = 0`, only exist
/// for `y = ±1`, the two points of order 1 and 2, which rule 2 refuses
/// anyway; so with the small-order check this is the whole canonicity
/// check, without the field inversion that re-encoding would cost.
fn y_is_canonical(b: &[u8; 32]) -> bool {
    let all_ones = b[1..31].iter().all(|&x| x == 0xff);
    !(b[31] & 0x7f == 0x7f && all_ones && b[0] >= 0xed)
}

fn prepare(key: &StrictKey, msg: &[u8], sig: &[u8; SIGNATURE_LEN]) -> Option<Prepared> {
    let (r_bytes, s_bytes) = sig.split_at(32);
    let r_bytes: &[u8; 32] = r_bytes.try_into().ok()?;
    let s_bytes: [u8; 32] = s_bytes.try_into().ok()?;
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))?;
    if !y_is_canonical(r_bytes) {
        return None;
    }
    let r = CompressedEdwardsY(*r_bytes).decompress()?;
    if r.is_small_order() {
        return None;
    }
    let digest: [u8; 64] =
        Sha512::new().chain_update(r_bytes).chain_update(key.as_bytes()).chain_update(msg).finalize().into();
    Some(Prepared { r, s, k: Scalar::from_bytes_mod_order_wide(&digest) })
}

/// Rule 4 for one signature: `[8]([S]B + [k](-A) - R) == 0`.
fn single_equation(key: &StrictKey, p: &Prepared) -> bool {
    let x = EdwardsPoint::vartime_double_scalar_mul_basepoint(&p.k, &key.minus_point, &p.s) - p.r;
    x.mul_by_cofactor().is_identity()
}

/// Checks one signature under the rules of this module.
pub fn check_one(key: &StrictKey, msg: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
    prepare(key, msg, sig).is_some_and(|p| single_equation(key, &p))
}

/// Checks many signatures at once: `out[i]` is exactly what
/// [`check_one`] says of `items[i]` (up to the 2^-125 chance that a random
/// combination of wrong equations cancels). `seed` must be secret and
/// random (the caller draws it; this crate has no randomness): it keeps a
/// forger from choosing members whose errors cancel.
pub fn check_many(items: &[Item<'_>], seed: &[u8; 32]) -> Vec<bool> {
    let mut out = vec![false; items.len()];
    if let [one] = items {
        out[0] = check_one(one.key, one.msg, one.sig);
        return out;
    }
    let prepared: Vec<Option<Prepared>> = items.iter().map(|i| prepare(i.key, i.msg, i.sig)).collect();
    let members: Vec<usize> = (0..items.len()).filter(|&i| prepared[i].is_some()).collect();
    let z = coefficients(seed, &prepared);
    let splits = Cell::new(split_budget(members.len()));
    let batch = Batch { items, prepared: &prepared, z: &z, splits };
    batch.settle(&members, false, &mut out);
    out
}

/// How many failed sets a batch of `n` members may split before the rest
/// is checked one by one. Bisection finds one bad member in `log2 n`
/// splits, so this covers about two of them; a batch with many bad members
/// (a flood of forged codes) would cost up to `log2 n` batch equations per
/// member by bisection alone, several times a single check each, and with
/// the budget it costs at most about twice the single checks.
fn split_budget(n: usize) -> u32 {
    2 * n.next_power_of_two().trailing_zeros() + 2
}

/// The per-member coefficients: 128-bit, four from each SHA-512 over the
/// seed and a digest of the whole batch (challenges commit to `R`, `A` and
/// `M`; `S` is added), so that no member can be chosen knowing its `z`.
fn coefficients(seed: &[u8; 32], prepared: &[Option<Prepared>]) -> Vec<Scalar> {
    let mut h = Sha512::new();
    h.update(b"healthgate/batch/v1\0");
    h.update(seed);
    h.update((prepared.len() as u64).to_le_bytes());
    for p in prepared.iter().flatten() {
        h.update(p.k.as_bytes());
        h.update(p.s.as_bytes());
    }
    let batch_digest = h.finalize();
    let mut z = Vec::with_capacity(prepared.len());
    for block in 0..prepared.len().div_ceil(4) {
        let out: [u8; 64] =
            Sha512::new().chain_update(batch_digest).chain_update((block as u64).to_le_bytes()).finalize().into();
        for chunk in out.chunks_exact(16) {
            if z.len() < prepared.len() {
                let mut b = [0u8; 16];
                b.copy_from_slice(chunk);
                z.push(Scalar::from(u128::from_le_bytes(b)));
            }
        }
    }
    z
}

struct Batch<'b, 'a> {
    items: &'b [Item<'a>],
    prepared: &'b [Option<Prepared>],
    z: &'b [Scalar],
    /// Splits left before the rest goes one by one (see [`split_budget`]).
    splits: Cell<u32>,
}

impl Batch<'_, '_> {
    fn prepared(&self, i: usize) -> &Prepared {
        // `members` lists only prepared items (see `check_many`).
        self.prepared[i].as_ref().expect("only prepared members are checked")
    }

    /// Rule 4 for a set of members at once.
    fn equation(&self, members: &[usize]) -> bool {
        let mut b_coefficient = Scalar::ZERO;
        let mut scalars: Vec<Scalar> = Vec::with_capacity(members.len() + 4);
        let mut points: Vec<EdwardsPoint> = Vec::with_capacity(members.len() + 4);
        // Distinct keys and the sum of their members' zᵢ·kᵢ: a trust list
        // has a handful of keys, so a linear search is the cheap way.
        let mut keys: Vec<(&StrictKey, Scalar)> = Vec::new();
        for &i in members {
            let (p, z, key) = (self.prepared(i), &self.z[i], self.items[i].key);
            b_coefficient += z * p.s;
            scalars.push(-z);
            points.push(p.r);
            let zk = z * p.k;
            match keys.iter_mut().find(|(k, _)| std::ptr::eq(*k, key) || k.as_bytes() == key.as_bytes()) {
                Some((_, sum)) => *sum += zk,
                None => keys.push((key, zk)),
            }
        }
        for (key, sum) in keys {
            scalars.push(-sum);
            points.push(key.point);
        }
        scalars.push(b_coefficient);
        points.push(ED25519_BASEPOINT_POINT);
        EdwardsPoint::vartime_multiscalar_mul(&scalars, &points).mul_by_cofactor().is_identity()
    }

    /// Gives every member of `members` its verdict in `out`; returns whether
    /// all were good. `known_bad`: the caller knows the set holds a bad
    /// member (its sibling was all good and their union failed), so the
    /// equation over the whole set is not worth computing.
    fn settle(&self, members: &[usize], known_bad: bool, out: &mut [bool]) -> bool {
        match members {
            [] => true,
            [i] => {
                let ok = single_equation(self.items[*i].key, self.prepared(*i));
                out[*i] = ok;
                ok
            }
            _ if self.splits.get() == 0 => {
                let mut all = true;
                for &i in members {
                    out[i] = single_equation(self.items[i].key, self.prepared(i));
                    all &= out[i];
                }
                all
            }
            _ if !known_bad && self.equation(members) => {
                for &i in members {
                    out[i] = true;
                }
                true
            }
            _ => {
                self.splits.set(self.splits.get() - 1);
                let (left, right) = members.split_at(members.len() / 2);
                let left_good = self.settle(left, false, out);
                self.settle(right, left_good, out);
                false
            }
        }
    }
}

/// Signatures no honest signer makes, for the tests of this crate.
#[cfg(test)]
pub(crate) mod craft {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;

    /// Every encoding a decompression accepts for a small-order point:
    /// canonical ones, `y + p` where it fits in 255 bits, and a flipped sign
    /// bit where `x = 0`.
    pub fn small_order_encodings() -> Vec<[u8; 32]> {
        let mut out = Vec::new();
        for t in EIGHT_TORSION {
            let canonical = t.compress().to_bytes();
            out.push(canonical);
            let mut flipped = canonical;
            flipped[31] ^= 0x80;
            out.push(flipped);
        }
        // y + p for y in 0..19 (p = 2^255 - 19), both signs.
        for y in 0u8..19 {
            let mut b = [0xffu8; 32];
            b[31] = 0x7f;
            b[0] = 0xed + y;
            out.push(b);
            b[31] |= 0x80;
            out.push(b);
        }
        out.into_iter().filter(|b| CompressedEdwardsY(*b).decompress().is_some_and(|p| p.is_small_order())).collect()
    }

    /// The secret scalar of a key, to craft signatures a signer never would.
    pub fn secret_scalar(key: &SigningKey) -> Scalar {
        let h: [u8; 64] = Sha512::digest(key.to_bytes()).into();
        let mut a = [0u8; 32];
        a.copy_from_slice(&h[..32]);
        Scalar::from_bytes_mod_order(curve25519_dalek::scalar::clamp_integer(a))
    }

    pub fn challenge(r: &[u8; 32], a: &[u8; 32], m: &[u8]) -> Scalar {
        Scalar::from_bytes_mod_order_wide(
            &Sha512::new().chain_update(r).chain_update(a).chain_update(m).finalize().into(),
        )
    }

    /// A signature with `R = [r]B + T` and `S = r + k·a`: the cofactored
    /// equation holds, the cofactorless one does not.
    pub fn torsioned(key: &SigningKey, msg: &[u8], r: u64, t: usize) -> [u8; 64] {
        let r = Scalar::from(r);
        let big_r = (EdwardsPoint::mul_base(&r) + EIGHT_TORSION[t]).compress().to_bytes();
        let k = challenge(&big_r, key.verifying_key().as_bytes(), msg);
        let s = r + k * secret_scalar(key);
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&big_r);
        sig[32..].copy_from_slice(s.as_bytes());
        sig
    }

    /// A signature with a small-order `R` that satisfies the cofactored
    /// equation (`S = k·a`).
    pub fn small_r(key: &SigningKey, msg: &[u8], r: [u8; 32]) -> [u8; 64] {
        let k = challenge(&r, key.verifying_key().as_bytes(), msg);
        let s = k * secret_scalar(key);
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r);
        sig[32..].copy_from_slice(s.as_bytes());
        sig
    }

    pub fn plus_l(sig: [u8; 64]) -> [u8; 64] {
        // L, the order of the base point, little-endian.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let l = L;
        let mut out = sig;
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(sig[32 + i]) + u16::from(l[i]) + carry;
            out[32 + i] = v as u8;
            carry = v >> 8;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::craft::*;
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use ed25519_dalek::Signer;
    use proptest::prelude::*;

    #[test]
    fn canonical_check_without_reencoding_agrees_with_reencoding() {
        // Every non-canonical encoding has y >= p or a sign bit on x = 0;
        // try all 38 of the first kind and the sign flips of many points.
        let mut cases = Vec::new();
        for y in 0u8..19 {
            for sign in [0u8, 0x80] {
                let mut b = [0xffu8; 32];
                b[0] = 0xed + y;
                b[31] = 0x7f | sign;
                cases.push(b);
            }
        }
        for seed in 0u8..64 {
            let mut b = SigningKey::from_bytes(&[seed; 32]).verifying_key().to_bytes();
            cases.push(b);
            b[31] ^= 0x80;
            cases.push(b);
        }
        cases.extend(small_order_encodings());
        for b in cases {
            let Some(p) = CompressedEdwardsY(b).decompress() else { continue };
            let by_reencoding = p.compress().to_bytes() == b && !p.is_small_order();
            assert_eq!(y_is_canonical(&b) && !p.is_small_order(), by_reencoding, "{}", hex::encode(b));
        }
    }

    #[test]
    fn keys_are_checked_at_load() {
        let good = SigningKey::from_bytes(&[7; 32]);
        assert_eq!(StrictKey::from_bytes(good.verifying_key().as_bytes()), Ok(StrictKey::from(&good)));
        for b in small_order_encodings() {
            let e = StrictKey::from_bytes(&b).unwrap_err();
            assert!(matches!(e, KeyError::SmallOrder | KeyError::NonCanonical), "{e:?}");
        }
        // A prime-order key plus a point of order 8.
        let mixed = (good.verifying_key().to_edwards() + EIGHT_TORSION[1]).compress().to_bytes();
        assert_eq!(StrictKey::from_bytes(&mixed), Err(KeyError::MixedOrder));
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert_eq!(StrictKey::from_bytes(&not_a_point), Err(KeyError::NotAPoint));
    }

    #[test]
    fn one_by_one_matches_verify_strict_but_for_torsioned_nonces() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let strict = StrictKey::from(&key);
        let vk = key.verifying_key();
        let msg = b"a message";
        let good = key.sign(msg).to_bytes();
        let dalek = |sig: &[u8; 64]| vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig)).is_ok();
        assert!(check_one(&strict, msg, &good) && dalek(&good));
        assert!(!check_one(&strict, b"another message", &good));
        assert!(!check_one(&strict, msg, &plus_l(good)) && !dalek(&plus_l(good)));
        for r in small_order_encodings() {
            let sig = small_r(&key, msg, r);
            assert!(!check_one(&strict, msg, &sig) && !dalek(&sig), "{}", hex::encode(r));
        }
        // The one difference, documented above: R with a small-order
        // component over a correct commitment, which only the signer can
        // make. Cofactored: accepted; verify_strict: refused.
        for t in 1..8 {
            let sig = torsioned(&key, msg, 1234 + t as u64, t);
            assert!(check_one(&strict, msg, &sig) && !dalek(&sig));
        }
    }

    /// What a member of a random batch is.
    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Good,
        OtherMessage,
        OtherKey,
        FlippedBit(usize),
        SPlusL,
        SmallR(usize),
        Torsioned(usize),
        NotAPointR,
    }

    fn arb_kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            6 => Just(Kind::Good),
            1 => Just(Kind::OtherMessage),
            1 => Just(Kind::OtherKey),
            1 => (0usize..512).prop_map(Kind::FlippedBit),
            1 => Just(Kind::SPlusL),
            1 => (0usize..64).prop_map(Kind::SmallR),
            1 => (1usize..8).prop_map(Kind::Torsioned),
            1 => Just(Kind::NotAPointR),
        ]
    }

    fn member(keys: &[SigningKey], i: usize, kind: Kind) -> (usize, Vec<u8>, [u8; 64]) {
        let k = i % keys.len();
        let msg = format!("member {i}").into_bytes();
        let sig = keys[k].sign(&msg).to_bytes();
        let sig = match kind {
            Kind::Good => sig,
            Kind::OtherMessage => keys[k].sign(b"something else").to_bytes(),
            Kind::OtherKey => SigningKey::from_bytes(&[200; 32]).sign(&msg).to_bytes(),
            Kind::FlippedBit(bit) => {
                let mut s = sig;
                s[bit / 8] ^= 1 << (bit % 8);
                s
            }
            Kind::SPlusL => plus_l(sig),
            Kind::SmallR(n) => {
                let all = small_order_encodings();
                small_r(&keys[k], &msg, all[n % all.len()])
            }
            Kind::Torsioned(t) => torsioned(&keys[k], &msg, 99 + i as u64, t),
            Kind::NotAPointR => {
                let mut s = sig;
                s[..32].copy_from_slice(&[2; 32]);
                s
            }
        };
        (k, msg, sig)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Random batches with random bad members: every member's batch
        /// verdict is its one-by-one verdict.
        #[test]
        fn batch_verdicts_are_single_verdicts(kinds in proptest::collection::vec(arb_kind(), 1..40), seed in any::<[u8; 32]>(), nkeys in 1usize..4) {
            let keys: Vec<SigningKey> = (0..nkeys).map(|i| SigningKey::from_bytes(&[i as u8 + 1; 32])).collect();
            let strict: Vec<StrictKey> = keys.iter().map(StrictKey::from).collect();
            let members: Vec<_> = kinds.iter().enumerate().map(|(i, k)| member(&keys, i, *k)).collect();
            let items: Vec<Item<'_>> = members.iter().map(|(k, m, s)| Item { key: &strict[*k], msg: m, sig: s }).collect();
            let batch = check_many(&items, &seed);
            for (i, item) in items.iter().enumerate() {
                prop_assert_eq!(batch[i], check_one(item.key, item.msg, item.sig), "member {} {:?}", i, kinds[i]);
                let expected = matches!(kinds[i], Kind::Good | Kind::Torsioned(_));
                prop_assert_eq!(batch[i], expected, "member {} {:?}", i, kinds[i]);
            }
        }
    }

    #[test]
    fn a_batch_of_mostly_forged_members_still_gets_exact_verdicts() {
        // Past the split budget the rest goes one by one; the verdicts
        // must not change, whatever the share of bad members.
        let keys = [SigningKey::from_bytes(&[21; 32])];
        let strict = StrictKey::from(&keys[0]);
        for bad_every in [1usize, 2, 3, 7, 64] {
            let members: Vec<_> = (0..64)
                .map(|i| member(&keys, i, if i % bad_every == 0 { Kind::OtherKey } else { Kind::Good }))
                .collect();
            let items: Vec<Item<'_>> = members.iter().map(|(_, m, s)| Item { key: &strict, msg: m, sig: s }).collect();
            let got = check_many(&items, &[5; 32]);
            let want: Vec<bool> = (0..64).map(|i| i % bad_every != 0).collect();
            assert_eq!(got, want, "one bad in {bad_every}");
        }
        assert_eq!(split_budget(64), 14);
        assert_eq!(split_budget(2), 4);
    }

    #[test]
    fn coefficients_depend_on_seed_and_batch() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let strict = StrictKey::from(&key);
        let sigs: Vec<[u8; 64]> = (0..6u8).map(|i| key.sign(&[i]).to_bytes()).collect();
        let prepared: Vec<_> = sigs.iter().enumerate().map(|(i, s)| prepare(&strict, &[i as u8], s)).collect();
        let a = coefficients(&[1; 32], &prepared);
        assert_eq!(a.len(), 6);
        assert_ne!(a, coefficients(&[2; 32], &prepared));
        assert_ne!(a[..5], coefficients(&[1; 32], &prepared[..5])[..]);
        assert!(a.iter().all(|z| z.as_bytes()[16..] == [0; 16]));
    }
}
