//! What durability costs: scan throughput with the registration log off,
//! strict (answer after fsync, group commit) and async, side by side in one
//! run, in-process (no HTTP, so the log's share is not diluted by it).
//!
//! `cargo run --release -p healthgate-benches --bin log_cost -- [SECONDS] [CONCURRENCY] [MODES] [WAIT_US]`
//!
//! MODES is a comma-separated subset of `off,strict,async` (default all);
//! WAIT_US is the group commit's `batch_max_wait_us` (default the gateway's).
//!
//! Each mode gets a fresh demo gateway on a temporary directory; the same
//! pre-signed codes are scanned by CONCURRENCY tasks on a two-thread runtime
//! for SECONDS. Prints scans/s per mode, the ratio to `off`, and the group
//! commit batch sizes seen (from the gateway's own histogram).

use healthgate::clock::{Clock, SystemClock};
use healthgate::gateway::ScanRequest;
use healthgate::policy::Direction;
use healthgate::token::Claims;
use healthgate::Color;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let concurrency: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut base = None;
    println!("{concurrency} concurrent scanners, {seconds} s per mode, 2 runtime threads");
    let modes = std::env::args().nth(3).unwrap_or_else(|| "off,strict,async".into());
    for mode in modes.split(',') {
        let wait = std::env::args().nth(4);
        let rate = rt.block_on(run(mode, seconds, concurrency, wait.as_deref()))?;
        let ratio = rate.0 / *base.get_or_insert(rate.0);
        println!("{mode:<7} {:>9.0} scans/s   {:>5.3} × off   {}", rate.0, ratio, rate.1);
    }
    Ok(())
}

async fn run(mode: &str, seconds: u64, concurrency: usize, wait_us: Option<&str>) -> anyhow::Result<(f64, String)> {
    let dir = tempfile::tempdir()?;
    let now = SystemClock.now();
    let opts = healthgate::operations::demo::DemoOptions { size: 100_000, seed: 2, ..Default::default() };
    let env = healthgate::operations::demo::prepare(dir.path(), &opts, "127.0.0.1:0", "127.0.0.1:0", now)?;
    let text = std::fs::read_to_string(&env.config)?;
    let wait = wait_us.map(|w| format!("batch_max_wait_us = {w}\n")).unwrap_or_default();
    std::fs::write(&env.config, format!("{text}\n[log]\nmode = \"{mode}\"\n{wait}"))?;
    let config = healthgate::operations::config::Config::load(&env.config)?;
    let gw = healthgate::serving::server::build(&config, Arc::new(SystemClock))?;
    {
        let (gw, config) = (gw.clone(), config.clone());
        tokio::task::spawn_blocking(move || gw.recover(&config)).await??;
    }
    gw.set_loaded();
    let (kid, key) = healthgate::operations::keyfiles::read_secret(&env.issuer_key)?;
    let greens: Vec<u64> = (0..opts.size).filter(|&i| env.population.color(i) == Color::Green).take(4096).collect();
    let codes: Arc<Vec<String>> = Arc::new(
        greens
            .iter()
            .map(|&i| {
                let holder = env.population.holder(i);
                Claims { kid, holder, issued_at: now, expires_at: now + 3600, color: Color::Green, serial: i }
                    .sign(&key)
                    .expect("sign")
            })
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (gw, codes, stop, done) = (gw.clone(), codes.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            // Each task owns its own slice of holders and walks them in, then
            // out, so every scan passes.
            let mine: Vec<usize> = (t..codes.len()).step_by(concurrency).collect();
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let direction = if (k / mine.len()).is_multiple_of(2) { Direction::In } else { Direction::Out };
                let req = ScanRequest {
                    code: &codes[mine[k % mine.len()]],
                    checkpoint: "wuhan-metro-wuchang-1",
                    direction,
                    temperature_c: None,
                };
                let out = gw.scan(&gw.live(), &req).await.expect("scan");
                assert!(out.decision.pass, "{:?}", out.decision);
                done.fetch_add(1, Ordering::Relaxed);
                k += 1;
                // With the log off nothing in a scan awaits: yield, or the
                // tasks starve the timer that ends the run.
                tokio::task::yield_now().await;
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for t in tasks {
        t.await?;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
    let m = gw.metrics();
    let batches = m.log_batch_records.get_sample_count();
    let detail = if batches > 0 {
        format!(
            "fsyncs {batches}, mean batch {:.1} records, mean fsync {:.0} µs",
            m.log_batch_records.get_sample_sum() / batches as f64,
            m.log_fsync_seconds.get_sample_sum() / batches as f64 * 1e6
        )
    } else {
        String::new()
    };
    let gw2 = gw.clone();
    tokio::task::spawn_blocking(move || gw2.close_log()).await?;
    Ok((rate, detail))
}
