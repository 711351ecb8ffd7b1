//! Command-line interface.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "streamhost-loadtest",
    version,
    about = "Load generator for the streamhost XEP-0065 proxy: SOCKS5 on both halves, \
             activation over XMPP, every byte verified, figures as ratios to direct TCP.",
    after_help = "With no command, runs `quick`: spawns the proxy (the `streamhost` binary next \
                  to this one) with the embedded XMPP server, runs a short mixed load and one-pair \
                  bulk rounds alternating with direct TCP, and prints medians, their range and \
                  the CPU per GB each side used (about a minute on 2 cores)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Target an already running proxy at this SOCKS5 address instead of spawning one.
    #[arg(long, global = true, value_name = "ADDR")]
    pub proxy: Option<SocketAddr>,
    /// The proxy binary to spawn [default: `streamhost` next to this executable].
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "proxy")]
    pub proxy_bin: Option<PathBuf>,
    /// A proxy config file to start from when spawning (listen and [component] are set here).
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "proxy")]
    pub proxy_config: Option<PathBuf>,
    /// Relay engine of the spawned proxy.
    #[arg(long, global = true, value_parser = ["copy", "splice", "uring-splice"], conflicts_with = "proxy")]
    pub engine: Option<String>,
    /// Worker threads of the spawned proxy [default: one per core].
    #[arg(long, global = true, value_name = "N", conflicts_with = "proxy")]
    pub workers: Option<usize>,
    /// CPUs of the spawned (or in-process) proxy's workers, e.g. `0-3` or `0,2,4`: its
    /// `worker_cpus`, and one worker per CPU unless --workers says otherwise.
    // The type is written `std::vec::Vec` on purpose: clap's derive reads a bare
    // `Option<Vec<_>>` as a repeatable flag, while this is one flag parsed into a list.
    #[arg(long, global = true, value_name = "LIST", value_parser = streamhost::affinity::parse_cpu_list, conflicts_with = "proxy")]
    pub proxy_cpus: Option<std::vec::Vec<usize>>,
    /// CPUs this generator (senders, receivers, checkers, the embedded XMPP server) runs
    /// on, e.g. `4-15`: with --proxy-cpus, clients and proxy on separate cores.
    // `std::vec::Vec`: see --proxy-cpus.
    #[arg(long, global = true, value_name = "LIST", value_parser = streamhost::affinity::parse_cpu_list)]
    pub client_cpus: Option<std::vec::Vec<usize>>,
    /// Bytes per receive buffer of the spawned proxy's copy engine (its relay.buffer_size),
    /// e.g. 64KiB, 1MiB.
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size, conflicts_with = "proxy")]
    pub buffer_size: Option<u64>,
    /// How activations reach the proxy: `embedded` (this program is the XMPP server the
    /// proxy's component connects to) or `component:HOST:PORT:JID:SECRET` (connect to a
    /// real XMPP server as component JID and send the activations from there), or
    /// `in-process` (run streamhost's data plane inside this process and activate through
    /// its API: no XMPP, no spawn; the generator and the proxy then share the cores).
    #[arg(long, global = true, value_name = "MODE", default_value = "embedded", value_parser = parse_xmpp)]
    pub xmpp: XmppMode,
    /// Where the embedded XMPP server listens (an external proxy must be configured with it).
    #[arg(
        long,
        global = true,
        value_name = "ADDR",
        default_value = "127.0.0.1:0"
    )]
    pub xmpp_listen: SocketAddr,
    /// The proxy's component JID.
    #[arg(
        long,
        global = true,
        value_name = "JID",
        default_value = "proxy.localhost"
    )]
    pub proxy_jid: String,
    /// The proxy's component secret (embedded server and spawned proxy).
    #[arg(long, global = true, default_value = "streamhost-loadtest")]
    pub secret: String,
    /// Domain of the requester/target JIDs with the embedded server.
    #[arg(
        long,
        global = true,
        value_name = "DOMAIN",
        default_value = "localhost"
    )]
    pub domain: String,
    /// Rounds per measurement: direct, proxy, direct, proxy, ... Each figure is the median
    /// over the rounds and each ratio the median of the rounds' own ratios, shown with their
    /// range; more rounds steady the figures on busy machines. [default: 3; quick: 81 for
    /// bulk, 2 for mixed]
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub rounds: Option<u64>,
    /// Skip the direct-TCP baseline (figures then have no ratio).
    #[arg(long, global = true)]
    pub no_baseline: bool,
    /// Write report.json, report.md and SVG plots into this directory.
    #[arg(long, global = true, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Overall time limit in seconds; no new work starts after it.
    #[arg(long, global = true, value_name = "S", default_value_t = 600)]
    pub time_limit: u64,
    /// Seconds a data socket may block before the run fails as stalled.
    #[arg(long, global = true, value_name = "S", default_value_t = 30)]
    pub io_timeout: u64,
    /// Seed of the data patterns and of the mixed schedule.
    #[arg(long, global = true, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmppMode {
    Embedded,
    InProcess,
    Component {
        server: SocketAddr,
        jid: String,
        secret: String,
    },
}

pub fn parse_xmpp(s: &str) -> Result<XmppMode, String> {
    if s == "embedded" {
        return Ok(XmppMode::Embedded);
    }
    if s == "in-process" {
        return Ok(XmppMode::InProcess);
    }
    let rest = s
        .strip_prefix("component:")
        .ok_or("expected `embedded`, `in-process` or `component:HOST:PORT:JID:SECRET`")?;
    let mut it = rest.splitn(4, ':');
    let (Some(h), Some(p), Some(jid), Some(secret)) = (it.next(), it.next(), it.next(), it.next())
    else {
        return Err("expected component:HOST:PORT:JID:SECRET".into());
    };
    let server = format!("{h}:{p}")
        .parse()
        .map_err(|e| format!("bad server address {h}:{p}: {e}"))?;
    if jid.is_empty() || secret.is_empty() {
        return Err("component JID and secret must not be empty".into());
    }
    Ok(XmppMode::Component {
        server,
        jid: jid.into(),
        secret: secret.into(),
    })
}

/// `4GiB`, `64KiB`, `1MB`, `1000`: a byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("bad size {s:?}"))?;
    let m: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        u => return Err(format!("unknown size unit {u:?} (use KiB, MiB, GiB)")),
    };
    n.checked_mul(m)
        .ok_or_else(|| format!("size {s:?} too large"))
}

/// What `quick` runs; `quick --help` shows the defaults.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct QuickArgs {
    /// Bytes of each bulk round (one pair, one way).
    #[arg(long, value_parser = parse_size, default_value = "256MiB")]
    pub bytes: u64,
    /// Seconds of mixed load per round and target.
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    pub mixed_seconds: f64,
}

impl Default for QuickArgs {
    fn default() -> Self {
        QuickArgs {
            bytes: 256 << 20,
            mixed_seconds: 2.0,
        }
    }
}

#[derive(Subcommand, Debug, Clone)]
pub enum Cmd {
    /// The main preset (the default): a short mixed load, then bulk with one pair in
    /// alternating rounds against direct TCP, with the CPU each side used.
    Quick(QuickArgs),
    /// P pairs x B bytes; aggregate and per-pair Gbit/s.
    Bulk(BulkArgs),
    /// The bulk sender/receiver over plain loopback TCP only: the physical baseline.
    Direct(BulkArgs),
    /// N pair setups at concurrency C; setups/s and latency percentiles.
    Setup(SetupArgs),
    /// K activated pairs held S seconds; proxy RSS and fds.
    Idle(IdleArgs),
    /// Open-loop Poisson arrivals with heavy-tailed sizes; goodput and latency.
    Mixed(MixedArgs),
    /// streamhost beside the other proxies installed here (Prosody's and ejabberd's
    /// mod_proxy65, HAProxy as a plain TCP relay), each spawned on loopback: the same bulk
    /// transfers interleaved with direct TCP, setups at a concurrency, RSS per idle pair;
    /// missing ones are named and skipped.
    Peers(PeersArgs),
    /// Legitimate verified transfers and setups with and without abusive clients (stalled
    /// and trickling receivers, slowloris handshakes, random-key floods from many loopback
    /// addresses, connection churn), alternating; what the legitimate pairs got with the
    /// abuse as a ratio to without, and the proxy's fds, RSS and refusal counters.
    Abuse(AbuseArgs),
    /// Compare two report.json files (ratio B/A per figure).
    Compare {
        /// The report.json taken as reference.
        a: PathBuf,
        /// The report.json compared with it.
        b: PathBuf,
    },
}

#[derive(Args, Debug, Clone)]
pub struct BulkArgs {
    /// Pair counts to run, e.g. 1,2,4,8 (each in every round: throughput vs pairs).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub pairs: Vec<usize>,
    /// Bytes per pair and direction.
    #[arg(long, value_parser = parse_size, default_value = "4GiB")]
    pub bytes: u64,
    /// Send both ways at once.
    #[arg(long)]
    pub both_ways: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PeersArgs {
    /// Pair counts to run, e.g. 1,8 (each in every round).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub pairs: Vec<usize>,
    /// Bytes per pair and round.
    #[arg(long, value_parser = parse_size, default_value = "256MiB")]
    pub bytes: u64,
    /// Pair setups per round and SOCKS5 peer (0: none), each carrying 1 KiB.
    #[arg(long, default_value_t = 1000)]
    pub setups: usize,
    /// Setups in progress at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Idle pairs held per SOCKS5 peer for its RSS per pair (0: none).
    #[arg(long, default_value_t = 1000)]
    pub idle_pairs: usize,
    /// Seconds to hold them.
    #[arg(long, default_value_t = 3)]
    pub hold: u64,
}

#[derive(Args, Debug, Clone)]
pub struct AbuseArgs {
    /// Legitimate pairs moving --bytes each (one way, every byte checked) in each phase.
    #[arg(long, default_value_t = 4)]
    pub pairs: usize,
    /// Bytes per legitimate pair and phase, at most: see --seconds.
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    pub bytes: u64,
    /// Seconds the legitimate transfers of a phase may take: senders stop there if their
    /// bytes are not through (what arrived is checked and counted), so a phase ends in
    /// bounded time however slow the relay gets.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub seconds: f64,
    /// Legitimate setups per second during the transfers (each set up, activated and
    /// checked with a 1 KiB payload); their latency and failures are reported.
    #[arg(long, value_name = "N", default_value_t = 40.0)]
    pub setup_rate: f64,
    /// Activated pairs whose receiver never reads (the sender writes until it blocks).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub stalled: usize,
    /// Activated pairs whose receiver reads --trickle-bytes a second (checked).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub trickle: usize,
    /// Bytes a trickling receiver reads each second.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4KiB")]
    pub trickle_bytes: u64,
    /// Connections sending their SOCKS5 handshake one byte a second, never finishing
    /// (one replaced when the proxy closes it).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub slowloris: usize,
    /// Handshaken halves with random keys that no peer will ever join, held open.
    #[arg(long, value_name = "N", default_value_t = 6000)]
    pub flood: usize,
    /// Loopback source addresses (127.x.y.z) the flood, slowloris and churn connections
    /// are spread over.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub source_addrs: u32,
    /// Connections opened and closed at once, per second.
    #[arg(long, value_name = "N", default_value_t = 200.0)]
    pub churn_rate: f64,
    /// Seconds the abusers get to connect before the legitimate load starts (they keep
    /// connecting while it runs).
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub ramp: f64,
}

#[derive(Args, Debug, Clone)]
pub struct SetupArgs {
    /// Pairs to set up (per round and target).
    #[arg(long, default_value_t = 2000)]
    pub count: usize,
    /// Setups in progress at once (one thread each).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Bytes each pair carries once set up, checked on arrival.
    #[arg(long, value_parser = parse_size, default_value = "1KiB")]
    pub payload: u64,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Pairs to hold (two fds each here and in the proxy; at most ~9000).
    #[arg(long, default_value_t = 1000)]
    pub pairs: usize,
    /// Seconds to hold them.
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
    /// Threads setting the pairs up.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

#[derive(Args, Debug, Clone)]
pub struct MixedArgs {
    /// Arrivals per second (Poisson).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of arrivals.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Median size (lognormal).
    #[arg(long, value_parser = parse_size, default_value = "16KiB")]
    pub median: u64,
    /// Lognormal sigma: 2 gives many small transfers and a few huge ones.
    #[arg(long, default_value_t = 2.0)]
    pub sigma: f64,
    /// Smallest transfer (smaller draws are raised to it).
    #[arg(long, value_parser = parse_size, default_value = "512")]
    pub min: u64,
    /// Largest transfer (larger draws are cut to it).
    #[arg(long, value_parser = parse_size, default_value = "256MiB")]
    pub max: u64,
    /// Transfers in flight at most; arrivals beyond it wait, and their latency counts the wait.
    #[arg(long, default_value_t = 128)]
    pub max_inflight: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cpu_lists_are_lists() {
        let c = Cli::try_parse_from(["x", "--proxy-cpus", "0-2,5", "--client-cpus", "6"]).unwrap();
        assert_eq!(c.common.proxy_cpus, Some(vec![0, 1, 2, 5]));
        assert_eq!(c.common.client_cpus, Some(vec![6]));
        assert!(Cli::try_parse_from(["x", "--proxy-cpus", "2-1"]).is_err());
        assert!(Cli::try_parse_from(["x", "--proxy", "127.0.0.1:1", "--proxy-cpus", "0"]).is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("10"), Ok(10));
        assert!(parse_size("3 furlongs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn xmpp_modes_parse() {
        assert_eq!(parse_xmpp("embedded"), Ok(XmppMode::Embedded));
        assert_eq!(
            parse_xmpp("component:127.0.0.1:5347:lt.localhost:se:cret"),
            Ok(XmppMode::Component {
                server: "127.0.0.1:5347".parse().unwrap(),
                jid: "lt.localhost".into(),
                secret: "se:cret".into()
            })
        );
        assert!(parse_xmpp("component:127.0.0.1").is_err());
        assert!(parse_xmpp("prosody").is_err());
    }

    #[test]
    fn global_options_go_anywhere() {
        let c = Cli::try_parse_from(["x", "bulk", "--pairs", "1,2", "--no-baseline"]).unwrap();
        assert!(c.common.no_baseline);
        let Some(Cmd::Bulk(b)) = c.cmd else { panic!() };
        assert_eq!(b.pairs, vec![1, 2]);
        assert!(Cli::try_parse_from(["x", "--proxy", "127.0.0.1:1", "--engine", "copy"]).is_err());
    }
}
