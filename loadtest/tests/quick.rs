//! `quick` in a tiny configuration, so that its rounds, ranges, CPU figures and plots
//! cannot rot: a spawned stand-in proxy (a separate process, so that its CPU is read from
//! /proc), 3 alternating rounds of 64 MiB, 0.3 s of mixed load. Loopback only, bounded;
//! nothing here depends on how fast the machine is.

mod common;

use common::{generator, run_passing};

/// The fake proxy example (built by `cargo test`), next to the test binaries.
fn fake_proxy_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    profile_dir.join("examples").join("fake_streamhost")
}

fn figure<'a>(json: &'a serde_json::Value, scenario: &str, name: &str) -> &'a serde_json::Value {
    json["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == scenario)
        .and_then(|s| {
            s["figures"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["name"] == name)
        })
        .unwrap_or_else(|| panic!("no figure {name:?} in {scenario}"))
}

#[test]
fn quick_in_a_tiny_configuration() {
    let bin = fake_proxy_bin();
    assert!(bin.is_file(), "{} not built", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let out = run_passing(
        generator()
            .arg("--proxy-bin")
            .arg(&bin)
            .args(["--time-limit", "60", "--io-timeout", "10", "--rounds", "3"])
            .arg("--report")
            .arg(dir.path())
            .args(["quick", "--bytes", "64MiB", "--mixed-seconds", "0.3"]),
        &[
            "== mixed",
            "== bulk",
            "rounds=3",
            "clients CPU, 1 pairs",
            "proxy CPU, 1 pairs",
            "core-s/GB",
            "the ratio tends to",
            "PASS",
        ],
    );
    // The ratio is printed as a median with its range over the rounds.
    let line = out
        .lines()
        .find(|l| l.contains("aggregate, 1 pairs"))
        .unwrap();
    assert!(line.contains("x (") && line.contains('-'), "{line}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    let agg = figure(&json, "bulk", "aggregate, 1 pairs");
    assert_eq!(agg["rounds"], 3);
    let (r, lo, hi) = (
        agg["ratio"].as_f64().unwrap(),
        agg["ratio_range"][0].as_f64().unwrap(),
        agg["ratio_range"][1].as_f64().unwrap(),
    );
    assert!(lo <= r && r <= hi && lo > 0.0, "{agg}");
    let proxy_cpu = figure(&json, "bulk", "proxy CPU, 1 pairs");
    assert!(proxy_cpu["value"].as_f64().unwrap() > 0.0, "{proxy_cpu}");
    let clients = figure(&json, "bulk", "clients CPU, 1 pairs");
    assert!(clients["direct"].as_f64().unwrap() > 0.0, "{clients}");
    assert_eq!(figure(&json, "mixed", "goodput")["rounds"], 3);

    // Plots: each round with its ratio panel; latency on a log axis with human ticks.
    let rounds =
        std::fs::read_to_string(dir.path().join("bulk_aggregate_throughput__1_pairs.svg")).unwrap();
    assert!(
        rounds.contains("ratio to direct") && rounds.contains("direct = 1.0"),
        "{rounds}"
    );
    let cdf = std::fs::read_to_string(dir.path().join("mixed_latency_cdf_done.svg")).unwrap();
    assert!(!cdf.contains("log10"), "{cdf}");
    // Tick labels are SVG text: `<text ...>\n1 ms\n</text>`.
    assert!(cdf.contains(" us\n") || cdf.contains(" ms\n"), "{cdf}");
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("ratio (range over rounds)") && md.contains("the ratio tends to"));
}
