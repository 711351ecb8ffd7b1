//! Relay throughput against the physical baseline, measured in one run: the same sender
//! and receiver code moves data over direct loopback TCP, then through the proxy with each
//! engine, for 1 pair and for 64 concurrent pairs. Prints Gbit/s and the ratio to direct:
//! the median over the rounds of each round's ratio, and the lowest and highest.
//!
//! `cargo bench --bench relay_vs_direct` (env: RELAY_BENCH_GIB to change the volume,
//! RELAY_BENCH_ROUNDS (default 5), RELAY_BENCH_CASES=a,b to run only the cases whose name
//! contains one of them, e.g. `uring` or `zc` (`^splice`: starting with it); RELAY_BENCH_PAIRS (default `1,64`) and
//! RELAY_BENCH_WORKERS (default `1,<cores>`) as lists; for scaling runs on larger machines
//! RELAY_BENCH_WORKER_CPUS and RELAY_BENCH_CLIENT_CPUS as CPU lists like `0-7,12`: the
//! workers are pinned one per CPU of the first, the client threads kept on the second).

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};
use streamhost::config::{Config, Engine};
use streamhost::{Server, StreamKey};

const CHUNK: usize = 1 << 20;

/// Client threads run at nice 10, in the direct baseline too. With 2 cores and two client
/// threads per pair, 64 pairs are 128 runnable threads: at equal priority the scheduler
/// would give a proxy worker (one thread serving every pair) 1/129 of the CPU, which
/// measures the scheduler, not the relay. On a real deployment clients are elsewhere.
fn lower_priority() {
    // SAFETY: setpriority on the calling thread (tid from gettid) with plain integers.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

fn env_cpus(key: &str) -> Vec<usize> {
    std::env::var(key)
        .map(|v| streamhost::affinity::parse_cpu_list(&v).unwrap())
        .unwrap_or_default()
}

/// Each client thread: lower priority, and the client CPUs when a scaling run sets them.
fn client_thread() {
    lower_priority();
    let cpus = env_cpus("RELAY_BENCH_CLIENT_CPUS");
    if !cpus.is_empty() {
        streamhost::affinity::pin_current_thread(&cpus).unwrap();
    }
}

fn sender(mut s: TcpStream, bytes: u64) {
    client_thread();
    let buf = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = (left as usize).min(CHUNK);
        s.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
}

fn receiver(mut s: TcpStream) -> u64 {
    client_thread();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            return got;
        }
        got += n as u64;
    }
}

/// Runs `pairs` transfers of `bytes` each over the given connected (tx, rx) streams;
/// returns aggregate Gbit/s.
fn transfer(conns: Vec<(TcpStream, TcpStream)>, bytes: u64) -> f64 {
    let n = conns.len() as u64;
    let start = Instant::now();
    let handles: Vec<_> = conns
        .into_iter()
        .flat_map(|(tx, rx)| {
            [
                thread::spawn(move || {
                    sender(tx, bytes);
                    0
                }),
                thread::spawn(move || receiver(rx)),
            ]
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, bytes * n, "every byte arrived");
    (total * 8) as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn direct_pairs(pairs: usize) -> Vec<(TcpStream, TcpStream)> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (0..pairs)
        .map(|_| {
            let tx = TcpStream::connect(a).unwrap();
            let (rx, _) = l.accept().unwrap();
            (tx, rx)
        })
        .collect()
}

/// One proxied case: engine, worker count, and whether the copy engine uses SEND_ZC.
#[derive(Clone, Copy)]
struct Case {
    engine: Engine,
    workers: usize,
    send_zc: bool,
}

impl Case {
    fn name(&self) -> String {
        let zc = if self.send_zc { "+zc" } else { "" };
        format!("{:?}{zc} w={}", self.engine, self.workers)
    }
}

fn proxied(case: Case, pairs: usize, bytes: u64) -> f64 {
    let Case {
        engine,
        workers,
        send_zc,
    } = case;
    let mut c = Config {
        workers,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        // Every client is 127.0.0.1: the per-address cap (256) would refuse 128+ pairs.
        max_connections_per_ip: 0,
        ..Config::default()
    };
    c.relay.engine = engine;
    c.relay.send_zc = send_zc;
    c.worker_cpus = env_cpus("RELAY_BENCH_WORKER_CPUS")
        .into_iter()
        .take(workers)
        .collect();
    // Engine sizing can be varied without a rebuild: RELAY_BENCH_BUF (bytes per buffer),
    // RELAY_BENCH_NBUF (buffers per worker), RELAY_BENCH_PIPE (pipe size), RELAY_BENCH_NPIPE
    // (pipes per worker).
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    if let Some(b) = env("RELAY_BENCH_BUF") {
        c.relay.buffer_size = b;
    }
    if let Some(n) = env("RELAY_BENCH_NBUF") {
        c.relay.buffers_per_worker = n;
    }
    if let Some(p) = env("RELAY_BENCH_PIPE") {
        c.relay.pipe_size = p;
    }
    if let Some(n) = env("RELAY_BENCH_NPIPE") {
        c.relay.pipes_per_worker = n;
    }
    let h = Server::start(c).unwrap();
    let addr = h.local_addrs()[0];
    let conns = (0..pairs)
        .map(|i| {
            let k = StreamKey::from_parts(&format!("bench{i}"), "a@b/c", "d@e/f");
            let rx = support::half(addr, &k);
            let tx = support::half(addr, &k);
            assert_eq!(h.activate(&k), streamhost::ActivationOutcome::Activated);
            (tx, rx)
        })
        .collect();
    let g = transfer(conns, bytes);
    h.shutdown();
    g
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run tiny then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let gib: f64 = std::env::var("RELAY_BENCH_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 0.05 } else { 4.0 });
    let rounds = std::env::var("RELAY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 5 });
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "relay vs direct loopback TCP, {gib} GiB per case, {rounds} rounds (median of per-round ratios), {cores} cores"
    );
    println!("{:<28} {:>10} {:>8}", "case", "Gbit/s", "ratio");
    let list = |key: &str, default: Vec<usize>| {
        std::env::var(key).map_or(default, |v| {
            v.split(',').map(|x| x.trim().parse().unwrap()).collect()
        })
    };
    let pair_counts = list("RELAY_BENCH_PAIRS", vec![1, 64]);
    let mut worker_counts = list("RELAY_BENCH_WORKERS", vec![1, cores]);
    worker_counts.dedup();
    for pairs in pair_counts {
        let bytes = (gib * (1u64 << 30) as f64 / pairs as f64) as u64;
        let mut direct = Vec::new();
        let mut results: Vec<(String, Vec<(f64, f64)>)> = vec![];
        let case = |engine, workers, send_zc| Case {
            engine,
            workers,
            send_zc,
        };
        let filter = std::env::var("RELAY_BENCH_CASES").unwrap_or_default();
        let engines = [
            (Engine::Copy, false),
            (Engine::Copy, true),
            (Engine::Splice, false),
            (Engine::UringSplice, false),
        ];
        let cases: Vec<Case> = engines
            .iter()
            .flat_map(|&(e, zc)| worker_counts.iter().map(move |&w| case(e, w, zc)))
            .filter(|c| {
                let name = c.name().to_lowercase();
                // `^x` matches names starting with x (`^splice` leaves out uring-splice).
                filter.is_empty()
                    || filter
                        .split(',')
                        .map(str::to_lowercase)
                        .any(|f| match f.strip_prefix('^') {
                            Some(p) => name.starts_with(p),
                            None => name.contains(&f),
                        })
            })
            .collect();
        // Each round measures direct first, then every case: a case's ratio is taken
        // against the direct figure of its own round, so a machine that gets faster or
        // slower between rounds (it is shared) moves both sides of the ratio together.
        for _ in 0..rounds {
            let d = transfer(direct_pairs(pairs), bytes);
            direct.push(d);
            for (i, &c) in cases.iter().enumerate() {
                let g = proxied(c, pairs, bytes);
                if results.len() <= i {
                    results.push((c.name(), vec![]));
                }
                results[i].1.push((g, g / d));
                thread::sleep(Duration::from_millis(100));
            }
        }
        let (dmin, dmax) = min_max(&direct);
        println!(
            "{:<28} {:>10.2} {:>8.2}   direct {dmin:.1}-{dmax:.1} Gbit/s",
            format!("direct, {pairs} pairs"),
            median(direct),
            1.0
        );
        for (name, v) in results {
            let ratios: Vec<f64> = v.iter().map(|x| x.1).collect();
            let (rmin, rmax) = min_max(&ratios);
            println!(
                "{:<28} {:>10.2} {:>8.2}   rounds {rmin:.2}-{rmax:.2}",
                format!("{name}, {pairs} pairs"),
                median(v.iter().map(|x| x.0).collect()),
                median(ratios),
            );
        }
    }
}
