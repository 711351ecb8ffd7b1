//! The proxy-side SOCKS5 handshake: every rule byte-exact, and chunking invariance.

use proptest::prelude::*;
use proptest::sample::Index;
use std::sync::Arc;
use streamhost::config::Socks5Auth;
use streamhost::socks5::{failure_reply, success_reply, Handshake, Rep, Step};
use streamhost::{Refusal, StreamKey};

const KEY: &[u8; 40] = b"0123456789abcdef0123456789abcdef01234567";

fn auth(user: &str, pass: &str) -> Option<Arc<Socks5Auth>> {
    Some(Arc::new(Socks5Auth {
        username: user.into(),
        password: pass.into(),
    }))
}

fn key() -> StreamKey {
    StreamKey::parse_hex(KEY).unwrap()
}

fn request(addr: &[u8]) -> Vec<u8> {
    let mut r = vec![5, 1, 0, 3, addr.len() as u8];
    r.extend_from_slice(addr);
    r.extend_from_slice(&[0, 0]);
    r
}

fn userpass(user: &[u8], pass: &[u8]) -> Vec<u8> {
    let mut m = vec![1, user.len() as u8];
    m.extend_from_slice(user);
    m.push(pass.len() as u8);
    m.extend_from_slice(pass);
    m
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// One feed of the whole input.
fn once(auth: &Option<Arc<Socks5Auth>>, input: &[u8]) -> (Step, Vec<u8>) {
    let mut h = Handshake::new(auth.clone());
    let mut out = vec![];
    let step = h.feed(input, &mut out);
    (step, out)
}

/// One byte per feed, checking `max_read` on the way.
fn bytewise(auth: &Option<Arc<Socks5Auth>>, input: &[u8]) -> (Step, Vec<u8>) {
    let mut h = Handshake::new(auth.clone());
    let mut out = vec![];
    let mut step = Step::NeedMore;
    for b in input {
        step = h.feed(std::slice::from_ref(b), &mut out);
        match step {
            Step::NeedMore => assert!(h.max_read() >= 1),
            _ => assert_eq!(h.max_read(), 0),
        }
    }
    (step, out)
}

/// Checks that one feed and byte-by-byte agree, and returns the result.
fn run(auth: &Option<Arc<Socks5Auth>>, input: &[u8]) -> (Step, Vec<u8>) {
    let a = once(auth, input);
    assert_eq!(a, bytewise(auth, input), "input {input:02x?}");
    a
}

fn fail(rep: Rep) -> Vec<u8> {
    failure_reply(rep).to_vec()
}

// ---- greeting ----

#[test]
fn no_auth_success_pipelined_and_bytewise() {
    let input = cat(&[&[5, 1, 0], &request(KEY)]);
    let (step, out) = run(&None, &input);
    assert_eq!(step, Step::Done(key()));
    assert_eq!(out, [5, 0]);
}

#[test]
fn no_auth_success_in_message_reads() {
    let mut h = Handshake::new(None);
    let mut out = vec![];
    assert_eq!(h.feed(&[5, 2, 2, 0], &mut out), Step::NeedMore);
    assert_eq!(out, [5, 0]);
    assert_eq!(h.max_read(), 47);
    out.clear();
    assert_eq!(h.feed(&request(KEY), &mut out), Step::Done(key()));
    assert!(out.is_empty());
    assert_eq!(h.max_read(), 0);
}

#[test]
fn empty_feed_changes_nothing() {
    let mut h = Handshake::new(None);
    let mut out = vec![];
    assert_eq!(h.feed(&[], &mut out), Step::NeedMore);
    assert!(out.is_empty());
    assert_eq!(h.max_read(), 50);
}

#[test]
fn uppercase_key_is_normalised() {
    let upper = KEY.to_ascii_uppercase();
    let (step, _) = run(&None, &cat(&[&[5, 1, 0], &request(&upper)]));
    assert_eq!(step, Step::Done(key()));
}

#[test]
fn greeting_wrong_version_fails_silently_at_once() {
    for v in [4u8, 0, 1, 6, b'G', 0x16] {
        let mut h = Handshake::new(None);
        let mut out = vec![];
        assert_eq!(h.feed(&[v], &mut out), Step::Failed(Refusal::BadVersion));
        assert!(out.is_empty(), "no reply to a non-SOCKS5 client");
    }
    // A SOCKS4 CONNECT.
    let (step, out) = run(&None, &[4, 1, 0, 80, 127, 0, 0, 1, 0]);
    assert_eq!(step, Step::Failed(Refusal::BadVersion));
    assert!(out.is_empty());
}

#[test]
fn zero_methods_is_no_acceptable_method() {
    let (step, out) = run(&None, &[5, 0]);
    assert_eq!(step, Step::Failed(Refusal::NoAcceptableMethod));
    assert_eq!(out, [5, 0xff]);
}

#[test]
fn no_auth_refuses_greeting_without_00() {
    let mut h = Handshake::new(None);
    let mut out = vec![];
    assert_eq!(
        h.feed(&[5, 2, 2, 1], &mut out),
        Step::Failed(Refusal::NoAcceptableMethod)
    );
    assert_eq!(out, [5, 0xff]);
    // The decision waits for the whole method list.
    let mut h = Handshake::new(None);
    assert_eq!(h.feed(&[5, 3, 2, 1], &mut out), Step::NeedMore);
}

#[test]
fn auth_configured_rejects_00_and_chooses_02() {
    let a = auth("user", "pass");
    let (step, out) = run(&a, &[5, 1, 0]);
    assert_eq!(step, Step::Failed(Refusal::NoAcceptableMethod));
    assert_eq!(out, [5, 0xff]);

    let (step, out) = run(&a, &[5, 2, 0, 2]);
    assert_eq!(step, Step::NeedMore);
    assert_eq!(out, [5, 2]);
}

// ---- RFC 1929 ----

#[test]
fn auth_success_pipelined_and_bytewise() {
    let a = auth("romeo", "s3cret");
    let input = cat(&[&[5, 1, 2], &userpass(b"romeo", b"s3cret"), &request(KEY)]);
    let (step, out) = run(&a, &input);
    assert_eq!(step, Step::Done(key()));
    assert_eq!(out, [5, 2, 1, 0]);
}

#[test]
fn auth_mismatch_answers_01_01_after_the_whole_message() {
    let a = auth("romeo", "s3cret");
    for (user, pass) in [
        (&b"romeo"[..], &b"s3creT"[..]),
        (b"Romeo", b"s3cret"),
        (b"romeo", b"s3cre"),
        (b"romeo", b"s3crets"),
        (b"rome", b"s3cret"),
        (b"romeox", b"s3cret"),
        (b"juliet", b"balcony"),
    ] {
        let msg = userpass(user, pass);
        // Nothing is decided before the last password byte.
        let (step, out) = run(&a, &cat(&[&[5, 1, 2], &msg[..msg.len() - 1]]));
        assert_eq!(step, Step::NeedMore);
        assert_eq!(out, [5, 2]);
        let (step, out) = run(&a, &cat(&[&[5, 1, 2], &msg, &request(KEY)]));
        assert_eq!(step, Step::Failed(Refusal::AuthFailed), "{user:?} {pass:?}");
        assert_eq!(out, [5, 2, 1, 1]);
    }
}

#[test]
fn auth_bad_subversion_or_zero_lengths_fail_at_once() {
    let a = auth("u", "p");
    for msg in [&[5u8][..], &[0], &[2], &[1, 0], &[1, 1, b'u', 0]] {
        let (step, out) = run(&a, &cat(&[&[5, 1, 2], msg]));
        assert_eq!(step, Step::Failed(Refusal::AuthFailed), "{msg:?}");
        assert_eq!(out, [5, 2, 1, 1]);
    }
}

#[test]
fn auth_accepts_non_ascii_and_max_length_credentials() {
    let user = "ü".repeat(127); // 254 bytes
    let pass = "p".repeat(255);
    let a = auth(&user, &pass);
    let input = cat(&[
        &[5, 1, 2],
        &userpass(user.as_bytes(), pass.as_bytes()),
        &request(KEY),
    ]);
    assert_eq!(run(&a, &input), (Step::Done(key()), vec![5, 2, 1, 0]));
}

// ---- request ----

fn no_auth_request(req: &[u8]) -> (Step, Vec<u8>) {
    let (step, mut out) = run(&None, &cat(&[&[5, 1, 0], req]));
    assert_eq!(&out[..2], [5, 0]);
    out.drain(..2);
    (step, out)
}

#[test]
fn request_commands_other_than_connect() {
    for cmd in [0u8, 2, 3, 4, 0x7f, 0xff] {
        let mut req = request(KEY);
        req[1] = cmd;
        // Decided on the CMD byte itself.
        assert_eq!(
            no_auth_request(&req[..2]),
            (
                Step::Failed(Refusal::BadCommand),
                fail(Rep::CommandNotSupported)
            )
        );
        assert_eq!(
            no_auth_request(&req),
            (
                Step::Failed(Refusal::BadCommand),
                vec![5, 7, 0, 1, 0, 0, 0, 0, 0, 0]
            )
        );
    }
}

#[test]
fn request_reserved_must_be_zero() {
    let mut req = request(KEY);
    req[2] = 1;
    assert_eq!(
        no_auth_request(&req),
        (
            Step::Failed(Refusal::Malformed),
            vec![5, 1, 0, 1, 0, 0, 0, 0, 0, 0]
        )
    );
}

#[test]
fn request_wrong_version() {
    let mut req = request(KEY);
    req[0] = 4;
    assert_eq!(
        no_auth_request(&req),
        (Step::Failed(Refusal::BadVersion), fail(Rep::GeneralFailure))
    );
}

#[test]
fn request_address_types_other_than_domain_fail_without_reading_the_address() {
    for atyp in [1u8, 4, 0, 2, 5, 0xff] {
        let expect = (
            Step::Failed(Refusal::BadAddressType),
            vec![5, 8, 0, 1, 0, 0, 0, 0, 0, 0],
        );
        assert_eq!(no_auth_request(&[5, 1, 0, atyp]), expect);
        // With an IPv4 address and port following.
        assert_eq!(
            no_auth_request(&[5, 1, 0, atyp, 127, 0, 0, 1, 0, 80]),
            expect
        );
    }
}

#[test]
fn request_domain_length_not_40_is_bad_key() {
    for len in [0usize, 1, 39, 41, 255] {
        let addr = vec![b'a'; len];
        let req = request(&addr);
        // Decided on the length byte.
        assert_eq!(
            no_auth_request(&req[..5]),
            (
                Step::Failed(Refusal::BadKey),
                vec![5, 4, 0, 1, 0, 0, 0, 0, 0, 0]
            ),
            "len {len}"
        );
        assert_eq!(
            no_auth_request(&req),
            (Step::Failed(Refusal::BadKey), fail(Rep::HostUnreachable))
        );
    }
}

#[test]
fn request_non_hex_key_is_bad_key_before_the_port() {
    for (i, bad) in [(0usize, b'g'), (17, b' '), (39, b'.'), (20, 0), (5, 0xc3)] {
        let mut addr = *KEY;
        addr[i] = bad;
        let req = request(&addr);
        // Decided on the last address byte, without waiting for the port.
        assert_eq!(
            no_auth_request(&req[..45]),
            (Step::Failed(Refusal::BadKey), fail(Rep::HostUnreachable))
        );
        let (step, _) = no_auth_request(&req[..44]);
        assert_eq!(step, Step::NeedMore);
    }
}

#[test]
fn request_port_must_be_zero() {
    for port in [[0u8, 80], [1, 0], [0xff, 0xff], [0, 1]] {
        let mut req = request(KEY);
        req[45..].copy_from_slice(&port);
        assert_eq!(
            no_auth_request(&req),
            (
                Step::Failed(Refusal::BadPort),
                vec![5, 2, 0, 1, 0, 0, 0, 0, 0, 0]
            )
        );
    }
    // A non-zero high byte fails on that byte.
    let mut req = request(KEY);
    req[45] = 1;
    assert_eq!(
        no_auth_request(&req[..46]).0,
        Step::Failed(Refusal::BadPort)
    );
}

#[test]
fn trailing_bytes_after_request_in_the_same_feed_are_malformed() {
    let input = cat(&[&[5, 1, 0], &request(KEY), b"x"]);
    let (step, out) = once(&None, &input);
    assert_eq!(step, Step::Failed(Refusal::Malformed));
    assert_eq!(out, cat(&[&[5, 0], &fail(Rep::GeneralFailure)]));

    // With auth, and with the request in its own feed.
    let a = auth("u", "p");
    let mut h = Handshake::new(a);
    let mut out = vec![];
    assert_eq!(
        h.feed(&[5, 1, 2, 1, 1, b'u', 1, b'p'], &mut out),
        Step::NeedMore
    );
    let req = cat(&[&request(KEY), &[5]]);
    assert_eq!(h.feed(&req, &mut out), Step::Failed(Refusal::Malformed));
    assert_eq!(out, cat(&[&[5, 2, 1, 0], &fail(Rep::GeneralFailure)]));
}

#[test]
fn terminal_steps_are_sticky_and_silent() {
    let input = cat(&[&[5, 1, 0], &request(KEY)]);
    let mut h = Handshake::new(None);
    let mut out = vec![];
    assert_eq!(h.feed(&input, &mut out), Step::Done(key()));
    let before = out.len();
    assert_eq!(h.feed(&input, &mut out), Step::Done(key()));
    assert_eq!(h.feed(b"relay data", &mut out), Step::Done(key()));
    assert_eq!(out.len(), before);

    let mut h = Handshake::new(None);
    assert_eq!(
        h.feed(&[5, 1, 2], &mut out),
        Step::Failed(Refusal::NoAcceptableMethod)
    );
    let before = out.len();
    assert_eq!(
        h.feed(&input, &mut out),
        Step::Failed(Refusal::NoAcceptableMethod)
    );
    assert_eq!(out.len(), before);
    assert_eq!(h.max_read(), 0);
}

#[test]
fn max_read_is_exact_for_the_shortest_handshakes() {
    let a = auth("user", "pass");
    let input = cat(&[&[5, 1, 2], &userpass(b"user", b"pass"), &request(KEY)]);
    let mut h = Handshake::new(a);
    assert_eq!(h.max_read(), input.len());
    let mut out = vec![];
    for (i, b) in input.iter().enumerate() {
        assert_eq!(h.max_read(), input.len() - i, "at byte {i}");
        h.feed(std::slice::from_ref(b), &mut out);
    }
    assert_eq!(h.step(), Step::Done(key()));

    // A longer method list raises the bound once its length is known.
    let mut h = Handshake::new(None);
    h.feed(&[5, 4], &mut out);
    assert_eq!(h.max_read(), 4 + 47);
}

#[test]
fn success_reply_echoes_the_key() {
    let k = key();
    let r = success_reply(&k);
    assert_eq!(r.to_vec(), cat(&[&[5, 0, 0, 3, 40], KEY, &[0, 0]]));
}

// ---- properties ----

/// A valid handshake: input bytes, auth config, expected key and intermediate replies.
#[derive(Debug, Clone)]
struct Valid {
    auth: Option<Arc<Socks5Auth>>,
    input: Vec<u8>,
    key: StreamKey,
    replies: Vec<u8>,
}

fn valid() -> impl Strategy<Value = Valid> {
    let cred = || prop::collection::vec(b'!'..=b'~', 1..24);
    (
        prop::option::of((cred(), cred())),
        prop::collection::vec(any::<u8>(), 0..6),
        any::<Index>(),
        prop::collection::vec(prop::sample::select(b"0123456789abcdefABCDEF".to_vec()), 40),
    )
        .prop_map(|(creds, mut methods, at, addr)| {
            let wanted = if creds.is_some() { 2 } else { 0 };
            methods.insert(at.index(methods.len() + 1), wanted);
            let mut input = vec![5, methods.len() as u8];
            input.extend_from_slice(&methods);
            let mut replies = vec![5, wanted];
            let auth = creds.map(|(u, p)| {
                input.extend_from_slice(&userpass(&u, &p));
                replies.extend_from_slice(&[1, 0]);
                Arc::new(Socks5Auth {
                    username: String::from_utf8(u).unwrap(),
                    password: String::from_utf8(p).unwrap(),
                })
            });
            input.extend_from_slice(&request(&addr));
            Valid {
                auth,
                input,
                key: StreamKey::parse_hex(&addr).unwrap(),
                replies,
            }
        })
}

/// A valid handshake with possibly one byte changed and possibly cut short.
fn mutated() -> impl Strategy<Value = (Option<Arc<Socks5Auth>>, Vec<u8>)> {
    (
        valid(),
        prop::option::of((any::<Index>(), any::<u8>())),
        prop::option::of(any::<Index>()),
    )
        .prop_map(|(v, change, cut)| {
            let mut input = v.input;
            if let Some((i, b)) = change {
                let i = i.index(input.len());
                input[i] = b;
            }
            if let Some(c) = cut {
                input.truncate(c.index(input.len() + 1));
            }
            (v.auth, input)
        })
}

fn splits(input: &[u8], cuts: &[Index]) -> Vec<std::ops::Range<usize>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    at.push(0);
    at.push(input.len());
    at.sort_unstable();
    at.windows(2).map(|w| w[0]..w[1]).collect()
}

/// Feeds `input` in the given chunks and checks the result against one feed: of the bytes
/// fed up to the chunk that ended the handshake, and of the whole input.
fn check_chunking(
    auth: &Option<Arc<Socks5Auth>>,
    input: &[u8],
    cuts: &[Index],
) -> Result<(Step, Vec<u8>), TestCaseError> {
    let mut h = Handshake::new(auth.clone());
    let mut out = vec![];
    let mut step = Step::NeedMore;
    let mut fed = input.len();
    for r in splits(input, cuts) {
        let end = r.end;
        let s = h.feed(&input[r], &mut out);
        if step == Step::NeedMore && s != Step::NeedMore {
            fed = end;
        }
        if step != Step::NeedMore {
            prop_assert_eq!(s, step, "terminal steps are sticky");
        }
        step = s;
        match step {
            Step::NeedMore => prop_assert!(h.max_read() >= 1),
            _ => prop_assert_eq!(h.max_read(), 0),
        }
    }
    let prefix = once(auth, &input[..fed]);
    prop_assert_eq!(&(step, out.clone()), &prefix);
    let whole = once(auth, input);
    if matches!(step, Step::Done(_)) && fed < input.len() {
        // Bytes after the request came in a later feed: only one feed sees them as trailing.
        let mut expected = out.clone();
        expected.extend_from_slice(&failure_reply(Rep::GeneralFailure));
        prop_assert_eq!(whole, (Step::Failed(Refusal::Malformed), expected));
    } else {
        prop_assert_eq!(&whole, &(step, out.clone()));
    }
    Ok((step, out))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_handshakes_succeed_in_any_chunking(
        v in valid(),
        cuts in prop::collection::vec(any::<Index>(), 0..10),
    ) {
        let (step, out) = check_chunking(&v.auth, &v.input, &cuts)?;
        prop_assert_eq!(step, Step::Done(v.key));
        prop_assert_eq!(out, v.replies);
    }

    #[test]
    fn trailing_bytes_in_any_chunking(
        v in valid(),
        extra in prop::collection::vec(any::<u8>(), 1..16),
        cuts in prop::collection::vec(any::<Index>(), 0..10),
    ) {
        let mut input = v.input.clone();
        input.extend_from_slice(&extra);
        check_chunking(&v.auth, &input, &cuts)?;
        let mut expected = v.replies.clone();
        expected.extend_from_slice(&failure_reply(Rep::GeneralFailure));
        prop_assert_eq!(once(&v.auth, &input), (Step::Failed(Refusal::Malformed), expected));
    }

    #[test]
    fn mutated_handshakes_agree_in_any_chunking(
        (auth, input) in mutated(),
        cuts in prop::collection::vec(any::<Index>(), 0..10),
    ) {
        check_chunking(&auth, &input, &cuts)?;
        // Byte by byte too.
        prop_assert_eq!(bytewise(&auth, &input), once(&auth, &input));
    }

    #[test]
    fn random_bytes_never_panic(
        with_auth in any::<bool>(),
        input in prop::collection::vec(any::<u8>(), 0..128),
        cuts in prop::collection::vec(any::<Index>(), 0..10),
    ) {
        let a = if with_auth { auth("user", "pass") } else { None };
        let (step, _) = check_chunking(&a, &input, &cuts)?;
        let mut h = Handshake::new(a.clone());
        prop_assert_eq!(h.feed(&input, &mut vec![]), step);
        match step {
            Step::NeedMore => prop_assert!(h.max_read() >= 1),
            _ => prop_assert_eq!(h.max_read(), 0),
        }
        // Random bytes that start like SOCKS5 exercise the later states.
        let mut socks = vec![5, 1, if with_auth { 2 } else { 0 }];
        socks.extend_from_slice(&input);
        check_chunking(&a, &socks, &cuts)?;
    }

    /// A driver that reads at most `max_read` bytes never consumes relay data that the
    /// client pipelined after its handshake.
    #[test]
    fn driver_honouring_max_read_stops_at_the_handshake_end(
        v in valid(),
        relay in prop::collection::vec(any::<u8>(), 0..64),
        reads in prop::collection::vec(1usize..80, 1..40),
    ) {
        let mut stream = v.input.clone();
        stream.extend_from_slice(&relay);
        let mut h = Handshake::new(v.auth.clone());
        let mut out = vec![];
        let mut pos = 0;
        let mut reads = reads.into_iter().cycle();
        while h.step() == Step::NeedMore {
            let n = reads.next().unwrap().min(h.max_read()).min(stream.len() - pos);
            prop_assert!(n >= 1, "handshake must end before the stream does");
            h.feed(&stream[pos..pos + n], &mut out);
            pos += n;
        }
        prop_assert_eq!(h.step(), Step::Done(v.key));
        prop_assert_eq!(pos, v.input.len());
        prop_assert_eq!(out, v.replies);
    }
}
