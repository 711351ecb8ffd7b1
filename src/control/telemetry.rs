//! Activation telemetry: the control thread records how long each activation IQ took to
//! answer and what the answer was; the metrics endpoint reads it at scrape time. A few
//! relaxed atomics, no lock.

use super::service::NS_BYTESTREAMS;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::DefinedCondition;

/// Upper bounds, in seconds, of the latency histogram's buckets (`+Inf` is implied).
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The answer to an activation IQ, by its result or error condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum ActivationReply {
    Activated,
    ItemNotFound,
    NotAllowed,
    Forbidden,
    BadRequest,
    JidMalformed,
    ServiceUnavailable,
    /// Over the per-account stream limit, or a quota used up.
    ResourceConstraint,
    InternalServerError,
    Other,
}

impl ActivationReply {
    pub const ALL: [ActivationReply; 10] = [
        ActivationReply::Activated,
        ActivationReply::ItemNotFound,
        ActivationReply::NotAllowed,
        ActivationReply::Forbidden,
        ActivationReply::BadRequest,
        ActivationReply::JidMalformed,
        ActivationReply::ServiceUnavailable,
        ActivationReply::ResourceConstraint,
        ActivationReply::InternalServerError,
        ActivationReply::Other,
    ];

    /// A stable name for metrics labels (the XMPP condition, or `activated`).
    pub fn name(self) -> &'static str {
        match self {
            ActivationReply::Activated => "activated",
            ActivationReply::ItemNotFound => "item-not-found",
            ActivationReply::NotAllowed => "not-allowed",
            ActivationReply::Forbidden => "forbidden",
            ActivationReply::BadRequest => "bad-request",
            ActivationReply::JidMalformed => "jid-malformed",
            ActivationReply::ServiceUnavailable => "service-unavailable",
            ActivationReply::ResourceConstraint => "resource-constraint",
            ActivationReply::InternalServerError => "internal-server-error",
            ActivationReply::Other => "other",
        }
    }

    /// Classifies the reply stanza sent for an activation IQ.
    pub fn of(reply: &Stanza) -> ActivationReply {
        use DefinedCondition as C;
        match reply {
            Stanza::Iq(Iq::Result { .. }) => ActivationReply::Activated,
            Stanza::Iq(Iq::Error { error, .. }) => match error.defined_condition {
                C::ItemNotFound => ActivationReply::ItemNotFound,
                C::NotAllowed => ActivationReply::NotAllowed,
                C::Forbidden => ActivationReply::Forbidden,
                C::BadRequest => ActivationReply::BadRequest,
                C::JidMalformed => ActivationReply::JidMalformed,
                C::ServiceUnavailable => ActivationReply::ServiceUnavailable,
                C::ResourceConstraint => ActivationReply::ResourceConstraint,
                C::InternalServerError => ActivationReply::InternalServerError,
                _ => ActivationReply::Other,
            },
            _ => ActivationReply::Other,
        }
    }
}

/// True for an XEP-0065 activation request (an IQ set with a bytestreams query).
pub fn is_activation(stanza: &Stanza) -> bool {
    matches!(stanza, Stanza::Iq(Iq::Set { payload, .. }) if payload.is("query", NS_BYTESTREAMS))
}

/// Activation latency histogram and replies by kind.
#[derive(Debug, Default)]
pub struct ActivationStats {
    /// Non-cumulative counts per bucket of `LATENCY_BOUNDS`, the last one `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
    replies: [AtomicU64; ActivationReply::ALL.len()],
    /// Times the link stopped reading because `MAX_IN_FLIGHT` activations were waiting.
    pub backlog_full: AtomicU64,
}

/// A point-in-time copy of `ActivationStats`.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationSnapshot {
    /// Cumulative `(upper bound, count)` pairs, the last bound `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
    pub replies: Vec<(ActivationReply, u64)>,
}

impl ActivationStats {
    pub fn record(&self, took: Duration, reply: ActivationReply) {
        let secs = took.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
        self.replies[reply as usize].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> ActivationSnapshot {
        let mut total = 0u64;
        let buckets = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(bound, n)| {
                total += n.load(Relaxed);
                (bound, total)
            })
            .collect();
        ActivationSnapshot {
            buckets,
            sum_seconds: self.sum_nanos.load(Relaxed) as f64 / 1e9,
            count: total,
            replies: ActivationReply::ALL
                .iter()
                .map(|&r| (r, self.replies[r as usize].load(Relaxed)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmpp_parsers::minidom::Element;

    fn stanza(xml: &str) -> Stanza {
        Stanza::Iq(Iq::try_from(xml.parse::<Element>().unwrap()).unwrap())
    }

    #[test]
    fn histogram_is_cumulative_and_counts_replies() {
        let s = ActivationStats::default();
        s.record(Duration::from_micros(50), ActivationReply::Activated);
        s.record(Duration::from_millis(3), ActivationReply::Activated);
        s.record(Duration::from_secs(9), ActivationReply::InternalServerError);
        let snap = s.snapshot();
        assert_eq!(snap.count, 3);
        assert_eq!(snap.buckets.len(), LATENCY_BOUNDS.len() + 1);
        assert_eq!(snap.buckets[0], (0.0001, 1));
        let at = |b: f64| snap.buckets.iter().find(|(x, _)| *x == b).unwrap().1;
        assert_eq!(at(0.0025), 1);
        assert_eq!(at(0.005), 2);
        assert_eq!(at(5.0), 2);
        assert_eq!(snap.buckets.last(), Some(&(f64::INFINITY, 3)));
        assert!(
            (snap.sum_seconds - 9.00305).abs() < 1e-9,
            "{}",
            snap.sum_seconds
        );
        let n = |r| snap.replies.iter().find(|(x, _)| *x == r).unwrap().1;
        assert_eq!(n(ActivationReply::Activated), 2);
        assert_eq!(n(ActivationReply::InternalServerError), 1);
        assert_eq!(n(ActivationReply::Forbidden), 0);
    }

    #[test]
    fn recognises_activation_requests_and_classifies_replies() {
        let set = "<iq xmlns='jabber:component:accept' type='set' id='a' from='r@x/y' \
                   to='p.x'><query xmlns='http://jabber.org/protocol/bytestreams' sid='s'/></iq>";
        let get = set.replace("type='set'", "type='get'");
        assert!(is_activation(&stanza(set)));
        assert!(!is_activation(&stanza(&get)));
        let result = "<iq xmlns='jabber:component:accept' type='result' id='a' to='r@x/y'/>";
        assert_eq!(
            ActivationReply::of(&stanza(result)),
            ActivationReply::Activated
        );
        let error = "<iq xmlns='jabber:component:accept' type='error' id='a' to='r@x/y'>\
                     <error type='auth'><forbidden \
                     xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>";
        assert_eq!(
            ActivationReply::of(&stanza(error)),
            ActivationReply::Forbidden
        );
        let names: std::collections::HashSet<_> =
            ActivationReply::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), ActivationReply::ALL.len());
    }
}
