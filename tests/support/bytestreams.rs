//! One XEP-0065 setup as clients do it through their server: the streamhost query, both
//! SOCKS5 halves, the activation, and bytes both ways checked exactly.

use super::client::{escape, Client, El};
use super::socks5;
use sha1::{Digest, Sha1};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const BS: &str = "http://jabber.org/protocol/bytestreams";

/// The SOCKS5 destination both halves name: SHA1(sid + requester + target).
pub fn key(sid: &str, requester: &str, target: &str) -> String {
    hex::encode(Sha1::digest(format!("{sid}{requester}{target}").as_bytes()))
}

/// The address in `proxy`'s answer to a streamhost query; `limit` bounds the wait.
pub fn query_streamhost(c: &mut Client, proxy: &str, limit: Duration) -> io::Result<SocketAddr> {
    let el = c.iq_within("get", Some(proxy), &format!("<query xmlns='{BS}'/>"), limit)?;
    let sh = el
        .child("query")
        .and_then(|q| q.child("streamhost"))
        .filter(|_| el.attr("type") == Some("result"))
        .ok_or_else(|| io::Error::other(format!("no streamhost: {el:?}")))?;
    if sh.attr("jid") != Some(proxy) {
        return Err(io::Error::other(format!(
            "streamhost of another JID: {el:?}"
        )));
    }
    format!(
        "{}:{}",
        sh.attr("host").unwrap_or(""),
        sh.attr("port").unwrap_or("")
    )
    .parse()
    .map_err(|e| io::Error::other(format!("bad streamhost address ({e}): {el:?}")))
}

pub fn activate(c: &mut Client, proxy: &str, sid: &str, target: &str) -> El {
    activate_within(c, proxy, sid, target, Duration::from_secs(10)).expect("activation answer")
}

pub fn activate_within(
    c: &mut Client,
    proxy: &str,
    sid: &str,
    target: &str,
    limit: Duration,
) -> io::Result<El> {
    c.iq_within(
        "set",
        Some(proxy),
        &format!(
            "<query xmlns='{BS}' sid='{}'><activate>{}</activate></query>",
            escape(sid),
            escape(target)
        ),
        limit,
    )
}

pub fn assert_result(el: &El, proxy: &str) {
    assert_eq!(el.attr("type"), Some("result"), "{el:?}");
    assert_eq!(el.attr("from"), Some(proxy), "{el:?}");
}

pub fn assert_error(el: &El, condition: &str) {
    assert_eq!(el.attr("type"), Some("error"), "{el:?}");
    assert_eq!(el.error_condition().as_deref(), Some(condition), "{el:?}");
}

/// Target connects first (as in XEP-0065), then the requester: (requester, target).
pub fn pair(
    proxy: SocketAddr,
    sid: &str,
    requester: &str,
    target: &str,
) -> io::Result<(TcpStream, TcpStream)> {
    let k = key(sid, requester, target);
    let t = socks5::connect(proxy, &k)?;
    let r = socks5::connect(proxy, &k)?;
    Ok((r, t))
}

pub fn pattern(seed: u32, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(0x9E37_79B9)) >> 13)
        .map(|x| x as u8)
        .collect()
}

/// Sends `n` bytes each way at once and checks both arrive byte-exact.
pub fn exchange(a: &TcpStream, b: &TcpStream, n: usize, seed: u32) -> io::Result<()> {
    let ab = pattern(seed, n);
    let ba = pattern(seed.wrapping_add(1), n);
    let (mut wa, mut wb) = (a.try_clone()?, b.try_clone()?);
    let (ab2, ba2) = (ab.clone(), ba.clone());
    let t1 = std::thread::spawn(move || wa.write_all(&ab2));
    let t2 = std::thread::spawn(move || wb.write_all(&ba2));
    let mut got = vec![0u8; n];
    (&*b).read_exact(&mut got)?;
    let ok_ab = got == ab;
    (&*a).read_exact(&mut got)?;
    let ok_ba = got == ba;
    t1.join().expect("writer")?;
    t2.join().expect("writer")?;
    if ok_ab && ok_ba {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "bytes differ (a->b ok: {ok_ab}, b->a ok: {ok_ba})"
        )))
    }
}
