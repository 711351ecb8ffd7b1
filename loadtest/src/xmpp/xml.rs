//! Just enough XML for XEP-0114: a stream header and whole top-level stanzas, read from a
//! byte stream that may split them anywhere. No namespaces processing, no DTDs.

use std::io::Read;

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
}

/// Escapes text or an attribute value.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// What the parser found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// `<stream:stream ...>` (its children are the stanzas that follow).
    StreamStart(Element),
    /// `</stream:stream>`.
    StreamEnd,
    Stanza(Element),
}

type Parse<T> = Result<Option<(T, usize)>, String>;

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn find(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| from + p)
}

fn is_name_byte(c: u8) -> bool {
    !(c.is_ascii_whitespace() || c == b'>' || c == b'/' || c == b'=' || c == b'<')
}

/// Parses a start tag at `b[i] == '<'`: (element without children, end index, self-closed).
fn start_tag(b: &[u8], i: usize) -> Parse<(Element, bool)> {
    let mut j = i + 1;
    let ns = j;
    while j < b.len() && is_name_byte(b[j]) {
        j += 1;
    }
    if j >= b.len() {
        return Ok(None);
    }
    let mut el = Element {
        name: String::from_utf8_lossy(&b[ns..j]).into_owned(),
        ..Default::default()
    };
    if el.name.is_empty() {
        return Err("empty element name".into());
    }
    loop {
        j = skip_ws(b, j);
        match b.get(j) {
            None => return Ok(None),
            Some(b'>') => return Ok(Some(((el, false), j + 1))),
            Some(b'/') => {
                return match b.get(j + 1) {
                    None => Ok(None),
                    Some(b'>') => Ok(Some(((el, true), j + 2))),
                    Some(_) => Err(format!("stray '/' in <{}>", el.name)),
                }
            }
            Some(_) => {
                let ks = j;
                while j < b.len() && is_name_byte(b[j]) {
                    j += 1;
                }
                let key = String::from_utf8_lossy(&b[ks..j]).into_owned();
                j = skip_ws(b, j);
                match b.get(j) {
                    None => return Ok(None),
                    Some(b'=') => {}
                    Some(_) => return Err(format!("attribute {key} without value")),
                }
                j = skip_ws(b, j + 1);
                let q = match b.get(j) {
                    None => return Ok(None),
                    Some(&q @ (b'\'' | b'"')) => q,
                    Some(_) => return Err(format!("attribute {key} value not quoted")),
                };
                let Some(end) = b[j + 1..].iter().position(|&c| c == q) else {
                    return Ok(None);
                };
                let v = String::from_utf8_lossy(&b[j + 1..j + 1 + end]);
                el.attrs.push((key, unescape(&v)));
                j = j + 1 + end + 1;
            }
        }
    }
}

/// Parses a whole element starting at `b[i] == '<'`.
fn element(b: &[u8], i: usize, depth: usize) -> Parse<Element> {
    if depth > 32 {
        return Err("elements nested too deep".into());
    }
    let Some(((mut el, closed), mut j)) = start_tag(b, i)? else {
        return Ok(None);
    };
    if closed {
        return Ok(Some((el, j)));
    }
    loop {
        let Some(lt) = b[j..].iter().position(|&c| c == b'<').map(|p| j + p) else {
            return Ok(None);
        };
        el.text
            .push_str(&unescape(&String::from_utf8_lossy(&b[j..lt])));
        if b.get(lt + 1) == Some(&b'/') {
            let Some(gt) = find(b, lt, b">") else {
                return Ok(None);
            };
            let name = String::from_utf8_lossy(&b[lt + 2..gt]);
            if name.trim() != el.name {
                return Err(format!("</{}> closes <{}>", name.trim(), el.name));
            }
            return Ok(Some((el, gt + 1)));
        }
        if b.get(lt + 1).is_none() {
            return Ok(None);
        }
        let Some((child, k)) = element(b, lt, depth + 1)? else {
            return Ok(None);
        };
        el.children.push(child);
        j = k;
    }
}

/// Parses the next item at the front of `b`; `Ok(None)` when more bytes are needed.
pub fn next_item(b: &[u8]) -> Parse<Item> {
    let mut i = 0;
    loop {
        i = skip_ws(b, i);
        if i >= b.len() {
            return Ok(None);
        }
        if b[i] != b'<' {
            // Whitespace keep-alives and stray text between stanzas are ignored.
            match b[i..].iter().position(|&c| c == b'<') {
                Some(p) => i += p,
                None => return Ok(None),
            }
            continue;
        }
        if b.len() < i + 2 {
            return Ok(None);
        }
        if b[i + 1] == b'?' {
            let Some(e) = find(b, i, b"?>") else {
                return Ok(None);
            };
            i = e + 2;
            continue;
        }
        if b[i..].starts_with(b"<!--") {
            let Some(e) = find(b, i, b"-->") else {
                return Ok(None);
            };
            i = e + 3;
            continue;
        }
        if b[i + 1] == b'/' {
            let Some(gt) = find(b, i, b">") else {
                return Ok(None);
            };
            let name = String::from_utf8_lossy(&b[i + 2..gt]).trim().to_string();
            if name == "stream:stream" {
                return Ok(Some((Item::StreamEnd, gt + 1)));
            }
            return Err(format!("unexpected </{name}>"));
        }
        if b[i..].starts_with(b"<stream:stream") {
            let Some(((el, _), j)) = start_tag(b, i)? else {
                return Ok(None);
            };
            return Ok(Some((Item::StreamStart(el), j)));
        }
        return Ok(element(b, i, 0)?.map(|(e, j)| (Item::Stanza(e), j)));
    }
}

/// Reads items from a byte stream.
pub struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            buf: Vec::new(),
        }
    }

    /// The next item; `Ok(None)` at a clean end of the byte stream.
    pub fn next_item(&mut self) -> anyhow::Result<Option<Item>> {
        loop {
            if let Some((item, used)) = next_item(&self.buf).map_err(anyhow::Error::msg)? {
                self.buf.drain(..used);
                return Ok(Some(item));
            }
            anyhow::ensure!(self.buf.len() < 1 << 20, "stanza larger than 1 MiB");
            let mut tmp = [0u8; 16384];
            let n = self.inner.read(&mut tmp)?;
            if n == 0 {
                if self.buf.iter().all(|c| c.is_ascii_whitespace()) {
                    return Ok(None);
                }
                anyhow::bail!("stream ended inside a stanza");
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
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

    fn all_items(chunks: &[&[u8]]) -> Vec<Item> {
        let mut r = Reader::new(std::io::Cursor::new(chunks.concat()));
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
            let mut buf = b[..cut].to_vec();
            let mut got = Vec::new();
            while let Some((item, used)) = next_item(&buf).unwrap() {
                got.push(item);
                buf.drain(..used);
            }
            buf.extend_from_slice(&b[cut..]);
            while let Some((item, used)) = next_item(&buf).unwrap() {
                got.push(item);
                buf.drain(..used);
            }
            assert_eq!(got, whole, "cut at {cut}");
        }
    }

    #[test]
    fn mismatched_close_is_an_error() {
        assert!(next_item(b"<a><b></a>").is_err());
    }

    #[test]
    fn escape_roundtrips() {
        let s = "a<b>&'\"";
        assert_eq!(unescape(&escape(s)), s);
    }
}
