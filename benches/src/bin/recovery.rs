//! Recovery time: a 1 M-holder state plus 1 M log records after it.
//!
//! `cargo run --release -p healthgate-benches --bin recovery -- [HOLDERS] [RECORDS]`
//!
//! Writes the demo population (HOLDERS), then RECORDS scan registrations
//! with state effects straight through the log writer (as a gateway would,
//! without spending a signature check on each), then starts a gateway on
//! that directory twice: first with an empty tracing index (so recovery
//! also indexes every registration), then again with the index up to date
//! (no snapshot in between, so both replay every record).

use healthgate::clock::{Clock, SystemClock};
use healthgate::durability::wal::record::{Event, ScanRecord};
use healthgate::durability::wal::storage::FsStorage;
use healthgate::durability::wal::{Recovered, Wal, WalSettings};
use healthgate::policy::{Direction, Passback, Reason};
use healthgate::state::Effect;
use healthgate_benches::process_cpu;
use std::sync::Arc;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let holders: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let records: u64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let now = SystemClock.now();
    let opts = healthgate::operations::demo::DemoOptions { size: holders, seed: 4, ..Default::default() };
    let env = healthgate::operations::demo::prepare(dir.path(), &opts, "127.0.0.1:0", "127.0.0.1:0", now)?;
    let config = healthgate::operations::config::Config::load(&env.config)?;
    let log = config.log.clone().expect("logging on");

    let started = Instant::now();
    let storage = FsStorage::open(&log.dir.join("wal"))?;
    let wal = Wal::start(
        Box::new(storage),
        WalSettings::default(),
        &Recovered { next_lsn: 1, tail: None, replayed: 0, truncated_bytes: 0 },
        (),
    );
    let mut last = None;
    for i in 0..records {
        let holder = env.population.holder(i % holders);
        let body = Event::Scan(ScanRecord {
            holder: Some(holder),
            serial: i,
            checkpoint: "wuhan-metro-wuchang-1".into(),
            direction: if i % 2 == 0 { Direction::In } else { Direction::Out },
            temperature_c: Some(36.5),
            pass: true,
            reason: Reason::Ok,
            effect: Effect {
                health: true,
                passback: if i % 2 == 0 { Passback::Enter(2) } else { Passback::Exit },
                color: None,
            },
        });
        loop {
            match wal.append(now, body.clone()) {
                Ok(t) => {
                    last = Some(t);
                    break;
                }
                Err(healthgate::durability::wal::WalError::Overloaded) => {
                    std::thread::sleep(std::time::Duration::from_micros(200))
                }
                Err(e) => anyhow::bail!("{e}"),
            }
        }
    }
    if let Some(t) = last {
        t.wait_blocking()?;
    }
    wal.close();
    let size: u64 = std::fs::read_dir(log.dir.join("wal"))?
        .map(|e| e.map(|e| e.metadata().map(|m| m.len()).unwrap_or(0)).unwrap_or(0))
        .sum();
    println!("wrote {records} log records ({:.0} MiB) in {:.1?}", size as f64 / (1 << 20) as f64, started.elapsed());

    for label in ["recovery, index empty", "recovery, index current"] {
        let gw = healthgate::serving::server::build(&config, Arc::new(SystemClock))?;
        let cpu = process_cpu();
        let r = gw.recover(&config)?;
        let cpu = process_cpu() - cpu;
        println!(
            "{label:<26} {:>7.2} s  ({} holders, {} records replayed, {} visits indexed; {:.2} s CPU, all threads)",
            r.elapsed.as_secs_f64(),
            r.holders,
            r.replayed,
            r.indexed,
            cpu.as_secs_f64()
        );
        // Stop the writer and the indexer without a snapshot, so that the
        // second start replays the same records.
        gw.stop_log_without_snapshot();
    }
    Ok(())
}
