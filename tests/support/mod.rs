//! Helpers for the interop tests: a throwaway Prosody or ejabberd, a tiny c2s client,
//! SOCKS5, the streamhost binary as a process.
#![allow(dead_code)]

pub mod bytestreams;
pub mod client;
pub mod ejabberd;
pub mod prosody;
pub mod proxy_bin;
pub mod socks5;
pub mod streamhost_process;
