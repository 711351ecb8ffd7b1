//! Spawning the real proxy: a generated config in a temporary directory, free loopback
//! ports, the component pointed at the embedded XMPP server; SIGTERM then kill at the end.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What goes into the generated config.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    pub bin: PathBuf,
    /// A config file whose keys are kept unless overridden below.
    pub base_config: Option<PathBuf>,
    pub engine: Option<String>,
    pub workers: Option<usize>,
    /// `worker_cpus` (and, without `workers`, one worker per CPU).
    pub worker_cpus: Option<Vec<usize>>,
    pub buffer_size: Option<usize>,
    /// The XMPP server the component connects to (the embedded one).
    pub xmpp_server: SocketAddr,
    pub jid: String,
    pub secret: String,
    pub domains: Vec<String>,
    /// Where the proxy's Prometheus endpoint listens (`[metrics] listen`), unless the
    /// base config sets it.
    pub metrics: Option<SocketAddr>,
}

pub struct ProxyProcess {
    child: Child,
    pub pid: u32,
    pub listen: SocketAddr,
    pub config_text: String,
    pub engine: String,
    /// The Prometheus endpoint, when the config has one.
    pub metrics: Option<SocketAddr>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The `streamhost` next to this executable (same target directory).
pub fn default_bin() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_default();
    let dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test binaries live in target/<profile>/deps.
    let dir = if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    };
    dir.join("streamhost")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The config text: the base file's keys, then ours.
pub fn config_text(o: &SpawnOptions, listen: SocketAddr) -> anyhow::Result<String> {
    let mut t: toml::Table = match &o.base_config {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("read {}: {e}", p.display()))?
            .parse()
            .map_err(|e| anyhow::anyhow!("parse {}: {e}", p.display()))?,
        None => toml::Table::new(),
    };
    let addr = toml::Value::String(listen.to_string());
    t.insert("listen".into(), toml::Value::Array(vec![addr.clone()]));
    if let Some(cpus) = &o.worker_cpus {
        let list = cpus
            .iter()
            .map(|&c| toml::Value::Integer(c as i64))
            .collect();
        t.insert("worker_cpus".into(), toml::Value::Array(list));
        t.insert("workers".into(), toml::Value::Integer(cpus.len() as i64));
    }
    if let Some(w) = o.workers {
        t.insert("workers".into(), toml::Value::Integer(w as i64));
    }
    // Every generated connection comes from one loopback address: unless the base config
    // says otherwise, the per-address limit must not throttle the load.
    t.entry("max_connections_per_ip")
        .or_insert(toml::Value::Integer(0));
    let relay = t
        .entry("relay")
        .or_insert_with(|| toml::Value::Table(Default::default()));
    let relay = relay
        .as_table_mut()
        .ok_or_else(|| anyhow::anyhow!("`relay` in the base config is not a table"))?;
    if let Some(e) = &o.engine {
        relay.insert("engine".into(), toml::Value::String(e.clone()));
    }
    if let Some(b) = o.buffer_size {
        relay.insert("buffer_size".into(), toml::Value::Integer(b as i64));
    }
    if let Some(m) = o.metrics {
        let metrics = t
            .entry("metrics")
            .or_insert_with(|| toml::Value::Table(Default::default()));
        if let Some(m_t) = metrics.as_table_mut() {
            m_t.entry("listen")
                .or_insert_with(|| toml::Value::String(m.to_string()));
        }
    }
    let mut c = toml::Table::new();
    c.insert("server".into(), o.xmpp_server.to_string().into());
    c.insert("jid".into(), o.jid.clone().into());
    c.insert("secret".into(), o.secret.clone().into());
    c.insert("advertise".into(), toml::Value::Array(vec![addr]));
    c.insert(
        "domains".into(),
        toml::Value::Array(o.domains.iter().cloned().map(Into::into).collect()),
    );
    t.insert("component".into(), toml::Value::Table(c));
    Ok(toml::to_string(&t)?)
}

impl ProxyProcess {
    /// Writes the config, starts the proxy and waits until its listen port accepts.
    pub fn spawn(o: &SpawnOptions, ready_timeout: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(
            o.bin.is_file(),
            "proxy binary {} not found: build it (cargo build --release -p streamhost) or pass --proxy-bin",
            o.bin.display()
        );
        let dir = tempfile::Builder::new().prefix("streamhost-lt").tempdir()?;
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let text = config_text(o, listen)?;
        let engine = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("relay")?.get("engine")?.as_str().map(String::from))
            .unwrap_or_else(|| "splice (default)".into());
        let metrics = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("metrics")?.get("listen")?.as_str()?.parse().ok());
        let cfg = dir.path().join("streamhost.toml");
        std::fs::write(&cfg, &text)?;
        let log = dir.path().join("streamhost.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(&o.bin)
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| anyhow::anyhow!("start {}: {e}", o.bin.display()))?;
        let mut p = ProxyProcess {
            pid: child.id(),
            child,
            listen,
            config_text: text,
            engine,
            metrics,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + ready_timeout;
        loop {
            if let Some(st) = p.child.try_wait()? {
                anyhow::bail!(
                    "the proxy exited at start ({st}); its output:\n{}",
                    p.log_tail()
                );
            }
            if TcpStream::connect_timeout(&listen, Duration::from_millis(100)).is_ok() {
                return Ok(p);
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the proxy did not listen on {listen} within {ready_timeout:?}; its output:\n{}",
                    p.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines the proxy printed.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, up to 3 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> SpawnOptions {
        SpawnOptions {
            bin: "/nonexistent/streamhost".into(),
            base_config: None,
            engine: Some("splice".into()),
            workers: Some(2),
            worker_cpus: None,
            buffer_size: None,
            xmpp_server: "127.0.0.1:5347".parse().unwrap(),
            jid: "proxy.localhost".into(),
            secret: "s3cret".into(),
            domains: vec!["localhost".into()],
            metrics: None,
        }
    }

    #[test]
    fn proxy_cpus_become_worker_cpus_and_the_worker_count() {
        let o = SpawnOptions {
            workers: None,
            worker_cpus: Some(vec![2, 3, 5]),
            ..opts()
        };
        let t: toml::Table = config_text(&o, "127.0.0.1:4000".parse().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(t["workers"].as_integer(), Some(3));
        let cpus: Vec<_> = t["worker_cpus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_integer().unwrap())
            .collect();
        assert_eq!(cpus, [2, 3, 5]);
    }

    #[test]
    fn generated_config_has_listen_engine_and_component() {
        let t: toml::Table = config_text(&opts(), "127.0.0.1:4000".parse().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(t["listen"][0].as_str(), Some("127.0.0.1:4000"));
        assert_eq!(t["workers"].as_integer(), Some(2));
        assert_eq!(t["relay"]["engine"].as_str(), Some("splice"));
        assert_eq!(t["component"]["server"].as_str(), Some("127.0.0.1:5347"));
        assert_eq!(t["component"]["jid"].as_str(), Some("proxy.localhost"));
        assert_eq!(t["component"]["domains"][0].as_str(), Some("localhost"));
        assert!(t.get("metrics").is_none());
        let with = SpawnOptions {
            metrics: Some("127.0.0.1:4001".parse().unwrap()),
            ..opts()
        };
        let m: toml::Table = config_text(&with, "127.0.0.1:4000".parse().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(m["metrics"]["listen"].as_str(), Some("127.0.0.1:4001"));
        // The data-plane part still parses as the proxy's own config (minus [component]).
        let mut dp = t.clone();
        dp.remove("component");
        streamhost::Config::from_toml_str(&toml::to_string(&dp).unwrap(), "gen")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let e = ProxyProcess::spawn(&opts(), Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not found") && e.contains("--proxy-bin"), "{e}");
    }
}
