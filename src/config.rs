//! Configuration: a TOML file, overridden by command-line flags, validated on start.
//! Every problem is reported with the dotted key it concerns.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Which relay engine moves bytes between the halves of an activated pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// recv into a per-core provided-buffer ring, then send.
    Copy,
    /// splice(2) through pipes borrowed from a per-core pool only while data is in them.
    /// The default: on par with `copy` for one pair and clearly ahead once the cores are
    /// busy (64 pairs on 2 cores: 0.60-0.72x direct against 0.36-0.43x), since it adds no
    /// copy of its own, and at least as fast as `uring-splice` (`benches/relay_vs_direct.rs`).
    #[default]
    Splice,
    /// The same pipes, but the splices are IORING_OP_SPLICE requests, which the kernel
    /// always runs on io-wq worker threads: a readiness poll, then socket -> pipe linked to
    /// pipe -> peer socket, non-blocking so that no io-wq thread ever waits on a socket.
    #[serde(rename = "uring-splice")]
    UringSplice,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "copy" => Ok(Engine::Copy),
            "splice" => Ok(Engine::Splice),
            "uring-splice" => Ok(Engine::UringSplice),
            _ => Err(format!(
                "unknown engine {s:?}: expected \"copy\", \"splice\" or \"uring-splice\""
            )),
        }
    }
}

/// SOCKS5 username/password (RFC 1929) required of every client when set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Socks5Auth {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Worker threads, one ring each; 0 means one per available core.
    pub workers: usize,
    /// CPUs to pin the workers to, worker i on `worker_cpus[i % len]`; empty = not pinned
    /// (the scheduler places them).
    pub worker_cpus: Vec<usize>,
    /// SOCKS5 listen addresses; every worker gets its own SO_REUSEPORT socket on each.
    pub listen: Vec<SocketAddr>,
    /// listen(2) backlog of each shard.
    pub backlog: u32,
    /// Open client connections, all states, whole process.
    pub max_connections: usize,
    /// Connections in handshake or waiting for their peer / activation, whole process.
    pub max_pending: usize,
    /// Connections open at once from one IPv4 address or IPv6 /64; 0 = no limit.
    pub max_connections_per_ip: u32,
    /// New connections per second from one IPv4 address or IPv6 /64; 0 = no limit.
    pub connection_rate_per_ip: f64,
    /// Burst allowed above `connection_rate_per_ip`.
    pub connection_burst_per_ip: u32,
    /// Connections open at once from one IPv4 /24; unset = 4 x `max_connections_per_ip`.
    pub max_connections_per_v4_24: Option<u32>,
    /// Connections open at once from one IPv6 /56; unset = 4 x `max_connections_per_ip`.
    pub max_connections_per_v6_56: Option<u32>,
    /// Connections open at once from one IPv6 /48; unset = 16 x `max_connections_per_ip`.
    pub max_connections_per_v6_48: Option<u32>,
    /// Seconds a client has to finish its SOCKS5 handshake.
    pub handshake_timeout: u64,
    /// Seconds a connected half may wait for its peer and for activation (ejabberd: 60).
    pub activation_timeout: u64,
    /// Seconds an active relay may go without moving a byte either way; 0 = never.
    pub idle_timeout: u64,
    /// Seconds running relays get to finish after SIGTERM before they are cut.
    pub drain_timeout: u64,
    /// Unix socket on which this process hands its listeners and pending connections to
    /// a new one started with `--takeover` (README "Upgrades"); unset = no handover.
    pub handover_socket: Option<std::path::PathBuf>,
    /// Require SOCKS5 username/password (RFC 1929) when present.
    pub socks5_auth: Option<Socks5Auth>,
    pub relay: RelayConfig,
    /// Bandwidth shaping (token buckets); off by default.
    pub shaping: crate::shaping::ShapingConfig,
    /// Daily byte quotas per requester account / domain; off by default.
    pub quota: crate::shaping::QuotaConfig,
    /// The XEP-0114 component (control plane); absent: data plane only.
    pub component: Option<crate::control::ControlConfig>,
    pub metrics: MetricsConfig,
}

/// The Prometheus endpoint (`GET /metrics`, `GET /ready`); off unless `listen` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// HTTP listen address, e.g. `127.0.0.1:9477`.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    pub engine: Engine,
    /// copy engine: bytes per provided buffer (one recv at most).
    pub buffer_size: usize,
    /// copy engine: provided buffers per worker, shared by all its connections.
    pub buffers_per_worker: usize,
    /// copy engine: send with IORING_OP_SEND_ZC (the buffer goes back to the ring only
    /// after the kernel's notification that it is done with it).
    pub send_zc: bool,
    /// splice engines: pipe capacity set with F_SETPIPE_SZ.
    pub pipe_size: usize,
    /// splice engines: pipes per worker (two fds each, all made when the worker starts);
    /// a direction waits when all are lent.
    pub pipes_per_worker: usize,
    /// Bytes a worker may keep in stalled directions' own small buffers: what a
    /// destination could not take is moved out of the pool's pipe or buffer into one, so
    /// the pipe or buffer goes back at once. Beyond it a stalled direction keeps its pipe
    /// or buffer (as with 0).
    pub stall_bytes_per_worker: usize,
    /// Kernel socket buffers of a relayed connection (`SO_SNDBUF` and `SO_RCVBUF`, set
    /// when the relay starts). Without a bound one stalled stream (a receiver that does
    /// not read) makes the kernel hold several MiB for it (autotuning up to `tcp_rmem` and
    /// `tcp_wmem`), and a few hundred push the whole machine into TCP memory pressure. It
    /// also bounds a stream's throughput over a path with round trip r to about
    /// 2 x socket_buffer / r. 0 = the kernel's autotuning.
    pub socket_buffer: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: 0,
            worker_cpus: Vec::new(),
            listen: vec![
                "0.0.0.0:7777".parse().expect("literal"),
                "[::]:7777".parse().expect("literal"),
            ],
            backlog: 4096,
            max_connections: 100_000,
            max_pending: 20_000,
            max_connections_per_ip: 256,
            connection_rate_per_ip: 0.0,
            connection_burst_per_ip: 32,
            max_connections_per_v4_24: None,
            max_connections_per_v6_56: None,
            max_connections_per_v6_48: None,
            handshake_timeout: 10,
            activation_timeout: 60,
            idle_timeout: 900,
            drain_timeout: 300,
            handover_socket: None,
            socks5_auth: None,
            relay: RelayConfig::default(),
            shaping: Default::default(),
            quota: Default::default(),
            component: None,
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            engine: Engine::Splice,
            buffer_size: 1 << 20,
            buffers_per_worker: 64,
            send_zc: false,
            pipe_size: 1 << 20,
            pipes_per_worker: 32,
            stall_bytes_per_worker: 32 << 20,
            socket_buffer: 256 << 10,
        }
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {problem}")]
    Invalid {
        key: std::borrow::Cow<'static, str>,
        problem: String,
    },
}

/// A problem with `key` (a dotted path, built at run time for map entries).
pub(crate) fn invalid(
    key: impl Into<std::borrow::Cow<'static, str>>,
    problem: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

impl Config {
    /// The per-source limits, prefix limits derived from `max_connections_per_ip` where
    /// unset (and off with it).
    pub fn source_limits(&self) -> crate::limits::SourceLimits {
        let per_ip = self.max_connections_per_ip;
        let derived = |set: Option<u32>, times: u32| set.unwrap_or(per_ip.saturating_mul(times));
        crate::limits::SourceLimits {
            per_ip,
            rate: self.connection_rate_per_ip,
            burst: self.connection_burst_per_ip,
            per_v4_24: derived(self.max_connections_per_v4_24, 4),
            per_v6_56: derived(self.max_connections_per_v6_56, 4),
            per_v6_48: derived(self.max_connections_per_v6_48, 16),
        }
    }

    pub fn from_toml_str(text: &str, path: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Worker count after resolving 0 to the available cores.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.workers
        }
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout)
    }

    pub fn activation_timeout(&self) -> Duration {
        Duration::from_secs(self.activation_timeout)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout)
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout))
    }

    /// Every listed CPU once, and each one this process may run on.
    fn validate_worker_cpus(&self) -> Result<(), ConfigError> {
        if self.worker_cpus.is_empty() {
            return Ok(());
        }
        let allowed = crate::affinity::allowed_cpus().map_err(|e| {
            invalid(
                "worker_cpus",
                format!("cannot read this process's CPUs: {e}"),
            )
        })?;
        for (i, c) in self.worker_cpus.iter().enumerate() {
            if self.worker_cpus[..i].contains(c) {
                return Err(invalid("worker_cpus", format!("CPU {c} is listed twice")));
            }
            if !allowed.contains(c) {
                return Err(invalid(
                    "worker_cpus",
                    format!("CPU {c} is not one this process may run on ({allowed:?})"),
                ));
            }
        }
        Ok(())
    }

    /// Checks every value; the first problem found names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers > 1024 {
            return Err(invalid("workers", "at most 1024"));
        }
        self.validate_worker_cpus()?;
        if self.listen.is_empty() {
            return Err(invalid("listen", "at least one address is needed"));
        }
        for (i, a) in self.listen.iter().enumerate() {
            if self.listen[..i].contains(a) {
                return Err(invalid("listen", format!("{a} is listed twice")));
            }
        }
        if self.backlog == 0 {
            return Err(invalid("backlog", "must be at least 1"));
        }
        if self.max_connections < 2 {
            return Err(invalid("max_connections", "must be at least 2 (one pair)"));
        }
        if self.max_pending < 2 {
            return Err(invalid("max_pending", "must be at least 2 (one pair)"));
        }
        if self.max_pending > self.max_connections {
            return Err(invalid(
                "max_pending",
                format!(
                    "{} is more than max_connections ({})",
                    self.max_pending, self.max_connections
                ),
            ));
        }
        if !self.connection_rate_per_ip.is_finite() || self.connection_rate_per_ip < 0.0 {
            return Err(invalid(
                "connection_rate_per_ip",
                "must be a number of connections per second, 0 or more",
            ));
        }
        if self.connection_burst_per_ip == 0 {
            return Err(invalid("connection_burst_per_ip", "must be at least 1"));
        }
        if self.handshake_timeout == 0 {
            return Err(invalid("handshake_timeout", "must be at least 1 second"));
        }
        if self.activation_timeout == 0 {
            return Err(invalid("activation_timeout", "must be at least 1 second"));
        }
        if let Some(a) = &self.socks5_auth {
            if a.username.is_empty() || a.username.len() > 255 {
                return Err(invalid(
                    "socks5_auth.username",
                    "must be 1 to 255 bytes (RFC 1929)",
                ));
            }
            if a.password.is_empty() || a.password.len() > 255 {
                return Err(invalid(
                    "socks5_auth.password",
                    "must be 1 to 255 bytes (RFC 1929)",
                ));
            }
        }
        let r = &self.relay;
        if !(4096..=(64 << 20)).contains(&r.buffer_size) || !r.buffer_size.is_power_of_two() {
            return Err(invalid(
                "relay.buffer_size",
                format!(
                    "{} is not a power of two between 4096 and 64 MiB",
                    r.buffer_size
                ),
            ));
        }
        if r.buffers_per_worker < 2
            || r.buffers_per_worker > 32768
            || !r.buffers_per_worker.is_power_of_two()
        {
            return Err(invalid(
                "relay.buffers_per_worker",
                format!(
                    "{} is not a power of two between 2 and 32768 (a buffer ring's size)",
                    r.buffers_per_worker
                ),
            ));
        }
        if r.send_zc && r.engine != Engine::Copy {
            return Err(invalid(
                "relay.send_zc",
                format!(
                    "only the copy engine sends from buffers (engine is {:?})",
                    r.engine
                ),
            ));
        }
        if !(4096..=(64 << 20)).contains(&r.pipe_size) {
            return Err(invalid(
                "relay.pipe_size",
                format!("{} is not between 4096 and 64 MiB", r.pipe_size),
            ));
        }
        if r.pipes_per_worker == 0 || r.pipes_per_worker > 65536 {
            return Err(invalid("relay.pipes_per_worker", "must be 1 to 65536"));
        }
        if r.socket_buffer != 0 && !(4096..=(64 << 20)).contains(&r.socket_buffer) {
            return Err(invalid(
                "relay.socket_buffer",
                format!("{} is not 0 or between 4096 and 64 MiB", r.socket_buffer),
            ));
        }
        if r.stall_bytes_per_worker > (1 << 40) {
            return Err(invalid(
                "relay.stall_bytes_per_worker",
                "must be at most 1 TiB",
            ));
        }
        self.shaping.validate()?;
        self.quota.validate()?;
        if let Some(m) = self.metrics.listen {
            if m.port() == 0 {
                return Err(invalid("metrics.listen", "needs a fixed port (not 0)"));
            }
            if self.listen.contains(&m) {
                return Err(invalid(
                    "metrics.listen",
                    format!("{m} is also a SOCKS5 `listen` address"),
                ));
            }
        }
        if let Some(c) = &self.component {
            c.resolve(&self.listen)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_listen_on_7777() {
        let c = Config::default();
        c.validate().unwrap();
        assert!(c.listen.iter().all(|a| a.port() == 7777));
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml_str("", "x.toml").unwrap();
        assert_eq!(c.activation_timeout, 60);
        assert_eq!(c.relay.engine, Engine::Splice);
    }

    #[test]
    fn full_file_parses() {
        let c = Config::from_toml_str(
            r#"
            workers = 2
            listen = ["127.0.0.1:1080"]
            activation_timeout = 30
            [socks5_auth]
            username = "u"
            password = "p"
            [relay]
            engine = "splice"
            pipe_size = 65536
            "#,
            "x.toml",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.relay.engine, Engine::Splice);
        assert_eq!(c.socks5_auth.unwrap().username, "u");
    }

    #[test]
    fn worker_cpus_must_be_distinct_cpus_of_this_process() {
        let allowed = crate::affinity::allowed_cpus().unwrap();
        let c =
            Config::from_toml_str(&format!("worker_cpus = [{}]", allowed[0]), "x.toml").unwrap();
        c.validate().unwrap();
        let mut c = Config {
            worker_cpus: vec![allowed[0], allowed[0]],
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("`worker_cpus`") && e.contains("twice"), "{e}");
        c.worker_cpus = vec![libc::CPU_SETSIZE as usize + 1];
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("`worker_cpus`") && e.contains("may run on"),
            "{e}"
        );
    }

    #[test]
    fn metrics_section_parses_and_is_validated() {
        assert_eq!(Config::default().metrics.listen, None);
        let c = Config::from_toml_str("[metrics]\nlisten = \"127.0.0.1:9477\"", "x.toml").unwrap();
        c.validate().unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9477".parse().unwrap()));
        let e = Config::from_toml_str("[metrics]\nlisen = \"127.0.0.1:1\"", "x.toml").unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        let mut c = Config::default();
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("`metrics.listen`"), "{e}");
        c.metrics.listen = Some("0.0.0.0:7777".parse().unwrap());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("`metrics.listen`"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml_str("activaton_timeout = 3", "x.toml").unwrap_err();
        assert!(e.to_string().contains("activaton_timeout"), "{e}");
    }

    #[test]
    fn bad_value_names_key() {
        let e = Config::from_toml_str("[relay]\nengine = \"zerocopy\"", "x.toml").unwrap_err();
        assert!(e.to_string().contains("engine"), "{e}");
        let c = Config {
            activation_timeout: 0,
            ..Config::default()
        };
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("`activation_timeout`"), "{e}");
        let mut c = Config::default();
        c.relay.buffer_size = 1000;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("relay.buffer_size"));
    }

    #[test]
    fn uring_splice_and_send_zc_parse_and_are_validated() {
        let c = Config::from_toml_str("[relay]\nengine = \"uring-splice\"", "x.toml").unwrap();
        c.validate().unwrap();
        assert_eq!(c.relay.engine, Engine::UringSplice);
        assert_eq!("uring-splice".parse::<Engine>(), Ok(Engine::UringSplice));
        assert!(!Config::default().relay.send_zc);
        let c =
            Config::from_toml_str("[relay]\nengine = \"copy\"\nsend_zc = true", "x.toml").unwrap();
        c.validate().unwrap();
        assert!(c.relay.send_zc);
        let e = Config::from_toml_str("[relay]\nsend_zc = \"yes\"", "x.toml").unwrap_err();
        assert!(e.to_string().contains("send_zc"), "{e}");
        // The default engine (splice) has no buffers to send from.
        let c = Config::from_toml_str("[relay]\nsend_zc = true", "x.toml").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("`relay.send_zc`"), "{e}");
    }
}
