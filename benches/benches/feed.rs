//! The authority feed's apply path: colour changes into a 1 M-holder store,
//! in batches of 10 000, and the signature check of such a batch.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use healthgate::feed::{Change, UpdateBatch};
use healthgate::population::{Mix, Population};
use healthgate::state::{ColorChange, HolderState, Step};
use healthgate::store::Store;
use healthgate::Color;

const BATCH: usize = 10_000;

fn bench(c: &mut Criterion) {
    let pop = Population { seed: 5, size: 1_000_000, mix: Mix::default() };
    let store = Store::with_capacity(pop.size as usize);
    for (id, color) in pop.iter() {
        store.insert(id, HolderState::new(color, 1, Some(1)), vec![]);
    }
    // 100 batches covering the whole population, every tenth change with a
    // two-step schedule (red, then yellow, then green).
    let batches: Vec<Vec<ColorChange>> = (0..100u64)
        .map(|b| {
            (0..BATCH as u64)
                .map(|i| {
                    let n = b * BATCH as u64 + i;
                    let steps = if n.is_multiple_of(10) {
                        vec![
                            Step { until: 2_000_000_000, then: Color::Yellow },
                            Step { until: 2_100_000_000, then: Color::Green },
                        ]
                    } else {
                        vec![]
                    };
                    ColorChange {
                        holder: pop.holder(n),
                        color: if n.is_multiple_of(10) { Color::Red } else { Color::Green },
                        steps,
                    }
                })
                .collect()
        })
        .collect();
    let mut g = c.benchmark_group("feed");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut k = 0;
    g.bench_function("apply_10k_changes", |b| {
        b.iter(|| {
            k = (k + 1) % batches.len();
            store.apply_changes(black_box(&batches[k]), 1_900_000_000)
        })
    });
    let key = SigningKey::from_bytes(&[1; 32]);
    let kid = "AUTH".parse().unwrap();
    let keys = vec![(kid, key.verifying_key())];
    let signed = UpdateBatch {
        seq: 1,
        kid: String::new(),
        changes: batches[0]
            .iter()
            .map(|c| Change { holder: c.holder, color: c.color, steps: c.steps.clone() })
            .collect(),
        signature: String::new(),
    }
    .sign(kid, &key)
    .unwrap();
    g.bench_function("verify_10k_batch", |b| b.iter(|| black_box(&signed).verify(&keys).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
