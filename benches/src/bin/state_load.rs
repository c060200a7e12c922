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
use std::time::{Duration, Instant};

fn process_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("statm resident");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

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
