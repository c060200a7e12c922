//! Token format v1: decode, verify one, verify batches (ours and
//! ed25519-dalek's, against strict verification one by one), encode + sign.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use healthgate::signature::{check_many, check_one, Item, StrictKey};
use healthgate::token::{Claims, RawToken};
use healthgate::trust::TrustList;
use healthgate::verify::{decode_and_verify, verify, verify_many, Request, Trust};
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
    let trust = TrustList::single("hubei", "HB01".parse().unwrap(), StrictKey::from(&key), 0, u64::from(u32::MAX));
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

    let strict = StrictKey::from(&key);
    let vk = key.verifying_key();
    let texts: Vec<String> = (0..256).map(|_| claims(&mut rng).sign(&key).unwrap()).collect();
    let raws: Vec<RawToken> = texts.iter().map(|t| RawToken::decode(t).unwrap()).collect();
    let inputs: Vec<_> = raws.iter().map(RawToken::signing_input).collect();
    let items: Vec<Item<'_>> =
        raws.iter().zip(&inputs).map(|(r, m)| Item { key: &strict, msg: m, sig: r.signature_bytes() }).collect();
    let seed = [7u8; 32];

    let mut g = c.benchmark_group("token_batch");
    g.throughput(Throughput::Elements(64));
    g.bench_function("verify_strict_64_one_by_one", |b| {
        b.iter(|| {
            for r in black_box(&raws[..64]) {
                vk.verify_strict(&r.signing_input(), &r.signature()).unwrap();
            }
        })
    });
    g.bench_function("check_one_64_one_by_one", |b| {
        b.iter(|| {
            for i in black_box(&items[..64]) {
                assert!(check_one(i.key, i.msg, i.sig));
            }
        })
    });
    let msgs: Vec<&[u8]> = inputs[..64].iter().map(|m| &m[..]).collect();
    let sigs: Vec<_> = raws[..64].iter().map(RawToken::signature).collect();
    let keys = vec![vk; 64];
    g.bench_function("dalek_verify_batch_64", |b| {
        b.iter(|| ed25519_dalek::verify_batch(black_box(&msgs), &sigs, &keys).unwrap())
    });
    let mut one_bad = items[..64].to_vec();
    let forged = raws[1].signature_bytes();
    one_bad[40] = Item { sig: forged, ..one_bad[40] };
    g.bench_function("check_many_64_one_bad", |b| {
        b.iter(|| assert_eq!(check_many(black_box(&one_bad), &seed).iter().filter(|ok| !**ok).count(), 1))
    });
    let trust = Trust { list: &trust, skew_s: 30 };
    let requests: Vec<Request<'_>> =
        raws[..64].iter().map(|raw| Request { raw, trust, region: None, revocations: None, now: NOW }).collect();
    g.bench_function("verify_many_64", |b| b.iter(|| assert!(verify_many(black_box(&requests), &seed)[63].is_ok())));
    g.finish();

    // Our batch equation across sizes: what a verifier stage gains from
    // the batches it forms.
    let mut g = c.benchmark_group("check_many");
    for n in [2usize, 4, 8, 16, 32, 64, 128, 256] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{n}"), |b| b.iter(|| assert!(check_many(black_box(&items[..n]), &seed)[n - 1])));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
