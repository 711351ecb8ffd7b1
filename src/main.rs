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
    match run(config, cli.config.clone()) {
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

/// Runs until SIGTERM/SIGINT (graceful drain; a second one cuts it short). SIGHUP
/// reloads the config file: access lists and connection limits change live.
fn run(config: Config, path: Option<PathBuf>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    use std::sync::Arc;
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let engine = config.relay.engine;
    let handle = Arc::new(Server::start(config.clone())?);
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
    let metrics = match config.metrics.listen {
        Some(addr) => Some(streamhost::metrics::serve(
            addr,
            handle.clone(),
            control.as_ref().map(|c| c.status()),
        )?),
        None => None,
    };
    for sig in signals.forever() {
        if sig == SIGHUP {
            reload(path.as_deref(), &handle, control.as_ref());
            continue;
        }
        tracing::info!(signal = sig, deadline_s = config.drain_timeout, "draining");
        break;
    }
    // The metrics server holds the data plane too; it goes first.
    if let Some(m) = metrics {
        m.stop();
    }
    // Leave XMPP first, so a new process can log in as the component while relays finish.
    if let Some(c) = control {
        c.stop();
    }
    let Ok(handle) = Arc::try_unwrap(handle) else {
        return Err(std::io::Error::other("data plane still shared at exit"));
    };
    // A second signal during the drain cuts it short.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = tx.send(());
        }
    });
    let deadline = config.drain_timeout();
    let drainer = std::thread::spawn(move || handle.drain(deadline));
    loop {
        if drainer.is_finished() {
            break;
        }
        if rx
            .recv_timeout(std::time::Duration::from_millis(100))
            .is_ok()
        {
            tracing::warn!("second signal: exiting without waiting for relays");
            return Ok(());
        }
    }
    let cut = drainer.join().unwrap_or(0);
    tracing::info!(relays_cut = cut, "stopped");
    Ok(())
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
