//! A tiny blocking XMPP c2s client for tests: stream open, SASL PLAIN, bind, then IQs.
//! (tokio-xmpp's client cannot be used here: the crate's `component` feature, which the
//! proxy needs, switches its stanza namespace to `jabber:component:accept`.)

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use std::io::{self, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A parsed element: qualified name, attributes, children, text.
#[derive(Debug, Clone, Default)]
pub struct El {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<El>,
    pub text: String,
}

impl El {
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&El> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The stanza error condition of an `<iq type='error'/>`, e.g. "item-not-found".
    pub fn error_condition(&self) -> Option<String> {
        let e = self.child("error")?;
        e.children
            .iter()
            .find(|c| c.name != "text")
            .map(|c| c.name.clone())
    }

    fn from_start(e: &BytesStart) -> El {
        let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        let attrs = e
            .attributes()
            .flatten()
            .map(|a| {
                let k = String::from_utf8_lossy(a.key.as_ref()).into_owned();
                let v = a
                    .unescape_value()
                    .map(|v| v.into_owned())
                    .unwrap_or_default();
                (k, v)
            })
            .collect();
        El {
            name,
            attrs,
            ..El::default()
        }
    }
}

pub fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub struct Client {
    w: TcpStream,
    r: Reader<BufReader<TcpStream>>,
    buf: Vec<u8>,
    /// The full JID the server bound (a component's own JID).
    pub jid: String,
    next_id: u64,
    /// A component names itself in `from` (the server requires it).
    component: bool,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Client {
    /// A TCP connection to 127.0.0.1:`port` with a reader on it, before any stream.
    fn connect(port: u16, jid: String, component: bool) -> io::Result<Client> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        let mut r = Reader::from_reader(BufReader::new(s.try_clone()?));
        r.config_mut().check_end_names = false;
        Ok(Client {
            w: s,
            r,
            buf: Vec::new(),
            jid,
            next_id: 0,
            component,
        })
    }

    /// Logs `user@domain` in over plaintext c2s on 127.0.0.1:`port`.
    pub fn login(port: u16, user: &str, domain: &str, password: &str) -> io::Result<Client> {
        let mut c = Client::connect(port, String::new(), false)?;
        c.open(domain)?;
        let f = c.read_element()?;
        let plain = f
            .child("mechanisms")
            .is_some_and(|m| m.children.iter().any(|x| x.text == "PLAIN"));
        if !plain {
            return Err(bad(format!("no SASL PLAIN offered: {f:?}")));
        }
        let creds = base64(format!("\0{user}\0{password}").as_bytes());
        c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>"
        ))?;
        let ok = c.read_element()?;
        if ok.name != "success" {
            return Err(bad(format!("SASL failed: {ok:?}")));
        }
        c.open(domain)?;
        let _features = c.read_element()?;
        let bound = c.iq(
            "set",
            None,
            "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>test</resource></bind>",
        )?;
        c.jid = bound
            .child("bind")
            .and_then(|b| b.child("jid"))
            .map(|j| j.text.clone())
            .ok_or_else(|| bad(format!("bind failed: {bound:?}")))?;
        Ok(c)
    }

    /// Creates `user@domain` by in-band registration (XEP-0077) over plaintext c2s.
    pub fn register(port: u16, user: &str, domain: &str, password: &str) -> io::Result<()> {
        let mut c = Client::connect(port, String::new(), false)?;
        c.open(domain)?;
        let _features = c.read_element()?;
        let el = c.iq(
            "set",
            None,
            &format!(
                "<query xmlns='jabber:iq:register'><username>{}</username>\
                 <password>{}</password></query>",
                escape(user),
                escape(password)
            ),
        )?;
        if el.attr("type") != Some("result") {
            return Err(bad(format!(
                "registration of {user}@{domain} refused: {el:?}"
            )));
        }
        Ok(())
    }

    /// Logs in as the XEP-0114 component `jid` on 127.0.0.1:`port` (another component
    /// beside the proxy, which can address it like any XMPP sender).
    pub fn component(port: u16, jid: &str, secret: &str) -> io::Result<Client> {
        use sha1::{Digest, Sha1};
        let mut c = Client::connect(port, jid.to_string(), true)?;
        c.send(&format!(
            "<?xml version='1.0'?><stream:stream to='{jid}' \
             xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>"
        ))?;
        let id = loop {
            c.buf.clear();
            match c
                .r
                .read_event_into(&mut c.buf)
                .map_err(|e| bad(e.to_string()))?
            {
                Event::Start(e) if e.name().as_ref() == b"stream:stream" => {
                    break El::from_start(&e)
                        .attr("id")
                        .map(str::to_string)
                        .ok_or_else(|| bad("no stream id"))?;
                }
                Event::Eof => return Err(bad("connection closed")),
                _ => {}
            }
        };
        let digest = hex::encode(Sha1::digest(format!("{id}{secret}").as_bytes()));
        c.send(&format!("<handshake>{digest}</handshake>"))?;
        let ok = c.read_element()?;
        if ok.name != "handshake" {
            return Err(bad(format!("component handshake refused: {ok:?}")));
        }
        Ok(c)
    }

    fn open(&mut self, domain: &str) -> io::Result<()> {
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' \
             xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        ))
    }

    pub fn send(&mut self, xml: &str) -> io::Result<()> {
        self.w.write_all(xml.as_bytes())
    }

    /// Reads the next top-level element (stream headers skipped).
    pub fn read_element(&mut self) -> io::Result<El> {
        let mut stack: Vec<El> = Vec::new();
        loop {
            self.buf.clear();
            let ev = self
                .r
                .read_event_into(&mut self.buf)
                .map_err(|e| bad(e.to_string()))?;
            let done = match ev {
                Event::Start(e) if e.name().as_ref() == b"stream:stream" => None,
                Event::Start(e) => {
                    stack.push(El::from_start(&e));
                    None
                }
                Event::Empty(e) => Some(El::from_start(&e)),
                Event::End(e) if e.name().as_ref() == b"stream:stream" => {
                    return Err(bad("the server closed the stream"))
                }
                Event::End(_) => stack.pop(),
                Event::Text(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text
                            .push_str(&t.unescape().map_err(|e| bad(e.to_string()))?);
                    }
                    None
                }
                Event::Eof => return Err(bad("connection closed")),
                _ => None,
            };
            if let Some(el) = done {
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
        }
    }

    /// Sends an IQ and returns its answer (other stanzas are skipped); 10 s at most.
    pub fn iq(&mut self, type_: &str, to: Option<&str>, payload: &str) -> io::Result<El> {
        self.iq_within(type_, to, payload, Duration::from_secs(10))
    }

    pub fn wait_iq(&mut self, id: &str) -> io::Result<El> {
        self.wait_iq_within(id, Duration::from_secs(10))
    }

    /// Sends an IQ and waits `limit` at most for its answer (a server may drop an IQ).
    pub fn iq_within(
        &mut self,
        type_: &str,
        to: Option<&str>,
        payload: &str,
        limit: Duration,
    ) -> io::Result<El> {
        self.next_id += 1;
        let id = format!("t{}", self.next_id);
        let to = to
            .map(|t| format!(" to='{}'", escape(t)))
            .unwrap_or_default();
        let from = if self.component {
            format!(" from='{}'", escape(&self.jid))
        } else {
            String::new()
        };
        self.send(&format!(
            "<iq type='{type_}' id='{id}'{from}{to}>{payload}</iq>"
        ))?;
        self.wait_iq_within(&id, limit)
    }

    fn wait_iq_within(&mut self, id: &str, limit: Duration) -> io::Result<El> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            // Wait for bytes with a peek, so that a timeout leaves the parser untouched
            // (after a read error it reports the end of the stream from then on).
            if self.r.get_ref().buffer().is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                self.w
                    .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
                let ready = self.w.peek(&mut [0u8; 1]);
                self.w.set_read_timeout(Some(Duration::from_secs(10)))?;
                match ready {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break
                    }
                    Err(e) => return Err(e),
                }
            }
            let el = self.read_element()?;
            if el.name == "iq" && el.attr("id") == Some(id) {
                return Ok(el);
            }
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, "no IQ answer"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
