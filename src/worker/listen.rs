//! Listener shards: one SO_REUSEPORT socket per worker per configured address, so the
//! kernel spreads new connections over the cores.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

/// Binds `workers` shards on each address. A port 0 is resolved by the first shard and
/// reused by the others. Returns `shards[worker][address]` and the bound addresses.
pub(crate) fn bind_shards(
    addrs: &[SocketAddr],
    workers: usize,
    backlog: u32,
) -> io::Result<(Vec<Vec<Socket>>, Vec<SocketAddr>)> {
    let mut shards: Vec<Vec<Socket>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in addrs {
        let mut actual = addr;
        for shard in shards.iter_mut() {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            if addr.is_ipv6() {
                // The IPv4 wildcard gets its own shards; keep the two apart.
                s.set_only_v6(true)?;
            }
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            s.bind(&actual.into())
                .map_err(|e| io::Error::new(e.kind(), format!("bind {actual}: {e}")))?;
            s.listen(backlog.min(i32::MAX as u32) as i32)?;
            if actual.port() == 0 {
                actual = s
                    .local_addr()?
                    .as_socket()
                    .ok_or_else(|| io::Error::other("listener has no inet address"))?;
            }
            shard.push(s);
        }
        bound.push(actual);
    }
    Ok((shards, bound))
}
