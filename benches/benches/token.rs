//! Token format v1: decode, verify one, verify a batch of 64, encode + sign.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use healthgate::token::{verify_batch, Claims, RawToken};
use healthgate::trust::TrustList;
use healthgate::verify::{decode_and_verify, verify, Trust};
use healthgate::{Color, HolderId};
use rand::{Rng, SeedableRng};

const NOW: u64 = 1_800_000_000;

fn claims(rng: &mut impl Rng) -> Claims {
    Claims {
        kid: "HB01".parse().unwrap(),
        holder: HolderId(rng.gen()),
        issued_at: NOW,
        expires_at: NOW + 60,
        color: Color::Green,
        serial: rng.gen(),
    }
}

fn bench(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let key = SigningKey::from_bytes(&rng.gen());
    let trust = TrustList::single("hubei", "HB01".parse().unwrap(), key.verifying_key(), 0, u64::from(u32::MAX));
    let texts: Vec<String> = (0..64).map(|_| claims(&mut rng).sign(&key).unwrap()).collect();
    let raws: Vec<RawToken> = texts.iter().map(|t| RawToken::decode(t).unwrap()).collect();

    let mut g = c.benchmark_group("token");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode", |b| b.iter(|| RawToken::decode(black_box(&texts[0])).unwrap()));
    g.bench_function("verify_one", |b| {
        b.iter(|| verify(black_box(&raws[0]), Trust { list: &trust, skew_s: 30 }, None, None, NOW).unwrap())
    });
    g.bench_function("decode_and_verify", |b| {
        b.iter(|| decode_and_verify(black_box(&texts[0]), Trust { list: &trust, skew_s: 30 }, None, None, NOW).unwrap())
    });
    g.bench_function("encode_and_sign", |b| {
        b.iter_batched(|| claims(&mut rng), |c| c.sign(&key).unwrap(), BatchSize::SmallInput)
    });
    g.finish();

    let mut g = c.benchmark_group("token_batch");
    g.throughput(Throughput::Elements(64));
    let keys = vec![key.verifying_key(); 64];
    g.bench_function("verify_batch_64", |b| b.iter(|| verify_batch(black_box(&raws), &keys).unwrap()));
    g.bench_function("verify_strict_64_one_by_one", |b| {
        b.iter(|| {
            for r in black_box(&raws) {
                r.check_signature(&keys[0]).unwrap();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
