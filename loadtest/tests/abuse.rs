//! `abuse` in a tiny configuration against the real spawned proxy, so that its phases,
//! abusers and figures cannot rot: 2 rounds of 2 legitimate pairs x 64 MiB beside a few
//! stalled and trickling pairs, slowloris connections, a random-key flood from 20 loopback
//! addresses and churn. Loopback only, bounded in count and time; no figure checked here
//! depends on how fast the machine is.

mod common;

use common::{generator, run_passing};

fn figure<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json["scenarios"][0]["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no figure {name:?} in {json}"))
}

fn value(json: &serde_json::Value, name: &str) -> f64 {
    figure(json, name)["value"].as_f64().unwrap()
}

#[test]
fn abuse_in_a_tiny_configuration() {
    let bin = streamhost_loadtest::proxy_proc::default_bin();
    assert!(bin.is_file(), "{} not built", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let out = run_passing(
        generator()
            .arg("--proxy-bin")
            .arg(&bin)
            .args(["--time-limit", "90", "--io-timeout", "20", "--rounds", "2"])
            .arg("--report")
            .arg(dir.path())
            .args([
                "abuse",
                "--pairs",
                "2",
                "--bytes",
                "64MiB",
                "--setup-rate",
                "20",
                "--stalled",
                "4",
                "--trickle",
                "4",
                "--slowloris",
                "20",
                "--flood",
                "50",
                "--source-addrs",
                "20",
                "--churn-rate",
                "50",
            ]),
        &[
            "== abuse",
            "with abuse",
            "without abuse",
            "legit throughput, 2 pairs",
            "PASS",
        ],
    );
    assert!(out.contains("legitimate pairs moved"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["scenarios"][0]["name"], "abuse");

    // The legitimate load: every byte of 2 rounds x 2 pairs x 64 MiB arrived and was
    // checked in each kind of phase, and no setup failed.
    let bytes = figure(&json, "legit bytes verified");
    assert_eq!(bytes["value"], 256.0, "{bytes}");
    assert_eq!(bytes["direct"], 256.0, "{bytes}");
    let tp = figure(&json, "legit throughput, 2 pairs");
    assert_eq!(tp["rounds"], 2);
    let (r, lo, hi) = (
        tp["ratio"].as_f64().unwrap(),
        tp["ratio_range"][0].as_f64().unwrap(),
        tp["ratio_range"][1].as_f64().unwrap(),
    );
    assert!(lo > 0.0 && lo <= r && r <= hi, "{tp}");
    let failed = figure(&json, "legit setups failed");
    assert_eq!(
        (failed["value"].as_f64(), failed["direct"].as_f64()),
        (Some(0.0), Some(0.0))
    );
    let done = figure(&json, "legit setups done");
    assert!(done["value"].as_f64().unwrap() >= 2.0, "{done}");
    assert!(done["direct"].as_f64().unwrap() >= 2.0, "{done}");
    assert!(value(&json, "legit setup p99") >= value(&json, "legit setup p50"));

    // The abusers got what they asked for.
    assert_eq!(value(&json, "stalled pairs"), 4.0);
    assert_eq!(value(&json, "trickle pairs"), 4.0);
    assert_eq!(value(&json, "flood halves placed"), 50.0);
    assert!(value(&json, "slowloris conns opened") >= 20.0);
    assert_eq!(value(&json, "flood connects failed"), 0.0);

    // The proxy held them while the legitimate load ran (2 fds per pair, 1 per flood half
    // and slowloris connection), and let them go once they closed.
    let before = value(&json, "proxy fds before");
    let during = value(&json, "proxy fds during");
    assert!(
        during >= before + 2.0 * 8.0 + 50.0 + 20.0,
        "{before} -> {during}"
    );
    assert_eq!(figure(&json, "proxy fds during")["direct"], before);
    assert!(value(&json, "proxy fds after") <= before + 4.0);
    assert!(value(&json, "proxy fds released in") < 10.0);
    assert!(value(&json, "proxy RSS during") > 0.0);
    // ... and counted them in its metrics: pending = flood halves + slowloris handshakes.
    assert!(value(&json, "proxy connections_pending (during)") >= 70.0);

    // Table, plots.
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains("| figure | with abuse | without abuse |"),
        "{md}"
    );
    let rounds =
        std::fs::read_to_string(dir.path().join("abuse_legit_throughput__2_pairs.svg")).unwrap();
    assert!(
        rounds.contains("with abuse / without abuse") && rounds.contains("without abuse = 1.0"),
        "{rounds}"
    );
    let fds = std::fs::read_to_string(dir.path().join("abuse_series.svg")).unwrap();
    assert!(fds.contains("proxy open fds"), "{fds}");
}
