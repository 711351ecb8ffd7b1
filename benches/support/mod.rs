//! Shared by the relay benches: the client side of a SOCKS5 handshake.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use streamhost::StreamKey;

/// Connects and completes the handshake for `key` (method 00, CONNECT, reply checked).
pub fn half(addr: SocketAddr, key: &StreamKey) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, 40];
    req.extend_from_slice(key.as_bytes());
    req.extend_from_slice(&[0, 0]);
    s.write_all(&req).unwrap();
    let mut reply = [0u8; 49];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..4], &[5, 0, 5, 0]);
    s
}
