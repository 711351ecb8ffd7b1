//! A throwaway ejabberd for one test: its own config, Mnesia spool and logs in a temp dir,
//! 127.0.0.1 only, free ports chosen at run time; killed on drop.
//!
//! It runs `erl` directly, as the current user, never through `ejabberdctl` (which switches
//! to the `ejabberd` user with `su`, whose PAM session resets the open-files limit) nor as
//! the system service. No Erlang distribution at all: no node name, `-start_epmd false`, so
//! no epmd and no distribution port. Users are created by in-band registration (XEP-0077)
//! over c2s, which needs no `ejabberdctl`.

use super::client::Client;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The project's ejabberd snippets; the test config includes them, so they are proven here.
const LISTENER: &str = include_str!("../../deploy/ejabberd/streamhost.yml");
const INSTANCES: &str = include_str!("../../deploy/ejabberd/streamhost-instances.yml");

pub const DOMAIN: &str = "localhost";
/// A second host whose users are outside the proxy's default access list.
pub const OTHER_DOMAIN: &str = "elsewhere.localhost";
pub const PROXY_JID: &str = "proxy.localhost";
pub const SECRET: &str = "interop-secret-e7a4";

pub struct Ejabberd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Several streamhost instances as one JID: `domain_balancing` with this many slots
    /// and this balancing type.
    instances: Option<(u32, &'static str)>,
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

impl Ejabberd {
    /// The project's listener snippet (component `PROXY_JID` on host `DOMAIN`) and a second
    /// host `OTHER_DOMAIN`; registers `users` (name, domain, password).
    pub fn start(users: &[(&str, &str, &str)]) -> Ejabberd {
        Self::start_with(None, users)
    }

    /// Also the project's balancing snippet: `instances` streamhost processes may log in
    /// as `PROXY_JID`, each requester's stanzas going to one of them (by bare JID).
    pub fn with_instances(instances: u32, users: &[(&str, &str, &str)]) -> Ejabberd {
        Self::start_with(Some((instances, "bare_source")), users)
    }

    /// `with_instances`, but another balancing `type` than the snippet's (e.g. `random`,
    /// as a server that balances every stanza on its own would do).
    pub fn with_balancing(
        instances: u32,
        kind: &'static str,
        users: &[(&str, &str, &str)],
    ) -> Ejabberd {
        Self::start_with(Some((instances, kind)), users)
    }

    fn start_with(
        instances: Option<(u32, &'static str)>,
        users: &[(&str, &str, &str)],
    ) -> Ejabberd {
        let dir = tempfile::tempdir().expect("temp dir");
        let (c2s_port, component_port) = free_ports();
        let mut e = Ejabberd {
            dir,
            child: None,
            instances,
            c2s_port,
            component_port,
        };
        // Two tests can be handed the same free port: ejabberd then opens the other
        // listener only, and the other test's server would answer on that port.
        for attempt in 0.. {
            e.write_config();
            if e.launch() {
                break;
            }
            assert!(attempt < 4, "ejabberd cannot bind its ports: {}", e.logs());
            e.stop();
            let _ = std::fs::remove_dir_all(e.dir.path().join("log"));
            (e.c2s_port, e.component_port) = free_ports();
        }
        for (user, host, password) in users {
            Client::register(e.c2s_port, user, host, password)
                .unwrap_or_else(|err| panic!("register {user}@{host}: {err}\n{}", e.logs()));
        }
        e
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn component(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.component_port).into()
    }

    pub fn component_addr(&self) -> String {
        self.component().to_string()
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let listener = LISTENER
            .replace("proxy.example.org", PROXY_JID)
            .replace("CHANGE-ME", SECRET)
            .replace("port: 5347", &format!("port: {}", self.component_port));
        assert!(listener.contains(&format!("port: {}", self.component_port)));
        std::fs::write(self.path("streamhost.yml"), listener).unwrap();
        let mut includes = format!("{d}/streamhost.yml");
        if let Some((n, kind)) = self.instances {
            let balancing = INSTANCES
                .replace("proxy.example.org", PROXY_JID)
                .replace("component_number: 3", &format!("component_number: {n}"))
                .replace("type: bare_source", &format!("type: {kind}"));
            assert!(balancing.contains(&format!("component_number: {n}")));
            assert!(balancing.contains(&format!("type: {kind}")));
            std::fs::write(self.path("streamhost-instances.yml"), balancing).unwrap();
            includes.push_str(&format!(", {d}/streamhost-instances.yml"));
        }
        let config = format!(
            r#"
hosts: ["{DOMAIN}", "{OTHER_DOMAIN}"]
loglevel: info
certfiles: []
auth_method: internal
auth_password_format: plain
# Every test account registers from 127.0.0.1.
registration_timeout: infinity
listen:
  -
    port: {c2s}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: false
access_rules:
  register:
    allow: all
modules:
  # As the snippet's comment says: list the component in the server's disco#items.
  mod_disco:
    extra_domains: ["{PROXY_JID}"]
  mod_register:
    access: register
    ip_access: all
  mod_roster: {{}}
include_config_file: [{includes}]
"#,
            c2s = self.c2s_port,
        );
        std::fs::write(self.path("ejabberd.yml"), config).unwrap();
        std::fs::create_dir_all(self.path("spool")).unwrap();
        std::fs::create_dir_all(self.path("log")).unwrap();
    }

    /// Starts the VM; true once both listeners accept, false if one could not bind.
    fn launch(&mut self) -> bool {
        let d = self.dir.path();
        // A restart appends to the same log: look only at what this run writes.
        let seen = read(&self.path("log/ejabberd.log")).len();
        let out = std::fs::File::create(self.path("stdout.log")).unwrap();
        let spool = format!("\"{}\"", d.join("spool").display());
        let child = Command::new("erl")
            .args(["-noinput", "-noshell", "-start_epmd", "false"])
            .args(["-mnesia", "dir", &spool, "-s", "ejabberd"])
            .env("EJABBERD_CONFIG_PATH", self.path("ejabberd.yml"))
            .env("EJABBERD_LOG_PATH", self.path("log/ejabberd.log"))
            .env("ERL_CRASH_DUMP", self.path("log/erl_crash.dump"))
            .env("ERL_LIBS", erl_libs())
            .env("HOME", d)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("erl starts (is ejabberd installed?)");
        self.child = Some(child);
        // Generous: on 2 busy cores the VM has taken over 30 s to load its config.
        let deadline = Instant::now() + Duration::from_secs(120);
        let accepting = |port: u16| format!("Start accepting TCP connections at 127.0.0.1:{port} ");
        loop {
            let all = read(&self.path("log/ejabberd.log"));
            let log = all.get(seen..).unwrap_or("");
            if [self.c2s_port, self.component_port]
                .iter()
                .all(|&p| log.contains(&accepting(p)))
            {
                return true;
            }
            // A listener that cannot bind stops the VM (after logging why).
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                let all = read(&self.path("log/ejabberd.log"));
                if all
                    .get(seen..)
                    .unwrap_or("")
                    .contains("Failed to open socket")
                {
                    return false;
                }
                panic!("ejabberd exited with {status}: {}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "ejabberd did not start: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops ejabberd (SIGTERM, then SIGKILL after 10 s) and waits for the VM.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg(child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops and starts again on the same ports with the same spool (users kept).
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.launch(), "ejabberd could not rebind: {}", self.logs());
    }

    /// The OS process id of the Erlang VM (`erl` execs `beam.smp`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn logs(&self) -> String {
        format!(
            "{}\n{}",
            read(&self.path("stdout.log")),
            read(&self.path("log/ejabberd.log"))
        )
    }
}

/// Where Debian's ejabberd keeps its code, `/usr/lib/<triplet>` (what `ejabberdctl`
/// sets `ERL_LIBS` to): the directory holding an `ejabberd-<version>`.
fn erl_libs() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .find(|d| {
            std::fs::read_dir(d.path())
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("ejabberd-"))
        });
    found
        .map(|d| d.path())
        .expect("ejabberd is installed (apt-get install ejabberd)")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        self.stop();
    }
}
