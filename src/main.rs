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
    /// Relay engine: copy or splice.
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
    match run(config) {
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

fn run(config: Config) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let engine = config.relay.engine;
    let handle = Server::start(config)?;
    tracing::info!(
        addrs = ?handle.local_addrs(),
        workers = handle.workers(),
        engine = ?engine,
        "streamhost listening"
    );
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "stopping");
    }
    handle.shutdown();
    Ok(())
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}
