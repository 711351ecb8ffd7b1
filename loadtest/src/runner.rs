//! Puts a run together: the embedded XMPP server or our own component, the spawned or
//! external proxy, the scenarios, and the report.

use crate::cli::{Cmd, Common, XmppMode};
use crate::control::Control;
use crate::pairs::{run_tag, Target};
use crate::peers::Peer;
use crate::proxy_proc::{default_bin, ProxyProcess, SpawnOptions};
use crate::report::model::{Env, Report, ScenarioReport};
use crate::scenarios::{abuse, bulk, idle, mixed, peers, setup, Ctx};
use crate::xmpp::{component, embedded::EmbeddedServer};
use crate::{report, sys};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything that must stay alive while scenarios run.
pub struct Harness {
    pub ctx: Ctx,
    pub proxy: Option<ProxyProcess>,
    pub embedded: Option<EmbeddedServer>,
    pub control: Option<Arc<Control>>,
    pub env: Env,
}

const READY: Duration = Duration::from_secs(15);

/// Rounds per measurement unless --rounds says otherwise (`quick` has its own).
pub const DEFAULT_ROUNDS: usize = 3;

/// `quick`'s bulk rounds: enough for its median ratio to repeat within a few hundredths
/// from run to run on a busy 2-core machine.
pub const QUICK_BULK_ROUNDS: usize = 81;

/// `quick`'s mixed rounds (its goodput follows the arrival schedule; latencies add up).
pub const QUICK_MIXED_ROUNDS: usize = 2;

impl Harness {
    /// Sets up the proxy side unless `direct_only`, then keeps this generator's load
    /// threads (all started after this) on --client-cpus. Pinning comes last so that the
    /// spawned proxy does not inherit the generator's CPUs.
    /// With `metrics`, a spawned proxy also serves its Prometheus endpoint on a free
    /// loopback port, for scenarios that read its counters.
    pub fn start(c: &Common, direct_only: bool, metrics: bool) -> anyhow::Result<Self> {
        let mut h = Self::start_unpinned(c, direct_only, metrics)?;
        if let Some(cpus) = &c.client_cpus {
            streamhost::affinity::pin_current_thread(cpus)
                .map_err(|e| anyhow::anyhow!("--client-cpus {cpus:?}: {e}"))?;
            h.env.client_cpus = Some(format!("{cpus:?}"));
        }
        Ok(h)
    }

    fn start_unpinned(c: &Common, direct_only: bool, metrics: bool) -> anyhow::Result<Self> {
        let mut env = Env {
            kernel: sys::kernel(),
            cores: sys::cores(),
            nofile_limit: sys::raise_nofile(),
            args: std::env::args().collect(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ..Default::default()
        };
        let mut ctx = Ctx {
            proxy: None,
            baseline: !c.no_baseline,
            seed: c.seed,
            io_timeout: Duration::from_secs(c.io_timeout.max(1)),
            deadline: Instant::now() + Duration::from_secs(c.time_limit),
            proxy_pid: None,
            metrics: None,
            tag: run_tag(),
            rounds: c.rounds.map_or(DEFAULT_ROUNDS, |r| r as usize),
        };
        if direct_only {
            env.proxy = "none (direct only)".into();
            env.xmpp = "none".into();
            return Ok(Harness {
                ctx,
                proxy: None,
                embedded: None,
                control: None,
                env,
            });
        }
        if c.xmpp == XmppMode::InProcess {
            anyhow::ensure!(
                c.proxy.is_none(),
                "--xmpp in-process runs its own data plane: drop --proxy"
            );
            let mut cfg = match &c.proxy_config {
                Some(p) => streamhost::Config::from_file(p)?,
                // All load comes from one loopback address: no per-address limit.
                None => streamhost::Config {
                    max_connections_per_ip: 0,
                    ..streamhost::Config::default()
                },
            };
            cfg.listen = vec!["127.0.0.1:0".parse().expect("literal")];
            if let Some(cpus) = &c.proxy_cpus {
                cfg.worker_cpus = cpus.clone();
                cfg.workers = cpus.len();
            }
            if let Some(w) = c.workers {
                cfg.workers = w;
            }
            if let Some(e) = &c.engine {
                cfg.relay.engine = e.parse().map_err(anyhow::Error::msg)?;
            }
            if let Some(b) = c.buffer_size {
                cfg.relay.buffer_size = b as usize;
            }
            env.proxy = "in-process streamhost data plane (shares this process)".into();
            env.proxy_engine = Some(format!("{:?}", cfg.relay.engine).to_lowercase());
            env.proxy_config = Some(format!("{cfg:#?}\n"));
            env.xmpp = "none (activation through the data plane's API)".into();
            let handle = Arc::new(streamhost::Server::start(cfg)?);
            let addr = handle.local_addrs()[0];
            let control = Arc::new(Control::in_process(handle, &c.domain));
            ctx.proxy = Some(Target::Proxy {
                addr,
                control: control.clone(),
            });
            ctx.proxy_pid = Some(std::process::id());
            return Ok(Harness {
                ctx,
                proxy: None,
                embedded: None,
                control: Some(control),
                env,
            });
        }
        // Where the proxy's own component connects, and how we send activations.
        let (embedded, xmpp_server, link_of): (Option<EmbeddedServer>, _, _) = match &c.xmpp {
            XmppMode::Embedded => {
                let e = EmbeddedServer::start(c.xmpp_listen, &c.proxy_jid, &c.secret)?;
                let addr = e.addr();
                env.xmpp = format!("embedded XEP-0114 server on {addr}");
                (Some(e), addr, None)
            }
            XmppMode::InProcess => unreachable!("handled above"),
            XmppMode::Component {
                server,
                jid,
                secret,
            } => {
                env.xmpp = format!("component {jid} on XMPP server {server}");
                (None, *server, Some((*server, jid.clone(), secret.clone())))
            }
        };
        let domain = match &link_of {
            Some((_, jid, _)) => jid.clone(),
            None => c.domain.clone(),
        };
        let (proxy, addr) = match c.proxy {
            Some(addr) => {
                env.proxy = format!("external {addr}");
                if let Some(e) = &embedded {
                    eprintln!(
                        "waiting for the proxy's component ({}) to connect to {}",
                        c.proxy_jid,
                        e.addr()
                    );
                }
                (None, addr)
            }
            None => {
                let opts = SpawnOptions {
                    bin: c.proxy_bin.clone().unwrap_or_else(default_bin),
                    base_config: c.proxy_config.clone(),
                    engine: c.engine.clone(),
                    workers: c.workers,
                    worker_cpus: c.proxy_cpus.clone(),
                    buffer_size: c.buffer_size.map(|b| b as usize),
                    xmpp_server,
                    jid: c.proxy_jid.clone(),
                    secret: c.secret.clone(),
                    domains: vec![domain.clone()],
                    metrics: if metrics {
                        Some(([127, 0, 0, 1], crate::proxy_proc::free_port()?).into())
                    } else {
                        None
                    },
                };
                let p = ProxyProcess::spawn(&opts, READY)?;
                env.proxy = format!("spawned {} (pid {})", opts.bin.display(), p.pid);
                env.proxy_engine = Some(p.engine.clone());
                env.proxy_config = Some(p.config_text.clone());
                ctx.proxy_pid = Some(p.pid);
                ctx.metrics = p.metrics;
                let addr = p.listen;
                (Some(p), addr)
            }
        };
        let link = match (&embedded, link_of) {
            (Some(e), _) => {
                let wait = if proxy.is_some() {
                    READY
                } else {
                    Duration::from_secs(60)
                };
                e.wait_link(wait).map_err(|err| match &proxy {
                    Some(p) => anyhow::anyhow!("{err}; proxy output:\n{}", p.log_tail()),
                    None => err,
                })?
            }
            (None, Some((server, jid, secret))) => {
                component::connect(server, &jid, &secret, None, READY)?
            }
            (None, None) => unreachable!("the in-process mode returned above"),
        };
        let control = Arc::new(Control::new(link, &c.proxy_jid, &domain));
        ctx.proxy = Some(Target::Proxy {
            addr,
            control: control.clone(),
        });
        Ok(Harness {
            ctx,
            proxy,
            embedded,
            control: Some(control),
            env,
        })
    }

    /// Stops the proxy; a proxy that died during the run is an error.
    pub fn finish(mut self) -> Option<String> {
        if let Some(c) = &self.control {
            c.close();
        }
        let mut err = None;
        if let Some(p) = &mut self.proxy {
            if !p.is_running() {
                err = Some(format!(
                    "the proxy exited during the run; its output:\n{}",
                    p.log_tail()
                ));
            }
            p.stop();
        }
        err
    }
}

/// One scenario of a command, run against the harness.
type Step = Box<dyn Fn(&Ctx) -> anyhow::Result<ScenarioReport>>;

/// Runs one scenario command; returns the report (with errors, if any).
pub fn run(cmd: &Cmd, c: &Common) -> anyhow::Result<Report> {
    let direct_only = matches!(cmd, Cmd::Direct(_));
    let h = Harness::start(c, direct_only, matches!(cmd, Cmd::Abuse(_)))?;
    let mut rep = Report {
        env: h.env.clone(),
        ..Default::default()
    };
    let steps: Vec<Step> = match cmd.clone() {
        Cmd::Quick(q) => {
            let (mixed_rounds, bulk_rounds) = match c.rounds {
                Some(r) => (r as usize, r as usize),
                None => (QUICK_MIXED_ROUNDS, QUICK_BULK_ROUNDS),
            };
            let q2 = q.clone();
            vec![
                Box::new(move |ctx: &Ctx| {
                    let ctx = Ctx {
                        rounds: mixed_rounds,
                        ..ctx.clone()
                    };
                    mixed::run(
                        &ctx,
                        &mixed::MixedParams {
                            rate: 100.0,
                            duration: Duration::from_secs_f64(q.mixed_seconds.max(0.1)),
                            median: 16 << 10,
                            sigma: 2.0,
                            min: 512,
                            max: 64 << 20,
                            max_inflight: 64,
                        },
                    )
                }),
                Box::new(move |ctx: &Ctx| {
                    let ctx = Ctx {
                        rounds: bulk_rounds,
                        ..ctx.clone()
                    };
                    bulk::run(
                        &ctx,
                        &bulk::BulkParams {
                            pairs: vec![1],
                            bytes: q2.bytes,
                            both_ways: false,
                        },
                        "bulk",
                    )
                }),
            ]
        }
        Cmd::Bulk(a) | Cmd::Direct(a) => {
            let name = if direct_only { "direct" } else { "bulk" };
            vec![Box::new(move |ctx| {
                bulk::run(
                    ctx,
                    &bulk::BulkParams {
                        pairs: a.pairs.clone(),
                        bytes: a.bytes,
                        both_ways: a.both_ways,
                    },
                    name,
                )
            })]
        }
        Cmd::Setup(a) => vec![Box::new(move |ctx| {
            setup::run(
                ctx,
                &setup::SetupParams {
                    count: a.count,
                    concurrency: a.concurrency,
                    payload: a.payload,
                },
            )
        })],
        Cmd::Idle(a) => vec![Box::new(move |ctx| {
            idle::run(
                ctx,
                &idle::IdleParams {
                    pairs: a.pairs,
                    hold: Duration::from_secs(a.hold),
                    concurrency: a.concurrency,
                },
            )
        })],
        Cmd::Mixed(a) => vec![Box::new(move |ctx| {
            mixed::run(
                ctx,
                &mixed::MixedParams {
                    rate: a.rate,
                    duration: Duration::from_secs_f64(a.duration),
                    median: a.median,
                    sigma: a.sigma,
                    min: a.min,
                    max: a.max,
                    max_inflight: a.max_inflight,
                },
            )
        })],
        Cmd::Peers(a) => {
            let secret = c.secret.clone();
            vec![Box::new(move |ctx: &Ctx| {
                let mut peers = Vec::new();
                if let Some(t) = &ctx.proxy {
                    peers.push(Peer {
                        name: "streamhost".into(),
                        target: t.clone(),
                        pid: ctx.proxy_pid,
                    });
                }
                let mut skipped = crate::peers::missing_lines();
                // Kept alive until the scenario ends; each stopped on drop.
                let running =
                    crate::peers::spawn_installed(&secret, READY, &mut peers, &mut skipped);
                let rep = peers::run(
                    ctx,
                    &peers,
                    &skipped,
                    &bulk::BulkParams {
                        pairs: a.pairs.clone(),
                        bytes: a.bytes,
                        both_ways: false,
                    },
                    &setup::SetupParams {
                        count: a.setups,
                        concurrency: a.concurrency,
                        payload: 1024,
                    },
                    &idle::IdleParams {
                        pairs: a.idle_pairs,
                        hold: Duration::from_secs(a.hold),
                        concurrency: 8,
                    },
                );
                drop(peers);
                drop(running);
                rep
            })]
        }
        Cmd::Abuse(a) => vec![Box::new(move |ctx| {
            abuse::run(ctx, &abuse::AbuseParams::from(&a))
        })],
        Cmd::Compare { .. } => anyhow::bail!("compare runs no load"),
    };
    for step in steps {
        match step(&h.ctx) {
            Ok(s) => rep.scenarios.push(s),
            Err(e) => {
                rep.errors.push(format!("{e:#}"));
                break;
            }
        }
    }
    if let Some(e) = h.finish() {
        rep.errors.push(e);
    }
    if let Some(dir) = &c.report {
        report::write_dir(&rep, dir)?;
    }
    Ok(rep)
}
