//! Bytes per holder in the colour store: loads N synthetic holders (default
//! 10 M) and reports the growth of the resident set divided by N, then the
//! mean time of a lookup of a random holder (1 M lookups spread over the
//! whole population, so that they miss the caches as a province's scans do).
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

    const LOOKUPS: u64 = 1_000_000;
    let probes: Vec<_> = (0..LOOKUPS).map(|k| pop.holder(healthgate::population::mix64(k) % n)).collect();
    let started = std::time::Instant::now();
    let found = probes.iter().filter(|h| store.read(std::hint::black_box(h), 2, |v| v.is_some())).count();
    let elapsed = started.elapsed();
    assert_eq!(found as u64, LOOKUPS);
    println!("{LOOKUPS} random lookups: {:.0} ns each on average", elapsed.as_nanos() as f64 / LOOKUPS as f64);
}
