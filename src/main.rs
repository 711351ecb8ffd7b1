//! The `streamhost` binary: parse flags, load and check the config, run until a signal.

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use streamhost::config::{Config, Engine};
use streamhost::Server;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser)]
#[command(
    name = "streamhost",
    version,
    about = "XMPP SOCKS5 Bytestreams proxy (XEP-0065) on io_uring"
)]
struct Cli {
    /// TOML config file (see README "Configuration"); flags override it.
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// SOCKS5 listen address (repeatable); replaces `listen` from the file.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Worker threads (0 = one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Relay engine: copy, splice or uring-splice.
    #[arg(long)]
    engine: Option<Engine>,
    /// Log format: human or json.
    #[arg(long, default_value = "human")]
    log_format: String,
    /// Upgrade: take the listeners and every connection not yet relaying from the
    /// process serving `handover_socket` (README "Upgrades"). Without one there, start
    /// normally.
    #[arg(long)]
    takeover: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a config file and exit (0 if valid).
    CheckConfig { file: PathBuf },
}

fn main() -> ExitCode {
    streamhost::allocator::tune();
    let cli = Cli::parse();
    init_logs(&cli.log_format);
    if let Some(Cmd::CheckConfig { file }) = &cli.cmd {
        return match Config::from_file(file).and_then(|c| c.validate().map(|_| c)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        };
    }
    let config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("streamhost: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config, cli.config.clone(), cli.takeover) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streamhost: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> Result<Config, streamhost::config::ConfigError> {
    let mut c = match &cli.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if !cli.listen.is_empty() {
        c.listen = cli.listen.clone();
    }
    if let Some(w) = cli.workers {
        c.workers = w;
    }
    if let Some(e) = cli.engine {
        c.relay.engine = e;
    }
    c.validate()?;
    Ok(c)
}

/// What wakes the main thread.
enum Event {
    Signal(i32),
    /// A new process connected to the handover socket.
    Takeover(streamhost::handover::socket::Channel),
}

/// How long a new process's component may take to log in before the old one leaves
/// the server anyway (a server that refuses a second login, e.g. Prosody's default).
const LOGIN_HANDOVER: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs until SIGTERM/SIGINT (graceful drain; a second one cuts it short) or until a new
/// process takes over (then the same drain). SIGHUP reloads the config file: access lists
/// and connection limits change live.
fn run(config: Config, path: Option<PathBuf>, takeover: bool) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
    use std::sync::Arc;
    use streamhost::handover::{give, take};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2])?;
    let sig_handle = signals.handle();
    let (events, rx) = std::sync::mpsc::channel::<Event>();
    let engine = config.relay.engine;
    let mut taken = match (takeover, &config.handover_socket) {
        (false, _) => None,
        (true, None) => {
            return Err(std::io::Error::other(
                "--takeover needs handover_socket in the config",
            ))
        }
        (true, Some(p)) => match take::take(p) {
            Ok(t) => Some(t),
            // Nobody at the socket: no old process, so this one starts on its own.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                tracing::warn!(error = %e, "no process to take over from; starting on my own");
                None
            }
            // An old process runs but hung up (busy with another new process, another
            // version): starting beside it would serve the port and the component twice.
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("taking over: {e}; the running process goes on"),
                ))
            }
        },
    };
    let (listeners, conns) = taken.as_mut().map(|t| t.state()).unwrap_or_default();
    let handle = Arc::new(Server::start_with(config.clone(), listeners)?);
    if taken.is_some() {
        tracing::info!(connections = conns.len(), "took over from the old process");
    }
    handle.adopt(conns);
    if taken.is_some() {
        // The old link forwards every stanza here until this component is logged in, so
        // what arrives meanwhile can be activated (`start_with` admits from the start
        // already when listeners came over; this covers a handover without any).
        handle.set_admitting(true);
    }
    tracing::info!(
        addrs = ?handle.local_addrs(),
        workers = handle.workers(),
        engine = ?engine,
        "streamhost listening"
    );
    // Resolved against the bound addresses, so a listen port 0 is advertised truthfully.
    let control = match &config.component {
        Some(c) => {
            let settings = c
                .resolve(handle.local_addrs())
                .map_err(std::io::Error::other)?;
            Some(streamhost::control::spawn(settings, handle.clone())?)
        }
        None => {
            tracing::warn!("no [component] section: nothing can activate streams");
            None
        }
    };
    if let Some(t) = taken {
        let status = control.as_ref().map(|c| c.status());
        let relogin = control.as_ref().map(|c| c.relogin());
        let left_server = move || {
            if let Some(r) = relogin {
                r.unless_routed();
            }
        };
        t.serve(
            control.as_ref().map(|c| c.injector()),
            move || {
                let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while std::time::Instant::now() < end {
                    if status
                        .as_ref()
                        .is_none_or(|s| s.state() == streamhost::control::ConnState::Connected)
                    {
                        return true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                false
            },
            left_server,
        )?;
    }
    let mut metrics = match config.metrics.listen {
        Some(addr) => Some(serve_metrics(addr, &handle, control.as_ref())?),
        None => None,
    };
    let give_socket = match &config.handover_socket {
        Some(p) => {
            let ev = events.clone();
            Some(give::GiveSocket::open(p, move |ch| {
                let _ = ev.send(Event::Takeover(ch));
            })?)
        }
        None => None,
    };
    // Under systemd (Type=notify): ready, and after a takeover the unit's process now.
    streamhost::sd_notify::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    let ev = events.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if ev.send(Event::Signal(sig)).is_err() {
                break;
            }
        }
    });
    let mut given = None;
    for event in rx.iter() {
        match event {
            Event::Signal(SIGHUP) => reload(path.as_deref(), &handle, control.as_ref()),
            Event::Signal(SIGUSR2) => start_successor(&config),
            Event::Signal(sig) => {
                tracing::info!(signal = sig, deadline_s = config.drain_timeout, "draining");
                break;
            }
            Event::Takeover(ch) => {
                match give::give(ch, &handle, control.as_ref(), || {
                    if let Some(m) = metrics.take() {
                        m.stop();
                    }
                }) {
                    // The old link stays until the new one is logged in (it forwards
                    // what it still receives meanwhile).
                    Ok(g) if g.logged_in.recv_timeout(LOGIN_HANDOVER) == Ok(false) => {
                        tracing::error!("the new process left before logging in; serving on");
                        g.take_back(&handle, control.as_ref());
                        if metrics.is_none() {
                            if let Some(addr) = config.metrics.listen {
                                metrics = serve_metrics(addr, &handle, control.as_ref()).ok();
                            }
                        }
                    }
                    Ok(g) => {
                        tracing::info!(
                            listeners = g.listeners,
                            connections = g.conns,
                            deadline_s = config.drain_timeout,
                            "handed over to a new process; draining"
                        );
                        given = Some(g);
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "handover failed");
                        if metrics.is_none() {
                            if let Some(addr) = config.metrics.listen {
                                metrics = serve_metrics(addr, &handle, control.as_ref()).ok();
                            }
                        }
                    }
                }
            }
        }
    }
    drop(give_socket);
    // The metrics server holds the data plane too; it goes first.
    if let Some(m) = metrics {
        m.stop();
    }
    // Leave XMPP first (after a handover, the new component is logged in by now), so a
    // new process can log in as the component while relays finish.
    let left_server = control.is_some_and(|c| c.stop());
    // After a handover this process drains without having been told to: the first
    // SIGTERM (systemd sends one to every process of the unit on stop) changes nothing,
    // the one after it cuts the drain short.
    let signals_to_cut = if given.is_some() { 2 } else { 1 };
    if let Some(g) = given {
        g.finish(left_server);
    }
    let Ok(handle) = Arc::try_unwrap(handle) else {
        return Err(std::io::Error::other("data plane still shared at exit"));
    };
    // Another signal during the drain cuts it short.
    let (tx, second) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut seen = 0;
        for e in rx.iter() {
            if matches!(e, Event::Signal(s) if s != SIGHUP && s != SIGUSR2) {
                seen += 1;
                if seen == signals_to_cut {
                    let _ = tx.send(());
                    break;
                }
                tracing::info!("already draining after a handover; another signal cuts it short");
            }
        }
    });
    let deadline = config.drain_timeout();
    let drainer = std::thread::spawn(move || handle.drain(deadline));
    loop {
        if drainer.is_finished() {
            break;
        }
        if second
            .recv_timeout(std::time::Duration::from_millis(100))
            .is_ok()
        {
            tracing::warn!("second signal: exiting without waiting for relays");
            return Ok(());
        }
    }
    sig_handle.close();
    let cut = drainer.join().unwrap_or(0);
    tracing::info!(relays_cut = cut, "stopped");
    Ok(())
}

/// SIGUSR2: starts the binary now installed at the path this process was started from,
/// with the same arguments and `--takeover`, which then takes everything over from this
/// process (README "Upgrades"). A successor that fails leaves this process serving.
fn start_successor(config: &Config) {
    if config.handover_socket.is_none() {
        tracing::error!("SIGUSR2: no handover_socket in the config, so no upgrade");
        return;
    }
    let mut args = std::env::args_os();
    let Some(exe) = args.next() else {
        return;
    };
    let args: Vec<_> = args.filter(|a| a != "--takeover").collect();
    match std::process::Command::new(&exe)
        .args(&args)
        .arg("--takeover")
        .stdin(std::process::Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            tracing::info!(pid = child.id(), exe = ?exe, "SIGUSR2: started the new process");
            // Reaped here if it fails early; after this process exits, by init.
            std::thread::spawn(move || {
                if let Ok(st) = child.wait() {
                    if !st.success() {
                        tracing::error!(status = %st, "the new process failed");
                    }
                }
            });
        }
        Err(e) => tracing::error!(error = %e, exe = ?exe, "SIGUSR2: cannot start the new process"),
    }
}

/// Serves `/metrics` and `/ready`. After a takeover the old process may still hold the
/// port for a moment (it lets go before handing over), so a busy port is retried briefly.
fn serve_metrics(
    addr: std::net::SocketAddr,
    handle: &std::sync::Arc<streamhost::Handle>,
    control: Option<&streamhost::control::ControlHandle>,
) -> std::io::Result<streamhost::metrics::MetricsServer> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match streamhost::metrics::serve(addr, handle.clone(), control.map(|c| c.status())) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < end =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return r,
        }
    }
}

fn reload(
    path: Option<&std::path::Path>,
    handle: &streamhost::Handle,
    control: Option<&streamhost::control::ControlHandle>,
) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: started without --config, nothing to reload");
        return;
    };
    let new = match Config::from_file(path).and_then(|c| c.validate().map(|_| c)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("SIGHUP: keeping the running config: {e}");
            return;
        }
    };
    let restart = handle.reload(&new);
    if !restart.is_empty() {
        tracing::warn!(keys = ?restart, "SIGHUP: these changes need a restart");
    }
    match (new.component.as_ref(), control) {
        (Some(c), Some(ctl)) => match c.resolve(handle.local_addrs()) {
            Ok(s) => ctl.reload(&s),
            Err(e) => tracing::error!("SIGHUP: keeping the running [component] settings: {e}"),
        },
        (None, None) => {}
        _ => tracing::warn!("SIGHUP: adding or removing [component] needs a restart"),
    }
    tracing::info!("configuration reloaded");
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files would keep the escape codes.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}
