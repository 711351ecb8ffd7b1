//! The real `streamhost` binary (built next to the generator by `cargo test --workspace`),
//! spawned with a generated config, its component connected to the embedded XMPP server.

mod common;

use common::{generator, run_passing};

fn run(args: &[&str]) -> String {
    let bin = streamhost_loadtest::proxy_proc::default_bin();
    assert!(bin.is_file(), "{} not built", bin.display());
    run_passing(
        generator()
            .arg("--proxy-bin")
            .arg(&bin)
            .args(["--time-limit", "60", "--io-timeout", "10"])
            .args(args),
        &["PASS", "spawned"],
    )
}

#[test]
fn every_scenario_against_the_spawned_proxy() {
    for engine in ["copy", "splice"] {
        let out = run(&[
            "--engine",
            engine,
            "bulk",
            "--pairs",
            "1,2",
            "--bytes",
            "64MiB",
            "--both-ways",
        ]);
        assert!(out.contains(&format!("engine {engine}")), "{out}");
    }
    run(&["setup", "--count", "300", "--concurrency", "8"]);
    let out = run(&["idle", "--pairs", "300", "--hold", "1"]);
    assert!(out.contains("proxy RSS per pair"), "{out}");
    run(&["mixed", "--rate", "100", "--duration", "1", "--max", "8MiB"]);
    // quick in a small configuration (the full one is a minute of load).
    let out = run(&[
        "--rounds",
        "3",
        "quick",
        "--bytes",
        "32MiB",
        "--mixed-seconds",
        "0.5",
    ]);
    // (CPU figures of rounds this short may round to zero clock ticks: tests/quick.rs
    // checks them with larger rounds.)
    assert!(out.contains("== mixed") && out.contains("== bulk"), "{out}");
}

/// --proxy-cpus / --client-cpus: the proxy's workers get `worker_cpus`, the generator
/// says where its load ran, and every byte still arrives.
#[test]
fn proxy_and_generator_on_separate_cpus() {
    let cpus = streamhost::affinity::allowed_cpus().unwrap();
    let (proxy, client) = (cpus[0].to_string(), cpus[cpus.len() - 1].to_string());
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "--proxy-cpus",
        &proxy,
        "--client-cpus",
        &client,
        "--report",
        dir.path().to_str().unwrap(),
        "bulk",
        "--pairs",
        "2",
        "--bytes",
        "16MiB",
    ]);
    assert!(
        out.contains(&format!("generator on CPUs [{client}]")),
        "{out}"
    );
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        report.contains(&format!("worker_cpus = [{proxy}]")),
        "{report}"
    );
    assert!(report.contains("workers = 1"), "{report}");
}
