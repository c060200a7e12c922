//! The state file as a start loads it: loaded or refused with an error
//! naming it, never a panic. Read from memory (the same parser `load`
//! runs over the file), so that each input costs no file system calls.
#![no_main]
use healthgate::durability::state_file;
use healthgate::store::Store;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = state_file::load_from(data, std::path::Path::new("state.hgs"), &Store::default());
});
