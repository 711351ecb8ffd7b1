//! A blocking HTTP/1.1 client for the metrics endpoint, and a reader of its text format.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends `request` (a full head) and reads to EOF: (status, head, body).
pub fn raw(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("metrics endpoint accepts");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("a response, then close");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (status, head.to_string(), body.to_string())
}

/// `GET path`: (status, head, body).
pub fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    raw(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
}

/// Every sample line as `name{labels}` (exactly as printed) -> value.
pub fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series and value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The metric names of every sample (labels dropped).
pub fn names(body: &str) -> BTreeSet<String> {
    samples(body)
        .keys()
        .map(|k| k.split('{').next().unwrap().to_string())
        .collect()
}
