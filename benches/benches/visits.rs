//! The tracing index (`healthgate::durability::visits`): inserts in batches of 1 000 as
//! the log applier makes them, and the two tracing questions against an
//! index of 1 M visits over 28 days: one checkpoint for one hour, and one
//! holder over the whole 28 days.
//!
//! The population: 100 checkpoints and 20 000 holders, visits spread evenly
//! in time and uniformly over both, so a checkpoint-hour holds about 15
//! visits and a holder about 50 over the 28 days. Seeded, so every run sees
//! the same index.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use healthgate::durability::visits::{Visit, VisitIndex};
use healthgate::policy::{Direction, Reason};
use healthgate::HolderId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

const VISITS: u64 = 1_000_000;
const CHECKPOINTS: u64 = 100;
const HOLDERS: u64 = 20_000;
const DAYS: u64 = 28;
const SPAN: u64 = DAYS * 86_400;
/// 2023-11-14T22:00:00Z, on the hour.
const T0: u64 = 1_699_999_200;
const BATCH: usize = 1_000;

fn holder(n: u64) -> HolderId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    // Spread holders over the key space as random issuer-chosen ids are.
    id[8..].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    HolderId(id)
}

fn checkpoint(n: u64) -> String {
    format!("cp-{n:03}")
}

/// The time of the visit with log sequence number `lsn` (1-based): it grows
/// with the lsn, as in the log, and wraps after [`VISITS`] so that an index
/// stays a 28-day one however many visits a bench inserts.
fn at(lsn: u64) -> u64 {
    T0 + (lsn - 1) % VISITS * SPAN / VISITS
}

fn visit(rng: &mut StdRng, lsn: u64) -> Visit {
    Visit {
        lsn,
        at: at(lsn),
        holder: holder(rng.gen_range(0..HOLDERS)),
        checkpoint: checkpoint(rng.gen_range(0..CHECKPOINTS)),
        direction: if rng.gen_bool(0.5) { Direction::In } else { Direction::Out },
        temperature_c: rng.gen_bool(0.7).then(|| rng.gen_range(35.5..38.0)),
        pass: rng.gen_bool(0.95),
        reason: Reason::Ok,
    }
}

fn insert(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let index = VisitIndex::open(&dir.path().join("visits.redb")).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let mut lsn = 0;
    let mut g = c.benchmark_group("visits");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("insert_1k", |b| {
        b.iter_batched(
            || {
                (0..BATCH)
                    .map(|_| {
                        lsn += 1;
                        visit(&mut rng, lsn)
                    })
                    .collect::<Vec<_>>()
            },
            |batch| index.insert(black_box(&batch)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn query(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let index = VisitIndex::open(&dir.path().join("visits.redb")).unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let started = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for lsn in 1..=VISITS {
        batch.push(visit(&mut rng, lsn));
        if batch.len() == batch.capacity() {
            index.insert(&batch).unwrap();
            batch.clear();
        }
    }
    index.insert(&batch).unwrap();
    index.sync().unwrap();
    eprintln!("visits: indexed {VISITS} visits in {:.1?}", started.elapsed());

    let mut g = c.benchmark_group("visits");
    let mut rng = StdRng::seed_from_u64(3);
    g.bench_function("checkpoint_hour_of_1m", |b| {
        b.iter(|| {
            let cp = checkpoint(rng.gen_range(0..CHECKPOINTS));
            let from = T0 + rng.gen_range(0..DAYS * 24) * 3_600;
            let mut n = 0u32;
            index
                .by_checkpoint(&cp, from, from + 3_600, |v| {
                    n += 1;
                    black_box(v);
                    true
                })
                .unwrap();
            n
        })
    });
    g.bench_function("holder_28_days_of_1m", |b| {
        b.iter(|| {
            let h = holder(rng.gen_range(0..HOLDERS));
            let mut n = 0u32;
            index
                .by_holder(&h, T0, T0 + SPAN, |v| {
                    n += 1;
                    black_box(v);
                    true
                })
                .unwrap();
            n
        })
    });
    g.finish();
}

criterion_group!(benches, insert, query);
criterion_main!(benches);
