//! streamhost-loadtest: drives the streamhost proxy the way XMPP clients do (SOCKS5 on
//! both halves, activation over XEP-0114, data), verifies every byte, and reports figures
//! as ratios to plain loopback TCP measured in the same run.

pub mod abusers;
pub mod cli;
pub mod control;
pub mod metrics_scrape;
pub mod pairs;
pub mod pattern;
pub mod peers;
pub mod procstat;
pub mod proxy_proc;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod socks5_client;
pub mod sys;
pub mod transfer;
pub mod xmpp;
