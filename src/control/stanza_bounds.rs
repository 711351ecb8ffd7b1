//! Bounds on what the XMPP server may send the component, enforced on raw bytes before
//! any XML parser builds a tree (sans-IO).
//!
//! The XML stack (rxml, minidom, xmpp-parsers) has no limit of its own on element depth
//! or stanza size: a 26 KB message nested 3,700 deep overflowed the control thread's stack
//! and a 200 MB one was held whole. `StanzaFilter` sits under the parser and lexes just
//! enough XML (tags, quotes, comments, CDATA, processing instructions) to know each
//! top-level stanza's depth and size. It holds a stanza until its end tag and then passes
//! it on whole; one that goes deeper than `max_depth` or grows past `max_size` is
//! discarded as it arrives (from then on only its depth is tracked, in O(1) memory) and
//! reported, so the parser never sees it. Elements the component protocol has no use for
//! at the top level are dropped the same way instead of ending the stream.
//!
//! XML the lexer can tell is malformed (`<` inside a tag, a tag name that cannot start a
//! name, a DTD, anything after the stream's end) poisons the filter: nothing more is
//! passed on and the reader ends the link, so that no malformed construct can turn into a
//! stanza swallowed forever, and no byte goes to the parser unchecked. Whatever the
//! bytes, the filter holds at most `max_size` of them.

/// Why a stanza was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Nested deeper than `max_depth` elements (the stanza itself is depth 1).
    Depth,
    /// Larger than `max_size` bytes.
    Size,
    /// A top-level element that is not a stanza, handshake or stream error.
    Unknown,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [DropReason::Depth, DropReason::Size, DropReason::Unknown];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::Depth => "depth",
            DropReason::Size => "size",
            DropReason::Unknown => "unknown_element",
        }
    }
}

/// A dropped stanza and what its start tag said (when the start tag itself was read
/// within the limits), so that an IQ request can still be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub reason: DropReason,
    /// The start tag's local name (`iq`, `message`, ...), empty if it was not read.
    pub name: String,
    pub type_: Option<String>,
    pub id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// The limits; see `component.max_stanza_size` and `component.max_stanza_depth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StanzaLimits {
    pub max_size: usize,
    pub max_depth: u32,
}

impl StanzaLimits {
    /// 256 KiB, as servers commonly cap c2s stanzas (Prosody's `c2s_stanza_size_limit`,
    /// ejabberd's `max_stanza_size`); no real payload comes near 64 levels.
    pub const DEFAULT: StanzaLimits = StanzaLimits {
        max_size: 256 * 1024,
        max_depth: 64,
    };
}

/// Top-level elements that are passed on; anything else is dropped.
const KNOWN: [&[u8]; 5] = [b"iq", b"message", b"presence", b"handshake", b"error"];

/// Where the lexer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    Text,
    /// Just after `<`.
    Open,
    /// In a start tag; `quote` is the open attribute quote, `slash` whether the last
    /// byte outside quotes was `/`.
    Start {
        quote: u8,
        slash: bool,
    },
    /// In an end tag, until `>`.
    End,
    /// After `<!`: the first bytes tell a comment from CDATA from a declaration.
    Bang {
        seen: [u8; 7],
        len: u8,
    },
    Comment {
        dashes: u8,
    },
    CData {
        brackets: u8,
    },
    /// `<?...?>`
    Pi {
        question: bool,
    },
}

const CDATA_OPEN: &[u8] = b"[CDATA[";

/// The filter: bytes from the server in, bytes for the parser and drop reports out.
#[derive(Debug)]
pub struct StanzaFilter {
    limits: StanzaLimits,
    lex: Lex,
    /// Open elements, the stream's root included (a stanza's own element is depth 2).
    depth: u64,
    /// Bytes of the top-level construct being held (from its `<`), while one is.
    held: Vec<u8>,
    holding: bool,
    /// Set while the current top-level stanza is being discarded.
    dropping: Option<DropReason>,
    /// Length of the top-level start tag once it is complete (0 before).
    head_len: usize,
    /// Bytes of the current top-level construct seen so far (held or not).
    size: usize,
    /// The stream's root element has ended: any further byte poisons the filter.
    ended: bool,
    /// Malformed input was seen; nothing more is passed on.
    poisoned: bool,
}

impl StanzaFilter {
    pub fn new(limits: StanzaLimits) -> StanzaFilter {
        StanzaFilter {
            limits,
            lex: Lex::Text,
            depth: 0,
            held: Vec::new(),
            holding: false,
            dropping: None,
            head_len: 0,
            size: 0,
            ended: false,
            poisoned: false,
        }
    }

    /// True once the input was malformed: the link must end (nothing more will pass).
    pub fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// Bytes held for a stanza not yet complete (never more than `max_size`).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Lexes `input`; bytes the parser may have go to `out`, each dropped stanza to
    /// `dropped` as soon as it is known to be over a limit.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>, dropped: &mut Vec<Dropped>) {
        for &b in input {
            self.byte(b, out, dropped);
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>, dropped: &mut Vec<Dropped>) {
        if self.ended && !self.poisoned {
            self.poison();
        }
        if self.poisoned {
            return;
        }
        // A top-level construct starts at a `<` directly inside the stream root.
        if self.lex == Lex::Text && b == b'<' && self.depth == 1 {
            self.holding = true;
            self.size = 0;
            self.head_len = 0;
        }
        if self.holding {
            self.size = self.size.saturating_add(1);
            if self.dropping.is_none() {
                if self.size > self.limits.max_size {
                    self.start_dropping(DropReason::Size, dropped);
                } else {
                    self.held.push(b);
                }
            }
        } else {
            out.push(b);
        }
        self.lex_byte(b, out, dropped);
        if self.poisoned {
            // What was held of the malformed construct never reaches the parser.
            self.held = Vec::new();
        }
    }

    fn poison(&mut self) {
        self.poisoned = true;
        self.held = Vec::new();
        self.holding = false;
    }

    fn lex_byte(&mut self, b: u8, out: &mut Vec<u8>, dropped: &mut Vec<Dropped>) {
        self.lex = match self.lex {
            Lex::Text => {
                if b == b'<' {
                    Lex::Open
                } else {
                    Lex::Text
                }
            }
            Lex::Open => match b {
                b'/' => Lex::End,
                b'!' => Lex::Bang {
                    seen: [0; 7],
                    len: 0,
                },
                b'?' => Lex::Pi { question: false },
                // A name starts with a letter, `_`, `:` or a non-ASCII character.
                c if c.is_ascii_alphabetic() || c == b'_' || c == b':' || c >= 0x80 => Lex::Start {
                    quote: 0,
                    slash: false,
                },
                _ => {
                    self.poison();
                    Lex::Text
                }
            },
            // `<` is allowed nowhere inside a tag, attribute values included.
            Lex::Start { .. } | Lex::End if b == b'<' => {
                self.poison();
                Lex::Text
            }
            Lex::Start { quote, slash } => match (quote, b) {
                (0, b'"' | b'\'') => Lex::Start {
                    quote: b,
                    slash: false,
                },
                (0, b'>') => {
                    self.start_tag_ended(slash, out, dropped);
                    Lex::Text
                }
                (0, b'/') => Lex::Start {
                    quote: 0,
                    slash: true,
                },
                (0, _) => Lex::Start {
                    quote: 0,
                    slash: slash && b.is_ascii_whitespace(),
                },
                (q, c) if q == c => Lex::Start {
                    quote: 0,
                    slash: false,
                },
                (q, _) => Lex::Start { quote: q, slash },
            },
            Lex::End => {
                if b == b'>' {
                    if self.depth <= 1 {
                        // The stream's root has ended (or an end tag with nothing open).
                        self.ended = true;
                    }
                    self.depth = self.depth.saturating_sub(1);
                    self.maybe_complete(out);
                    Lex::Text
                } else {
                    Lex::End
                }
            }
            Lex::Bang { seen, len } => {
                let mut seen = seen;
                seen[len as usize] = b;
                let so_far = &seen[..len as usize + 1];
                if so_far == b"--" {
                    Lex::Comment { dashes: 0 }
                } else if so_far == CDATA_OPEN {
                    Lex::CData { brackets: 0 }
                } else if b"--".starts_with(so_far) || CDATA_OPEN.starts_with(so_far) {
                    Lex::Bang { seen, len: len + 1 }
                } else {
                    // `<!DOCTYPE` and other declarations: XMPP forbids them.
                    self.poison();
                    Lex::Text
                }
            }
            Lex::Comment { dashes } => match b {
                b'-' => Lex::Comment {
                    dashes: (dashes + 1).min(2),
                },
                b'>' if dashes >= 2 => {
                    self.maybe_complete(out);
                    Lex::Text
                }
                _ => Lex::Comment { dashes: 0 },
            },
            Lex::CData { brackets } => match b {
                b']' => Lex::CData {
                    brackets: (brackets + 1).min(2),
                },
                b'>' if brackets >= 2 => {
                    self.maybe_complete(out);
                    Lex::Text
                }
                _ => Lex::CData { brackets: 0 },
            },
            Lex::Pi { question } => {
                if b == b'>' && question {
                    self.maybe_complete(out);
                    Lex::Text
                } else {
                    Lex::Pi {
                        question: b == b'?',
                    }
                }
            }
        };
    }

    fn start_tag_ended(
        &mut self,
        self_closing: bool,
        out: &mut Vec<u8>,
        dropped: &mut Vec<Dropped>,
    ) {
        if self.holding && self.dropping.is_none() {
            if self.depth == 1 {
                self.head_len = self.held.len();
                let (name, _) = parse_head(&self.held);
                if !KNOWN.contains(&local_name(name)) {
                    self.start_dropping(DropReason::Unknown, dropped);
                }
            } else if self.depth > u64::from(self.limits.max_depth) {
                // This element is at depth `self.depth` counted from the stanza (1).
                self.start_dropping(DropReason::Depth, dropped);
            }
        }
        if self_closing {
            self.maybe_complete(out);
        } else {
            self.depth += 1;
        }
    }

    /// Ends the held construct if the lexer is back at the top level.
    fn maybe_complete(&mut self, out: &mut Vec<u8>) {
        if !self.holding || self.depth > 1 {
            return;
        }
        if self.dropping.take().is_none() {
            out.extend_from_slice(&self.held);
        }
        self.held.clear();
        self.holding = false;
        self.head_len = 0;
        self.size = 0;
    }

    /// Discards what is held of the current stanza and reports it.
    fn start_dropping(&mut self, reason: DropReason, dropped: &mut Vec<Dropped>) {
        if self.dropping.is_some() {
            return;
        }
        self.dropping = Some(reason);
        dropped.push(Dropped::from_head(reason, &self.held[..self.head_len]));
        self.held.clear();
        // Give a large stanza's memory back rather than keep it for the next one.
        if self.held.capacity() > 64 * 1024 {
            self.held = Vec::new();
        }
    }
}

impl Dropped {
    fn from_head(reason: DropReason, head: &[u8]) -> Dropped {
        let (name, attrs) = parse_head(head);
        let local = local_name(name);
        let get = |k: &[u8]| {
            attrs
                .iter()
                .find(|(n, _)| *n == k)
                .and_then(|(_, v)| unescape(v))
        };
        Dropped {
            reason,
            name: String::from_utf8_lossy(local).into_owned(),
            type_: get(b"type"),
            id: get(b"id"),
            from: get(b"from"),
            to: get(b"to"),
        }
    }
}

/// An attribute's name and raw (still escaped) value.
type Attr<'a> = (&'a [u8], &'a [u8]);

/// A start tag's qualified name and raw attribute values; lenient, since the tag is
/// either well-formed (from a server) or dropped anyway.
fn parse_head(head: &[u8]) -> (&[u8], Vec<Attr<'_>>) {
    let body = head.strip_prefix(b"<").unwrap_or(head);
    let name_end = body
        .iter()
        .position(|c| c.is_ascii_whitespace() || *c == b'/' || *c == b'>')
        .unwrap_or(body.len());
    let name = &body[..name_end];
    let mut attrs = Vec::new();
    let mut rest = &body[name_end..];
    loop {
        rest = trim_start(rest);
        let Some(eq) = rest.iter().position(|&c| c == b'=') else {
            break;
        };
        let key = trim_end(&rest[..eq]);
        let after = trim_start(&rest[eq + 1..]);
        let Some(&q) = after.first().filter(|q| **q == b'"' || **q == b'\'') else {
            break;
        };
        let Some(close) = after[1..].iter().position(|&c| c == q) else {
            break;
        };
        attrs.push((key, &after[1..1 + close]));
        rest = &after[close + 2..];
    }
    (name, attrs)
}

fn local_name(name: &[u8]) -> &[u8] {
    name.rsplit(|&c| c == b':').next().unwrap_or(name)
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &s[n..]
}

fn trim_end(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .rev()
        .take_while(|c| c.is_ascii_whitespace())
        .count();
    &s[..s.len() - n]
}

/// An attribute value with XML's predefined and numeric references resolved; `None` if
/// it is not valid UTF-8 or has a reference that is not one of those.
fn unescape(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let semi = rest[amp..].find(';')? + amp;
        let name = &rest[amp + 1..semi];
        let c = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let n = if let Some(hex) = name.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()?
                } else {
                    name.strip_prefix('#')?.parse().ok()?
                };
                char::from_u32(n)?
            }
        };
        out.push(c);
        rest = &rest[semi + 1..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
                        xmlns:stream='http://etherx.jabber.org/streams' id='x' from='p'>";

    fn limits(max_size: usize, max_depth: u32) -> StanzaLimits {
        StanzaLimits {
            max_size,
            max_depth,
        }
    }

    /// Feeds `input` in chunks of `chunk` bytes: (bytes passed on, drops).
    fn run(l: StanzaLimits, input: &str, chunk: usize) -> (String, Vec<Dropped>) {
        let mut f = StanzaFilter::new(l);
        let (mut out, mut dropped) = (Vec::new(), Vec::new());
        for c in input.as_bytes().chunks(chunk) {
            f.feed(c, &mut out, &mut dropped);
            assert!(f.held() <= l.max_size);
        }
        (String::from_utf8(out).unwrap(), dropped)
    }

    fn nested(depth: usize) -> String {
        format!(
            "<message from='a@b' id='m'>{}{}</message>",
            "<a>".repeat(depth - 1),
            "</a>".repeat(depth - 1)
        )
    }

    #[test]
    fn stanzas_within_the_limits_pass_whole_in_any_chunking() {
        let body = format!(
            "{HEAD}<iq type='get' id='1' from='a@b/c' to='p'><q xmlns='x' a='1>2' b=\"/\"/>\
             <!-- c<d> --><![CDATA[<e><f>]]></iq> <presence/>\n{}<message><b>x&lt;</b></message>\
             </stream:stream>",
            nested(64)
        );
        for chunk in [1, 2, 3, 7, 64, 100_000] {
            let (out, dropped) = run(StanzaLimits::DEFAULT, &body, chunk);
            assert_eq!(out, body, "chunk {chunk}");
            assert!(dropped.is_empty());
        }
    }

    #[test]
    fn a_stanza_is_held_until_its_end_tag() {
        let mut f = StanzaFilter::new(StanzaLimits::DEFAULT);
        let (mut out, mut dropped) = (Vec::new(), Vec::new());
        f.feed(HEAD.as_bytes(), &mut out, &mut dropped);
        assert_eq!(out, HEAD.as_bytes());
        out.clear();
        f.feed(b"<message><body>hi</body>", &mut out, &mut dropped);
        assert!(out.is_empty());
        f.feed(b"</message>", &mut out, &mut dropped);
        assert_eq!(out, b"<message><body>hi</body></message>");
    }

    #[test]
    fn too_deep_is_dropped_and_the_next_stanza_passes() {
        for chunk in [1, 5, 1 << 20] {
            let input = format!("{HEAD}{}<presence/>", nested(65));
            let (out, dropped) = run(StanzaLimits::DEFAULT, &input, chunk);
            assert_eq!(out, format!("{HEAD}<presence/>"));
            assert_eq!(dropped.len(), 1);
            assert_eq!(dropped[0].reason, DropReason::Depth);
            assert_eq!(dropped[0].name, "message");
            assert_eq!(dropped[0].id.as_deref(), Some("m"));
            assert_eq!(dropped[0].from.as_deref(), Some("a@b"));
        }
        let (out, dropped) = run(limits(1 << 20, 3), &format!("{HEAD}{}", nested(3)), 9);
        assert!(dropped.is_empty());
        assert!(out.ends_with("</message>"));
    }

    #[test]
    fn too_large_is_dropped_without_holding_it() {
        let big = format!(
            "<iq type='set' id='i&amp;1' from='a@b/c'><x>{}</x></iq>",
            "y".repeat(5000)
        );
        let input = format!("{HEAD}{big}<message/>");
        let (out, dropped) = run(limits(1000, 64), &input, 13);
        assert_eq!(out, format!("{HEAD}<message/>"));
        assert_eq!(dropped.len(), 1);
        let d = &dropped[0];
        assert_eq!(d.reason, DropReason::Size);
        assert_eq!(
            (d.name.as_str(), d.type_.as_deref(), d.id.as_deref()),
            ("iq", Some("set"), Some("i&1"))
        );
        // A start tag longer than the limit: dropped with nothing known of it.
        let input = format!("{HEAD}<message a='{}'/><presence/>", "z".repeat(2000));
        let (out, dropped) = run(limits(1000, 64), &input, 1);
        assert_eq!(out, format!("{HEAD}<presence/>"));
        assert_eq!(dropped[0].name, "");
    }

    #[test]
    fn unknown_top_level_elements_are_dropped_known_ones_pass() {
        let input = format!(
            "{HEAD}<foo xmlns='bar'><x/></foo><stream:error><conflict/></stream:error><handshake/>"
        );
        let (out, dropped) = run(StanzaLimits::DEFAULT, &input, 4);
        assert_eq!(
            out,
            format!("{HEAD}<stream:error><conflict/></stream:error><handshake/>")
        );
        assert_eq!(dropped.len(), 1);
        assert_eq!(
            (dropped[0].reason, dropped[0].name.as_str()),
            (DropReason::Unknown, "foo")
        );
    }

    #[test]
    fn an_endless_stanza_holds_no_more_than_the_limit() {
        let mut f = StanzaFilter::new(limits(4096, 8));
        let (mut out, mut dropped) = (Vec::new(), Vec::new());
        f.feed(HEAD.as_bytes(), &mut out, &mut dropped);
        f.feed(b"<message>", &mut out, &mut dropped);
        for _ in 0..10_000 {
            f.feed(b"<a>text", &mut out, &mut dropped);
            assert!(f.held() <= 4096);
        }
        assert_eq!(dropped.len(), 1);
        assert_eq!(out, HEAD.as_bytes());
    }

    #[test]
    fn malformed_input_poisons_the_filter_and_nothing_more_passes() {
        let ok = "<presence/>";
        for bad in [
            "<<not xml>>",
            "<a b='<'>",
            "<1a>",
            "< a>",
            "<!DOCTYPE x>",
            "<message></a<b>",
            "</stream:stream> ",
            "</x>",
        ] {
            for chunk in [1, 3, 1 << 20] {
                let input = format!("{HEAD}{ok}{bad}{ok}{}", nested(100));
                let mut f = StanzaFilter::new(StanzaLimits::DEFAULT);
                let (mut out, mut dropped) = (Vec::new(), Vec::new());
                for c in input.as_bytes().chunks(chunk) {
                    f.feed(c, &mut out, &mut dropped);
                }
                assert!(f.poisoned(), "{bad}");
                let out = String::from_utf8(out).unwrap();
                assert!(out.starts_with(&format!("{HEAD}{ok}")), "{bad}: {out}");
                assert!(!out.contains("<message from"), "{bad}: {out}");
                assert_eq!(f.held(), 0);
            }
        }
    }

    #[test]
    fn attribute_values_are_unescaped() {
        assert_eq!(
            unescape(b"a&lt;&#x41;&#66;&apos;").as_deref(),
            Some("a<AB'")
        );
        assert_eq!(unescape(b"&bogus;"), None);
        assert_eq!(unescape(b"&amp"), None);
    }
}
