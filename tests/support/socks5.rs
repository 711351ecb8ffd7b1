//! Blocking SOCKS5 client side of XEP-0065: no-auth greeting, CONNECT to the key.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub fn connect(proxy: SocketAddr, key: &str) -> io::Result<TcpStream> {
    assert_eq!(key.len(), 40);
    let mut s = TcpStream::connect(proxy)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    s.write_all(&[5, 1, 0])?;
    let mut hello = [0u8; 2];
    s.read_exact(&mut hello)?;
    if hello != [5, 0] {
        return Err(io::Error::other(format!("greeting refused: {hello:?}")));
    }
    let mut req = vec![5, 1, 0, 3, 40];
    req.extend_from_slice(key.as_bytes());
    req.extend_from_slice(&[0, 0]);
    s.write_all(&req)?;
    let mut reply = [0u8; 47];
    s.read_exact(&mut reply)?;
    if reply[..2] != [5, 0] || &reply[5..45] != key.as_bytes() {
        return Err(io::Error::other(format!(
            "request refused: {:?}",
            &reply[..5]
        )));
    }
    Ok(s)
}
