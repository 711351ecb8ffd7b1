//! Setting up a connected pair of sockets, through the proxy or directly, with the time
//! each step took.

use crate::control::{Control, PairIds};
use crate::socks5_client;
use std::cell::RefCell;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where pairs go.
#[derive(Clone)]
pub enum Target {
    /// Plain loopback TCP, no proxy: the physical baseline.
    Direct,
    /// The proxy's SOCKS5 address and the control channel that activates pairs.
    Proxy {
        addr: SocketAddr,
        control: Arc<Control>,
    },
    /// A plain TCP relay (HAProxy) at `addr` that forwards every connection to `backend`,
    /// a listener of ours: no SOCKS5, no pairing, the reference for any relay.
    Relay {
        addr: SocketAddr,
        backend: Arc<Mutex<TcpListener>>,
    },
}

impl Target {
    /// Whether a direction that carries nothing may be half-closed (its FIN relayed).
    pub fn takes_half_close(&self) -> bool {
        match self {
            Target::Direct | Target::Relay { .. } => true,
            Target::Proxy { control, .. } => !control.conservative,
        }
    }

    pub fn is_direct(&self) -> bool {
        matches!(self, Target::Direct)
    }

    pub fn label(&self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Proxy { .. } => "proxy",
            Target::Relay { .. } => "relay",
        }
    }
}

/// A connected pair: bytes written to `requester` come out of `target` and back.
pub struct Pair {
    pub id: u64,
    pub requester: TcpStream,
    pub target: TcpStream,
    pub times: SetupTimes,
}

/// When each setup step ended.
#[derive(Debug, Clone, Copy)]
pub struct SetupTimes {
    pub start: Instant,
    /// Both SOCKS5 handshakes done (direct: both ends connected).
    pub handshaken: Instant,
    /// Activation result received (direct: same as handshaken).
    pub activated: Instant,
}

impl SetupTimes {
    pub fn handshake(&self) -> Duration {
        self.handshaken - self.start
    }
    pub fn activation(&self) -> Duration {
        self.activated - self.handshaken
    }
}

/// Hands out pair numbers that are unique in this process (keys cannot be reused).
pub fn next_pair_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A tag that makes sids unique across processes that talk to one proxy.
pub fn run_tag() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), t.as_micros() & 0xffff_ffff)
}

thread_local! {
    // One listener per thread: a thread connects and then accepts, so what it accepts is
    // its own connection even when many threads set up direct pairs at once.
    static DIRECT: RefCell<Option<TcpListener>> = const { RefCell::new(None) };
}

const STEP_TIMEOUT: Duration = Duration::from_secs(10);

fn direct_pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    DIRECT.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(TcpListener::bind("127.0.0.1:0")?);
        }
        let l = d.as_ref().expect("just set");
        let a = TcpStream::connect_timeout(&l.local_addr()?, STEP_TIMEOUT)?;
        let (b, _) = l.accept()?;
        Ok((a, b))
    })
}

/// One connection through the relay and its far end, accepted on the backend listener
/// (held locked so that what is accepted is this connection).
fn relay_pair(
    addr: SocketAddr,
    backend: &Mutex<TcpListener>,
) -> anyhow::Result<(TcpStream, TcpStream)> {
    let l = backend
        .lock()
        .map_err(|_| anyhow::anyhow!("relay backend lock poisoned"))?;
    l.set_nonblocking(true)?;
    // Whatever waits there (a probe's far end) is not this pair's.
    while l.accept().is_ok() {}
    let a = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    let b = loop {
        match l.accept() {
            Ok((b, _)) => break b,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "relay {addr} did not connect to its backend within {STEP_TIMEOUT:?}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    };
    b.set_nonblocking(false)?;
    Ok((a, b))
}

/// Sets up pair `id`: target half first, then requester half, then activation (the order
/// of XEP-0065).
pub fn setup(target: &Target, tag: &str, id: u64) -> anyhow::Result<Pair> {
    let start = Instant::now();
    let (requester, target_conn, handshaken, activated) = match target {
        Target::Direct => {
            let (a, b) = direct_pair()?;
            a.set_nodelay(true)?;
            b.set_nodelay(true)?;
            let t = Instant::now();
            (a, b, t, t)
        }
        Target::Relay { addr, backend } => {
            let (a, b) = relay_pair(*addr, backend)?;
            a.set_nodelay(true)?;
            b.set_nodelay(true)?;
            let t = Instant::now();
            (a, b, t, t)
        }
        Target::Proxy { addr, control } => {
            let ids = PairIds::new(tag, id, &control.domain);
            let key = ids.key();
            let piped = !control.conservative;
            let t = socks5_client::connect_with(*addr, &key, STEP_TIMEOUT, piped)
                .map_err(|e| anyhow::anyhow!("pair {id} target half: {e}"))?;
            let r = socks5_client::connect_with(*addr, &key, STEP_TIMEOUT, piped)
                .map_err(|e| anyhow::anyhow!("pair {id} requester half: {e}"))?;
            let handshaken = Instant::now();
            control
                .activate(&ids)
                .map_err(|e| anyhow::anyhow!("pair {id}: {e}"))?;
            (r, t, handshaken, Instant::now())
        }
    };
    Ok(Pair {
        id,
        requester,
        target: target_conn,
        times: SetupTimes {
            start,
            handshaken,
            activated,
        },
    })
}
