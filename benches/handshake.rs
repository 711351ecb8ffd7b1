//! SOCKS5 handshake parsing: one pipelined feed vs one byte per feed, with and without
//! RFC 1929 auth.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use streamhost::config::Socks5Auth;
use streamhost::socks5::{Handshake, Step};

const KEY: &[u8; 40] = b"0123456789abcdef0123456789abcdef01234567";

fn handshake(auth: &Option<Arc<Socks5Auth>>) -> Vec<u8> {
    let mut v = vec![5, 1];
    match auth {
        None => v.push(0),
        Some(a) => {
            v.push(2);
            v.extend_from_slice(&[1, a.username.len() as u8]);
            v.extend_from_slice(a.username.as_bytes());
            v.push(a.password.len() as u8);
            v.extend_from_slice(a.password.as_bytes());
        }
    }
    v.extend_from_slice(&[5, 1, 0, 3, 40]);
    v.extend_from_slice(KEY);
    v.extend_from_slice(&[0, 0]);
    v
}

fn bench(c: &mut Criterion) {
    let cases = [
        ("no_auth", None),
        (
            "auth",
            Some(Arc::new(Socks5Auth {
                username: "streamhost-user".into(),
                password: "correct horse battery staple".into(),
            })),
        ),
    ];
    let mut g = c.benchmark_group("socks5_handshake");
    for (name, auth) in &cases {
        let input = handshake(auth);
        g.throughput(Throughput::Bytes(input.len() as u64));
        let mut out = Vec::with_capacity(64);
        g.bench_with_input(BenchmarkId::new("one_feed", name), &input, |b, input| {
            b.iter(|| {
                out.clear();
                let mut h = Handshake::new(auth.clone());
                let step = h.feed(black_box(input), &mut out);
                debug_assert!(matches!(step, Step::Done(_)));
                step
            })
        });
        g.bench_with_input(BenchmarkId::new("bytewise", name), &input, |b, input| {
            b.iter(|| {
                out.clear();
                let mut h = Handshake::new(auth.clone());
                let mut step = Step::NeedMore;
                for byte in black_box(input).chunks(1) {
                    step = h.feed(byte, &mut out);
                }
                debug_assert!(matches!(step, Step::Done(_)));
                step
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
