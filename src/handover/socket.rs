//! The handover's transport: a Unix `SOCK_SEQPACKET` socket (one frame per message, so
//! nothing to reassemble) whose messages may carry one descriptor (`SCM_RIGHTS`).

use super::wire::{self, Frame, MAX_FRAME};
use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// One end of a handover connection.
pub struct Channel {
    fd: OwnedFd,
}

/// The old process's listening socket, at the configured path.
pub struct Listener {
    fd: OwnedFd,
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

impl std::os::fd::AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Listener {
    /// Binds `path` (a stale socket file from an earlier process is replaced).
    pub fn bind(path: &Path) -> io::Result<Listener> {
        let fd = seqpacket()?;
        let _ = std::fs::remove_file(path);
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("bind {}: {e}", path.display()),
            )
        })?;
        socket::listen(&fd, Backlog::new(4)?)?;
        Ok(Listener { fd })
    }

    /// Blocks until a process connects; only one running as this process's user (or
    /// root) is let through: the handover hands over every client's connection.
    pub fn accept(&self) -> io::Result<Channel> {
        loop {
            let fd = socket::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
            // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
            let ch = Channel {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            };
            let uid = socket::getsockopt(&ch.fd, socket::sockopt::PeerCredentials)?.uid();
            let me = nix::unistd::geteuid().as_raw();
            if uid == me || uid == 0 {
                return Ok(ch);
            }
            tracing::warn!(uid, "handover socket: refused a process of another user");
        }
    }

    /// Wakes a thread blocked in `accept` (it then fails) without closing the socket.
    pub fn shutdown(&self) {
        let _ = socket::shutdown(self.fd.as_raw_fd(), socket::Shutdown::Both);
    }
}

impl Channel {
    /// Connects to a running process's handover socket.
    pub fn connect(path: &Path) -> io::Result<Channel> {
        let fd = seqpacket()?;
        socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("connect {}: {e}", path.display()),
            )
        })?;
        Ok(Channel { fd })
    }

    /// Sends one frame, with `fd` attached when given (the receiver gets its own copy;
    /// ours stays open until the caller drops it).
    pub fn send(&self, frame: &Frame, fd: Option<RawFd>) -> io::Result<()> {
        self.send_bytes(&wire::encode(frame), fd)
    }

    /// Sends `bytes` as one frame as they are (`send` encodes; tests send malformed ones).
    pub fn send_bytes(&self, bytes: &[u8], fd: Option<RawFd>) -> io::Result<()> {
        if bytes.len() > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "handover frame over its size limit",
            ));
        }
        let fds = fd.map(|f| [f]);
        let cmsgs: Vec<ControlMessage> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
        let n = socket::sendmsg::<()>(
            self.fd.as_raw_fd(),
            &[IoSlice::new(bytes)],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if n != bytes.len() {
            return Err(io::Error::other("handover frame sent in part"));
        }
        Ok(())
    }

    /// Receives one frame and the descriptor that came with it. `Ok(None)` when the other
    /// process closed the connection.
    pub fn recv(&self) -> io::Result<Option<(Frame, Option<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_FRAME];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let (n, fds, truncated) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut fds = Vec::new();
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(v) = c {
                    fds.extend(v);
                }
            }
            (msg.bytes, fds, msg.flags.contains(MsgFlags::MSG_TRUNC))
        };
        // SAFETY: SCM_RIGHTS installed these descriptors in this process for us alone.
        let mut owned: Vec<OwnedFd> = fds
            .into_iter()
            .map(|f| unsafe { OwnedFd::from_raw_fd(f) })
            .collect();
        if n == 0 && owned.is_empty() {
            return Ok(None);
        }
        if truncated || owned.len() > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handover frame too large or with several descriptors",
            ));
        }
        let frame = wire::decode(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(Some((frame, owned.pop())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn frames_and_descriptors_cross_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sock");
        let l = Listener::bind(&path).unwrap();
        let c = Channel::connect(&path).unwrap();
        let s = l.accept().unwrap();
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        c.send(&Frame::Hello { version: 1 }, None).unwrap();
        c.send(&Frame::StateEnd, Some(b.as_raw_fd())).unwrap();
        drop(b);
        let (hello, none) = s.recv().unwrap().unwrap();
        assert_eq!(hello, Frame::Hello { version: 1 });
        assert!(none.is_none());
        let (f, fd) = s.recv().unwrap().unwrap();
        assert_eq!(f, Frame::StateEnd);
        let mut b2 = std::os::unix::net::UnixStream::from(fd.expect("a descriptor"));
        a.write_all(b"x").unwrap();
        let mut one = [0u8];
        b2.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        drop(c);
        assert!(s.recv().unwrap().is_none());
    }
}
