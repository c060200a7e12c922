//! The gateway in-process: the whole scan decision for a green holder with
//! a fresh token (verification included), the same with shadow rules (a
//! candidate policy decided beside the live one), holder lookup at 1 M and
//! 10 M holders, and a snapshot swap.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use healthgate::clock::{Clock, ManualClock, SystemClock};
use healthgate::durability::state_file;
use healthgate::gateway::{LiveConfig, ScanRequest};
use healthgate::operations::config::Config;
use healthgate::operations::demo::DemoOptions;
use healthgate::policy::Direction;
use healthgate::population::{Mix, Population};
use healthgate::state::HolderState;
use healthgate::store::Store;
use healthgate::token::Claims;
use healthgate::Color;
use std::sync::Arc;

fn scan(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemClock.now();
    let opts = DemoOptions { size: 100_000, seed: 1, ..Default::default() };
    let env = healthgate::operations::demo::prepare(dir.path(), &opts, "127.0.0.1:0", "127.0.0.1:0", now).unwrap();
    let config = Config::load(&env.config).unwrap();
    let gw = healthgate::serving::server::build(&config, Arc::new(ManualClock::new(now))).unwrap();
    state_file::load(&env.state, gw.store()).unwrap();
    gw.set_loaded();
    // The same gateway with a candidate policy that disagrees on yellow.
    let text = std::fs::read_to_string(&env.config).unwrap();
    let candidate = text[text.find("[regions.wuhan]").unwrap()..]
        .replace("[classes.metro]\nadmit = [\"green\"]", "[classes.metro]\nadmit = [\"green\", \"yellow\"]");
    std::fs::write(dir.path().join("candidate.toml"), candidate).unwrap();
    let shadow_path = dir.path().join("shadow.toml");
    std::fs::write(&shadow_path, format!("candidate_policy = \"candidate.toml\"\n{text}")).unwrap();
    let shadow_config = Config::load(&shadow_path).unwrap();
    let shadow_gw = healthgate::serving::server::build(&shadow_config, Arc::new(ManualClock::new(now))).unwrap();
    state_file::load(&env.state, shadow_gw.store()).unwrap();
    shadow_gw.set_loaded();
    let (kid, key) = healthgate::operations::keyfiles::read_secret(&env.issuer_key).unwrap();
    let greens: Vec<_> = (0..100_000).filter(|&i| env.population.color(i) == Color::Green).take(1024).collect();
    let codes: Vec<String> = greens
        .iter()
        .map(|&i| {
            let holder = env.population.holder(i);
            Claims { kid, holder, issued_at: now, expires_at: now + 3600, color: Color::Green, serial: i }
                .sign(&key)
                .unwrap()
        })
        .collect();
    let checkpoint = env.checkpoints["metro"][0].clone();
    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("green_fresh_token", |b| {
        b.iter(|| {
            // Each holder goes in, then out, so every scan passes.
            let direction = if (i / codes.len()).is_multiple_of(2) { Direction::In } else { Direction::Out };
            let req =
                ScanRequest { code: &codes[i % codes.len()], checkpoint: &checkpoint, direction, temperature_c: None };
            i += 1;
            let out = gw.scan_nowait(&gw.live(), black_box(&req)).unwrap().0;
            debug_assert!(out.decision.pass);
            out
        })
    });
    let mut i = 0usize;
    g.bench_function("green_fresh_token_with_candidate", |b| {
        b.iter(|| {
            let direction = if (i / codes.len()).is_multiple_of(2) { Direction::In } else { Direction::Out };
            let req =
                ScanRequest { code: &codes[i % codes.len()], checkpoint: &checkpoint, direction, temperature_c: None };
            i += 1;
            let out = shadow_gw.scan_nowait(&shadow_gw.live(), black_box(&req)).unwrap().0;
            debug_assert!(out.decision.pass);
            out
        })
    });
    g.bench_function("snapshot_swap", |b| {
        b.iter_batched(|| LiveConfig::from_config(&config, 0), |s| gw.swap_live(s), BatchSize::SmallInput)
    });
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("holder_lookup");
    g.throughput(Throughput::Elements(1));
    g.sample_size(50);
    for size in [1_000_000u64, 10_000_000] {
        let pop = Population { seed: 3, size, mix: Mix::default() };
        let store = Store::with_capacity(size as usize);
        for (id, color) in pop.iter() {
            store.insert(id, HolderState::new(color, 1, Some(1)), vec![]);
        }
        // Random members, precomputed so the bench measures the map.
        let probes: Vec<_> = (0..4096u64).map(|k| pop.holder(healthgate::population::mix64(k) % size)).collect();
        let mut k = 0usize;
        g.bench_with_input(BenchmarkId::from_parameter(size), &store, |b, store| {
            b.iter(|| {
                k = (k + 1) & 4095;
                store.read(black_box(&probes[k]), 2, |v| v.map(|v| v.color))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, scan, lookup);
criterion_main!(benches);
