//! The state file as a start loads it: loaded or refused with an error
//! naming it, never a panic.
#![no_main]
use healthgate::durability::state_file;
use healthgate::store::Store;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("state.hgs");
    std::fs::write(&path, data).expect("writing the input");
    let _ = state_file::load(&path, &Store::default());
});
