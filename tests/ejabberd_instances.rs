//! Several streamhost processes as one proxy JID, with ejabberd 23.01 as the only shared
//! piece: three processes on 127.0.0.2/.3/.4 (standing for three machines) log in as the
//! same `ejabberd_service` component, each advertising its own address, and ejabberd's
//! `domain_balancing` (deploy/ejabberd/streamhost-instances.yml: by bare source) sends all
//! of a requester's stanzas, query and activation alike, to one of them. No state is
//! shared between the processes. Also measured: one process killed mid-run, and a server
//! that balances each stanza on its own (`type: random`, as Openfire does).

mod common;
mod support;

use common::scrape;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};
use support::bytestreams::{activate_within, exchange, pair, query_streamhost};
use support::client::Client;
use support::ejabberd::{Ejabberd, DOMAIN, PROXY_JID, SECRET};
use support::streamhost_process::StreamhostProcess;

const IPS: [[u8; 4]; 3] = [[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]];
const REQUESTERS: usize = 100;
/// Bytes each way in every setup, all checked.
const PAYLOAD: usize = 16 << 10;

fn name(i: usize) -> String {
    format!("req{i:03}")
}

struct Cluster {
    // Dropped in this order: the proxies, then ejabberd.
    instances: Vec<StreamhostProcess>,
    ejabberd: Ejabberd,
}

fn spawn_instance(ejabberd: &Ejabberd, ip: [u8; 4]) -> StreamhostProcess {
    let p = StreamhostProcess::spawn(
        IpAddr::from(ip),
        ejabberd.component(),
        PROXY_JID,
        SECRET,
        "",
    );
    assert!(
        p.wait_ready(Duration::from_secs(20)),
        "instance {ip:?} did not log in: {}\n{}",
        p.log(),
        ejabberd.logs()
    );
    p
}

/// ejabberd with `requesters` accounts and `target`, and one streamhost per address.
/// `kind`: the `domain_balancing` type, or none at all (no `domain_balancing` entry).
fn cluster(kind: Option<&'static str>, requesters: usize) -> Cluster {
    let mut names: Vec<String> = (0..requesters).map(name).collect();
    names.push("target".into());
    let users: Vec<(&str, &str, &str)> = names
        .iter()
        .map(|n| (n.as_str(), DOMAIN, "pw-shared"))
        .collect();
    let ejabberd = match kind {
        Some(kind) => Ejabberd::with_balancing(IPS.len() as u32, kind, &users),
        None => Ejabberd::start(&users),
    };
    let instances = IPS
        .iter()
        .map(|&ip| spawn_instance(&ejabberd, ip))
        .collect();
    Cluster {
        instances,
        ejabberd,
    }
}

impl Cluster {
    fn login(&self, user: &str) -> Client {
        Client::login(self.ejabberd.c2s_port, user, DOMAIN, "pw-shared")
            .unwrap_or_else(|e| panic!("{user} login: {e}\n{}", self.ejabberd.logs()))
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.instances.iter().position(|p| p.socks == addr)
    }
}

fn logins(p: &StreamhostProcess) -> f64 {
    let (status, _, body) = scrape::get(p.metrics, "/metrics");
    assert_eq!(status, 200);
    scrape::samples(&body)["streamhost_component_logins_total"]
}

fn activations(p: &StreamhostProcess) -> f64 {
    let (status, _, body) = scrape::get(p.metrics, "/metrics");
    assert_eq!(status, 200);
    scrape::samples(&body)["streamhost_activations_total"]
}

/// One verified setup as a requester does it: streamhost query, target and requester
/// halves at the advertised address, activation, `PAYLOAD` bytes each way byte-exact.
/// Returns the instance's address, or what failed.
fn setup(c: &mut Client, target: &str, sid: &str, limit: Duration) -> Result<SocketAddr, String> {
    let addr = query_streamhost(c, PROXY_JID, limit).map_err(|e| format!("query: {e}"))?;
    let (r, t) = pair(addr, sid, &c.jid, target).map_err(|e| format!("socks5: {e}"))?;
    let el = activate_within(c, PROXY_JID, sid, target, limit)
        .map_err(|e| format!("activation: {e}"))?;
    if el.attr("type") != Some("result") {
        let cond = el.error_condition().unwrap_or_default();
        return Err(format!("activation refused: {cond}"));
    }
    let seed = sid.bytes().fold(0u32, |h, b| h.wrapping_mul(31) ^ b as u32);
    exchange(&r, &t, PAYLOAD, seed).map_err(|e| format!("relay: {e}"))?;
    Ok(addr)
}

/// Runs `rounds` setups for each client on `threads` threads; returns the clients and
/// (requester, result) per setup.
type Outcome = (usize, Result<SocketAddr, String>);
fn run_rounds(
    clients: Vec<(usize, Client)>,
    target: &str,
    threads: usize,
    rounds: usize,
    tag: &str,
) -> (Vec<(usize, Client)>, Vec<Outcome>) {
    let per = clients.len().div_ceil(threads);
    let mut groups: Vec<Vec<(usize, Client)>> = Vec::new();
    let mut rest = clients;
    while !rest.is_empty() {
        let tail = rest.split_off(per.min(rest.len()));
        groups.push(rest);
        rest = tail;
    }
    let handles: Vec<_> = groups
        .into_iter()
        .map(|mut group| {
            let (target, tag) = (target.to_string(), tag.to_string());
            thread::spawn(move || {
                let mut out = Vec::new();
                for round in 0..rounds {
                    for (i, c) in group.iter_mut() {
                        let sid = format!("{tag}-{i}-{round}");
                        out.push((*i, setup(c, &target, &sid, Duration::from_secs(10))));
                    }
                }
                (group, out)
            })
        })
        .collect();
    let mut clients = Vec::new();
    let mut results = Vec::new();
    for h in handles {
        let (g, r) = h.join().expect("setup thread");
        clients.extend(g);
        results.extend(r);
    }
    clients.sort_by_key(|(i, _)| *i);
    (clients, results)
}

/// One attempt of the kill phase: when it started and ended (since the phase began), the
/// requester, and the outcome.
struct Attempt {
    start: Duration,
    end: Duration,
    requester: usize,
    result: Result<SocketAddr, String>,
}

#[test]
fn three_instances_behind_one_jid_balanced_by_requester_and_one_killed_mid_run() {
    let mut cl = cluster(Some("bare_source"), REQUESTERS);
    let target = cl.login("target");
    let clients: Vec<(usize, Client)> = (0..REQUESTERS).map(|i| (i, cl.login(&name(i)))).collect();

    // 1,000 verified setups: 100 accounts x 10, ten accounts to a thread.
    let t0 = Instant::now();
    let (clients, results) = run_rounds(clients, &target.jid, 10, 10, "even");
    let took = t0.elapsed();
    let failures: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert_eq!(results.len(), 1000);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let mut home: BTreeMap<usize, usize> = BTreeMap::new();
    let mut per_instance = [0usize; 3];
    for (i, r) in &results {
        let at = cl
            .index_of(*r.as_ref().unwrap())
            .expect("one of the three addresses");
        per_instance[at] += 1;
        // Every setup of one account meets the same instance: nothing else is shared.
        assert_eq!(*home.entry(*i).or_insert(at), at, "requester {i} moved");
    }
    eprintln!("1000 setups in {took:?}: per instance {per_instance:?}");
    for (n, p) in per_instance.iter().zip(&cl.instances) {
        assert!(*n >= 200, "an instance carried under 20%: {per_instance:?}");
        assert_eq!(activations(p), *n as f64, "the instance's own count");
    }

    // Each instance also carries three long relays when one of them dies.
    let victim = 1;
    let mut clients = clients;
    let mut relays = Vec::new();
    for at in 0..3 {
        for (i, c) in clients.iter_mut().filter(|(i, _)| home[i] == at).take(3) {
            let sid = format!("long-{i}");
            let addr = query_streamhost(c, PROXY_JID, Duration::from_secs(10)).unwrap();
            let (r, t) = pair(addr, &sid, &c.jid, &target.jid).unwrap();
            let el = activate_within(c, PROXY_JID, &sid, &target.jid, Duration::from_secs(10));
            assert_eq!(el.unwrap().attr("type"), Some("result"));
            exchange(&r, &t, PAYLOAD, 5).unwrap();
            relays.push((at, r, t));
        }
    }

    // Kill phase: every account on its own thread, setups back to back (3 s limit each)
    // for 6 s; the victim is killed (SIGKILL) after 2 s.
    let start = Instant::now();
    let phase = Duration::from_secs(6);
    let handles: Vec<_> = clients
        .into_iter()
        .map(|(i, mut c)| {
            let tj = target.jid.clone();
            thread::spawn(move || {
                let mut out = Vec::new();
                for n in 0..200 {
                    if start.elapsed() > phase {
                        break;
                    }
                    let s = start.elapsed();
                    let result = setup(
                        &mut c,
                        &tj,
                        &format!("kill-{i}-{n}"),
                        Duration::from_secs(3),
                    );
                    out.push(Attempt {
                        start: s,
                        end: start.elapsed(),
                        requester: i,
                        result,
                    });
                    thread::sleep(Duration::from_millis(20));
                }
                ((i, c), out)
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    let killed_at = start.elapsed();
    cl.instances[victim].kill();
    let mut clients = Vec::new();
    let mut attempts = Vec::new();
    for h in handles {
        let (c, a) = h.join().expect("kill-phase thread");
        clients.push(c);
        attempts.extend(a);
    }
    clients.sort_by_key(|(i, _)| *i);

    let on_victim = |a: &&Attempt| home[&a.requester] == victim;
    let survivors: Vec<&Attempt> = attempts.iter().filter(|a| !on_victim(a)).collect();
    let victims: Vec<&Attempt> = attempts.iter().filter(on_victim).collect();
    let failed: Vec<_> = survivors.iter().filter(|a| a.result.is_err()).collect();
    // Only the killed instance's own requesters fail.
    assert!(
        failed.is_empty(),
        "survivors failed: {:?}",
        failed.iter().map(|a| &a.result).take(5).collect::<Vec<_>>()
    );
    let after: Vec<_> = victims.iter().filter(|a| a.start > killed_at).collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|a| a.result.is_err()),
        "a setup reached a dead instance"
    );
    // ejabberd drops what it routes to an empty slot: the query goes unanswered.
    let unanswered = after
        .iter()
        .filter(|a| a.result.as_ref().unwrap_err().starts_with("query:"))
        .count();
    // Survivors' throughput and their longest pause around the kill.
    let rate = |from: Duration, to: Duration| {
        let n = survivors
            .iter()
            .filter(|a| a.end > from && a.end <= to)
            .count();
        n as f64 / (to - from).as_secs_f64()
    };
    let before = rate(
        killed_at.saturating_sub(Duration::from_millis(1500)),
        killed_at,
    );
    let after_rate = rate(killed_at, killed_at + Duration::from_millis(1500));
    let mut ends: Vec<Duration> = survivors.iter().map(|a| a.end).collect();
    ends.sort();
    let gap = ends
        .windows(2)
        .filter(|w| w[1] > killed_at && w[0] < killed_at + Duration::from_secs(1))
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let first_after = ends
        .iter()
        .find(|e| **e > killed_at)
        .map(|e| *e - killed_at);
    eprintln!(
        "kill phase: {} survivor setups, 0 failed; victim's requesters: {} attempts after the kill, \
         all failed ({} queries unanswered); survivors {before:.0}/s before, {after_rate:.0}/s after; \
         first survivor setup {first_after:?} after the kill, longest pause {gap:?}",
        survivors.len(),
        after.len(),
        unanswered
    );
    assert!(first_after.unwrap() < Duration::from_secs(1));
    assert!(gap < Duration::from_secs(1), "survivors paused {gap:?}");
    assert!(
        after_rate > before * 0.5,
        "survivors slowed down: {before} -> {after_rate}"
    );

    // Relays: the victim's are gone, the others run on byte-exact.
    for (at, r, t) in &relays {
        let moved = exchange(r, t, PAYLOAD, 6);
        if *at == victim {
            assert!(
                moved.is_err(),
                "a relay of the dead instance still moves bytes"
            );
        } else {
            moved.unwrap();
        }
    }

    // A replacement on the victim's address takes the free slot: its requesters are
    // served again, by it, and nobody else moved.
    let t = Instant::now();
    cl.instances[victim] = spawn_instance(&cl.ejabberd, IPS[victim]);
    let mut first_ok = None;
    for (i, c) in clients.iter_mut() {
        let r = setup(
            c,
            &target.jid,
            &format!("back-{i}"),
            Duration::from_secs(10),
        );
        let at = cl.index_of(r.unwrap_or_else(|e| panic!("requester {i}: {e}")));
        assert_eq!(at, Some(home[i]), "requester {i} moved");
        if home[i] == victim && first_ok.is_none() {
            first_ok = Some(t.elapsed());
        }
    }
    eprintln!(
        "replacement serving {:?} after its start",
        first_ok.unwrap()
    );
}

#[test]
fn a_server_balancing_each_stanza_sends_activations_to_the_wrong_instance() {
    // `random` picks an instance per stanza, as a per-packet balancer (Openfire) does; so
    // does ejabberd without `domain_balancing`, which still accepts all three logins.
    for kind in [Some("random"), None] {
        let cl = cluster(kind, 10);
        let target = cl.login("target");
        let clients: Vec<(usize, Client)> = (0..10).map(|i| (i, cl.login(&name(i)))).collect();
        let (_, results) = run_rounds(clients, &target.jid, 5, 15, "rand");
        let failed: Vec<&String> = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().err())
            .collect();
        let share = failed.len() as f64 / results.len() as f64;
        eprintln!(
            "balancing {kind:?} over 3 instances: {} of {} setups failed ({:.0}%)",
            failed.len(),
            results.len(),
            share * 100.0
        );
        // The activation meets the queried instance one time in three.
        assert!((0.45..=0.85).contains(&share), "{kind:?}: {share}");
        for f in failed {
            assert_eq!(f, "activation refused: item-not-found");
        }
        // Every instance answered some of it.
        for p in &cl.instances {
            assert!(activations(p) > 0.0, "{kind:?}");
        }
    }
}

#[test]
fn an_instance_beyond_component_number_logs_in_but_gets_no_stanza() {
    let mut cl = cluster(Some("bare_source"), 12);
    // A fourth process for three slots: ejabberd accepts its login but routes nothing to it.
    let extra = spawn_instance(&cl.ejabberd, [127, 0, 0, 5]);
    let target = cl.login("target");
    let clients: Vec<(usize, Client)> = (0..12).map(|i| (i, cl.login(&name(i)))).collect();
    let (mut clients, results) = run_rounds(clients, &target.jid, 4, 3, "spare");
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    assert!(extra.ready(), "the fourth process is logged in");
    assert_eq!(activations(&extra), 0.0);
    let served: f64 = cl.instances.iter().map(activations).sum();
    assert_eq!(served, results.len() as f64);
    // It is no standby either: the slot of a dead process stays empty, its requesters
    // unanswered, while the fourth process sits logged in.
    let first = cl.instances[0].socks;
    let orphans: Vec<usize> = results
        .iter()
        .filter(|(_, r)| *r.as_ref().unwrap() == first)
        .map(|(i, _)| *i)
        .collect();
    assert!(!orphans.is_empty());
    cl.instances[0].kill();
    thread::sleep(Duration::from_millis(500));
    for (i, c) in clients.iter_mut().filter(|(i, _)| orphans.contains(i)) {
        let answer = query_streamhost(c, PROXY_JID, Duration::from_secs(1));
        assert!(answer.is_err(), "requester {i} was answered: {answer:?}");
    }
    assert!(extra.ready());
    assert_eq!(activations(&extra), 0.0);
}

/// An upgrade by handover of one instance behind `domain_balancing`: the new process logs
/// in while the old one still holds the instance's slot, so ejabberd gives it none. Once
/// the old link has left, the new process must hold that slot, or the instance's
/// requesters go unanswered for good.
#[test]
fn an_instance_upgraded_by_handover_keeps_its_requesters() {
    let mut cl = cluster(Some("bare_source"), 12);
    let target = cl.login("target");
    let clients: Vec<(usize, Client)> = (0..12).map(|i| (i, cl.login(&name(i)))).collect();
    let (clients, results) = run_rounds(clients, &target.jid, 4, 1, "before");
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    let first = cl.instances[0].socks;
    let its: Vec<usize> = results
        .iter()
        .filter(|(_, r)| *r.as_ref().unwrap() == first)
        .map(|(i, _)| *i)
        .collect();
    assert!(!its.is_empty(), "the first instance serves some requesters");
    let new = cl.instances[0].take_over();
    let status = cl.instances[0].wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the old process exits cleanly after the handover: {status:?}\n{}",
        cl.instances[0].log()
    );
    let mut old = std::mem::replace(&mut cl.instances[0], new);
    // The slot is free from the old link's close until the new process's second login
    // (milliseconds; ejabberd drops that slot's stanzas meanwhile): wait for that login.
    assert!(
        cl.instances[0].wait_ready(Duration::from_secs(20)),
        "the new process is ready"
    );
    let end = Instant::now() + Duration::from_secs(20);
    while logins(&cl.instances[0]) < 2.0 {
        assert!(
            Instant::now() < end,
            "no second login: {}",
            cl.instances[0].log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let (_, results) = run_rounds(clients, &target.jid, 4, 2, "after");
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "setups failed after the upgrade: {failed:?}\nnew: {}\nold: {}",
        cl.instances[0].log(),
        old.log()
    );
    // The instance's requesters are still its own, served by the new process.
    for (i, r) in &results {
        if its.contains(i) {
            assert_eq!(*r.as_ref().unwrap(), first);
        }
    }
    assert!(
        activations(&cl.instances[0]) > 0.0,
        "the new process activates"
    );
    old.kill();
}
