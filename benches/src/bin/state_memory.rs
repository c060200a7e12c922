//! Bytes per holder in the colour store: loads N synthetic holders (default
//! 10 M) and reports the growth of the resident set divided by N, then the
//! mean time of a lookup of a random holder (1 M lookups spread over the
//! whole population, so that they miss the caches as a province's scans do)
//! and of an unknown holder (1 M ids not in the store), back to back (the
//! processor overlaps consecutive lookups) and chained (each waits for the
//! one before, the latency of one lookup alone). Lookups are timed
//! in the thread's CPU time, the median of five rounds, so that a busy
//! machine's other processes count less.
//!
//! `cargo run --release -p healthgate-benches --bin state_memory -- 10000000`
//!
//! With `--dashmap` it measures the same on the map the store used before
//! its own table (a `DashMap` of 64 shards with ahash), for comparison; run
//! the two one after the other on the same machine.

use dashmap::DashMap;
use healthgate::holder::HolderId;
use healthgate::population::{mix64, Mix, Population};
use healthgate::state::HolderState;
use healthgate::store::Store;
use healthgate_benches::{rss_bytes, thread_cpu as cpu_time};
use std::hint::black_box;
use std::time::{Duration, Instant};

const LOOKUPS: u64 = 1_000_000;

/// Times `LOOKUPS` calls of `found` in CPU time, five rounds, and returns
/// how many found their holder and the median round.
fn time_lookups(probes: &[HolderId], found: impl Fn(&HolderId) -> bool) -> (usize, Duration) {
    let mut rounds = Vec::new();
    let mut n = 0;
    for _ in 0..5 {
        let started = cpu_time();
        n = probes.iter().filter(|h| found(black_box(h))).count();
        rounds.push(cpu_time() - started);
    }
    rounds.sort();
    (n, rounds[2])
}

/// Times `LOOKUPS` lookups each of which waits for the one before: the
/// next probe's index adds `since(...)` (1 for every holder here), a value
/// read from the holder, so the processor cannot overlap two lookups as it
/// does in [`time_lookups`]. This is the latency a single scan sees.
fn time_chained(probes: &[HolderId], since: impl Fn(&HolderId) -> u64) -> Duration {
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let started = cpu_time();
        let mut k = 0usize;
        for _ in 0..LOOKUPS {
            k = (k + 1 + since(black_box(&probes[k])) as usize) % probes.len();
        }
        rounds.push(cpu_time() - started);
        black_box(k);
    }
    rounds.sort();
    rounds[2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dashmap = args.iter().any(|a| a == "--dashmap");
    let n: u64 = args.iter().find_map(|s| s.parse().ok()).unwrap_or(10_000_000);
    let pop = Population { seed: 1, size: n, mix: Mix::default() };
    let probes: Vec<_> = (0..LOOKUPS).map(|k| pop.holder(mix64(k) % n)).collect();
    // Ids of another population: not in the store.
    let other = Population { seed: 2, size: n, mix: Mix::default() };
    let unknown: Vec<_> = (0..LOOKUPS).map(|k| other.holder(mix64(k) % n)).collect();
    let what = if dashmap { "dashmap (64 shards)" } else { "holder table" };

    let before = rss_bytes();
    let started = Instant::now();
    let cpu_started = cpu_time();
    let (known, absent, chained) = if dashmap {
        let map: DashMap<HolderId, HolderState, ahash::RandomState> =
            DashMap::with_capacity_and_hasher_and_shard_amount(n as usize, ahash::RandomState::new(), 64);
        for (id, color) in pop.iter() {
            map.insert(id, HolderState::new(color, 1, Some(1)));
        }
        let inserted = (started.elapsed(), cpu_time() - cpu_started);
        report(what, n, before, inserted, String::new());
        assert_eq!(map.len() as u64, n);
        let get = |h: &HolderId| map.get(h).map(|e| *e).is_some();
        let since = |h: &HolderId| map.get(h).map_or(0, |e| e.since());
        (time_lookups(&probes, get), time_lookups(&unknown, get), time_chained(&probes, since))
    } else {
        let store = Store::with_capacity(n as usize);
        for (id, color) in pop.iter() {
            store.insert(id, HolderState::new(color, 1, Some(1)), vec![]);
        }
        let inserted = (started.elapsed(), cpu_time() - cpu_started);
        let load = format!(", table {:.1} % full", 100.0 * n as f64 / store.table_slots() as f64);
        report(what, n, before, inserted, load);
        assert_eq!(store.len() as u64, n);
        let get = |h: &HolderId| store.read(h, 2, |v| v.is_some());
        let since = |h: &HolderId| store.read(h, 2, |v| v.map_or(0, |v| v.since));
        (time_lookups(&probes, get), time_lookups(&unknown, get), time_chained(&probes, since))
    };
    assert_eq!(known.0 as u64, LOOKUPS);
    assert_eq!(absent.0, 0);
    let ns = |d: Duration| d.as_nanos() as f64 / LOOKUPS as f64;
    println!("{LOOKUPS} random lookups: {:.0} ns each on average (CPU time, median of 5 rounds)", ns(known.1));
    println!("{LOOKUPS} unknown holders: {:.0} ns each on average (CPU time, median of 5 rounds)", ns(absent.1));
    println!(
        "{LOOKUPS} chained lookups (each waits for the last): {:.0} ns each (CPU time, median of 5 rounds)",
        ns(chained)
    );
}

fn report(what: &str, n: u64, before: u64, (wall, cpu): (Duration, Duration), extra: String) {
    let after = rss_bytes();
    println!(
        "{n} holders ({what}): {:.1} bytes/holder resident ({:.0} MiB), inserted in {wall:.1?} ({cpu:.1?} CPU){extra}",
        (after - before) as f64 / n as f64,
        (after - before) as f64 / (1u64 << 20) as f64,
    );
}
