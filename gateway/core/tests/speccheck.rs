//! The fifteen Ed25519 edge cases of "Taming the many EdDSAs" (Chalkias,
//! Garillot, Nikolaenko, 2020; novifinancial/ed25519-speccheck `cases.json`)
//! through both signature paths: every case gets the same verdict one by
//! one, in a batch of its own, and mixed into batches of good signatures at
//! every position, under several seeds.
//!
//! The cases are read from `../shared/vectors/ed25519-speccheck-cases.json`
//! beside the workspace (CI has `shared/` there), or from the file named by
//! `HEALTHGATE_SPECCHECK_CASES`. They are not copied into the repository:
//! their README gives no licence for that. The test fails, saying where it
//! looked, when the file is missing.

use ed25519_dalek::{Signer, SigningKey};
use healthgate_core::signature::{check_many, check_one, Item, KeyError, StrictKey};
use std::path::PathBuf;

struct Case {
    msg: Vec<u8>,
    key: [u8; 32],
    sig: [u8; 64],
}

fn cases_path() -> PathBuf {
    match std::env::var_os("HEALTHGATE_SPECCHECK_CASES") {
        Some(p) => PathBuf::from(p),
        // gateway/core → the workspace → its parent, where shared/ lives.
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors/ed25519-speccheck-cases.json"),
    }
}

fn cases() -> Vec<Case> {
    let path = cases_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the speccheck cases are missing: cannot read {} ({e}). Put the shared/ folder beside the \
             workspace (shared/vectors/ed25519-speccheck-cases.json) or set HEALTHGATE_SPECCHECK_CASES",
            path.display()
        )
    });
    let json: serde_json::Value = serde_json::from_str(&text).expect("the cases file is JSON");
    let hex_field = |c: &serde_json::Value, f: &str| hex::decode(c[f].as_str().expect("hex string")).expect("hex");
    json.as_array()
        .expect("a list of cases")
        .iter()
        .map(|c| Case {
            msg: hex_field(c, "message"),
            key: hex_field(c, "pub_key").try_into().expect("32-byte key"),
            sig: hex_field(c, "signature").try_into().expect("64-byte signature"),
        })
        .collect()
}

/// Good signatures to mix the cases into, under two keys.
fn good_members(n: usize) -> Vec<(StrictKey, Vec<u8>, [u8; 64])> {
    let signers = [SigningKey::from_bytes(&[11; 32]), SigningKey::from_bytes(&[12; 32])];
    (0..n)
        .map(|i| {
            let s = &signers[i % 2];
            let msg = format!("good member {i}").into_bytes();
            (StrictKey::from(s), msg.clone(), s.sign(&msg).to_bytes())
        })
        .collect()
}

/// What our paths say of each case: the key refused at load (so no code
/// under it is ever checked), or the signature's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    KeyRefused(KeyError),
    Signature(bool),
}

#[test]
fn every_case_has_one_verdict_on_both_paths() {
    let cases = cases();
    assert_eq!(cases.len(), 15, "the paper has fifteen cases");
    let mut verdicts = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let key = match StrictKey::from_bytes(&case.key) {
            Err(e) => {
                verdicts.push(Verdict::KeyRefused(e));
                continue;
            }
            Ok(k) => k,
        };
        let single = check_one(&key, &case.msg, &case.sig);
        let item = Item { key: &key, msg: &case.msg, sig: &case.sig };
        assert_eq!(check_many(&[item], &[0; 32]), vec![single], "case {n} alone");
        assert_eq!(check_many(&[item, item], &[1; 32]), vec![single; 2], "case {n} twice");
        for size in [2usize, 3, 8, 33, 64] {
            let good = good_members(size - 1);
            for at in [0, size / 2, size - 1] {
                for seed in [[2u8; 32], [3; 32]] {
                    let mut items: Vec<Item<'_>> =
                        good.iter().map(|(k, m, s)| Item { key: k, msg: m, sig: s }).collect();
                    items.insert(at, item);
                    let got = check_many(&items, &seed);
                    assert_eq!(got[at], single, "case {n} at {at} of {size}");
                    assert!(got.iter().enumerate().all(|(i, ok)| i == at || *ok), "good members of case {n}'s batch");
                }
            }
        }
        verdicts.push(Verdict::Signature(single));
    }
    // Cases 0-8 and 11-14 have a small-order or mixed-order key, refused at
    // load; 9 and 10 have S >= L, refused by both paths.
    use KeyError::*;
    use Verdict::*;
    let expected = [
        KeyRefused(SmallOrder),
        KeyRefused(SmallOrder),
        KeyRefused(SmallOrder),
        KeyRefused(SmallOrder),
        KeyRefused(MixedOrder),
        KeyRefused(MixedOrder),
        KeyRefused(MixedOrder),
        KeyRefused(MixedOrder),
        KeyRefused(MixedOrder),
        Signature(false),
        Signature(false),
        KeyRefused(MixedOrder),
        KeyRefused(MixedOrder),
        KeyRefused(NonCanonical),
        KeyRefused(NonCanonical),
    ];
    assert_eq!(verdicts, expected);
}

/// Against ed25519-dalek's `verify_strict` (one by one): the same answer
/// on every case but 6, whose signature `verify_strict` accepts under a key
/// with a small-order component; such keys are refused when loaded, since
/// no honest key generation makes one.
#[test]
fn verdicts_match_verify_strict_but_for_mixed_order_keys() {
    for (n, case) in cases().iter().enumerate() {
        let dalek = ed25519_dalek::VerifyingKey::from_bytes(&case.key)
            .is_ok_and(|k| k.verify_strict(&case.msg, &ed25519_dalek::Signature::from_bytes(&case.sig)).is_ok());
        let ours = StrictKey::from_bytes(&case.key).is_ok_and(|k| check_one(&k, &case.msg, &case.sig));
        if n == 6 {
            assert!(dalek && !ours, "case 6");
            assert_eq!(StrictKey::from_bytes(&case.key), Err(KeyError::MixedOrder));
        } else {
            assert_eq!(ours, dalek, "case {n}");
        }
    }
}
