//! The authority's signed batches: parsed, canonically encoded and checked
//! against a key; refused with an error, never a panic.
#![no_main]
use ed25519_dalek::SigningKey;
use healthgate_core::feed::{RevocationBatch, UpdateBatch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = [("AUTH".parse().expect("a kid"), SigningKey::from_bytes(&[7; 32]).verifying_key())];
    if let Ok(b) = serde_json::from_slice::<UpdateBatch>(data) {
        let _ = b.signing_input();
        let _ = b.verify(&keys);
    }
    if let Ok(b) = serde_json::from_slice::<RevocationBatch>(data) {
        let _ = b.signing_input();
        let _ = b.verify(&keys);
    }
});
