//! The old process's side of an upgrade handover. It listens on `handover_socket`; when a
//! new process connects and says hello, the component starts forwarding stanzas (so no
//! activation is answered here any more), the workers hand over their listeners and every
//! connection not relaying, and all of it is sent. Running relays stay here to the end.

use super::socket::{Channel, Listener};
use super::wire::{Frame, VERSION};
use crate::control::ControlHandle;
use crate::server::Handle;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the workers may take to hand over (they answer within a ring round).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long activations already asked of the data plane may take to be answered before
/// the connections move (the data plane answers in microseconds).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// The listening handover socket and its accepting thread.
pub struct GiveSocket {
    listener: Arc<Listener>,
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl GiveSocket {
    /// Binds `path` and calls `on_take` with each new process that connects.
    pub fn open(path: &Path, on_take: impl Fn(Channel) + Send + 'static) -> io::Result<Self> {
        let listener = Arc::new(Listener::bind(path)?);
        let l = listener.clone();
        let thread = std::thread::Builder::new()
            .name("streamhost-handover".into())
            .spawn(move || {
                while let Ok(ch) = l.accept() {
                    on_take(ch);
                }
            })?;
        Ok(GiveSocket {
            listener,
            path: path.to_owned(),
            thread: Some(thread),
        })
    }
}

impl Drop for GiveSocket {
    fn drop(&mut self) {
        self.listener.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The path may belong to the new process by now: remove it only if it is ours.
        let ours = std::fs::metadata(&self.path)
            .ok()
            .zip(nix::sys::stat::fstat(&*self.listener).ok())
            .is_some_and(|(m, st)| {
                use std::os::unix::fs::MetadataExt;
                m.ino() == st.st_ino
            });
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A handover in progress after the state went over: stanzas are being forwarded.
pub struct Given {
    /// Says `true` when the new process's component is logged in, `false` when the new
    /// process left before that.
    pub logged_in: std::sync::mpsc::Receiver<bool>,
    /// The stanza forwarder; it returns the stanzas it could not send.
    forwarder: Option<JoinHandle<Vec<String>>>,
    /// Our copies of the listeners, kept until the new process is logged in: if it dies
    /// before, they are served here again (`take_back`).
    kept: Vec<std::os::fd::OwnedFd>,
    /// The channel to the new process (the forwarder sends on it too).
    ch: Arc<Channel>,
    pub listeners: usize,
    pub conns: usize,
}

impl Given {
    /// Waits for the stanza forwarder, after the control plane stopped. `left_server`:
    /// this link was still logged in beside the new one until it left just now (the
    /// server takes several logins, as ejabberd does), so the new process may need to
    /// log in again to get the route this one held.
    pub fn finish(mut self, left_server: bool) {
        if let Some(t) = self.forwarder.take() {
            let _ = t.join();
        }
        if left_server {
            if let Err(e) = self.ch.send(&Frame::LeftServer, None) {
                tracing::warn!(error = %e, "handover: could not tell the new process that the old link left");
            }
        }
    }

    /// The new process left before logging in: this one serves its listeners again and
    /// handles the stanzas itself (the connections handed over went with the new one).
    pub fn take_back(mut self, handle: &Handle, control: Option<&ControlHandle>) {
        handle.restore(crate::server::Exported {
            listeners: std::mem::take(&mut self.kept),
            conns: Vec::new(),
        });
        if let Some(c) = control {
            c.stop_forwarding();
            let unsent = self
                .forwarder
                .take()
                .and_then(|t| t.join().ok())
                .unwrap_or_default();
            let inject = c.injector();
            for xml in unsent {
                inject.inject(xml);
            }
        }
    }
}

fn send_state(ch: &Channel, exported: &crate::server::Exported) -> io::Result<()> {
    for fd in &exported.listeners {
        let addr = socket2::SockRef::from(fd)
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("a listener without an inet address"))?;
        ch.send(&Frame::Listener { addr }, Some(fd.as_raw_fd()))?;
    }
    for (fd, carried) in &exported.conns {
        ch.send(&Frame::Conn(carried.clone()), Some(fd.as_raw_fd()))?;
    }
    ch.send(&Frame::StateEnd, None)
}

/// Forwarding ends; the stanzas forwarded meanwhile are handled here after all.
fn take_back(control: Option<&ControlHandle>, stanzas: Option<std::sync::mpsc::Receiver<String>>) {
    if let (Some(c), Some(rx)) = (control, stanzas) {
        c.stop_forwarding();
        let inject = c.injector();
        for xml in rx.try_iter() {
            inject.inject(xml);
        }
    }
}

/// Hands everything to the new process on `ch`. `before` runs once the new process has
/// said hello, before anything moves (it stops what the new process must bind itself,
/// such as the metrics endpoint).
pub fn give(
    ch: Channel,
    handle: &Handle,
    control: Option<&ControlHandle>,
    before: impl FnOnce(),
) -> io::Result<Given> {
    match ch.recv()? {
        Some((Frame::Hello { version }, _)) if version == VERSION => {}
        Some((Frame::Hello { version }, _)) => {
            return Err(io::Error::other(format!(
                "the new process speaks handover version {version}, this one {VERSION}"
            )))
        }
        other => return Err(io::Error::other(format!("expected hello, got {other:?}"))),
    }
    before();
    // From here on the new process answers every stanza; wait for what was asked here.
    let stanzas = control.map(|c| {
        let rx = c.forward();
        let end = Instant::now() + SETTLE_TIMEOUT;
        while c.in_flight() > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        rx
    });
    let exported = match handle.export(EXPORT_TIMEOUT) {
        Ok(e) => e,
        Err(e) => {
            // `export` restored what did leave the workers: only the stanzas are left.
            take_back(control, stanzas);
            return Err(e);
        }
    };
    let (listeners, conns) = (exported.listeners.len(), exported.conns.len());
    if let Err(e) = send_state(&ch, &exported) {
        // The new process is gone or broken: this one serves on with everything.
        handle.restore(exported);
        take_back(control, stanzas);
        return Err(io::Error::new(
            e.kind(),
            format!("sending the state: {e}; serving on"),
        ));
    }
    handle.handed_over(conns);
    // Our copies of the connections close here (the new process holds its own); the
    // listeners' stay until it is logged in.
    let kept = exported.listeners;
    drop(exported.conns);
    let ch = Arc::new(ch);
    let (tx, logged_in) = std::sync::mpsc::channel();
    let reader = ch.clone();
    std::thread::Builder::new()
        .name("streamhost-handover-rx".into())
        .spawn(move || {
            // LoggedIn, or the new process gone first. Only a closed channel means gone:
            // a malformed frame comes from a live process that holds the listeners now,
            // and taking them back would leave two processes serving.
            let mut logged_in = false;
            loop {
                match reader.recv() {
                    Ok(Some((Frame::LoggedIn, _))) => {
                        logged_in = true;
                        break;
                    }
                    Ok(Some(_)) => {}
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        tracing::warn!(error = %e, "handover: a malformed frame from the new process, ignored");
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = tx.send(logged_in);
        })?;
    let tx_ch = ch.clone();
    let forwarder = match stanzas {
        Some(rx) => Some(
            std::thread::Builder::new()
                .name("streamhost-handover-tx".into())
                .spawn(move || {
                    let ch = tx_ch;
                    let mut unsent = Vec::new();
                    for xml in rx {
                        if let Err(e) = ch.send(&Frame::Stanza(xml.clone()), None) {
                            tracing::warn!(error = %e, "handover: a stanza could not be forwarded");
                            unsent.push(xml);
                        }
                    }
                    unsent
                })?,
        ),
        None => None,
    };
    Ok(Given {
        logged_in,
        forwarder,
        kept,
        ch,
        listeners,
        conns,
    })
}
