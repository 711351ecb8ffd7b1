//! The service manager's readiness protocol (`sd_notify`): one datagram to
//! `$NOTIFY_SOCKET`. A process that took over from an old one (README "Upgrades") also
//! names itself the unit's main process, so systemd follows it when the old one exits.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. "READY=1") if a service manager listens; silently nothing otherwise.
pub fn notify(state: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        notify_to(&path, state);
    }
}

/// Sends `state` to the socket at `path` (a leading '@' names an abstract socket).
fn notify_to(path: &std::ffi::OsStr, state: &str) {
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket: systemd writes its leading NUL as '@'.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), path)
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_state_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::notify_to(path.as_os_str(), "READY=1\nMAINPID=42");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=42");
    }
}
