//! Helpers for the interop tests: a throwaway Prosody, a tiny c2s client, SOCKS5.
#![allow(dead_code)]

pub mod client;
pub mod prosody;
pub mod proxy_bin;
pub mod socks5;
