//! Connection churn: connections opened and closed at once, at a steady rate, from many
//! source addresses; every other one sends the SOCKS5 greeting before it closes.

use super::{connect_from, source, Shared, Tally};
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Source addresses 127.3.x.y.
const CLASS: u8 = 3;
const TIMEOUT: Duration = Duration::from_secs(2);
/// Connections made at once to catch up with the schedule, at most.
const MAX_BURST: u64 = 50;

pub fn run(sh: &Shared, proxy: SocketAddr, rate: f64, spread: u32) -> anyhow::Result<Tally> {
    let (mut done, mut failed) = (0u64, 0u64);
    sh.mark_ready();
    let start = Instant::now();
    if rate > 0.0 {
        while !sh.stopped() {
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            for _ in 0..due.saturating_sub(done + failed).min(MAX_BURST) {
                match connect_from(source(CLASS, done + failed, spread), proxy, TIMEOUT) {
                    Ok(mut s) => {
                        if done % 2 == 1 {
                            let _ = s.write_all(&[0x05, 0x01, 0x00]);
                        }
                        done += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            sh.nap(Duration::from_millis(10));
        }
    }
    let mut t = Tally::default();
    t.add("churn connections", "conns", done as f64);
    t.add("churn connects failed", "conns", failed as f64);
    Ok(t)
}
