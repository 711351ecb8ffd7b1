//! The real `streamhost` binary as operators run it: a generated config in a temp dir,
//! listening (and so advertising) on a chosen loopback address, its component pointed at
//! a test XMPP server; killed on drop.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct StreamhostProcess {
    child: Child,
    dir: tempfile::TempDir,
    /// The SOCKS5 listener, which is also the advertised streamhost address.
    pub socks: SocketAddr,
    pub metrics: SocketAddr,
}

fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .expect("a free loopback port")
        .local_addr()
        .unwrap()
        .port()
}

/// The binary with `config` and `extra` flags, logging (info, less the per-stream lines)
/// into `streamhost.log` in `log_dir`.
fn launch(config: &std::path::Path, extra: &[&str], log_dir: &std::path::Path) -> Child {
    let log = std::fs::File::create(log_dir.join("streamhost.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_streamhost"))
        .arg("--config")
        .arg(config)
        .args(extra)
        .env(
            "RUST_LOG",
            "info,streamhost::activation=warn,streamhost::stream=warn",
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("streamhost starts")
}

impl StreamhostProcess {
    /// Starts the binary on `ip` as component `jid` of `server`; `extra` is appended to
    /// the `[component]` section (keys, then any sub-tables). Waits until it listens.
    pub fn spawn(ip: IpAddr, server: SocketAddr, jid: &str, secret: &str, extra: &str) -> Self {
        // A port taken between choosing and binding makes the process exit: choose again.
        for attempt in 0.. {
            let dir = tempfile::tempdir().expect("temp dir");
            let socks = SocketAddr::new(ip, free_port(ip));
            let metrics: SocketAddr = ([127, 0, 0, 1], free_port([127, 0, 0, 1].into())).into();
            let config = dir.path().join("streamhost.toml");
            let handover = dir.path().join("handover.sock").display().to_string();
            std::fs::write(
                &config,
                format!(
                    r#"
workers = 2
listen = ["{socks}"]
max_connections_per_ip = 0
handover_socket = "{handover}"

[metrics]
listen = "{metrics}"

[component]
server = "{server}"
jid = "{jid}"
secret = "{secret}"
{extra}
"#
                ),
            )
            .unwrap();
            let child = launch(&config, &[], dir.path());
            let mut p = StreamhostProcess {
                child,
                dir,
                socks,
                metrics,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            // The metrics server starts after the SOCKS5 listeners: wait for both. Only a
            // process that exited (a port taken meanwhile) is started again.
            while p.alive()
                && (TcpStream::connect(socks).is_err() || TcpStream::connect(metrics).is_err())
            {
                assert!(Instant::now() < deadline, "no listener: {}", p.log());
                std::thread::sleep(Duration::from_millis(20));
            }
            if p.alive() {
                return p;
            }
            assert!(attempt < 4, "streamhost does not start: {}", p.log());
        }
        unreachable!()
    }

    /// An upgrade: the same binary and config started with `--takeover`, which takes the
    /// listeners, the pending connections and the component over from this process
    /// (which then only finishes its relays). Its log is its own.
    pub fn take_over(&self) -> StreamhostProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = self.dir.path().join("streamhost.toml");
        let child = launch(&config, &["--takeover"], dir.path());
        StreamhostProcess {
            child,
            dir,
            socks: self.socks,
            metrics: self.metrics,
        }
    }

    /// Waits (bounded) for the process to exit by itself; its status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// True while `GET /ready` answers 200: the component is logged in.
    pub fn ready(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(self.metrics) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"GET /ready HTTP/1.1\r\nHost: test\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.starts_with("HTTP/1.1 200")
    }

    /// Waits (bounded) until the component is logged in.
    pub fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.ready() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// SIGKILL (a machine that dies): no drain, no goodbye to the server.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("streamhost.log")).unwrap_or_default()
    }
}

impl Drop for StreamhostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
