//! Upgrades that lose nothing: a new process takes the listening sockets and every
//! connection that is not relaying yet from the old one, over a Unix socket, the way
//! HAProxy's seamless reload and Envoy's hot restart pass their sockets.
//!
//! - `wire.rs`: the frames (sans-IO).
//! - `socket.rs`: the `SOCK_SEQPACKET` transport with `SCM_RIGHTS`.
//! - `give.rs`: the old process's side; `take.rs`: the new process's.
//!
//! The data plane's part is `Handle::export` / `Handle::adopt` (`worker/carry.rs`); the
//! control plane's is `ControlHandle::forward` / `injector` (`control/forward.rs`).

pub mod give;
pub mod socket;
pub mod take;
pub mod wire;
