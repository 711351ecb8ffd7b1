//! `peers`, beyond bulk: pair setups at a fixed concurrency (setups/s against direct,
//! p50/p99 of a whole setup), and the RSS each held idle pair costs, for every SOCKS5
//! peer. The plain TCP relay has neither (no handshake, pairs set up one at a time).

use super::idle::{self, IdleParams};
use super::setup::{self, SetupParams};
use super::Ctx;
use crate::pairs::Target;
use crate::peers::Peer;
use crate::report::model::{Figure, ScenarioReport};

/// Runs `setup` and `idle` on each SOCKS5 peer (direct interleaved with each in `setup`)
/// and adds their figures and setup latencies to `rep`, named after the peer.
pub fn add(
    ctx: &Ctx,
    peers: &[Peer],
    s: &SetupParams,
    i: &IdleParams,
    rep: &mut ScenarioReport,
) -> anyhow::Result<()> {
    let socks5 = peers
        .iter()
        .filter(|x| matches!(x.target, Target::Proxy { .. }));
    for (k, peer) in socks5.enumerate() {
        let c = Ctx {
            proxy: Some(peer.target.clone()),
            baseline: true,
            proxy_pid: peer.pid,
            ..ctx.clone()
        };
        if s.count > 0 {
            setup_figures(&c, peer, k, s, rep)?;
        }
        if i.pairs > 0 {
            let c = Ctx {
                baseline: false,
                ..c
            };
            let r = idle::run(&c, i).map_err(|e| anyhow::anyhow!("{} idle: {e:#}", peer.name))?;
            if let Some(f) = r.figures.iter().find(|f| f.name == "proxy RSS per pair") {
                rep.figures.push(named(
                    f,
                    peer,
                    &format!("RSS per idle pair ({} pairs)", i.pairs),
                ));
            }
        }
    }
    Ok(())
}

fn named(f: &Figure, peer: &Peer, what: &str) -> Figure {
    Figure {
        name: format!("{} {what}", peer.name),
        ..f.clone()
    }
}

/// Setups/s against direct, the p50/p99 of a whole setup, and its latency curve (direct's
/// only with the first peer: each peer's direct rounds are alike).
fn setup_figures(
    c: &Ctx,
    peer: &Peer,
    k: usize,
    s: &SetupParams,
    rep: &mut ScenarioReport,
) -> anyhow::Result<()> {
    let r = setup::run(c, s).map_err(|e| anyhow::anyhow!("{} setup: {e:#}", peer.name))?;
    let conc = s.concurrency;
    for f in &r.figures {
        match f.name.as_str() {
            "setups" => rep
                .figures
                .push(named(f, peer, &format!("setups, concurrency {conc}"))),
            "done p50" | "done p99" => {
                let q = &f.name[5..];
                rep.figures
                    .push(named(f, peer, &format!("setup {q}, concurrency {conc}")));
            }
            _ => {}
        }
    }
    for l in r.latencies.into_iter().filter(|l| l.name == "done") {
        if l.target == "direct" && k > 0 {
            continue;
        }
        let mut l = l;
        l.name = format!("setup, concurrency {conc}");
        if l.target != "direct" {
            l.target = peer.name.clone();
        }
        rep.latencies.push(l);
    }
    Ok(())
}
