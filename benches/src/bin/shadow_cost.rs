//! What shadow rules cost a scan: builds two gateways on the same demo
//! (same keys, same holders, same signed codes), one without a candidate
//! policy and one with a candidate that disagrees on yellow, and runs N
//! in-process scans on each (green holders at a metro gate, in then out),
//! in `run_live` and `run_candidate`. It prints the time per scan; under
//! `valgrind --tool=callgrind` the inclusive instruction counts of the two
//! functions give a difference that noise cannot move
//! (`scripts/shadow-cost.sh`).
//!
//! Usage: shadow_cost N

use healthgate::clock::{ManualClock, SystemClock};
use healthgate::durability::state_file;
use healthgate::gateway::{Gateway, ScanRequest};
use healthgate::operations::config::Config;
use healthgate::operations::demo::DemoOptions;
use healthgate::policy::Direction;
use healthgate::token::Claims;
use healthgate::{Clock, Color};
use std::sync::Arc;

#[inline(never)]
fn run_live(gw: &Gateway, reqs: &[ScanRequest<'_>]) -> usize {
    // Distinct bodies, so that the compiler cannot fold the two into one.
    run(gw, reqs) + std::hint::black_box(0)
}

#[inline(never)]
fn run_candidate(gw: &Gateway, reqs: &[ScanRequest<'_>]) -> usize {
    run(gw, reqs) * std::hint::black_box(1)
}

fn run(gw: &Gateway, reqs: &[ScanRequest<'_>]) -> usize {
    reqs.iter().filter(|r| gw.scan_nowait(&gw.live(), r).is_ok_and(|(o, _)| o.decision.pass)).count()
}

fn main() -> anyhow::Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => anyhow::bail!("usage: shadow_cost N"),
    };
    let dir = tempfile::tempdir()?;
    let now = SystemClock.now();
    let opts = DemoOptions { size: 20_000, seed: 1, ..Default::default() };
    let env = healthgate::operations::demo::prepare(dir.path(), &opts, "127.0.0.1:0", "127.0.0.1:0", now)?;
    let text = std::fs::read_to_string(&env.config)?;
    let candidate = text[text.find("[regions.wuhan]").unwrap_or(0)..]
        .replace("[classes.metro]\nadmit = [\"green\"]", "[classes.metro]\nadmit = [\"green\", \"yellow\"]");
    std::fs::write(dir.path().join("candidate.toml"), candidate)?;
    let shadow_path = dir.path().join("shadow.toml");
    std::fs::write(&shadow_path, format!("candidate_policy = \"candidate.toml\"\n{text}"))?;
    let gateway = |path: &std::path::Path| -> anyhow::Result<Arc<Gateway>> {
        let gw = healthgate::serving::server::build(&Config::load(path)?, Arc::new(ManualClock::new(now)))?;
        state_file::load(&env.state, gw.store())?;
        gw.set_loaded();
        Ok(gw)
    };
    let (live, shadowed) = (gateway(&env.config)?, gateway(&shadow_path)?);
    let (kid, key) = healthgate::operations::keyfiles::read_secret(&env.issuer_key)?;
    let greens: Vec<u64> = (0..opts.size).filter(|&i| env.population.color(i) == Color::Green).take(256).collect();
    let codes: Vec<String> = greens
        .iter()
        .map(|&i| {
            let holder = env.population.holder(i);
            Claims { kid, holder, issued_at: now, expires_at: now + 3600, color: Color::Green, serial: i }.sign(&key)
        })
        .collect::<Result<_, _>>()?;
    let checkpoint = env.checkpoints["metro"][0].clone();
    let reqs: Vec<ScanRequest<'_>> = (0..n)
        .map(|i| {
            let direction = if (i / codes.len()).is_multiple_of(2) { Direction::In } else { Direction::Out };
            ScanRequest { code: &codes[i % codes.len()], checkpoint: &checkpoint, direction, temperature_c: None }
        })
        .collect();
    for (name, gw, f) in [
        ("live", &live, run_live as fn(&Gateway, &[ScanRequest<'_>]) -> usize),
        ("candidate", &shadowed, run_candidate),
    ] {
        let started = std::time::Instant::now();
        let passes = f(gw, &reqs);
        let per = started.elapsed().as_secs_f64() / n.max(1) as f64;
        println!("{name}: {n} scans, {passes} passed, {:.2} µs a scan", per * 1e6);
    }
    Ok(())
}
