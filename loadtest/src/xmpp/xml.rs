//! XEP-0114 framing on quick-xml: the stream header and whole top-level stanzas, read from
//! a byte stream that may split them anywhere. Well-formedness (matching end tags, quoting,
//! entities) is quick-xml's; this file only groups its events into stanzas. No DTDs.

use quick_xml::events::{BytesStart, Event};
use std::io::{BufReader, Read};

/// One element with its attributes, children and concatenated text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn from_start(e: &BytesStart) -> anyhow::Result<Element> {
        let mut el = Element {
            name: String::from_utf8(e.name().as_ref().to_vec())?,
            ..Default::default()
        };
        for a in e.attributes() {
            let a = a?;
            el.attrs.push((
                String::from_utf8(a.key.as_ref().to_vec())?,
                a.unescape_value()?.into_owned(),
            ));
        }
        Ok(el)
    }
}

/// Escapes text or an attribute value (`<`, `>`, `&`, `'`, `"`).
pub fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// What the reader found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// `<stream:stream ...>` (its children are the stanzas that follow).
    StreamStart(Element),
    /// `</stream:stream>`.
    StreamEnd,
    Stanza(Element),
}

/// Largest stanza (bytes read from the socket while it is incomplete).
const MAX_STANZA: u64 = 1 << 20;

/// Counts what the XML reader takes from the socket; refuses to go past the limit.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("stanza larger than 1 MiB"));
        }
        let n = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got as u64;
        Ok(got)
    }
}

/// Capacity of the read buffer: what may already sit in it when a stanza starts.
const READ_BUF: usize = 16 << 10;

/// Reads items from a byte stream.
pub struct Reader<R> {
    xml: quick_xml::Reader<BufReader<Bounded<R>>>,
    buf: Vec<u8>,
    /// The stanza being read: its element and its open descendants.
    open: Vec<Element>,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        let bounded = Bounded {
            inner,
            left: MAX_STANZA,
        };
        let mut xml = quick_xml::Reader::from_reader(BufReader::with_capacity(READ_BUF, bounded));
        // The stream's own end tag closes the header read earlier: quick-xml checks it.
        xml.config_mut().check_end_names = true;
        Reader {
            xml,
            buf: Vec::new(),
            open: Vec::new(),
        }
    }

    /// The next item; `Ok(None)` at a clean end of the byte stream.
    pub fn next_item(&mut self) -> anyhow::Result<Option<Item>> {
        loop {
            self.buf.clear();
            let ev = self.xml.read_event_into(&mut self.buf)?;
            let done = match ev {
                Event::Start(e) => {
                    let el = Element::from_start(&e)?;
                    if self.open.is_empty() && el.name == "stream:stream" {
                        Some(Item::StreamStart(el))
                    } else {
                        self.open.push(el);
                        None
                    }
                }
                Event::Empty(e) => {
                    let el = Element::from_start(&e)?;
                    match self.open.last_mut() {
                        Some(parent) => {
                            parent.children.push(el);
                            None
                        }
                        None => Some(Item::Stanza(el)),
                    }
                }
                Event::End(e) => match self.open.pop() {
                    Some(el) => match self.open.last_mut() {
                        Some(parent) => {
                            parent.children.push(el);
                            None
                        }
                        None => Some(Item::Stanza(el)),
                    },
                    None if e.name().as_ref() == b"stream:stream" => Some(Item::StreamEnd),
                    None => anyhow::bail!(
                        "unexpected </{}>",
                        String::from_utf8_lossy(e.name().as_ref())
                    ),
                },
                Event::Text(t) => {
                    // Between stanzas: whitespace keep-alives, ignored.
                    if let Some(el) = self.open.last_mut() {
                        el.text.push_str(&t.unescape()?);
                    }
                    None
                }
                Event::CData(t) => {
                    if let Some(el) = self.open.last_mut() {
                        el.text.push_str(&t.decode()?);
                    }
                    None
                }
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) => None,
                Event::DocType(_) => anyhow::bail!("a DTD in an XMPP stream"),
                Event::Eof => {
                    anyhow::ensure!(self.open.is_empty(), "stream ended inside a stanza");
                    return Ok(None);
                }
            };
            if let Some(item) = done {
                // A new stanza may take up to the limit, beyond what is already buffered.
                self.xml.get_mut().get_mut().left = MAX_STANZA;
                return Ok(Some(item));
            }
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.xml.get_mut().get_mut().inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
        xmlns:stream='http://etherx.jabber.org/streams' id='abc' from=\"proxy.localhost\">\
        <handshake/> <iq type='error' id='7' from='proxy.localhost'><query xmlns='q'/>\
        <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
        <text>a &amp; b</text></error></iq></stream:stream>";

    /// Hands out the chunks one read at a time, as a socket might.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some(mut c) = self.0.pop_front() else {
                return Ok(0);
            };
            let n = c.len().min(buf.len());
            buf[..n].copy_from_slice(&c[..n]);
            if n < c.len() {
                self.0.push_front(c.split_off(n));
            }
            Ok(n)
        }
    }

    fn all_items(chunks: &[&[u8]]) -> Vec<Item> {
        let mut r = Reader::new(Chunks(chunks.iter().map(|c| c.to_vec()).collect()));
        let mut out = Vec::new();
        while let Some(i) = r.next_item().unwrap() {
            out.push(i);
        }
        out
    }

    #[test]
    fn parses_header_and_stanzas() {
        let items = all_items(&[INPUT.as_bytes()]);
        assert_eq!(items.len(), 4);
        let Item::StreamStart(h) = &items[0] else {
            panic!("{items:?}")
        };
        assert_eq!(h.attr("id"), Some("abc"));
        assert_eq!(h.attr("from"), Some("proxy.localhost"));
        let Item::Stanza(iq) = &items[2] else {
            panic!()
        };
        assert_eq!(iq.attr("type"), Some("error"));
        let err = iq.child("error").unwrap();
        assert_eq!(err.children[0].name, "item-not-found");
        assert_eq!(err.child("text").unwrap().text, "a & b");
        assert_eq!(items[3], Item::StreamEnd);
    }

    #[test]
    fn every_split_point_gives_the_same_items() {
        let whole = all_items(&[INPUT.as_bytes()]);
        let b = INPUT.as_bytes();
        for cut in 1..b.len() {
            assert_eq!(all_items(&[&b[..cut], &b[cut..]]), whole, "cut at {cut}");
        }
        // One byte per read.
        let bytes: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(all_items(&bytes), whole);
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [
            &b"<a><b></a>"[..],
            b"<a x=1/>",
            b"<!DOCTYPE a><a/>",
            b"</iq>",
            b"<iq><query>",
        ] {
            let mut r = Reader::new(std::io::Cursor::new(bad.to_vec()));
            let got = (0..4)
                .map(|_| r.next_item())
                .find(|x| !matches!(x, Ok(Some(_))));
            assert!(
                matches!(got, Some(Err(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_stanza_over_the_limit_is_refused() {
        let mut big = b"<stream:stream><message><body>".to_vec();
        big.resize(big.len() + 2 * MAX_STANZA as usize, b'a');
        let mut r = Reader::new(std::io::Cursor::new(big));
        assert!(matches!(r.next_item(), Ok(Some(Item::StreamStart(_)))));
        let e = r.next_item().unwrap_err().to_string();
        assert!(e.contains("1 MiB"), "{e}");
    }

    #[test]
    fn escape_roundtrips() {
        let s = "a<b>&'\"";
        assert_eq!(quick_xml::escape::unescape(&escape(s)).unwrap(), s);
    }
}
