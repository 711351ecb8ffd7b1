//! The control plane: an XEP-0114 component that answers service discovery and
//! activates streams in the data plane.
//!
//! - `config`: the `[component]` section and its validation.
//! - `acl`: who may discover and activate (sans-IO).
//! - `service`: stanza in, reply or activation out (sans-IO).
//! - `backoff`: reconnect delays (sans-IO).
//! - `component`: the connection thread that drives the above.
//! - `telemetry`: activation latency and replies, read by the metrics endpoint.

pub mod acl;
pub mod backoff;
mod bounded_stream;
pub mod component;
pub mod config;
mod connector;
pub mod forward;
pub mod replay;
pub mod service;
#[cfg(test)]
mod service_tests;
pub mod stanza_bounds;
pub mod stream_limit;
pub mod telemetry;
pub mod tls;

use crate::key::StreamKey;
use crate::rendezvous::ActivationOutcome;
use crate::server::Handle;

pub use component::{spawn, ConnState, ControlHandle, ControlStatus, Injector};
pub use config::{ControlConfig, ControlSettings};

/// What the control plane needs from the data plane: start relaying a key, and report the
/// outcome through a callback (which must be quick; it may run on another thread).
pub trait Activator: Send + Sync {
    fn activate_then(&self, key: &StreamKey, done: Box<dyn FnOnce(ActivationOutcome) + Send>);

    /// The component logged in (`true`) or lost its link (`false`): a data plane takes new
    /// connections only while it can activate them.
    fn component_up(&self, _up: bool) {}

    /// Like `activate_then`, on behalf of `requester` (whose account and domain shaping
    /// and quotas apply), and `guard` lives as long as the relay runs (it is dropped at
    /// once if activation is refused): the per-account stream limit counts with it.
    fn activate_for(
        &self,
        key: &StreamKey,
        _requester: &str,
        guard: Box<dyn Send>,
        done: Box<dyn FnOnce(ActivationOutcome) + Send>,
    ) {
        // Stand-ins without relays hold the guard until they answer.
        self.activate_then(
            key,
            Box::new(move |o| {
                drop(guard);
                done(o)
            }),
        )
    }
}

impl Activator for Handle {
    fn activate_then(&self, key: &StreamKey, done: Box<dyn FnOnce(ActivationOutcome) + Send>) {
        Handle::activate_then(self, key, done)
    }

    fn component_up(&self, up: bool) {
        self.set_admitting(up)
    }

    fn activate_for(
        &self,
        key: &StreamKey,
        requester: &str,
        guard: Box<dyn Send>,
        done: Box<dyn FnOnce(ActivationOutcome) + Send>,
    ) {
        Handle::activate_for(self, key, requester, guard, done)
    }
}
