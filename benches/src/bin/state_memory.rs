//! Bytes per holder in the colour store: loads N synthetic holders (default
//! 10 M) and reports the growth of the resident set divided by N.
//!
//! `cargo run --release -p healthgate-benches --bin state_memory -- 10000000`

use healthgate::population::{Mix, Population};
use healthgate::state::HolderState;
use healthgate::store::Store;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("statm resident");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let pop = Population { seed: 1, size: n, mix: Mix::default() };
    let before = rss_bytes();
    let started = std::time::Instant::now();
    let store = Store::with_capacity(n as usize);
    for (id, color) in pop.iter() {
        store.insert(id, HolderState::new(color, 1, Some(1)), vec![]);
    }
    let after = rss_bytes();
    println!(
        "{n} holders: {:.1} bytes/holder resident ({:.0} MiB), inserted in {:.1?}",
        (after - before) as f64 / n as f64,
        (after - before) as f64 / (1u64 << 20) as f64,
        started.elapsed()
    );
    assert_eq!(store.len() as u64, n);
}
