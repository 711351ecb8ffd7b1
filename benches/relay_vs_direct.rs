//! Relay throughput against the physical baseline, measured in one run: the same sender
//! and receiver code moves data over direct loopback TCP, then through the proxy with each
//! engine, and through a throw-away blocking reference relay (a thread per direction, as
//! in the yardstick), for 1 pair and for 64 concurrent pairs. Prints Gbit/s and the ratio to direct:
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

/// One relayed case: streamhost with an engine, a worker count and whether the copy
/// engine uses SEND_ZC; or the reference relay.
#[derive(Clone, Copy)]
enum Case {
    Streamhost {
        engine: Engine,
        workers: usize,
        send_zc: bool,
    },
    /// The yardstick: a throw-away blocking relay with one thread per direction.
    Reference { splice: bool },
}

impl Case {
    fn name(&self) -> String {
        match *self {
            Case::Streamhost {
                engine,
                workers,
                send_zc,
            } => {
                let zc = if send_zc { "+zc" } else { "" };
                format!("{engine:?}{zc} w={workers}")
            }
            Case::Reference { splice: true } => "reference splice".into(),
            Case::Reference { splice: false } => "reference recv/send".into(),
        }
    }

    fn run(self, pairs: usize, bytes: u64) -> f64 {
        match self {
            Case::Streamhost {
                engine,
                workers,
                send_zc,
            } => proxied(engine, workers, send_zc, pairs, bytes),
            Case::Reference { splice } => reference(splice, pairs, bytes),
        }
    }
}

/// The reference relay: every pair's two connections accepted by plain listeners, and a
/// blocking thread per direction moving up to 1 MiB per call, through a buffer
/// (recv/send) or a 1 MiB pipe (splice). No rendezvous, no limits, no accounting.
fn reference(splice: bool, pairs: usize, bytes: u64) -> f64 {
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let back = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut conns = Vec::new();
    let mut pumps = Vec::new();
    for _ in 0..pairs {
        let tx = TcpStream::connect(front.local_addr().unwrap()).unwrap();
        let (a, _) = front.accept().unwrap();
        let b = TcpStream::connect(back.local_addr().unwrap()).unwrap();
        let (rx, _) = back.accept().unwrap();
        let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        pumps.push(thread::spawn(move || pump(a, b, splice)));
        pumps.push(thread::spawn(move || pump(b2, a2, splice)));
        conns.push((tx, rx));
    }
    let g = transfer(conns, bytes);
    for p in pumps {
        p.join().unwrap();
    }
    g
}

/// Moves `from` -> `to` until EOF (then shuts `to` for writing) or an error.
fn pump(mut from: TcpStream, to: TcpStream, splice: bool) {
    use std::os::fd::AsRawFd;
    if splice {
        let mut p = [0i32; 2];
        // SAFETY: pipe2 writes two new descriptors into the array; F_SETPIPE_SZ resizes
        // the pipe we just made.
        unsafe {
            assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0);
            libc::fcntl(p[1], libc::F_SETPIPE_SZ, 1 << 20);
        }
        let sp = |i: i32, o: i32, n: usize| {
            // SAFETY: blocking splice between descriptors this thread owns, no offsets.
            unsafe {
                libc::splice(
                    i,
                    std::ptr::null_mut(),
                    o,
                    std::ptr::null_mut(),
                    n,
                    libc::SPLICE_F_MOVE,
                )
            }
        };
        'outer: loop {
            let n = sp(from.as_raw_fd(), p[1], 1 << 20);
            if n <= 0 {
                break;
            }
            let mut left = n as usize;
            while left > 0 {
                let m = sp(p[0], to.as_raw_fd(), left);
                if m <= 0 {
                    break 'outer;
                }
                left -= m as usize;
            }
        }
        // SAFETY: closing the two pipe descriptors made above, once.
        unsafe {
            libc::close(p[0]);
            libc::close(p[1]);
        }
    } else {
        let mut buf = vec![0u8; 1 << 20];
        let mut to_w = &to;
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn proxied(engine: Engine, workers: usize, send_zc: bool, pairs: usize, bytes: u64) -> f64 {
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
        let case = |engine, workers, send_zc| Case::Streamhost {
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
            .chain([
                Case::Reference { splice: false },
                Case::Reference { splice: true },
            ])
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
                let g = c.run(pairs, bytes);
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
