//! The alerting rules in `deploy/prometheus/`: valid for Prometheus (`promtool check
//! rules`) and firing exactly when their unit tests say (`promtool test rules`).
//! Needs Debian's `prometheus` package (`.ci/test` installs it).

use std::path::Path;
use std::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(DIR)
        .output()
        .expect("promtool runs (apt-get install prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_are_valid() {
    assert!(Path::new(DIR).join("streamhost-alerts.yml").exists());
    let out = promtool(&["check", "rules", "streamhost-alerts.yml"]);
    assert!(out.contains("SUCCESS: 9 rules found"), "{out}");
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    let out = promtool(&["test", "rules", "streamhost-alerts.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}
