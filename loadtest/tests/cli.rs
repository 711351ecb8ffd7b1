//! The binary: argument errors, the direct scenario with a report directory, a proxy
//! that fails to start, and a whole run against an external (test) proxy.

mod common;
mod support;

use common::{generator as bin, run_passing};
use std::time::Duration;

#[test]
fn bad_arguments_give_a_clear_message() {
    let out = bin()
        .args(["bulk", "--bytes", "3 furlongs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--bytes") && err.contains("furlongs"), "{err}");
    let out = bin().args(["--xmpp", "prosody", "quick"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("component:HOST:PORT:JID:SECRET"));
}

#[test]
fn direct_run_writes_report_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    run_passing(
        bin()
            .args(["direct", "--pairs", "1,2", "--bytes", "16MiB", "--report"])
            .arg(dir.path()),
        &["aggregate, 2 pairs", "PASS"],
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(
        json["env"]["cores"].as_u64().unwrap() as usize,
        std::thread::available_parallelism().unwrap().get()
    );
    assert!(json["env"]["kernel"].as_str().unwrap().starts_with("Linux"));
    let svg = std::fs::read_to_string(dir.path().join("direct_throughput_vs_pairs.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<text") && svg.contains("pairs"));
    assert!(std::fs::read_to_string(dir.path().join("report.md"))
        .unwrap()
        .contains("| aggregate, 1 pairs |"));
    // compare against itself: every ratio 1.00x.
    let j = dir.path().join("report.json");
    let out = bin().arg("compare").arg(&j).arg(&j).output().unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && t.contains("1.00x") && !t.contains("no figure"),
        "{t}"
    );
}

#[test]
fn proxy_that_does_not_start_is_reported() {
    let out = bin()
        .args(["--proxy-bin", "/bin/false", "bulk", "--bytes", "1MiB"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exited at start"), "{err}");
}

#[test]
fn external_proxy_with_embedded_xmpp_end_to_end() {
    // The SOCKS5 listener first: a port picked while it is bound cannot be its port (the
    // other order let both get the same one now and then).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let socks = listener.local_addr().unwrap();
    let xmpp_port = streamhost_loadtest::proxy_proc::free_port().unwrap();
    let xmpp: std::net::SocketAddr = ([127, 0, 0, 1], xmpp_port).into();
    // The test proxy's component connects once the generator's embedded server is up.
    let _proxy = std::thread::spawn(move || {
        let p = support::MiniProxy::start_on(
            listener,
            xmpp,
            "proxy.localhost",
            "s",
            support::Fault::None,
            800,
        );
        std::thread::sleep(Duration::from_secs(30));
        drop(p);
    });
    let stdout = run_passing(
        bin()
            .args([
                "--xmpp-listen",
                &xmpp.to_string(),
                "--secret",
                "s",
                "--proxy",
            ])
            .arg(socks.to_string())
            .args(["bulk", "--pairs", "2", "--bytes", "16MiB", "--both-ways"]),
        &["external 127.0.0.1", "PASS"],
    );
    // A ratio to direct is printed for the aggregate.
    let line = stdout
        .lines()
        .find(|l| l.contains("aggregate, 2 pairs"))
        .unwrap();
    assert!(line.contains('x'), "{line}");
}

/// The fake proxy example (built by `cargo test`), next to the test binaries.
fn fake_proxy_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    profile_dir.join("examples").join("fake_streamhost")
}

#[test]
fn spawn_writes_config_waits_for_component_and_stops_the_proxy() {
    let bin_path = fake_proxy_bin();
    assert!(bin_path.is_file(), "{} not built", bin_path.display());
    let dir = tempfile::tempdir().unwrap();
    run_passing(
        bin()
            .arg("--proxy-bin")
            .arg(&bin_path)
            .args(["--engine", "splice", "--report"])
            .arg(dir.path())
            .args(["idle", "--pairs", "20", "--hold", "1"]),
        &["spawned", "engine splice", "proxy fds during"],
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    let cfg = json["env"]["proxy_config"].as_str().unwrap();
    assert!(
        cfg.contains("[component]") && cfg.contains("proxy.localhost"),
        "{cfg}"
    );
    // The proxy was stopped: its pid is gone.
    let pid = json["env"]["proxy"]
        .as_str()
        .unwrap()
        .rsplit("pid ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/status")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .contains("State:\tZ"),
        "proxy pid {pid} still running"
    );
}
