//! Rendezvous table and key hashing: pairing, activation, expiry, key derivation, routing.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, Instant};
use streamhost::key::KeyRouter;
use streamhost::rendezvous::{Activation, Insert, Rendezvous};
use streamhost::StreamKey;

const N: usize = 10_000;
const TIMEOUT: Duration = Duration::from_secs(60);

fn keys(n: usize) -> Vec<StreamKey> {
    (0..n)
        .map(|i| {
            StreamKey::from_parts(
                &format!("sid{i}"),
                "romeo@montague.lit/orchard",
                "juliet@capulet.lit/balcony",
            )
        })
        .collect()
}

/// A table where every key has both halves, connection ids 2i and 2i+1.
fn paired(keys: &[StreamKey], now: Instant) -> Rendezvous<u32> {
    let mut r = Rendezvous::new(TIMEOUT);
    for (i, k) in keys.iter().enumerate() {
        r.insert(*k, 2 * i as u32, now);
        r.insert(*k, 2 * i as u32 + 1, now);
    }
    r
}

fn bench(c: &mut Criterion) {
    let keys = keys(N);
    let now = Instant::now();
    let mut g = c.benchmark_group("rendezvous_10k");
    g.throughput(Throughput::Elements(N as u64));

    g.bench_function("insert_and_match_pairs", |b| {
        b.iter_batched_ref(
            || Rendezvous::<u32>::new(TIMEOUT),
            |r| {
                for (i, k) in keys.iter().enumerate() {
                    r.insert(*k, 2 * i as u32, now);
                    let p = r.insert(*k, 2 * i as u32 + 1, now);
                    debug_assert_eq!(
                        p,
                        Insert::Paired {
                            first: 2 * i as u32
                        }
                    );
                    black_box(p);
                }
            },
            BatchSize::LargeInput,
        )
    });

    g.bench_function("activate", |b| {
        b.iter_batched_ref(
            || paired(&keys, now),
            |r| {
                for k in &keys {
                    let a = r.activate(k);
                    debug_assert!(matches!(a, Activation::Start { .. }));
                    black_box(a);
                }
            },
            BatchSize::LargeInput,
        )
    });

    g.bench_function("expire_all", |b| {
        b.iter_batched_ref(
            || (paired(&keys, now), Vec::with_capacity(2 * N)),
            |(r, out)| {
                r.expire(now + TIMEOUT, out);
                debug_assert_eq!(out.len(), 2 * N);
                debug_assert!(r.is_empty());
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("key");
    g.bench_function("from_parts", |b| {
        b.iter(|| {
            StreamKey::from_parts(
                black_box("vxf9n471bn46"),
                black_box("romeo@montague.lit/orchard"),
                black_box("juliet@capulet.lit/balcony"),
            )
        })
    });
    let router = KeyRouter::new(16);
    g.bench_function("router_owner", |b| {
        b.iter(|| router.owner(black_box(&keys[0])))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
