//! The embedded XMPP server: the server side of XEP-0114, just enough to accept the
//! proxy's component stream, check its handshake and carry activation IQs.

use super::link::{handshake_digest, Link};
use super::xml::{escape, Item, Reader};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct EmbeddedServer {
    addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    jid: String,
    secret: String,
    stop: AtomicBool,
    streams: AtomicU64,
    link: Mutex<(Option<Arc<Link>>, Option<String>)>,
    changed: Condvar,
}

impl EmbeddedServer {
    /// Listens on `bind` for a component that authenticates as `jid` with `secret`.
    pub fn start(bind: SocketAddr, jid: &str, secret: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(bind)
            .map_err(|e| anyhow::anyhow!("embedded XMPP server: bind {bind}: {e}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            jid: jid.to_string(),
            secret: secret.to_string(),
            stop: AtomicBool::new(false),
            streams: AtomicU64::new(0),
            link: Mutex::new((None, None)),
            changed: Condvar::new(),
        });
        let st = state.clone();
        std::thread::Builder::new()
            .name("xmpp-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let st = st.clone();
                    std::thread::spawn(move || {
                        let result = accept_component(conn, &st);
                        let mut g = st.link.lock().expect("lock");
                        match result {
                            Ok(link) => g.0 = Some(link),
                            Err(e) => g.1 = Some(e.to_string()),
                        }
                        st.changed.notify_all();
                    });
                }
            })?;
        Ok(EmbeddedServer { addr, state })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Component streams accepted so far (a reconnecting proxy counts again).
    pub fn streams(&self) -> u64 {
        self.state.streams.load(Ordering::SeqCst)
    }

    /// The latest authenticated component stream, waiting up to `timeout` for one.
    pub fn wait_link(&self, timeout: Duration) -> anyhow::Result<Arc<Link>> {
        let deadline = Instant::now() + timeout;
        let mut g = self.state.link.lock().expect("lock");
        loop {
            if let Some(l) = g.0.as_ref().filter(|l| !l.is_closed()) {
                return Ok(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                let why = g.1.as_deref().unwrap_or("no connection came");
                anyhow::bail!(
                    "the proxy's component did not connect to the embedded XMPP server {} within {timeout:?}: {why}",
                    self.addr
                );
            }
            g = self
                .state
                .changed
                .wait_timeout(g, deadline - now)
                .expect("lock")
                .0;
        }
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(l) = self.state.link.lock().expect("lock").0.take() {
            l.close();
        }
    }
}

fn stream_error(conn: &mut TcpStream, condition: &str) {
    let _ = conn.write_all(
        format!(
            "<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
        )
        .as_bytes(),
    );
}

fn accept_component(mut conn: TcpStream, st: &State) -> anyhow::Result<Arc<Link>> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = Reader::new(conn.try_clone()?);
    let Some(Item::StreamStart(head)) = reader.next_item()? else {
        anyhow::bail!("component did not open a stream");
    };
    let id = format!(
        "lt{:x}{:x}",
        std::process::id(),
        st.streams.fetch_add(1, Ordering::SeqCst)
    );
    conn.write_all(
        format!(
            "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
             xmlns='jabber:component:accept' from='{}' id='{id}'>",
            escape(&st.jid)
        )
        .as_bytes(),
    )?;
    if head.attr("xmlns") != Some("jabber:component:accept") {
        stream_error(&mut conn, "invalid-namespace");
        anyhow::bail!("component stream xmlns is {:?}", head.attr("xmlns"));
    }
    if head.attr("to") != Some(st.jid.as_str()) {
        stream_error(&mut conn, "host-unknown");
        anyhow::bail!(
            "component asked for {:?}, expected {:?}",
            head.attr("to"),
            st.jid
        );
    }
    let Some(Item::Stanza(hs)) = reader.next_item()? else {
        anyhow::bail!("component closed before its handshake");
    };
    let want = handshake_digest(&id, &st.secret);
    if hs.name != "handshake" || !hs.text.trim().eq_ignore_ascii_case(&want) {
        stream_error(&mut conn, "not-authorized");
        anyhow::bail!("component handshake is wrong (bad secret?)");
    }
    conn.write_all(b"<handshake/>")?;
    Link::start(conn, reader, None)
}
