//! Fuzz targets, run for a bounded time on every CI run (`tests/fuzzing`): the SOCKS5
//! handshake parser, the component's handling of what the XMPP server sends (the live
//! parse path with its limits, through a loopback socket), and the config loader. Each
//! starts from its committed corpus in `fuzz/corpus/<target>/`; a failing input becomes a
//! corpus file and a regression test.

mod fuzzing;

use fuzzing::Target;
use std::sync::Arc;
use streamhost::config::{Config, Socks5Auth};
use streamhost::control::config::{ControlConfig, Secret};
use streamhost::control::replay::replay;
use streamhost::control::stanza_bounds::{StanzaFilter, StanzaLimits};
use streamhost::control::ControlSettings;
use streamhost::socks5::{failure_reply, Handshake, Step};

// --- SOCKS5 -------------------------------------------------------------------------

/// Feeds `input` the way the worker does (at most `max_read()` bytes at a time, in chunks
/// cut by `cuts`): the step reached, every byte the proxy would send, and how many bytes
/// were read (the rest stay in the kernel: early relay data).
fn drive(auth: &Option<Arc<Socks5Auth>>, input: &[u8], cuts: &[usize]) -> (Step, Vec<u8>, usize) {
    let mut h = Handshake::new(auth.clone());
    let mut out = Vec::new();
    let mut at = 0;
    let mut cut = cuts.iter().cycle();
    while at < input.len() && matches!(h.step(), Step::NeedMore) {
        // The worker reads at most this much; it must be at least 1 while more is needed.
        assert!(
            h.max_read() >= 1,
            "max_read() is 0 while the handshake needs more"
        );
        let want = (*cut.next().unwrap()).max(1).min(h.max_read());
        let end = (at + want).min(input.len());
        h.feed(&input[at..end], &mut out);
        at = end;
    }
    (h.step(), out, at)
}

fn check_socks5(input: &[u8]) {
    // The first byte picks the configuration; the rest is the client's bytes.
    let (auth, bytes) = match input.split_first() {
        Some((b, rest)) if b & 1 == 1 => (
            Some(Arc::new(Socks5Auth {
                username: "user".into(),
                password: "pass".into(),
            })),
            rest,
        ),
        Some((_, rest)) => (None, rest),
        None => (None, input),
    };
    let whole = drive(&auth, bytes, &[usize::MAX]);
    // Any chunking the driver can produce gives the same outcome and the same replies,
    // and a success reads exactly the same bytes (a failure may over-read: by design).
    for cuts in [&[1usize][..], &[2, 7, 1], &[40, 3]] {
        let other = drive(&auth, bytes, cuts);
        assert_eq!(
            (other.0, &other.1),
            (whole.0, &whole.1),
            "chunking {cuts:?}"
        );
        if matches!(whole.0, Step::Done(_)) {
            assert_eq!(other.2, whole.2, "chunking {cuts:?}");
        }
    }
    let (step, out, read) = whole;
    match step {
        Step::Done(key) => {
            // Success only for CONNECT to a 40-hex-char domain and port 0, nothing else:
            // the key is never a place to connect to.
            // (The success reply itself is sent once the half is placed.)
            let req = &bytes[read - 47..read];
            assert_eq!(&req[..5], &[5, 1, 0, 3, 40]);
            assert_eq!(&req[45..], &[0, 0]);
            assert!(req[5..45].iter().all(u8::is_ascii_hexdigit));
            assert_eq!(key.as_bytes(), &req[5..45].to_ascii_lowercase()[..]);
            let expected: &[u8] = if auth.is_some() {
                &[5, 2, 1, 0]
            } else {
                &[5, 0]
            };
            assert_eq!(out, expected);
        }
        Step::Failed(why) => {
            // A failure sends its RFC 1928 reply, a method refusal or an auth failure,
            // or nothing (not SOCKS5 at all).
            let ok = out.ends_with(&failure_reply(why.rep()))
                || out.ends_with(&[5, 0xFF])
                || out.ends_with(&[1, 1])
                || out.is_empty()
                || out == [5, 0]
                || out == [5, 2];
            assert!(ok, "{why:?} with replies {out:?}");
        }
        Step::NeedMore => assert!(out.len() <= 4, "replies before the request: {out:?}"),
    }
}

#[test]
fn fuzz_socks5_handshake() {
    let r = fuzzing::run(
        &Target {
            name: "socks5",
            corpus: "socks5",
            dictionary: &[
                &[5],
                &[5, 1, 0],
                &[5, 1, 2],
                &[1, 4],
                b"user",
                b"pass",
                &[5, 1, 0, 3, 40],
                &[5, 1, 0, 1],
                &[5, 1, 0, 4],
                &[0, 0],
                &[0, 80],
                b"0123456789abcdef0123456789abcdef01234567",
            ],
            seconds: 10,
        },
        check_socks5,
    );
    assert!(r.runs > r.corpus as u64 || std::env::var("FUZZ_INPUT").is_ok());
}

// --- What the XMPP server sends ------------------------------------------------------

const STANZA_WORDS: &[&[u8]] = &[
    b"<iq type='get' id='f' from='romeo@example.org/r' to='proxy.example.org'>",
    b"<iq type='set' id='f' from='romeo@example.org/r' to='proxy.example.org'>",
    b"</iq>",
    b"<message>",
    b"</message>",
    b"<a>",
    b"</a>",
    b"<a/>",
    b"<query xmlns='http://jabber.org/protocol/bytestreams' sid='s'>",
    b"<activate>juliet@example.org/b</activate>",
    b"<query xmlns='http://jabber.org/protocol/disco#info'/>",
    b"<![CDATA[",
    b"]]>",
    b"<!--",
    b"-->",
    b"<?pi?>",
    b"&amp;",
    b"&#x0;",
    b"xmlns:x='y'",
    b"'",
    b"\"",
    b"</stream:stream>",
    b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
];

fn settings() -> ControlSettings {
    ControlConfig {
        jid: "proxy.example.org".into(),
        secret: Some(Secret::new("x")),
        advertise: vec!["192.0.2.1:7777".into()],
        ..ControlConfig::default()
    }
    .resolve(&[])
    .unwrap()
}

#[test]
fn fuzz_component_stream() {
    let s = settings();
    let r = fuzzing::run(
        &Target {
            name: "component-stream",
            corpus: "stanza",
            dictionary: STANZA_WORDS,
            seconds: 20,
        },
        |input| {
            // Whatever the server sends, the component ends the link in an orderly way
            // (no panic, no stack overflow, no hang) and holds no more than the limit.
            let r = replay(&s, input).unwrap_or_else(|e| panic!("the replay failed: {e}"));
            assert!(!r.end.is_empty());
            if std::env::var("FUZZ_INPUT").is_ok() {
                eprintln!("{r:?}");
            }
        },
    );
    assert!(r.runs > r.corpus as u64 || std::env::var("FUZZ_INPUT").is_ok());
}

/// The filter alone, much faster than a replay: whatever the bytes and their chunking, it
/// holds at most the size limit, and the chunking changes nothing it passes or reports.
fn check_filter(input: &[u8]) {
    let limits = StanzaLimits {
        max_size: 4096,
        max_depth: 16,
    };
    let head = b"<stream:stream xmlns='jabber:component:accept' \
                 xmlns:stream='http://etherx.jabber.org/streams'>";
    let run = |chunk: usize| {
        let mut f = StanzaFilter::new(limits);
        let (mut out, mut dropped) = (Vec::new(), Vec::new());
        f.feed(head, &mut out, &mut dropped);
        for c in input.chunks(chunk) {
            f.feed(c, &mut out, &mut dropped);
            assert!(f.held() <= limits.max_size);
        }
        (out, dropped, f.poisoned())
    };
    let whole = run(usize::MAX);
    assert_eq!(run(1), whole);
    assert_eq!(run(7), whole);
}

#[test]
fn fuzz_stanza_filter() {
    let r = fuzzing::run(
        &Target {
            name: "stanza-filter",
            corpus: "stanza",
            dictionary: STANZA_WORDS,
            seconds: 10,
        },
        check_filter,
    );
    assert!(r.runs > r.corpus as u64 || std::env::var("FUZZ_INPUT").is_ok());
}

// --- The config loader ---------------------------------------------------------------

fn check_config(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    match Config::from_toml_str(text, "fuzz.toml") {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(c) => {
            if let Err(e) = c.validate() {
                // Every validation error names its key.
                assert!(e.to_string().contains('`'), "{e}");
            }
            if let Some(ctl) = &c.component {
                let _ = ctl.resolve(&[]);
            }
        }
    }
}

#[test]
fn fuzz_config_loader() {
    let r = fuzzing::run(
        &Target {
            name: "config",
            corpus: "config",
            dictionary: &[
                b"\n[relay]\n",
                b"\n[component]\n",
                b"\n[shaping]\n",
                b"\n[quota]\n",
                b"\n[metrics]\n",
                b"\n[shaping.domains.\"a.org\"]\n",
                b" = 0\n",
                b" = -1\n",
                b" = 18446744073709551615\n",
                b" = \"10 GiB\"\n",
                b" = \"1 bit/s\"\n",
                b" = []\n",
                b" = [\"127.0.0.1:0\"]\n",
                b"workers",
                b"max_pending",
                b"max_stanza_size",
                b"max_stanza_depth",
                b"buffer_size",
                b"pipes_per_worker",
                b"\"",
                b"'",
                b"=",
            ],
            seconds: 10,
        },
        check_config,
    );
    assert!(r.runs > r.corpus as u64 || std::env::var("FUZZ_INPUT").is_ok());
}
