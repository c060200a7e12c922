//! Start-up from a state file alone: writes a synthetic population of N
//! holders (default 10 M) to a state file, then loads it into a fresh store
//! three times and reports each load's wall and CPU time (all threads) and
//! the resident bytes per holder after it.
//!
//! `cargo run --release -p healthgate-benches --bin state_load -- 60000000`
//!
//! The `recovery` binary measures the whole start of a gateway (this load,
//! then the log's replay and the tracing index).

use healthgate::durability::state_file;
use healthgate::population::{Mix, Population};
use healthgate::store::Store;
use healthgate_benches::{process_cpu, rss_bytes};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state.hgs");
    let started = Instant::now();
    state_file::write_population(&path, &Population { seed: 5, size: n, mix: Mix::default() }, 1)?;
    println!(
        "wrote {n} holders ({:.0} MiB) in {:.1?}",
        std::fs::metadata(&path)?.len() as f64 / (1 << 20) as f64,
        started.elapsed()
    );
    for round in 1..=3 {
        let before = rss_bytes();
        let store = Store::default();
        let (wall, cpu) = (Instant::now(), process_cpu());
        let loaded = state_file::load(&path, &store)?;
        let (wall, cpu) = (wall.elapsed(), process_cpu() - cpu);
        assert_eq!(loaded.holders, n);
        println!(
            "load {round}: {:.2} s ({:.2} s CPU), {:.1} bytes/holder resident",
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            (rss_bytes().saturating_sub(before)) as f64 / n as f64
        );
    }
    Ok(())
}
