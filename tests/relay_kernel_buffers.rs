//! A stalled stream (a receiver that never reads) must not make the kernel hold an
//! unbounded amount for it: receive autotuning would grow the proxy's socket from the
//! sender to `tcp_rmem`'s maximum and the send queue to the receiver to `tcp_wmem`'s,
//! and a few hundred such streams push the whole machine into TCP memory pressure, where
//! every other connection slows to a crawl (the `abuse` scenario measured 0.04x).
//! `relay.socket_buffer` bounds both; measured here with `ss` on the proxy's sockets.

mod common;

use common::{active_pair, config, stall, start};
use streamhost::config::Engine;

/// Bytes the kernel holds in the receive and send queues of sockets whose local port is
/// `port` (the proxy's side of its connections), from `ss -m`.
fn kernel_bytes(port: u16) -> u64 {
    let out = std::process::Command::new("ss")
        .args([
            "-tmnH",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{port}"),
        ])
        .output()
        .expect("ss runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0;
    for part in text.split("skmem:(").skip(1) {
        let fields = part.split(')').next().unwrap_or("");
        for f in fields.split(',') {
            let Some(at) = f.find(|c: char| c.is_ascii_digit()) else {
                continue;
            };
            let (name, v) = f.split_at(at);
            // r: receive queue; w: send queue.
            if name == "r" || name == "w" {
                total += v.parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

#[test]
fn a_stalled_stream_holds_a_bounded_share_of_kernel_memory() {
    for engine in [Engine::Splice, Engine::Copy, Engine::UringSplice] {
        let c = config(engine);
        let cap = c.relay.socket_buffer as u64;
        assert_eq!(cap, 256 << 10, "the default");
        let (h, addr) = start(c);
        let (sender, _receiver) = active_pair(&h, addr, 1);
        let pushed = stall(&sender, 1);
        let held = kernel_bytes(addr.port());
        eprintln!(
            "{engine:?}: the sender pushed {} KiB before blocking; the proxy's sockets hold {} KiB",
            pushed >> 10,
            held >> 10
        );
        assert!(held > 0, "ss sees the proxy's sockets");
        // The kernel doubles a set buffer for its bookkeeping: at most twice the cap in
        // each of the two queues that fill (plus a little for the other two).
        assert!(
            held <= 5 * cap,
            "{engine:?}: {} KiB held for one stalled stream",
            held >> 10
        );
    }
}
