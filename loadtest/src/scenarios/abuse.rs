//! `abuse`: legitimate verified load beside abusive clients, against the same proxy, in
//! alternating phases: without abuse, then with it, round after round. The legitimate load
//! is P pairs moving B bytes each (every byte checked) and, meanwhile, a paced stream of
//! verified setups. The abuse is stalled and trickling receivers, slowloris handshakes, a
//! random-key flood of handshaken halves from many loopback addresses and connection
//! churn, each bounded in count and running only during its phase. Reported: what the
//! legitimate pairs got with the abuse as a ratio to without (median and range over the
//! rounds), setup latency and failures, the proxy's fds and RSS before, during and after
//! each phase (from /proc), what its metrics counted, and what each abuser saw.

use super::setup_stream::{self, StreamRun};
use super::timed_bulk::{self, TimedRun};
use super::Ctx;
use crate::abusers::{churn, flood, slow_readers, slowloris, Shared, Tally};
use crate::cli::AbuseArgs;
use crate::metrics_scrape::{growth, scrape, Samples};
use crate::pairs::Target;
use crate::procstat::{sample, ProcSample};
use crate::report::model::{new_histogram, Figure, Latency, ScenarioReport, Series};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct AbuseParams {
    pub pairs: usize,
    pub bytes: u64,
    pub setup_rate: f64,
    pub stalled: usize,
    pub trickle: usize,
    pub trickle_bytes: u64,
    pub slowloris: usize,
    pub flood: usize,
    pub source_addrs: u32,
    pub churn_rate: f64,
    pub ramp: Duration,
    /// The legitimate transfers stop here if their bytes are not through by then.
    pub seconds: Duration,
}

impl From<&AbuseArgs> for AbuseParams {
    fn from(a: &AbuseArgs) -> Self {
        AbuseParams {
            pairs: a.pairs,
            bytes: a.bytes,
            setup_rate: a.setup_rate,
            stalled: a.stalled,
            trickle: a.trickle,
            trickle_bytes: a.trickle_bytes,
            slowloris: a.slowloris,
            flood: a.flood,
            source_addrs: a.source_addrs,
            churn_rate: a.churn_rate,
            ramp: Duration::from_secs_f64(a.ramp.max(0.0)),
            seconds: Duration::from_secs_f64(a.seconds.max(0.1)),
        }
    }
}

impl AbuseParams {
    /// Descriptors this generator holds at most: 2 per pair (and up to 4 more per
    /// legitimate pair for its threads' clones), 1 per abusive connection, a margin.
    pub fn fds_needed(&self) -> u64 {
        (6 * self.pairs + 8 * 2 + 2 * (self.stalled + self.trickle) + self.slowloris + self.flood)
            as u64
            + 256
    }
}

/// The value and baseline columns of this scenario's tables and plots.
pub const WITH: &str = "with abuse";
pub const WITHOUT: &str = "without abuse";

/// How long the proxy gets, after a phase, to close what that phase left.
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// How often the proxy's fds are sampled for the plot.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Descriptors above the phase's start that still count as released.
const RELEASE_SLACK: u64 = 4;

/// What the metrics growth is read for.
const COUNTERS: [&str; 10] = [
    "streamhost_relay_wakeups_deferred",
    "streamhost_refusals",
    "streamhost_relay_stalls",
    "streamhost_relay_fallbacks",
    "streamhost_relay_fallback_full",
    "streamhost_relay_waits",
    "streamhost_relay_errors",
    "streamhost_accept_errors",
    "streamhost_component_stanzas_dropped",
    "streamhost_component_activation_backlog_full",
];

/// The proxy's gauges read while the abuse is on.
const GAUGES: [&str; 3] = [
    "streamhost_connections_open",
    "streamhost_connections_pending",
    "streamhost_relay_fallback_bytes",
];

/// One phase: the legitimate load, alone or beside the abusers.
struct Phase {
    bulk: TimedRun,
    setups: StreamRun,
    before: Option<ProcSample>,
    during: Option<ProcSample>,
    after: Option<ProcSample>,
    /// Seconds until the proxy's fds were back to where the phase began; `None` when
    /// they were not within [`RELEASE_WAIT`].
    released_s: Option<f64>,
    /// Growth of the proxy's counters over the phase (and its wait for release).
    counters: Vec<(String, f64)>,
    /// The proxy's connection gauges while the abuse was on.
    gauges: Vec<(String, f64)>,
    abusers: Vec<Tally>,
}

/// The proxy's /proc figures over the whole scenario, for the fds plot.
struct Sampler {
    pid: Option<u32>,
    start: Instant,
    points: Mutex<Vec<(f64, ProcSample)>>,
}

impl Sampler {
    fn take(&self) -> Option<ProcSample> {
        let s = sample(self.pid?).ok()?;
        self.points
            .lock()
            .expect("lock")
            .push((self.start.elapsed().as_secs_f64(), s));
        Some(s)
    }
}

fn scrape_opt(addr: Option<SocketAddr>) -> Option<Samples> {
    scrape(addr?).ok()
}

/// `streamhost_refusals_total{reason="shed"}` -> `refusals (shed)`.
pub fn metric_label(sample: &str) -> String {
    let s = sample.strip_prefix("streamhost_").unwrap_or(sample);
    let (name, labels) = match s.split_once('{') {
        Some((n, l)) => (n, Some(l.trim_end_matches('}'))),
        None => (s, None),
    };
    let name = name.strip_suffix("_total").unwrap_or(name);
    match labels {
        Some(l) => {
            let vals: Vec<&str> = l
                .split(',')
                .filter_map(|kv| Some(kv.split_once('=')?.1.trim_matches('"')))
                .collect();
            format!("{name} ({})", vals.join(", "))
        }
        None => name.to_string(),
    }
}

fn run_phase(
    ctx: &Ctx,
    target: &Target,
    p: &AbuseParams,
    abuse: bool,
    sampler: &Sampler,
) -> anyhow::Result<Phase> {
    ctx.check_deadline("the next phase")?;
    let proxy_addr = match target {
        Target::Proxy { addr, .. } => *addr,
        Target::Direct | Target::Relay { .. } => anyhow::bail!("abuse needs a SOCKS5 proxy"),
    };
    let m_before = scrape_opt(ctx.metrics);
    let before = sampler.take();
    let sh = Shared::new(ctx.deadline);
    let legit_done = AtomicBool::new(false);
    let (bulk, setups, during, gauges, tallies) = std::thread::scope(|s| {
        let mut abusers = Vec::new();
        if abuse {
            let sh = &sh;
            let (tag, seed) = (&ctx.tag, ctx.seed);
            if p.stalled > 0 {
                abusers.push(s.spawn(move || {
                    slow_readers::run(
                        sh,
                        target,
                        tag,
                        seed,
                        p.stalled,
                        slow_readers::Reader::Stalled,
                    )
                }));
            }
            if p.trickle > 0 {
                let r = slow_readers::Reader::Trickle(p.trickle_bytes);
                abusers
                    .push(s.spawn(move || slow_readers::run(sh, target, tag, seed, p.trickle, r)));
            }
            if p.slowloris > 0 {
                abusers.push(
                    s.spawn(move || slowloris::run(sh, proxy_addr, p.slowloris, p.source_addrs)),
                );
            }
            if p.flood > 0 {
                abusers.push(s.spawn(move || flood::run(sh, proxy_addr, p.flood, p.source_addrs)));
            }
            if p.churn_rate > 0.0 {
                abusers.push(
                    s.spawn(move || churn::run(sh, proxy_addr, p.churn_rate, p.source_addrs)),
                );
            }
            // The legitimate load starts once the abusers have their first full set.
            let ramp_end = Instant::now() + p.ramp;
            while sh.ready.load(Ordering::Relaxed) < abusers.len() && Instant::now() < ramp_end {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let stream = s.spawn(|| setup_stream::run(ctx, target, p.setup_rate, &legit_done));
        let bulk = timed_bulk::run(ctx, target, p.pairs, p.bytes, p.seconds);
        legit_done.store(true, Ordering::Relaxed);
        let setups = stream.join().expect("setup stream panicked");
        // Before the abusers stop: the proxy holding all of them.
        let during = sampler.take();
        let gauges: Vec<(String, f64)> = scrape_opt(ctx.metrics)
            .map(|m| {
                m.into_iter()
                    .filter(|(k, _)| GAUGES.contains(&k.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        sh.stop.store(true, Ordering::Relaxed);
        let tallies: Vec<anyhow::Result<Tally>> = abusers
            .into_iter()
            .map(|h| h.join().expect("abuser panicked"))
            .collect();
        (bulk, setups, during, gauges, tallies)
    });
    let bulk = bulk?;
    let abusers = tallies.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    // Give the proxy time to close what the phase left (the abusers have closed theirs).
    let t = Instant::now();
    let mut released_s = None;
    let mut after = sampler.take();
    while let (Some(b), Some(a)) = (before, after) {
        if a.fds <= b.fds + RELEASE_SLACK {
            released_s = Some(t.elapsed().as_secs_f64());
            break;
        }
        if t.elapsed() >= RELEASE_WAIT {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        after = sampler.take();
    }
    let counters = match (m_before, scrape_opt(ctx.metrics)) {
        (Some(b), Some(a)) => growth(&b, &a, &COUNTERS),
        _ => Vec::new(),
    };
    Ok(Phase {
        bulk,
        setups,
        before,
        during,
        after,
        released_s,
        counters,
        gauges,
        abusers,
    })
}

pub fn run(ctx: &Ctx, p: &AbuseParams) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let target = ctx
        .proxy
        .clone()
        .ok_or_else(|| anyhow::anyhow!("abuse needs a proxy (drop `direct`)"))?;
    let limit = crate::sys::raise_nofile();
    anyhow::ensure!(
        p.fds_needed() < limit * 9 / 10,
        "abuse: these counts need about {} open files here (and as many in the proxy), over \
         90% of the limit of {limit}: lower --flood, --slowloris, --stalled or --trickle",
        p.fds_needed()
    );
    let rounds = ctx.rounds.max(1);
    let mut rep = ScenarioReport {
        name: "abuse".into(),
        params: vec![
            ("pairs".into(), p.pairs.to_string()),
            ("bytes_per_pair".into(), p.bytes.to_string()),
            ("setup_rate".into(), p.setup_rate.to_string()),
            ("stalled".into(), p.stalled.to_string()),
            (
                "trickle".into(),
                format!("{} x {} B/s", p.trickle, p.trickle_bytes),
            ),
            ("slowloris".into(), p.slowloris.to_string()),
            ("flood".into(), p.flood.to_string()),
            ("source_addrs".into(), p.source_addrs.to_string()),
            ("churn_per_s".into(), p.churn_rate.to_string()),
            ("seconds".into(), p.seconds.as_secs_f64().to_string()),
            ("rounds".into(), rounds.to_string()),
        ],
        compared: Some([WITH.into(), WITHOUT.into()]),
        ..Default::default()
    };
    let sampler = Sampler {
        pid: ctx.proxy_pid,
        start: started,
        points: Mutex::new(Vec::new()),
    };
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let done = AtomicBool::new(false);
    std::thread::scope(|s| -> anyhow::Result<()> {
        // The fds plot: a sample every SAMPLE_EVERY besides those the phases take.
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) && sampler.pid.is_some() {
                sampler.take();
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        let r = (|| {
            for _ in 0..rounds {
                without.push(run_phase(ctx, &target, p, false, &sampler)?);
                with.push(run_phase(ctx, &target, p, true, &sampler)?);
            }
            Ok(())
        })();
        done.store(true, Ordering::Relaxed);
        r
    })?;
    figures(&mut rep, p, &with, &without);
    let mut points = sampler.points.into_inner().expect("lock");
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    if !points.is_empty() {
        rep.series.push(Series {
            name: "proxy open fds".into(),
            target: "proxy".into(),
            x_label: "seconds since the start".into(),
            y_label: "fds".into(),
            points: points.iter().map(|(t, s)| (*t, s.fds as f64)).collect(),
            ranges: Vec::new(),
        });
    }
    for (label, v) in [(WITHOUT, &without), (WITH, &with)] {
        rep.series.push(Series {
            name: format!("legit throughput, {} pairs", p.pairs),
            target: label.into(),
            x_label: "round".into(),
            y_label: "Gbit/s".into(),
            points: v
                .iter()
                .enumerate()
                .map(|(i, ph)| ((i + 1) as f64, ph.bulk.aggregate_gbps))
                .collect(),
            ranges: Vec::new(),
        });
    }
    rep.wall_s = started.elapsed().as_secs_f64();
    Ok(rep)
}

fn figures(rep: &mut ScenarioReport, p: &AbuseParams, with: &[Phase], without: &[Phase]) {
    let vals = |v: &[Phase], f: &dyn Fn(&Phase) -> f64| v.iter().map(f).collect::<Vec<_>>();
    let both = |name: &str, unit: &str, f: &dyn Fn(&Phase) -> f64, hib: bool| {
        Figure::from_rounds(name, unit, &vals(with, f), Some(&vals(without, f)), hib)
    };
    let tp = both(
        &format!("legit throughput, {} pairs", p.pairs),
        "Gbit/s",
        &|ph| ph.bulk.aggregate_gbps,
        true,
    );
    let min_pair = both(
        "legit slowest pair",
        "Gbit/s",
        &|ph| {
            ph.bulk
                .per_pair_gbps
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min)
        },
        true,
    );
    // Cores each side kept busy while the legitimate pairs moved their bytes: on a small
    // machine, whether the abusers took CPU from the clients or the proxy.
    let wall = |ph: &Phase| ph.bulk.bytes as f64 * 8.0 / 1e9 / ph.bulk.aggregate_gbps.max(1e-9);
    let cores = |cpu: f64, ph: &Phase| cpu / wall(ph).max(1e-9);
    let mut busy = vec![both(
        "generator cores used",
        "cores",
        &|ph| cores(ph.bulk.cpu.clients, ph),
        false,
    )];
    if with
        .iter()
        .chain(without)
        .all(|ph| ph.bulk.cpu.proxy.is_some())
    {
        busy.push(both(
            "proxy cores used",
            "cores",
            &|ph| cores(ph.bulk.cpu.proxy.unwrap_or(0.0), ph),
            false,
        ));
    }
    let proxy_cpu = |v: &[Phase]| -> Option<f64> {
        let cpu: Option<f64> = v.iter().map(|ph| ph.bulk.cpu.proxy).sum();
        let gb = v.iter().map(|ph| ph.bulk.bytes as f64).sum::<f64>() / 1e9;
        cpu.filter(|c| *c > 0.0 && gb > 0.0).map(|c| c / gb)
    };
    let sum = |v: &[Phase], f: &dyn Fn(&Phase) -> u64| v.iter().map(f).sum::<u64>() as f64;
    let failed_with = sum(with, &|ph| ph.setups.failed);
    let failed_without = sum(without, &|ph| ph.setups.failed);
    let mib = |v: &[Phase]| v.iter().map(|ph| ph.bulk.bytes).sum::<u64>() as f64 / 1048576.0;
    let mut figs = vec![
        tp.clone(),
        min_pair,
        Figure::new("legit bytes verified", "MiB", mib(with), true).with_direct(Some(mib(without))),
    ];
    figs.extend(busy);
    let cut = |v: &[Phase]| v.iter().filter(|ph| !ph.bulk.complete).count() as f64;
    let mut f = Figure::new("legit phases cut at --seconds", "phases", cut(with), false)
        .with_direct(Some(cut(without)));
    f.ratio = None;
    figs.push(f);
    if let (Some(w), Some(wo)) = (proxy_cpu(with), proxy_cpu(without)) {
        let mut f = Figure::new("legit: proxy CPU", "core-s/GB", w, false);
        f = f.with_direct(Some(wo));
        f.rounds = Some(with.len());
        figs.push(f);
    }
    let mut done = Figure::new(
        "legit setups done",
        "setups",
        sum(with, &|ph| ph.setups.done),
        true,
    )
    .with_direct(Some(sum(without, &|ph| ph.setups.done)));
    done.ratio = None; // phases differ in length: counts, not a rate
    figs.push(done);
    figs.push(
        Figure::new("legit setups failed", "setups", failed_with, false)
            .with_direct(Some(failed_without)),
    );
    let merged = |v: &[Phase], pick: fn(&StreamRun) -> &hdrhistogram::Histogram<u64>| {
        let mut h = new_histogram();
        for ph in v {
            h.add(pick(&ph.setups)).expect("same bounds");
        }
        h
    };
    type Pick = fn(&StreamRun) -> &hdrhistogram::Histogram<u64>;
    let hs: [(&str, Pick); 2] = [
        ("legit setup", |r| &r.total),
        ("legit activation", |r| &r.activation),
    ];
    for (name, pick) in hs {
        let (w, wo) = (merged(with, pick), merged(without, pick));
        for (qn, q) in [("p50", 0.5), ("p99", 0.99)] {
            if !w.is_empty() && !wo.is_empty() {
                figs.push(
                    Figure::new(
                        &format!("{name} {qn}"),
                        "us",
                        w.value_at_quantile(q) as f64,
                        false,
                    )
                    .with_direct(Some(wo.value_at_quantile(q) as f64)),
                );
            }
        }
        for (label, h) in [(WITH, &w), (WITHOUT, &wo)] {
            if !h.is_empty() {
                rep.latencies.push(Latency::from_histogram(name, label, h));
            }
        }
    }
    // The proxy's /proc figures, when it was spawned here.
    type ProcPick = fn(&Phase) -> Option<ProcSample>;
    let when: [(&str, ProcPick); 3] = [
        ("before", |ph| ph.before),
        ("during", |ph| ph.during),
        ("after", |ph| ph.after),
    ];
    for (what, at) in when {
        let known = |v: &[Phase]| v.iter().all(|ph| at(ph).is_some());
        if !(known(with) && known(without)) {
            continue;
        }
        let fds = |ph: &Phase| at(ph).map_or(0.0, |s| s.fds as f64);
        let rss = |ph: &Phase| at(ph).map_or(0.0, |s| s.rss_kib as f64);
        figs.push(both(&format!("proxy fds {what}"), "fds", &fds, false));
        figs.push(both(&format!("proxy RSS {what}"), "KiB", &rss, false));
    }
    let released: Vec<f64> = with.iter().filter_map(|ph| ph.released_s).collect();
    if with.iter().all(|ph| ph.before.is_some()) {
        if released.len() == with.len() {
            let mut f = Figure::from_rounds("proxy fds released in", "s", &released, None, false);
            f.rounds = Some(with.len());
            figs.push(f);
        } else {
            rep.notes.push(format!(
                "In {} of {} rounds the proxy still held more descriptors {} s after the \
                 abuse stopped than before it began (see `proxy fds after`).",
                with.len() - released.len(),
                with.len(),
                RELEASE_WAIT.as_secs()
            ));
        }
    }
    // The proxy's own counters, grown over each phase; gauges while the abuse was on.
    let mut names: Vec<String> = Vec::new();
    for ph in with.iter().chain(without) {
        for (k, _) in ph.counters.iter().chain(&ph.gauges) {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    for k in &names {
        let get = |ph: &Phase| {
            ph.counters
                .iter()
                .chain(&ph.gauges)
                .find(|(n, _)| n == k)
                .map_or(0.0, |(_, v)| *v)
        };
        let what = if GAUGES.contains(&k.as_str()) {
            " (during)"
        } else {
            ""
        };
        let mut f = both(&format!("proxy {}{what}", metric_label(k)), "", &get, false);
        if f.direct == Some(0.0) {
            f.ratio = None;
            f.ratio_range = None;
        }
        figs.push(f);
    }
    // What the abusers saw (with-abuse phases only): medians over the rounds.
    let mut abuser_names: Vec<(String, &'static str)> = Vec::new();
    for ph in with {
        for t in &ph.abusers {
            for (n, u, _) in &t.figures {
                if !abuser_names.iter().any(|(x, _)| x == n) {
                    abuser_names.push((n.clone(), u));
                }
            }
        }
    }
    for (n, u) in abuser_names {
        // Rounds without the figure (no slowloris cut in a short phase) are left out.
        let v: Vec<f64> = with
            .iter()
            .filter_map(|ph| {
                ph.abusers
                    .iter()
                    .flat_map(|t| &t.figures)
                    .find(|(x, _, _)| *x == n)
                    .map(|(_, _, v)| *v)
            })
            .collect();
        figs.push(Figure::from_rounds(&n, u, &v, None, false));
    }
    rep.figures = figs;
    if let (Some(r), Some([lo, hi])) = (tp.ratio, tp.ratio_range) {
        rep.notes.push(format!(
            "With the abuse on, the {} legitimate pairs moved {:.2} Gbit/s, {r:.2}x of the \
             same pairs without it (rounds {lo:.2}-{hi:.2}); {} of their setups failed with \
             it and {} without. The abusers ran on this machine's cores too, so the ratio \
             also counts the CPU they took from the legitimate clients and the proxy.",
            p.pairs, tp.value, failed_with, failed_without
        ));
    }
    let first = without.first().and_then(|ph| ph.before);
    let last = with.last().and_then(|ph| ph.after);
    if let (Some(a), Some(b)) = (first, last) {
        rep.notes.push(format!(
            "The proxy's RSS was {:.1} MiB before the first phase and {:.1} MiB after the \
             last (peak {:.1} MiB); its fds {} and {}.",
            a.rss_kib as f64 / 1024.0,
            b.rss_kib as f64 / 1024.0,
            b.hwm_kib as f64 / 1024.0,
            a.fds,
            b.fds
        ));
    }
    for (label, v) in [(WITH, with), (WITHOUT, without)] {
        if let Some(e) = v.iter().find_map(|ph| ph.setups.first_error.clone()) {
            rep.notes
                .push(format!("First failed legitimate setup {label}: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_labels_are_short() {
        assert_eq!(
            metric_label("streamhost_refusals_total{reason=\"handshake_timeout\"}"),
            "refusals (handshake_timeout)"
        );
        assert_eq!(
            metric_label("streamhost_relay_stalls_total"),
            "relay_stalls"
        );
        assert_eq!(
            metric_label("streamhost_connections_open"),
            "connections_open"
        );
    }

    #[test]
    fn default_counts_fit_the_open_files_cap() {
        use clap::Parser;
        let c = crate::cli::Cli::try_parse_from(["x", "abuse"]).unwrap();
        let Some(crate::cli::Cmd::Abuse(a)) = c.cmd else {
            panic!("not abuse")
        };
        let p = AbuseParams::from(&a);
        assert!(p.fds_needed() < 15_000, "{}", p.fds_needed());
        assert!(p.flood > 0 && p.slowloris > 0 && p.stalled > 0 && p.trickle > 0);
    }
}
