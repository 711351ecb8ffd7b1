//! The XEP-0114 connection: its own thread with a current-thread tokio runtime, which
//! logs in with the shared secret, feeds stanzas to the sans-IO `Service`, performs
//! activations through the `Activator`, and reconnects with backoff when the link drops.
//!
//! The login is done here with tokio-xmpp's public stream API rather than its
//! `Component` type, because `Component` ends its stream on a read soft-timeout (60 s of
//! silence) and on any stanza that fails to parse; this loop answers those instead
//! (keepalive ping, bad-request) and keeps the link.

use super::backoff::Backoff;
use super::bounded_stream::{DropCounts, REPORTS};
use super::config::ControlSettings;
use super::connector::NoDelayConnector;
use super::forward::Forward;
use super::service::{Action, Service};
use super::stanza_bounds::Dropped;
use super::stream_limit::StreamsPerJid;
use super::telemetry::{is_activation, ActivationReply, ActivationSnapshot, ActivationStats};
use super::Activator;
use crate::async_thread::AsyncThread;
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use jid::Jid;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_xmpp::connect::{DnsConfig, ServerConnector};
use tokio_xmpp::xmlstream::{
    FallibleStreamElement, ReadError, StreamElementError, Timeouts, XmppStream, XmppStreamElement,
};
use tracing::{debug, info, warn};
use xmpp_parsers::component::Handshake;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::ping::Ping;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::DefinedCondition;

/// How long a login (TCP connect, stream open, handshake) may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the data plane may take to answer an activation.
const ACTIVATION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a clean stream close may take when stopping.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the old link may wait for the server's close after a handover, forwarding
/// what still arrives (the server answers a stream close within a round trip).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The control thread's stack. Parsing and dropping a stanza recurse once per nesting
/// level (a few hundred bytes each in minidom and xmpp-parsers); 8 MiB covers
/// `config::MAX_STANZA_DEPTH` many times over (a test parses that depth on this stack).
pub(crate) const STACK_SIZE: usize = 8 * 1024 * 1024;
/// Activations waiting for the data plane at once. At the bound the link stops reading
/// (the server holds the rest) until one is answered: a burst costs the control plane
/// this many activations' memory, not the burst's.
pub(crate) const MAX_IN_FLIGHT: usize = 256;
/// At most one "stanza dropped" log line per this period (the rest are counted).
const DROP_LOG_PERIOD: Duration = Duration::from_secs(10);

/// State of the component link, for metrics and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    Down = 0,
    Connecting = 1,
    Connected = 2,
}

impl ConnState {
    pub fn from_u8(v: u8) -> ConnState {
        match v {
            2 => ConnState::Connected,
            1 => ConnState::Connecting,
            _ => ConnState::Down,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Shared {
    state: AtomicU8,
    logins: AtomicU64,
    activations: Arc<ActivationStats>,
    drops: Arc<DropCounts>,
    /// Times the control thread panicked and was restarted.
    restarts: Arc<AtomicU64>,
    /// Set during an upgrade handover: received stanzas go to the new process, and a
    /// lost link is not re-established.
    forward: Forward,
    /// Activations asked of the data plane and not answered yet.
    in_flight: AtomicUsize,
    /// Stanzas another process's link received, to handle as if received here.
    inject: Injected,
    /// Stanzas the server routed to the current link itself (not forwarded, not replies
    /// to our own keepalives) since its login.
    direct: AtomicU64,
    /// Upgrade handover, new side: the old link left a server that had taken both
    /// logins; log in again unless the server routes to this link (`Relogin`).
    relogin: tokio::sync::Notify,
    /// Upgrade handover, old side: the link left the server cleanly after forwarding,
    /// answered by the server's own close rather than kicked for the new login.
    left_cleanly: std::sync::atomic::AtomicBool,
}

/// The inbox of forwarded stanzas: its receiver outlives reconnects and restarts. It holds
/// at most `FORWARD_QUEUE` stanzas (they wait for this link's login); beyond, they are
/// dropped and counted, as a server drops stanzas for a component that is not there.
#[derive(Debug)]
struct Injected {
    tx: mpsc::Sender<String>,
    rx: tokio::sync::Mutex<mpsc::Receiver<String>>,
    dropped: Arc<AtomicU64>,
}

impl Default for Injected {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(super::forward::FORWARD_QUEUE);
        Injected {
            tx,
            rx: tokio::sync::Mutex::new(rx),
            dropped: Arc::default(),
        }
    }
}

/// Asks for a second login, which then replaces the current link, unless the server
/// routes stanzas to the current link already. After an upgrade on ejabberd with
/// `domain_balancing`, the new link logged in while the old one held every slot, so it
/// got none; the old link has left now, and a second login takes the slot it freed. A
/// link that the server routes to stays (closing it would open the instant in which
/// ejabberd drops what it routes to a closing link).
#[derive(Debug, Clone)]
pub struct Relogin {
    shared: Arc<Shared>,
}

impl Relogin {
    pub fn unless_routed(&self) {
        self.shared.relogin.notify_one();
    }
}

/// Hands stanzas (XML text) received by an old process's link to this control plane.
#[derive(Debug, Clone)]
pub struct Injector {
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl Injector {
    /// Queues one stanza; it is handled once the link is up. Dropped (and counted) when
    /// the inbox is full.
    pub fn inject(&self, xml: String) {
        if self.tx.try_send(xml).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stanzas dropped because the inbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn set(&self, s: ConnState) {
        self.state.store(s as u8, Ordering::Release);
    }
}

/// The running control plane. Dropping it stops the thread (after at most about a
/// second for a clean stream close).
#[derive(Debug)]
pub struct ControlHandle {
    shared: Arc<Shared>,
    acl: Arc<std::sync::RwLock<super::acl::Acl>>,
    /// Outlives reconnects: relays keep their slots while the link is re-established.
    limit: Arc<StreamsPerJid>,
    thread: AsyncThread,
}

/// A cheap, cloneable read-only view of the control plane for metrics and readiness;
/// it stays readable after the control plane stops (then `Down`).
#[derive(Debug, Clone)]
pub struct ControlStatus {
    shared: Arc<Shared>,
}

impl ControlStatus {
    pub fn state(&self) -> ConnState {
        ConnState::from_u8(self.shared.state.load(Ordering::Acquire))
    }

    /// Successful logins so far (a reconnect adds one).
    pub fn logins(&self) -> u64 {
        self.shared.logins.load(Ordering::Acquire)
    }

    /// Activation latency histogram and replies by kind.
    pub fn activations(&self) -> ActivationSnapshot {
        self.shared.activations.snapshot()
    }

    /// Stanzas from the server dropped unparsed, by reason.
    pub fn stanza_drops(&self) -> [(super::stanza_bounds::DropReason, u64); 3] {
        self.shared.drops.snapshot()
    }

    /// Times the link paused reading with `MAX_IN_FLIGHT` activations waiting.
    pub fn activation_backlog_full(&self) -> u64 {
        self.shared.activations.backlog_full.load(Ordering::Relaxed)
    }

    /// Times the control thread panicked and was started again.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }
}

impl ControlHandle {
    /// Swaps the access lists (SIGHUP reload); the next IQ is checked against them.
    pub fn set_acl(&self, acl: super::acl::Acl) {
        *self.acl.write().unwrap_or_else(|e| e.into_inner()) = acl;
    }

    /// Applies what a SIGHUP may change: the access lists and `max_streams_per_jid`.
    /// The link itself (server, secret, JID) needs a restart.
    pub fn reload(&self, settings: &ControlSettings) {
        self.set_acl(settings.acl.clone());
        self.limit.set_max(settings.max_streams_per_jid);
    }

    pub fn state(&self) -> ConnState {
        self.status().state()
    }

    /// Successful logins so far (a reconnect adds one).
    pub fn logins(&self) -> u64 {
        self.status().logins()
    }

    /// A view for metrics and readiness that outlives nothing: cheap to clone.
    pub fn status(&self) -> ControlStatus {
        ControlStatus {
            shared: self.shared.clone(),
        }
    }

    /// Waits until the link is up, at most `timeout`; true if it is.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.state() == ConnState::Connected {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.state() == ConnState::Connected
    }

    /// Upgrade handover, old side: from now on every stanza the link receives is handed
    /// to the returned receiver instead of being handled, and a lost link ends the
    /// control plane instead of being re-established.
    pub fn forward(&self) -> std::sync::mpsc::Receiver<String> {
        self.shared.forward.start()
    }

    /// A handover that failed: stanzas are handled here again, and a lost link is
    /// re-established as before.
    pub fn stop_forwarding(&self) {
        self.shared.forward.stop();
    }

    /// Stanzas forwarded but dropped because the queue was full.
    pub fn forward_dropped(&self) -> u64 {
        self.shared.forward.dropped.load(Ordering::Relaxed)
    }

    /// Activations sent to the data plane and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Upgrade handover, new side: where the old process's stanzas go.
    pub fn injector(&self) -> Injector {
        Injector {
            tx: self.shared.inject.tx.clone(),
            dropped: self.shared.inject.dropped.clone(),
        }
    }

    /// Upgrade handover, new side: see `Relogin`.
    pub fn relogin(&self) -> Relogin {
        Relogin {
            shared: self.shared.clone(),
        }
    }

    /// Closes the stream and joins the thread. True when, during a handover, the link was
    /// still logged in beside the new one and left the server cleanly (a server that
    /// takes several logins, such as ejabberd), not kicked for the new login (Prosody's
    /// `kick_old`).
    pub fn stop(mut self) -> bool {
        self.thread.stop();
        // A handover's forwarder sees the end of the stanzas.
        self.shared.forward.stop();
        self.shared.left_cleanly.load(Ordering::Acquire)
    }
}

/// Starts the component connection on its own thread. It connects, and reconnects
/// forever with backoff, until the handle is stopped or dropped.
pub fn spawn(
    settings: ControlSettings,
    activator: Arc<dyn Activator>,
) -> io::Result<ControlHandle> {
    let shared = Arc::new(Shared::default());
    let sh = shared.clone();
    let service = Service::new(&settings);
    let acl = service.acl_handle();
    let limit = StreamsPerJid::new(settings.max_streams_per_jid);
    let lim = limit.clone();
    let restarts = shared.restarts.clone();
    // Supervised: a panic anywhere in the control plane restarts it here (and the link
    // with it); the data plane runs on.
    let thread = AsyncThread::spawn("streamhost-xmpp", STACK_SIZE, restarts, move |stop| {
        run(
            settings.clone(),
            service.clone(),
            activator.clone(),
            sh.clone(),
            lim.clone(),
            stop,
        )
    })?;
    Ok(ControlHandle {
        shared,
        acl,
        limit,
        thread,
    })
}

type Stream = XmppStream<<NoDelayConnector as ServerConnector>::Stream>;

/// A logged-in link and the reports of the stanzas its filter drops.
pub(super) struct Link {
    stream: Stream,
    drops: mpsc::Receiver<Dropped>,
}

async fn run(
    settings: ControlSettings,
    service: Service,
    activator: Arc<dyn Activator>,
    shared: Arc<Shared>,
    limit: Arc<StreamsPerJid>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::component();
    loop {
        shared.set(ConnState::Connecting);
        let login = tokio::select! {
            r = tokio::time::timeout(LOGIN_TIMEOUT, login(&settings, &shared.drops)) => {
                r.unwrap_or_else(|_| Err(format!("no login within {LOGIN_TIMEOUT:?}")))
            }
            _ = stop.changed() => break,
        };
        if shared.forward.active() {
            // Handed over meanwhile: the new process is the component now, unless it
            // leaves and the work is taken back (then log in again).
            if !until_taken_back(&shared, &mut stop).await {
                break;
            }
            continue;
        }
        match login {
            Ok(link) => {
                shared.set(ConnState::Connected);
                activator.component_up(true);
                shared.logins.fetch_add(1, Ordering::AcqRel);
                backoff.reset();
                info!(server = %settings.server, jid = %settings.jid, "component connected");
                let stats = &shared.activations;
                let ctx = Ctx {
                    service: &service,
                    activator: &*activator,
                    settings: &settings,
                    stats,
                    limit: &limit,
                    shared: &shared,
                };
                match serve(link, &ctx, &mut stop).await {
                    End::Stopped => break,
                    End::Lost(why) if shared.forward.active() => {
                        info!("component link closed after the handover: {why}");
                        shared.set(ConnState::Down);
                        if !until_taken_back(&shared, &mut stop).await {
                            break;
                        }
                        activator.component_up(false);
                        warn!("the handover was taken back: the component logs in again");
                    }
                    End::Lost(why) => {
                        activator.component_up(false);
                        warn!(server = %settings.server, "component link lost: {why}")
                    }
                }
            }
            Err(why) => warn!(server = %settings.server, "component login failed: {why}"),
        }
        shared.set(ConnState::Down);
        let delay = backoff.next_delay(fastrand::f64());
        info!("component reconnecting in {delay:?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
        }
    }
    shared.set(ConnState::Down);
    info!("component stopped");
}

/// During a handover the new process is the component: waits until this one is stopped
/// (false) or takes the work back because the new one left before logging in (true).
async fn until_taken_back(shared: &Shared, stop: &mut watch::Receiver<bool>) -> bool {
    while shared.forward.active() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => return false,
        }
    }
    true
}

/// TCP connect (each resolved address in turn), stream open, XEP-0114 handshake.
async fn login(settings: &ControlSettings, drops: &Arc<DropCounts>) -> Result<Link, String> {
    let addrs: Vec<_> = tokio::net::lookup_host(settings.server.as_str())
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", settings.server))?
        .collect();
    let mut last = format!("{} resolved to no address", settings.server);
    for addr in addrs {
        // Probe first so that an unreachable address costs one connect, not a login.
        if let Err(e) = TcpStream::connect(addr).await {
            last = format!("connect {addr}: {e}");
            continue;
        }
        match login_at(settings, &addr.to_string(), drops).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

pub(super) async fn login_at(
    settings: &ControlSettings,
    addr: &str,
    drops: &Arc<DropCounts>,
) -> Result<Link, String> {
    let (reports, drops_rx) = mpsc::channel(REPORTS);
    let connector = NoDelayConnector {
        dns: DnsConfig::addr(addr),
        limits: settings.stanza_limits,
        counts: drops.clone(),
        reports,
        tls: settings.tls.clone(),
    };
    let jid = Jid::from(settings.jid.clone());
    let (mut pending, _) = connector
        .connect(&jid, xmpp_parsers::ns::COMPONENT, Timeouts::tight())
        .await
        .map_err(|e| e.to_string())?;
    let id = pending
        .take_header()
        .id
        .ok_or("the server sent no stream id")?
        .into_owned();
    let mut stream: Stream = pending.skip_features();
    let hs = Handshake::from_stream_id_and_password(id, settings.secret.expose());
    stream
        .send(&XmppStreamElement::ComponentHandshake(hs))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match stream.next().await {
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::ComponentHandshake(_)))) => {
                return Ok(Link {
                    stream,
                    drops: drops_rx,
                })
            }
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(e)))) => {
                return Err(format!(
                    "handshake refused ({e}): check component.jid and the secret"
                ))
            }
            Some(Ok(other)) => debug!("ignoring {other:?} before the handshake"),
            Some(Err(ReadError::SoftTimeout)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("connection closed during the handshake".into()),
        }
    }
}

pub(super) enum End {
    Stopped,
    Lost(String),
}

impl End {
    pub(super) fn describe(&self) -> String {
        match self {
            End::Stopped => "stopped".into(),
            End::Lost(why) => why.clone(),
        }
    }
}

type Pending = Pin<Box<dyn Future<Output = Stanza> + Send>>;

/// What serving a link needs besides the link.
pub(super) struct Ctx<'a> {
    pub service: &'a Service,
    pub activator: &'a dyn Activator,
    pub settings: &'a ControlSettings,
    pub stats: &'a Arc<ActivationStats>,
    pub limit: &'a Arc<StreamsPerJid>,
    pub shared: &'a Arc<Shared>,
}

pub(super) async fn serve(link: Link, ctx: &Ctx<'_>, stop: &mut watch::Receiver<bool>) -> End {
    let Ctx {
        service,
        settings,
        shared,
        ..
    } = *ctx;
    let Link {
        mut stream,
        mut drops,
    } = link;
    let mut injected = shared.inject.rx.lock().await;
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    let mut pings = 0u64;
    let mut drop_log = DropLog::default();
    shared.direct.store(0, Ordering::Relaxed);
    loop {
        shared.in_flight.store(pending.len(), Ordering::Release);
        let out = tokio::select! {
            biased;
            _ = stop.changed() => {
                if shared.forward.active() {
                    // What the server still sends goes to the new process.
                    let clean = leave(&mut stream, |st| {
                        if shared.forward.offer(st).is_some() {
                            warn!("a stanza arrived after the handover ended; dropped");
                        }
                    })
                    .await;
                    info!(clean, "component left the server after the handover");
                    shared.left_cleanly.store(clean, Ordering::Release);
                } else {
                    let _ = tokio::time::timeout(
                        CLOSE_TIMEOUT,
                        SinkExt::<&XmppStreamElement>::close(&mut stream),
                    ).await;
                }
                return End::Stopped;
            }
            Some(reply) = pending.next(), if !pending.is_empty() => Some(reply),
            _ = shared.relogin.notified() => {
                if shared.direct.load(Ordering::Relaxed) > 0 {
                    info!("the old process left the server, which routes to this link already");
                } else if let Some(new) = second_login(settings, shared).await {
                    // The new link holds the route before this one goes: no moment
                    // without one. What still reaches this one is handled after all.
                    let mut old = std::mem::replace(&mut stream, new.stream);
                    drops = new.drops;
                    let inject = shared.inject.tx.clone();
                    leave(&mut old, |st| {
                        if let Some(xml) = super::forward::to_xml(&st) {
                            let _ = inject.try_send(xml);
                        }
                    })
                    .await;
                }
                None
            }
            Some(d) = drops.recv() => {
                drop_log.note(&d);
                if d.name == "iq" {
                    match service.reject_iq(
                        d.type_.as_deref(),
                        d.from.as_deref(),
                        d.to.as_deref(),
                        d.id.as_deref(),
                        DefinedCondition::PolicyViolation,
                        "stanza over the proxy's size or depth limit",
                    ) {
                        Action::Reply(r) => Some(*r),
                        _ => None,
                    }
                } else {
                    None
                }
            }
            // Stanzas an old process's link received during a handover.
            Some(xml) = injected.recv(), if pending.len() < MAX_IN_FLIGHT => {
                match super::forward::from_xml(&xml) {
                    Some(st) => handle_stanza(st, ctx, &mut pending),
                    None => {
                        warn!("a forwarded stanza does not parse; dropped");
                        None
                    }
                }
            }
            // At the bound nothing is read; the `pending` arm above frees room.
            item = stream.next(), if pending.len() < MAX_IN_FLIGHT => match item {
                None => return End::Lost("connection closed".into()),
                Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(st)))) => {
                    if routed_here(&st) {
                        shared.direct.fetch_add(1, Ordering::Relaxed);
                    }
                    // During a handover the new process handles it (and replies).
                    match shared.forward.offer(st) {
                        Some(st) => handle_stanza(st, ctx, &mut pending),
                        None => None,
                    }
                }
                Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(e)))) => {
                    return End::Lost(format!("stream error from the server: {e}"));
                }
                Some(Ok(FallibleStreamElement::Ok(other))) => {
                    debug!("ignoring {other:?}");
                    None
                }
                Some(Ok(FallibleStreamElement::Err(StreamElementError::InvalidStanza {
                    name,
                    header,
                    error,
                    ..
                }))) if name.to_string() == "iq" => {
                    debug!("invalid IQ: {error}");
                    match service.reject_iq(
                        header.type_.as_deref(),
                        header.from.as_deref(),
                        header.to.as_deref(),
                        header.id.as_deref(),
                        DefinedCondition::BadRequest,
                        "malformed IQ",
                    ) {
                        Action::Reply(r) => Some(*r),
                        _ => None,
                    }
                }
                Some(Ok(FallibleStreamElement::Err(e))) => {
                    debug!("ignoring invalid element: {e}");
                    None
                }
                Some(Err(ReadError::SoftTimeout)) => {
                    // Quiet link: ask the server for a reply so that a dead one is noticed
                    // (hard timeout) and a live one is not dropped.
                    pings += 1;
                    Some(keepalive(settings, pings))
                }
                Some(Err(ReadError::StreamFooterReceived)) => {
                    return End::Lost("the server closed the stream".into());
                }
                Some(Err(e)) => return End::Lost(e.to_string()),
            },
        };
        if let Some(st) = out {
            if let Err(e) = stream.send(&XmppStreamElement::Stanza(st)).await {
                return End::Lost(format!("send failed: {e}"));
            }
        }
    }
}

/// Leaves the server without losing what it still sends: the stream footer goes out
/// first, then every stanza up to the server's own footer is read and given to `sink`
/// (after a handover, forwarded to the new process) instead of being lost with the
/// socket. A server that takes several logins for one JID (ejabberd) sends here until it
/// reads our close. True when the server answered with its close, without a stream error
/// (Prosody's `kick_old` sends `conflict` to a link replaced by a new login).
async fn leave(stream: &mut Stream, mut sink: impl FnMut(Stanza)) -> bool {
    let drain = async {
        if stream.shutdown().await.is_err() {
            return false;
        }
        let mut clean = true;
        while let Some(item) = stream.next().await {
            match item {
                Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(st))) => sink(st),
                Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(_))) => clean = false,
                Ok(_) | Err(ReadError::SoftTimeout) | Err(ReadError::ParseError(_)) => {}
                Err(ReadError::StreamFooterReceived) => return clean,
                // ejabberd closes the socket without a footer of its own: the parser
                // reports the end of input inside the stream, which is its close here.
                Err(ReadError::HardError(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return clean
                }
                Err(ReadError::HardError(_)) => return false,
            }
        }
        clean
    };
    match tokio::time::timeout(LEAVE_TIMEOUT, drain).await {
        Ok(clean) => clean,
        Err(_) => {
            warn!("the server did not close the component stream within {LEAVE_TIMEOUT:?}");
            false
        }
    }
}

/// Logs in a second link beside the current one (`Relogin`); `None` if that fails (the
/// current link serves on).
async fn second_login(settings: &ControlSettings, shared: &Shared) -> Option<Link> {
    match tokio::time::timeout(LOGIN_TIMEOUT, login(settings, &shared.drops)).await {
        Ok(Ok(link)) => {
            shared.logins.fetch_add(1, Ordering::AcqRel);
            shared.direct.store(0, Ordering::Relaxed);
            info!("component logged in again, to take the route the old process left");
            Some(link)
        }
        Ok(Err(e)) => {
            warn!("a second component login failed: {e}; the current link serves on");
            None
        }
        Err(_) => {
            warn!(
                "a second component login took over {LOGIN_TIMEOUT:?}; the current link serves on"
            );
            None
        }
    }
}

/// Whether the server routed `st` to this link: anything but the answer to an IQ of
/// ours (keepalive pings).
fn routed_here(st: &Stanza) -> bool {
    !matches!(st, Stanza::Iq(Iq::Result { .. } | Iq::Error { .. }))
}

/// Hands a received stanza to the service: a reply to send now, or an activation added
/// to `pending` (answered when the data plane is).
fn handle_stanza(
    st: Stanza,
    ctx: &Ctx<'_>,
    pending: &mut FuturesUnordered<Pending>,
) -> Option<Stanza> {
    let activation = is_activation(&st).then(Instant::now);
    match ctx.service.handle(st) {
        Action::Ignore => None,
        Action::Reply(r) => {
            if let Some(t) = activation {
                ctx.stats.record(t.elapsed(), ActivationReply::of(&r));
            }
            Some(*r)
        }
        Action::Activate(a) => {
            let t = activation.unwrap_or_else(Instant::now);
            pending.push(activate(ctx.activator, *a, t, ctx.stats.clone(), ctx.limit));
            if pending.len() == MAX_IN_FLIGHT {
                ctx.stats.backlog_full.fetch_add(1, Ordering::Relaxed);
            }
            None
        }
    }
}

/// One warning per `DROP_LOG_PERIOD` for dropped stanzas, saying how many were dropped
/// since the last one: a flood of them cannot flood the log.
#[derive(Default)]
struct DropLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl DropLog {
    fn note(&mut self, d: &Dropped) {
        self.unlogged += 1;
        if self.last.is_some_and(|t| t.elapsed() < DROP_LOG_PERIOD) {
            return;
        }
        warn!(
            reason = d.reason.label(),
            element = %d.name,
            from = d.from.as_deref().unwrap_or(""),
            dropped = self.unlogged,
            "dropped stanza(s) from the server over the component's limits \
             (component.max_stanza_size / max_stanza_depth)"
        );
        self.last = Some(Instant::now());
        self.unlogged = 0;
    }
}

/// Asks the data plane and turns its outcome into the reply; the time from `received`
/// to the reply being ready is recorded in `stats`.
fn activate(
    activator: &dyn Activator,
    a: super::service::Activation,
    received: Instant,
    stats: Arc<ActivationStats>,
    limit: &Arc<StreamsPerJid>,
) -> Pending {
    let Some(slot) = limit.try_acquire(&a.requester) else {
        info!(
            target: "streamhost::activation",
            key = %a.key,
            requester = %a.requester,
            "activation refused: the account has its maximum of streams running"
        );
        let reply = a.over_limit();
        stats.record(received.elapsed(), ActivationReply::of(&reply));
        return Box::pin(async move { reply });
    };
    let (tx, rx) = oneshot::channel();
    let requester = a.requester.to_string();
    activator.activate_for(
        &a.key,
        &requester,
        Box::new(slot),
        Box::new(move |outcome| {
            let _ = tx.send(outcome);
        }),
    );
    Box::pin(async move {
        let reply = match tokio::time::timeout(ACTIVATION_TIMEOUT, rx).await {
            Ok(Ok(outcome)) => {
                // One line per activation (who, to whom, which stream): with the data
                // plane's "stream finished" line (same key) a transfer's whole record.
                info!(
                    target: "streamhost::activation",
                    key = %a.key,
                    requester = %a.requester,
                    target_jid = %a.target,
                    sid = %a.sid,
                    ?outcome,
                    "activation"
                );
                a.reply(outcome)
            }
            _ => {
                warn!(key = %a.key, "the data plane did not answer an activation");
                a.no_answer()
            }
        };
        stats.record(received.elapsed(), ActivationReply::of(&reply));
        reply
    })
}

fn keepalive(settings: &ControlSettings, n: u64) -> Stanza {
    let to = settings
        .domains
        .first()
        .and_then(|d| Jid::new(d).ok())
        .unwrap_or_else(|| Jid::from(settings.jid.clone()));
    Stanza::Iq(Iq::Get {
        from: Some(Jid::from(settings.jid.clone())),
        to: Some(to),
        id: format!("streamhost-keepalive-{n}"),
        payload: Ping.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::{ControlConfig, Secret};
    use crate::key::StreamKey;
    use crate::rendezvous::ActivationOutcome;
    use xmpp_parsers::minidom::Element;

    /// Stands in for the data plane: answers every activation with a fixed outcome, or
    /// drops the callback without answering.
    struct Fixed(Option<ActivationOutcome>);

    impl Activator for Fixed {
        fn activate_then(&self, _: &StreamKey, done: Box<dyn FnOnce(ActivationOutcome) + Send>) {
            if let Some(o) = self.0 {
                done(o)
            }
        }
    }

    fn activation() -> super::super::service::Activation {
        let c = ControlConfig {
            jid: "proxy.example.org".into(),
            secret: Some(Secret::new("x")),
            advertise: vec!["192.0.2.1:7777".into()],
            ..ControlConfig::default()
        };
        let s = Service::new(&c.resolve(&[]).unwrap());
        let xml = "<iq xmlns='jabber:component:accept' type='set' id='a1' \
                   from='romeo@example.org/r' to='proxy.example.org'><query \
                   xmlns='http://jabber.org/protocol/bytestreams' sid='s'><activate>\
                   juliet@example.org/b</activate></query></iq>";
        let iq = Iq::try_from(xml.parse::<Element>().unwrap()).unwrap();
        match s.handle(Stanza::Iq(iq)) {
            Action::Activate(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    fn run_one(activator: Fixed) -> Element {
        run_counted(activator).0
    }

    fn run_counted(activator: Fixed) -> (Element, ActivationSnapshot) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stats = Arc::new(ActivationStats::default());
        let start = std::time::Instant::now();
        let st = rt.block_on(activate(
            &activator,
            activation(),
            start,
            stats.clone(),
            &StreamsPerJid::new(0),
        ));
        assert!(start.elapsed() < Duration::from_secs(1));
        let el = match st {
            Stanza::Iq(iq) => iq.into(),
            other => panic!("{other:?}"),
        };
        (el, stats.snapshot())
    }

    fn replies(snap: &ActivationSnapshot, r: ActivationReply) -> u64 {
        snap.replies.iter().find(|(x, _)| *x == r).unwrap().1
    }

    #[test]
    fn activation_outcome_becomes_the_reply() {
        let el = run_one(Fixed(Some(ActivationOutcome::Activated)));
        assert_eq!(el.attr("type"), Some("result"));
        assert_eq!(el.attr("id"), Some("a1"));
    }

    #[test]
    fn activation_latency_and_reply_are_recorded() {
        let (_, snap) = run_counted(Fixed(Some(ActivationOutcome::UnknownKey)));
        assert_eq!(snap.count, 1);
        assert_eq!(replies(&snap, ActivationReply::ItemNotFound), 1);
        assert_eq!(replies(&snap, ActivationReply::Activated), 0);
        let (_, snap) = run_counted(Fixed(Some(ActivationOutcome::Activated)));
        assert_eq!(replies(&snap, ActivationReply::Activated), 1);
        assert!(snap.sum_seconds < 1.0);
    }

    #[test]
    fn dropped_callback_gives_internal_server_error_at_once() {
        let el = run_one(Fixed(None));
        assert_eq!(el.attr("type"), Some("error"));
        let err = el.get_child("error", "jabber:component:accept").unwrap();
        assert!(err
            .get_child(
                "internal-server-error",
                "urn:ietf:params:xml:ns:xmpp-stanzas"
            )
            .is_some());
    }

    /// A control plane whose server is a loopback port with nothing listening: every
    /// login fails at once.
    fn spawn_unreachable() -> ControlHandle {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = ControlConfig {
            server: format!("127.0.0.1:{port}"),
            jid: "proxy.example.org".into(),
            secret: Some(Secret::new("x")),
            advertise: vec!["192.0.2.1:7777".into()],
            ..ControlConfig::default()
        };
        spawn(c.resolve(&[]).unwrap(), Arc::new(Fixed(None))).unwrap()
    }

    #[test]
    fn stops_promptly_while_the_server_is_unreachable() {
        let h = spawn_unreachable();
        std::thread::sleep(Duration::from_millis(300));
        assert_ne!(h.state(), ConnState::Connected);
        assert_eq!(h.logins(), 0);
        let start = std::time::Instant::now();
        h.stop();
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    /// Stanzas forwarded by an old process wait for this link's login; while it is down
    /// a flood of them is bounded, the rest dropped and counted.
    #[test]
    fn forwarded_stanzas_wait_in_a_bounded_inbox() {
        let h = spawn_unreachable();
        let inject = h.injector();
        let extra = 100;
        for n in 0..super::super::forward::FORWARD_QUEUE + extra {
            inject.inject(format!(
                "<message xmlns='jabber:component:accept' id='{n}'/>"
            ));
        }
        assert_eq!(inject.dropped(), extra as u64);
        h.stop();
    }
}
