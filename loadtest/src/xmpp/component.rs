//! The client side of XEP-0114: connect to an XMPP server as a component. The load
//! generator uses it to reach the proxy through a real server; tests use it to play the
//! proxy against the embedded server.

use super::link::{handshake_digest, Link, RequestHandler};
use super::xml::{escape, Item, Reader};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Opens a component stream to `server` as `jid` and authenticates with `secret`.
pub fn connect(
    server: SocketAddr,
    jid: &str,
    secret: &str,
    handler: Option<RequestHandler>,
    timeout: Duration,
) -> anyhow::Result<Arc<Link>> {
    let mut conn = TcpStream::connect_timeout(&server, timeout)
        .map_err(|e| anyhow::anyhow!("connect to XMPP server {server}: {e}"))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.write_all(
        format!(
            "<stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{}'>",
            escape(jid)
        )
        .as_bytes(),
    )?;
    let mut reader = Reader::new(conn.try_clone()?);
    let id = match reader.next_item()? {
        Some(Item::StreamStart(h)) => h
            .attr("id")
            .ok_or_else(|| anyhow::anyhow!("server stream header has no id"))?
            .to_string(),
        other => anyhow::bail!("expected the server's stream header, got {other:?}"),
    };
    conn.write_all(format!("<handshake>{}</handshake>", handshake_digest(&id, secret)).as_bytes())?;
    match reader.next_item()? {
        Some(Item::Stanza(h)) if h.name == "handshake" => {}
        Some(Item::Stanza(e)) if e.name == "stream:error" => anyhow::bail!(
            "server refused component {jid}: {}",
            e.children.first().map(|c| c.name.as_str()).unwrap_or("?")
        ),
        other => anyhow::bail!("component handshake as {jid} failed: {other:?}"),
    }
    Link::start(conn, reader, handler)
}
