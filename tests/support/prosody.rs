//! A throwaway Prosody for one test: its own config, data, pidfile and log in a temp
//! dir, 127.0.0.1 only, free ports chosen at run time; killed on drop. The load
//! generator's tests use it too (`loadtest/tests/support/mod.rs` includes this file).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The project's Prosody snippet; the test config includes it, so it is proven here.
const SNIPPET: &str = include_str!("../../deploy/prosody/streamhost.cfg.lua");

pub const DOMAIN: &str = "localhost";
/// A second host whose users are outside the proxy's default access list.
pub const OTHER_DOMAIN: &str = "elsewhere.localhost";
pub const PROXY_JID: &str = "proxy.localhost";
pub const SECRET: &str = "interop-secret-5f1c";

pub struct Prosody {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The hosts and components of the config (after the global settings).
    hosts: String,
    pub c2s_port: u16,
    pub component_port: u16,
}

/// Two distinct free loopback ports (both held while chosen, so they differ).
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().unwrap().port();
    (port(&a), port(&b))
}

impl Prosody {
    /// The project's deploy snippet (component `PROXY_JID` on host `DOMAIN`) and a second
    /// host `OTHER_DOMAIN`; registers `users` (name, domain, password) and starts Prosody.
    pub fn start(users: &[(&str, &str, &str)]) -> Prosody {
        Self::start_snippet(SNIPPET, users)
    }

    /// Like `start`, but a second login for the component is refused (Prosody's default,
    /// `kick_new`) instead of replacing the first: what a hot standby needs.
    pub fn start_refusing_second_login(users: &[(&str, &str, &str)]) -> Prosody {
        let kick_new = SNIPPET.replace(
            "component_conflict_resolve = \"kick_old\"",
            "component_conflict_resolve = \"kick_new\"",
        );
        assert_ne!(kick_new, SNIPPET);
        Self::start_snippet(&kick_new, users)
    }

    fn start_snippet(snippet: &str, users: &[(&str, &str, &str)]) -> Prosody {
        let snippet = snippet
            .replace("proxy.example.org", PROXY_JID)
            .replace("CHANGE-ME", SECRET);
        assert!(snippet.contains(&format!("Component \"{PROXY_JID}\"")));
        assert!(snippet.contains(SECRET));
        let hosts =
            format!("VirtualHost \"{DOMAIN}\"\n\n{snippet}\n\nVirtualHost \"{OTHER_DOMAIN}\"\n");
        Self::start_with(hosts, users)
    }

    /// Host `DOMAIN` and one external component per (jid, secret), no users.
    pub fn with_components(components: &[(&str, &str)]) -> Prosody {
        Self::with_components_and(components, "")
    }

    /// Like `with_components`, with `globals` (option lines) added to the global section.
    pub fn with_components_and(components: &[(&str, &str)], globals: &str) -> Prosody {
        let mut hosts = format!("{globals}\nVirtualHost \"{DOMAIN}\"\n");
        for (jid, secret) in components {
            hosts.push_str(&format!(
                "\nComponent \"{jid}\"\n    component_secret = \"{secret}\"\n"
            ));
        }
        Self::start_with(hosts, &[])
    }

    fn start_with(hosts: String, users: &[(&str, &str, &str)]) -> Prosody {
        let dir = tempfile::tempdir().expect("temp dir");
        let (c2s_port, component_port) = free_ports();
        let mut p = Prosody {
            dir,
            child: None,
            hosts,
            c2s_port,
            component_port,
        };
        std::fs::create_dir_all(p.dir.path().join("data")).unwrap();
        std::fs::write(p.config_path(), p.config()).unwrap();
        for (user, host, password) in users {
            let out = Command::new("prosodyctl")
                .arg("--config")
                .arg(p.config_path())
                .args(["register", user, host, password])
                .stdin(Stdio::null())
                .output()
                .expect("prosodyctl runs");
            assert!(
                out.status.success(),
                "prosodyctl register {user}@{host}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Two tests can be handed the same free port: a Prosody that could not bind one
        // logs it and runs on, and the other test's server would answer on that port.
        for attempt in 0.. {
            if p.launch() {
                break;
            }
            assert!(attempt < 4, "prosody cannot bind its ports: {}", p.logs());
            p.stop();
            let _ = std::fs::remove_file(p.dir.path().join("prosody.log"));
            (p.c2s_port, p.component_port) = free_ports();
            std::fs::write(p.config_path(), p.config()).unwrap();
        }
        p
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("prosody.cfg.lua")
    }

    pub fn component_addr(&self) -> String {
        self.component().to_string()
    }

    pub fn component(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.component_port).into()
    }

    fn config(&self) -> String {
        let d = self.dir.path().display();
        format!(
            r#"
run_as_root = true
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
log = {{ info = "{d}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
component_interfaces = {{ "127.0.0.1" }}
component_ports = {{ {comp} }}
modules_enabled = {{ "roster", "saslauth", "disco", "ping", "posix" }}
modules_disabled = {{ "s2s", "tls", "http", "offline" }}
s2s_ports = {{ }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"

{hosts}"#,
            hosts = self.hosts,
            c2s = self.c2s_port,
            comp = self.component_port,
        )
    }

    /// Starts Prosody and waits until its own process listens on both ports; false when
    /// it could not bind one (another test's server holds it and would answer there).
    fn launch(&mut self) -> bool {
        let log = std::fs::File::create(self.dir.path().join("stdout.log")).unwrap();
        let child = Command::new("prosody")
            .arg("--config")
            .arg(self.config_path())
            .arg("-F")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prosody starts");
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        for port in [self.c2s_port, self.component_port] {
            while !holds_listener(pid, port) {
                if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                    panic!("prosody exited with {status}: {}", self.logs());
                }
                let logs = self.logs();
                if logs.contains("Failed to open server port")
                    || logs.contains("Multiple services configured to listen on the same port")
                {
                    return false;
                }
                assert!(
                    Instant::now() < deadline,
                    "prosody did not open port {port}: {logs}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        true
    }

    /// Stops Prosody (SIGTERM, then SIGKILL after 5 s) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg(child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops and starts again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.launch(),
            "prosody cannot bind its ports again: {}",
            self.logs()
        );
    }

    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}\n{}", read("stdout.log"), read("prosody.log"))
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether process `pid` holds a socket listening on loopback TCP `port`: its inode in
/// `/proc/net/tcp` is among the process's descriptors. A connect alone cannot tell this
/// Prosody from another test's server on the same port.
fn holds_listener(pid: u32, port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            let listening = *f.get(3)? == "0A";
            let inode = f.get(9)?;
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| format!("socket:[{inode}]"))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
            .unwrap_or(false)
    })
}
