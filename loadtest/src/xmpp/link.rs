//! An established XEP-0114 stream (either end): sends IQs, matches replies by id on a
//! reader thread, and answers IQ requests from the other end through a handler.

use super::xml::{escape, Element, Item, Reader};
use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How an IQ ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IqReply {
    Result(Element),
    /// `type='error'`, with the name of the defined condition (e.g. `item-not-found`).
    Error(String),
}

/// Answers an IQ get/set from the other end: the reply to write, or `None` for the
/// default `service-unavailable` error.
pub type RequestHandler = Box<dyn Fn(&Element) -> Option<String> + Send + Sync>;

type Pending = Arc<Mutex<HashMap<String, mpsc::Sender<Option<IqReply>>>>>;

pub struct Link {
    writer: Mutex<TcpStream>,
    pending: Pending,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
}

impl Link {
    /// Takes over a stream whose handshake is done; `reader` holds any bytes already read.
    pub fn start(
        stream: TcpStream,
        mut reader: Reader<TcpStream>,
        handler: Option<RequestHandler>,
    ) -> anyhow::Result<Arc<Link>> {
        stream.set_nodelay(true)?;
        reader.get_mut().set_read_timeout(None)?;
        let link = Arc::new(Link {
            writer: Mutex::new(stream.try_clone()?),
            pending: Default::default(),
            next_id: AtomicU64::new(1),
            closed: Default::default(),
        });
        let pending = link.pending.clone();
        let closed = link.closed.clone();
        let mut answer = stream;
        std::thread::Builder::new()
            .name("xmpp-reader".into())
            .spawn(move || {
                while let Ok(Some(Item::Stanza(el))) = reader.next_item() {
                    if el.name != "iq" {
                        continue;
                    }
                    match el.attr("type") {
                        Some("result") | Some("error") => {
                            let id = el.attr("id").unwrap_or_default().to_string();
                            if let Some(tx) = pending.lock().expect("lock").remove(&id) {
                                let _ = tx.send(Some(reply_of(el)));
                            }
                        }
                        Some("get") | Some("set") => {
                            let reply = handler
                                .as_ref()
                                .and_then(|h| h(&el))
                                .unwrap_or_else(|| service_unavailable(&el));
                            if answer.write_all(reply.as_bytes()).is_err() {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                closed.store(true, Ordering::SeqCst);
                for (_, tx) in pending.lock().expect("lock").drain() {
                    let _ = tx.send(None);
                }
            })?;
        Ok(link)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Sends `<iq type=kind from to id>payload</iq>` and waits for its reply.
    pub fn iq(
        &self,
        kind: &str,
        from: &str,
        to: &str,
        payload: &str,
        timeout: Duration,
    ) -> anyhow::Result<IqReply> {
        let id = format!("lt{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel();
        self.pending.lock().expect("lock").insert(id.clone(), tx);
        anyhow::ensure!(!self.is_closed(), "the XMPP stream is closed");
        let text = format!(
            "<iq type='{kind}' from='{}' to='{}' id='{id}'>{payload}</iq>",
            escape(from),
            escape(to)
        );
        let sent = self.writer.lock().expect("lock").write_all(text.as_bytes());
        if let Err(e) = sent {
            self.pending.lock().expect("lock").remove(&id);
            anyhow::bail!("writing to the XMPP stream: {e}");
        }
        match rx.recv_timeout(timeout) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => anyhow::bail!("the XMPP stream closed before the reply to {id}"),
            Err(_) => {
                self.pending.lock().expect("lock").remove(&id);
                anyhow::bail!("no reply to IQ {id} within {timeout:?}")
            }
        }
    }

    /// Closes the stream (the reader thread then ends).
    pub fn close(&self) {
        let mut w = self.writer.lock().expect("lock");
        let _ = w.write_all(b"</stream:stream>");
        let _ = w.shutdown(std::net::Shutdown::Both);
    }
}

fn reply_of(el: Element) -> IqReply {
    if el.attr("type") == Some("result") {
        return IqReply::Result(el);
    }
    let cond = el
        .child("error")
        .and_then(|e| e.children.iter().find(|c| c.name != "text"))
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "undefined-condition".into());
    IqReply::Error(cond)
}

/// The reply of an IQ request: swaps from and to, keeps the id.
pub fn reply_head(req: &Element, kind: &str) -> String {
    format!(
        "<iq type='{kind}' from='{}' to='{}' id='{}'",
        escape(req.attr("to").unwrap_or_default()),
        escape(req.attr("from").unwrap_or_default()),
        escape(req.attr("id").unwrap_or_default())
    )
}

/// An IQ error reply with a stanza error condition.
pub fn error_reply(req: &Element, kind: &str, condition: &str) -> String {
    format!(
        "{}><error type='{kind}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        reply_head(req, "error")
    )
}

fn service_unavailable(req: &Element) -> String {
    error_reply(req, "cancel", "service-unavailable")
}

/// The XEP-0114 handshake digest: lowercase hex SHA1(stream id + secret).
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    // StreamKey::from_parts is hex(SHA1(a + b + c)): exactly this with an empty third part.
    streamhost::StreamKey::from_parts(stream_id, secret, "")
        .as_str()
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn digest_is_lowercase_hex_sha1_of_id_and_secret() {
        // sha1("3BF96D32sesame"), computed independently.
        assert_eq!(
            super::handshake_digest("3BF96D32", "sesame"),
            "7a98dc4c9e92493d7fd66a25364c862637789c45"
        );
    }
}
