//! The exported metrics, read at scrape time from `Handle::stats()` and the control
//! plane's `ControlStatus`, and encoded as OpenMetrics text by `prometheus-client`.

use crate::control::telemetry::ActivationSnapshot;
use crate::control::ControlStatus;
use crate::server::Handle;
use crate::stats::Stats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::Arc;

/// Content type of `encode`'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape reads.
#[derive(Clone)]
pub struct Sources {
    pub data: Arc<Handle>,
    pub control: Option<ControlStatus>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources")
            .field("workers", &self.data.workers())
            .field("control", &self.control.is_some())
            .finish()
    }
}

/// A registry whose one collector reads `sources` on every scrape.
pub fn registry(sources: Sources) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(sources));
    r
}

/// The whole exposition, `# EOF` included.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

type Enc<'a> = DescriptorEncoder<'a>;

fn counter(e: &mut Enc, name: &str, help: &str, v: u64) -> fmt::Result {
    let m = ConstCounter::new(v);
    m.encode(e.encode_descriptor(name, help, None, m.metric_type())?)
}

fn gauge(e: &mut Enc, name: &str, help: &str, v: u64) -> fmt::Result {
    let m = ConstGauge::new(v);
    m.encode(e.encode_descriptor(name, help, None, m.metric_type())?)
}

/// A counter with one label, one sample per `(label value, count)`.
fn counters<'v>(
    e: &mut Enc,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'v str, u64)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        ConstCounter::new(n).encode(m.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

fn data_plane(e: &mut Enc, h: &Handle) -> fmt::Result {
    let s = &h.stats();
    let health = h.worker_health();
    gauge(
        e,
        "streamhost_workers",
        "Worker threads (one io_uring ring each).",
        health.len() as u64,
    )?;
    gauge(
        e,
        "streamhost_workers_alive",
        "Worker threads still running (one that exited lost its connections).",
        health.iter().filter(|w| w.alive).count() as u64,
    )?;
    let names: Vec<String> = (0..health.len()).map(|i| i.to_string()).collect();
    counters(
        e,
        "streamhost_worker_ticks",
        "Each worker loop's 250 ms timer ticks (4 a second when it runs; flat when stuck).",
        "worker",
        names
            .iter()
            .map(String::as_str)
            .zip(health.iter().map(|w| w.ticks)),
    )?;
    let load = h.load();
    gauge(
        e,
        "streamhost_connections_pending",
        "Connections in their handshake or waiting for their peer or activation.",
        load.pending as u64,
    )?;
    gauge(
        e,
        "streamhost_max_connections",
        "The max_connections limit in force.",
        load.max_connections as u64,
    )?;
    gauge(
        e,
        "streamhost_max_pending",
        "The max_pending limit in force.",
        load.max_pending as u64,
    )?;
    if let Some((ok, failed)) = h.quota_flushes() {
        counters(
            e,
            "streamhost_quota_store_flushes",
            "Writes of the quota counts to quota.store (every 5 s), by outcome.",
            "outcome",
            [("ok", ok), ("failed", failed)],
        )?;
    }
    counter(
        e,
        "streamhost_connections_accepted",
        "Client connections accepted.",
        s.accepted,
    )?;
    gauge(
        e,
        "streamhost_connections_open",
        "Client connections open, all states.",
        s.open,
    )?;
    counters(
        e,
        "streamhost_handshakes",
        "SOCKS5 handshakes finished, by outcome.",
        "outcome",
        [("ok", s.handshakes_ok), ("failed", s.handshakes_failed)],
    )?;
    counter(
        e,
        "streamhost_pairs_matched",
        "Keys whose two halves both connected.",
        s.pairs_matched,
    )?;
    counter(
        e,
        "streamhost_activations",
        "Pairs activated (relays started).",
        s.activations,
    )?;
    gauge(
        e,
        "streamhost_relays_active",
        "Relays running.",
        s.relays_active,
    )?;
    counter(
        e,
        "streamhost_relays_finished",
        "Relays finished.",
        s.relays_finished,
    )?;
    counters(
        e,
        "streamhost_relay_bytes",
        "Bytes relayed, by direction (from the half that connected first or second).",
        "direction",
        [
            ("first_to_second", s.bytes_first_to_second),
            ("second_to_first", s.bytes_second_to_first),
        ],
    )?;
    counter(
        e,
        "streamhost_handoffs",
        "Finished handshakes handed to the key's owner core.",
        s.handoffs,
    )?;
    gauge(
        e,
        "streamhost_deadline_queue_entries",
        "Deadline entries queued for handshakes and unactivated halves, live or stale.",
        s.deadline_entries,
    )?;
    counters(
        e,
        "streamhost_upgrade_connections",
        "Connections not yet relaying moved between processes by an upgrade handover.",
        "direction",
        [("handed_over", s.handed_over), ("adopted", s.adopted)],
    )?;
    counter(
        e,
        "streamhost_relay_errors",
        "Relay engine errors other than resets (failed syscall, no buffer).",
        s.relay_errors,
    )?;
    counter(
        e,
        "streamhost_shaping_waits",
        "Times a relay direction waited for bandwidth-shaping tokens.",
        s.shaping_waits,
    )?;
    relay_pools(e, s)?;
    counters(
        e,
        "streamhost_refusals",
        "Connections or activations refused, by reason.",
        "reason",
        s.refusals.iter().map(|&(r, n)| (r.name(), n)),
    )
}

/// The relay's pools and stalled directions (`src/worker/relay/`), and accept failures.
fn relay_pools(e: &mut Enc, s: &Stats) -> fmt::Result {
    let gauges = [
        (
            "streamhost_relay_directions_waiting",
            "Relay directions waiting for a pipe or buffer now.",
            s.relay_directions_waiting,
        ),
        (
            "streamhost_relay_pipes_lent",
            "Pipes lent to relay directions now (splice engines).",
            s.relay_pipes_lent,
        ),
        (
            "streamhost_relay_buffers_lent",
            "Provided buffers lent to relay directions now (copy engine).",
            s.relay_buffers_lent,
        ),
        (
            "streamhost_relay_fallback_bytes",
            "Bytes held in stalled directions' own buffers now.",
            s.relay_fallback_bytes,
        ),
    ];
    for (name, help, v) in gauges {
        gauge(e, name, help, v)?;
    }
    let counters = [
        (
            "streamhost_relay_waits",
            "Times a relay direction waited for a pipe or buffer.",
            s.relay_waits,
        ),
        (
            "streamhost_relay_stalls",
            "Times a relay direction found its destination full and waited holding nothing.",
            s.relay_stalls,
        ),
        (
            "streamhost_relay_fallbacks",
            "Times a stalled direction's leftover moved from a pipe or buffer into its own.",
            s.relay_fallbacks,
        ),
        (
            "streamhost_relay_fallback_full",
            "Times a stalled direction kept its pipe or buffer (stall_bytes_per_worker used).",
            s.relay_fallback_full,
        ),
        (
            "streamhost_relay_wakeups_deferred",
            "Ring-loop rounds that left waiting directions to wake in the next round.",
            s.relay_wakeups_deferred,
        ),
        (
            "streamhost_stream_log_dropped",
            "Finished streams' log lines dropped: the log thread's queue was full.",
            s.stream_log_dropped,
        ),
        (
            "streamhost_accept_errors",
            "Failed accepts (EMFILE, ENFILE, ...); retried every 250 ms.",
            s.accept_errors,
        ),
    ];
    for (name, help, v) in counters {
        counter(e, name, help, v)?;
    }
    Ok(())
}

fn control_plane(e: &mut Enc, c: &ControlStatus) -> fmt::Result {
    gauge(
        e,
        "streamhost_component_state",
        "XEP-0114 component link: 0 down, 1 connecting, 2 connected.",
        c.state() as u64,
    )?;
    counter(
        e,
        "streamhost_component_logins",
        "Successful component logins (a reconnect adds one).",
        c.logins(),
    )?;
    counters(
        e,
        "streamhost_component_stanzas_dropped",
        "Stanzas from the server dropped unparsed: over component.max_stanza_depth, \
         over component.max_stanza_size, or an unknown top-level element.",
        "reason",
        c.stanza_drops().iter().map(|&(r, n)| (r.label(), n)),
    )?;
    counter(
        e,
        "streamhost_component_activation_backlog_full",
        "Times the component paused reading stanzas because 256 activations were \
         waiting for the data plane (a burst; the server holds the rest).",
        c.activation_backlog_full(),
    )?;
    counter(
        e,
        "streamhost_component_restarts",
        "Times the control plane panicked and was restarted (relays keep running).",
        c.restarts(),
    )?;
    activations(e, &c.activations())
}

fn activations(e: &mut Enc, a: &ActivationSnapshot) -> fmt::Result {
    counters(
        e,
        "streamhost_component_activations",
        "Activation requests answered, by reply (activated or the XMPP error condition).",
        "outcome",
        a.replies.iter().map(|&(r, n)| (r.name(), n)),
    )?;
    let mut m = e.encode_descriptor(
        "streamhost_component_activation_duration_seconds",
        "Time from receiving an activation request to its reply being ready to send.",
        None,
        MetricType::Histogram,
    )?;
    // The encoder adds the buckets up itself: give it each bucket's own count, not the
    // snapshot's running totals (which it would cumulate a second time).
    m.encode_histogram::<NoLabelSet>(a.sum_seconds, a.count, &per_bucket(&a.buckets), None)
}

/// Cumulative `(bound, count)` pairs to the count of each bucket alone.
fn per_bucket(cumulative: &[(f64, u64)]) -> Vec<(f64, u64)> {
    let mut below = 0;
    cumulative
        .iter()
        .map(|&(bound, n)| {
            let own = n.saturating_sub(below);
            below = n;
            (bound, own)
        })
        .collect()
}

impl Collector for Sources {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        data_plane(&mut e, &self.data)?;
        match &self.control {
            Some(c) => control_plane(&mut e, c),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::telemetry::{ActivationReply, ActivationStats};
    use std::time::Duration;

    struct Only(ActivationSnapshot);

    impl fmt::Debug for Only {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Only")
        }
    }

    impl Collector for Only {
        fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
            activations(&mut e, &self.0)
        }
    }

    #[test]
    fn per_bucket_undoes_the_running_totals() {
        let cum = [(0.1, 0), (0.5, 3), (1.0, 3), (f64::INFINITY, 5)];
        assert_eq!(
            per_bucket(&cum),
            [(0.1, 0), (0.5, 3), (1.0, 0), (f64::INFINITY, 2)]
        );
    }

    #[test]
    fn histogram_buckets_are_cumulated_once() {
        let s = ActivationStats::default();
        for ms in [3, 3, 3, 20, 7000] {
            s.record(Duration::from_millis(ms), ActivationReply::Activated);
        }
        let mut r = Registry::default();
        r.register_collector(Box::new(Only(s.snapshot())));
        let text = encode(&r);
        let bucket = |le: &str| {
            let series =
                format!("streamhost_component_activation_duration_seconds_bucket{{le=\"{le}\"}} ");
            let line = text.lines().find(|l| l.starts_with(&series));
            line.unwrap_or_else(|| panic!("{series}: {text}"))[series.len()..].to_string()
        };
        assert_eq!(bucket("0.0025"), "0");
        assert_eq!(bucket("0.005"), "3");
        assert_eq!(bucket("0.025"), "4");
        assert_eq!(bucket("5.0"), "4");
        assert_eq!(bucket("+Inf"), "5");
        assert!(text.contains("streamhost_component_activation_duration_seconds_count 5\n"));
    }
}
