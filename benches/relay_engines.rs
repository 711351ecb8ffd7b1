//! Each relay engine over loopback at 16 KiB .. 1 MiB chunks (copy: provided-buffer size;
//! splice engines: pipe size): 16 MiB per iteration through one activated pair, fed by a sender
//! thread, drained by the measuring thread.

mod support;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::io::{Read, Write};

use std::sync::mpsc;
use std::thread;
use streamhost::config::{Config, Engine};
use streamhost::{ActivationOutcome, Server, StreamKey};

const PER_ITER: usize = 16 << 20;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay one pair");
    g.throughput(Throughput::Bytes(PER_ITER as u64));
    g.sample_size(10);
    for engine in [Engine::Copy, Engine::Splice, Engine::UringSplice] {
        for chunk in [16usize << 10, 64 << 10, 256 << 10, 1 << 20] {
            let mut cfg = Config {
                workers: 1,
                listen: vec!["127.0.0.1:0".parse().unwrap()],
                ..Config::default()
            };
            cfg.relay.engine = engine;
            cfg.relay.buffer_size = chunk;
            cfg.relay.pipe_size = chunk;
            let h = Server::start(cfg).unwrap();
            let addr = h.local_addrs()[0];
            let k = StreamKey::from_parts("bench", "a@b/c", "d@e/f");
            let mut rx = support::half(addr, &k);
            let mut tx = support::half(addr, &k);
            assert_eq!(h.activate(&k), ActivationOutcome::Activated);
            let (go, orders) = mpsc::channel::<usize>();
            let sender = thread::spawn(move || {
                let buf = vec![0xa5u8; 1 << 20];
                for mut n in orders {
                    while n > 0 {
                        let m = n.min(buf.len());
                        tx.write_all(&buf[..m]).unwrap();
                        n -= m;
                    }
                }
            });
            let mut buf = vec![0u8; 1 << 20];
            let id = BenchmarkId::new(format!("{engine:?}").to_lowercase(), chunk / 1024);
            g.bench_function(id, |b| {
                b.iter(|| {
                    go.send(PER_ITER).unwrap();
                    let mut got = 0;
                    while got < PER_ITER {
                        got += rx.read(&mut buf).unwrap();
                    }
                })
            });
            drop(go);
            sender.join().unwrap();
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
