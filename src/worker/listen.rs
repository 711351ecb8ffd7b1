//! Listener shards: one SO_REUSEPORT socket per worker per configured address, so the
//! kernel spreads new connections over the cores.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

/// Binds `workers` shards on each address. A port 0 is resolved by the first shard and
/// reused by the others. Listeners handed over by an old process (`inherited`, with
/// their addresses) serve their address first, spread over the workers; only the shards
/// still missing are bound (a configured port 0 takes the port the old process had).
/// Inherited listeners for an address no longer configured are closed. Returns `shards[worker][..]` and the bound addresses.
pub(crate) fn bind_shards(
    addrs: &[SocketAddr],
    workers: usize,
    backlog: u32,
    mut inherited: Vec<(SocketAddr, Socket)>,
) -> io::Result<(Vec<Vec<Socket>>, Vec<SocketAddr>)> {
    let mut shards: Vec<Vec<Socket>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in addrs {
        let mut actual = addr;
        let mut have = 0;
        let mut i = 0;
        while i < inherited.len() {
            // A configured port 0 was resolved by the old process: its listeners on the
            // same address (and the one port the first of them has) are this entry's.
            let a = inherited[i].0;
            let ours = a == addr
                || (addr.port() == 0
                    && a.ip() == addr.ip()
                    && (actual.port() == 0 || a.port() == actual.port()));
            if ours {
                let (a, s) = inherited.swap_remove(i);
                shards[have % workers].push(s);
                actual = a;
                have += 1;
            } else {
                i += 1;
            }
        }
        for shard in shards.iter_mut().skip(have) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherited_listeners_serve_their_address_and_the_missing_shards_are_bound() {
        let (old, addrs) = bind_shards(&["127.0.0.1:0".parse().unwrap()], 2, 16, vec![]).unwrap();
        let addr = addrs[0];
        let inherited: Vec<_> = old.into_iter().flatten().map(|s| (addr, s)).collect();
        let stale = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let mut with_stale = inherited;
        with_stale.push(("127.0.0.9:1".parse().unwrap(), stale));
        // Three workers now: two shards inherited, one bound; the stale one is dropped.
        let (shards, bound) = bind_shards(&[addr], 3, 16, with_stale).unwrap();
        assert_eq!(bound, vec![addr]);
        assert_eq!(
            shards.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 1, 1]
        );
        for s in shards.iter().flatten() {
            assert_eq!(s.local_addr().unwrap().as_socket(), Some(addr));
        }
        // Fewer workers than inherited shards: a worker holds two.
        let (old, _) = bind_shards(&[addr], 1, 16, vec![]).unwrap();
        let again: Vec<_> = shards
            .into_iter()
            .chain(old)
            .flatten()
            .map(|s| (addr, s))
            .collect();
        let (shards, _) = bind_shards(&[addr], 2, 16, again).unwrap();
        assert_eq!(shards.iter().map(Vec::len).sum::<usize>(), 4);
    }

    #[test]
    fn a_configured_port_0_takes_the_port_the_old_process_had() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (old, addrs) = bind_shards(&[any], 2, 16, vec![]).unwrap();
        let addr = addrs[0];
        let inherited: Vec<_> = old.into_iter().flatten().map(|s| (addr, s)).collect();
        let (shards, bound) = bind_shards(&[any], 2, 16, inherited).unwrap();
        assert_eq!(bound, vec![addr]);
        for s in shards.iter().flatten() {
            assert_eq!(s.local_addr().unwrap().as_socket(), Some(addr));
        }
        // A listener on another port of the same address belongs to another entry.
        let (other, other_addrs) = bind_shards(&[any], 1, 16, vec![]).unwrap();
        let (mine, _) = bind_shards(&[addr], 1, 16, vec![]).unwrap();
        let mixed: Vec<_> = mine
            .into_iter()
            .flatten()
            .map(|s| (addr, s))
            .chain(other.into_iter().flatten().map(|s| (other_addrs[0], s)))
            .collect();
        let (_, bound) = bind_shards(&[any, any], 1, 16, mixed).unwrap();
        assert_eq!(bound, vec![addr, other_addrs[0]]);
    }
}
