//! The new process's side of an upgrade handover: connect to the old process's
//! `handover_socket`, receive its listeners and pending connections, and once this
//! process's component is up, handle the stanzas the old link still receives.

use super::socket::Channel;
use super::wire::{Carried, Frame, VERSION};
use crate::control::Injector;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

/// What an old process handed over.
pub struct Taken {
    pub listeners: Vec<OwnedFd>,
    pub conns: Vec<(OwnedFd, Carried)>,
    ch: Channel,
}

/// Connects to the old process at `path` and receives its state.
pub fn take(path: &Path) -> io::Result<Taken> {
    let ch = Channel::connect(path)?;
    ch.send(&Frame::Hello { version: VERSION }, None)?;
    let mut listeners = Vec::new();
    let mut conns = Vec::new();
    loop {
        match ch.recv()? {
            Some((Frame::Listener { .. }, Some(fd))) => listeners.push(fd),
            Some((Frame::Conn(c), Some(fd))) => conns.push((fd, c)),
            Some((Frame::StateEnd, _)) => break,
            None => {
                return Err(io::Error::other(
                    "the old process closed the handover before sending its state",
                ))
            }
            Some((other, _)) => {
                return Err(io::Error::other(format!(
                    "unexpected handover frame {other:?}"
                )))
            }
        }
    }
    Ok(Taken {
        listeners,
        conns,
        ch,
    })
}

impl Taken {
    /// Takes the listeners and connections out (for `Server::start_with`, `Handle::adopt`).
    pub fn state(&mut self) -> (Vec<OwnedFd>, Vec<(OwnedFd, Carried)>) {
        (
            std::mem::take(&mut self.listeners),
            std::mem::take(&mut self.conns),
        )
    }

    /// Feeds stanzas the old link receives to `injector` until the old process closes
    /// the handover, and tells it when `logged_in` returns true (this process's component
    /// is up, so the old one may leave the server). `left_server` runs when the old link
    /// has left a server that had taken both logins.
    pub fn serve(
        self,
        injector: Option<Injector>,
        logged_in: impl FnOnce() -> bool + Send + 'static,
        left_server: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        let ch = Arc::new(self.ch);
        let tx = ch.clone();
        std::thread::Builder::new()
            .name("streamhost-takeover-login".into())
            .spawn(move || {
                if logged_in() {
                    let _ = tx.send(&Frame::LoggedIn, None);
                }
            })?;
        std::thread::Builder::new()
            .name("streamhost-takeover-rx".into())
            .spawn(move || {
                let mut left_server = Some(left_server);
                loop {
                    match ch.recv() {
                        Ok(Some((Frame::LeftServer, _))) => {
                            tracing::info!("takeover: the old link left the server");
                            if let Some(f) = left_server.take() {
                                f();
                            }
                        }
                        Ok(Some((Frame::Stanza(xml), _))) => {
                            if let Some(i) = &injector {
                                i.inject(xml);
                            }
                        }
                        Ok(Some(_)) => {}
                        // One bad frame must not stop the stanzas after it.
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                            tracing::warn!(error = %e, "takeover: a malformed frame from the old process, ignored");
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                if let Some(n) = injector.map(|i| i.dropped()).filter(|&n| n > 0) {
                    tracing::warn!(
                        stanzas = n,
                        "forwarded stanzas dropped: more came during the handover than the inbox holds"
                    );
                }
            })?;
        Ok(())
    }
}
