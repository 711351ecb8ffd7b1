//! Other proxies to run beside streamhost (`peers`): each spawned here from a temp dir on
//! free loopback ports when its program is installed, driven by the same generator and
//! sizes. Those not installed are skipped with a line saying how to install them.

mod daemon;
pub mod ejabberd;
pub mod haproxy;
pub mod prosody;

pub use ejabberd::Ejabberd;
pub use haproxy::Haproxy;
pub use prosody::Prosody;

use crate::control::Control;
use crate::pairs::Target;
use crate::xmpp::component;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The JIDs of a throw-away XMPP server's mod_proxy65 and of the generator, which joins
/// that server as a component to send activations from a requester in its domain.
const PROXY65_JID: &str = "proxy65.localhost";
const GENERATOR_JID: &str = "loadtest.localhost";

/// A proxy to measure: its name, where pairs go, and its process (for its CPU).
pub struct Peer {
    pub name: String,
    pub target: Target,
    pub pid: Option<u32>,
}

/// A server's mod_proxy65 at `socks`, driven through the generator's component login at
/// `component`. Both servers' proxies get the most conservative client: the greeting
/// alone (Prosody's reads it as one packet and refuses it with the request behind it) and
/// no half-close (Prosody's closes both ends at one side's FIN).
fn proxy65_peer(
    name: &str,
    socks: SocketAddr,
    component: SocketAddr,
    pid: u32,
    secret: &str,
    ready: Duration,
) -> anyhow::Result<Peer> {
    let link = component::connect(component, GENERATOR_JID, secret, None, ready)?;
    let mut control = Control::new(link, PROXY65_JID, GENERATOR_JID);
    control.conservative = true;
    Ok(Peer {
        name: name.into(),
        target: Target::Proxy {
            addr: socks,
            control: Arc::new(control),
        },
        pid: Some(pid),
    })
}

/// Whether `program` is on PATH.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// A peer besides streamhost, and how to get it.
pub struct Known {
    pub name: &'static str,
    pub installed: fn() -> bool,
    /// How to install it on Debian.
    pub how: &'static str,
}

pub const KNOWN: [Known; 3] = [
    Known {
        name: prosody::NAME,
        installed: || installed("prosody"),
        how: "apt-get install prosody; its proxy65 module is bundled",
    },
    Known {
        name: ejabberd::NAME,
        installed: ejabberd::installed,
        how: "apt-get install ejabberd; its mod_proxy65 is bundled",
    },
    Known {
        name: haproxy::NAME,
        installed: || installed("haproxy"),
        how: "apt-get install haproxy",
    },
];

/// What to say about the peers that are not installed.
pub fn missing_lines() -> Vec<String> {
    KNOWN
        .iter()
        .filter(|k| !(k.installed)())
        .map(|k| format!("{}: skipped, not installed (Debian: {})", k.name, k.how))
        .collect()
}

/// The peers' server processes, stopped when dropped.
pub struct Running {
    _prosody: Option<Prosody>,
    _ejabberd: Option<Ejabberd>,
    _haproxy: Option<Haproxy>,
}

/// Starts every installed peer, adding it to `peers`, or a line to `skipped` on failure.
pub fn spawn_installed(
    secret: &str,
    ready: Duration,
    peers: &mut Vec<Peer>,
    skipped: &mut Vec<String>,
) -> Running {
    let mut start = |name: &str, ok: bool, f: &mut dyn FnMut() -> anyhow::Result<Peer>| {
        if !ok {
            return;
        }
        match f() {
            Ok(p) => peers.push(p),
            Err(e) => skipped.push(format!("{name}: skipped, {e:#}")),
        }
    };
    let mut prosody = None;
    start(prosody::NAME, installed("prosody"), &mut || {
        let p = Prosody::spawn(secret, ready)?;
        let peer = p.peer(secret, ready)?;
        prosody = Some(p);
        Ok(peer)
    });
    let mut ejabberd = None;
    start(ejabberd::NAME, ejabberd::installed(), &mut || {
        let e = Ejabberd::spawn(secret, ready)?;
        let peer = e.peer(secret, ready)?;
        ejabberd = Some(e);
        Ok(peer)
    });
    let mut haproxy = None;
    start(haproxy::NAME, installed("haproxy"), &mut || {
        let h = Haproxy::spawn(ready)?;
        let peer = h.peer();
        haproxy = Some(h);
        Ok(peer)
    });
    Running {
        _prosody: prosody,
        _ejabberd: ejabberd,
        _haproxy: haproxy,
    }
}
