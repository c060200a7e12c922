//! The QR text decoder: any string is a token or a typed error, never a
//! panic.
#![no_main]
use healthgate_core::token::RawToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RawToken::decode(text);
    }
});
