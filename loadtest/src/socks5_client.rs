//! The client side of the SOCKS5 handshake that XEP-0065 uses: no authentication,
//! CONNECT to the 40-character hex key as a domain name, port 0.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use streamhost::StreamKey;

/// The greeting and the request, pipelined in one write.
pub fn request_bytes(key: &StreamKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(3 + 47);
    m.extend_from_slice(&[0x05, 0x01, 0x00]);
    m.extend_from_slice(&[0x05, 0x01, 0x00, 0x03, 40]);
    m.extend_from_slice(key.as_bytes());
    m.extend_from_slice(&[0, 0]);
    m
}

/// Connects to the proxy and completes the handshake for `key`. The stream is left in
/// blocking mode with TCP_NODELAY set.
pub fn connect(proxy: SocketAddr, key: &StreamKey, timeout: Duration) -> anyhow::Result<TcpStream> {
    connect_with(proxy, key, timeout, true)
}

/// As [`connect`]; `pipelined = false` waits for the method reply before sending the
/// request, for proxies that read the greeting as one packet (Prosody's mod_proxy65).
pub fn connect_with(
    proxy: SocketAddr,
    key: &StreamKey,
    timeout: Duration,
    pipelined: bool,
) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&proxy, timeout)
        .map_err(|e| anyhow::anyhow!("connect to proxy {proxy}: {e}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    let r = if pipelined {
        handshake(&mut s, key)
    } else {
        handshake_stepwise(&mut s, key)
    };
    r.map_err(|e| anyhow::anyhow!("SOCKS5 handshake for {key}: {e}"))?;
    s.set_read_timeout(None)?;
    Ok(s)
}

/// Runs the handshake on an open stream.
pub fn handshake(s: &mut TcpStream, key: &StreamKey) -> anyhow::Result<()> {
    s.write_all(&request_bytes(key))?;
    replies(s, key)
}

/// The greeting, its reply, then the request: one round trip more.
pub fn handshake_stepwise(s: &mut TcpStream, key: &StreamKey) -> anyhow::Result<()> {
    let m = request_bytes(key);
    s.write_all(&m[..3])?;
    let mut method = [0u8; 2];
    s.read_exact(&mut method)?;
    anyhow::ensure!(
        method == [0x05, 0x00],
        "greeting refused: reply {:02x?}",
        method
    );
    s.write_all(&m[3..])?;
    request_reply(s, key)
}

fn replies(s: &mut TcpStream, key: &StreamKey) -> anyhow::Result<()> {
    let mut method = [0u8; 2];
    s.read_exact(&mut method)?;
    anyhow::ensure!(
        method == [0x05, 0x00],
        "greeting refused: reply {:02x?}",
        method
    );
    request_reply(s, key)
}

fn request_reply(s: &mut TcpStream, key: &StreamKey) -> anyhow::Result<()> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    anyhow::ensure!(head[0] == 0x05, "reply version {:#04x}", head[0]);
    anyhow::ensure!(head[1] == 0x00, "request refused with REP {:#04x}", head[1]);
    anyhow::ensure!(head[3] == 0x03, "reply ATYP {:#04x}, expected 3", head[3]);
    let mut rest = [0u8; 1 + 40 + 2];
    s.read_exact(&mut rest)?;
    anyhow::ensure!(
        rest[0] == 40 && &rest[1..41] == key.as_bytes() && rest[41..] == [0, 0],
        "reply does not echo the key"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_greeting_plus_connect() {
        let k = StreamKey::from_parts("s", "a@b/c", "d@e/f");
        let m = request_bytes(&k);
        assert_eq!(m.len(), 3 + 47);
        assert_eq!(&m[..8], &[5, 1, 0, 5, 1, 0, 3, 40]);
        assert_eq!(&m[8..48], k.as_bytes());
        assert_eq!(&m[48..], &[0, 0]);
    }
}
