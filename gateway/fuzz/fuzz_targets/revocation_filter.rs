//! The exported revocation filter, read as an offline app reads it
//! (docs/FEED.md): a filter or `None`, never a panic, whatever the bytes.
#![no_main]
use healthgate_core::revocation::reader::{holder_item, serial_item, ExportedFilter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(f) = ExportedFilter::parse(data) {
        let _ = f.may_contain(&holder_item(&[0xab; 16]));
        let _ = f.may_contain(&serial_item(f.version));
    }
});
