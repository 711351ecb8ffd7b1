//! streamhost: an XMPP SOCKS5 Bytestreams proxy (XEP-0065 / XEP-0260) on Linux io_uring.
//!
//! The data plane (`server`, `worker`) accepts SOCKS5 connections on every core, pairs them
//! by key in per-core rendezvous tables and relays activated pairs. The protocol logic
//! (`socks5`, `rendezvous`, `key`) is sans-IO. See ARCHITECTURE.md.

pub mod affinity;
pub mod allocator;
mod async_thread;
pub mod config;
pub mod control;
pub mod handover;
pub mod key;
pub mod limits;
pub mod metrics;
mod relay;
pub mod rendezvous;
pub mod sd_notify;
pub mod server;
pub mod shaping;
pub mod socks5;
pub mod stats;
mod worker;

pub use config::Config;
pub use key::StreamKey;
pub use metrics::MetricsServer;
pub use rendezvous::ActivationOutcome;
pub use server::{Handle, Load, Server, WorkerHealth};
pub use stats::{Refusal, Stats};
pub use worker::WORKER_FAILED_EXIT;
