//! Scan and check-in bodies as the public listener parses them: a clear
//! error or a value, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = healthgate::serving::http::fuzzing::scan_body(data);
    let _ = healthgate::serving::http::fuzzing::checkin_body(data);
});
