//! A throwaway Prosody for one test: its own config, data, pidfile and log in a temp dir,
//! 127.0.0.1 only, free ports; two external components (the proxy and the generator).
//! Stopped on drop.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Prosody {
    dir: tempfile::TempDir,
    child: Child,
    pub component: SocketAddr,
}

impl Prosody {
    /// Starts Prosody with `VirtualHost "localhost"` and one external component per
    /// (jid, secret).
    pub fn start(components: &[(&str, &str)]) -> Prosody {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let c2s = streamhost_loadtest::proxy_proc::free_port().unwrap();
        let comp = streamhost_loadtest::proxy_proc::free_port().unwrap();
        let mut cfg = format!(
            r#"
run_as_root = true
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
log = {{ info = "{d}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
component_interfaces = {{ "127.0.0.1" }}
component_ports = {{ {comp} }}
modules_enabled = {{ "disco", "ping", "posix" }}
modules_disabled = {{ "s2s", "tls", "http", "offline" }}
s2s_ports = {{ }}
storage = "internal"

VirtualHost "localhost"
"#
        );
        for (jid, secret) in components {
            cfg.push_str(&format!(
                "\nComponent \"{jid}\"\n    component_secret = \"{secret}\"\n"
            ));
        }
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let path = dir.path().join("prosody.cfg.lua");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
        let child = Command::new("prosody")
            .arg("--config")
            .arg(&path)
            .arg("-F")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prosody is installed (.ci/test installs it)");
        let mut p = Prosody {
            dir,
            child,
            component: ([127, 0, 0, 1], comp).into(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(p.component).is_err() {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("prosody exited with {st}: {}", p.logs());
            }
            assert!(
                Instant::now() < deadline,
                "prosody did not start: {}",
                p.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("stdout.log"), read("prosody.log"))
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
