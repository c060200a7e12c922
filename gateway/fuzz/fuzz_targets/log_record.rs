//! A record of the registration log as recovery reads it: a record or a
//! typed error, never a panic (a damaged log is an error that names it).
#![no_main]
use healthgate::durability::wal::record::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Record::decode(data);
});
