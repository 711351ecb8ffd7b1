//! `--xmpp component:...` through a real XMPP server: Prosody routes the generator's
//! activation IQs (from its own component domain) to the proxy's component.

mod support;

use std::process::Command;
use support::prosody::Prosody;

#[test]
fn activations_through_prosody_reach_the_proxy() {
    let prosody = Prosody::with_components(&[
        ("proxy.localhost", "p-secret"),
        ("lt.localhost", "l-secret"),
    ]);
    let proxy = support::MiniProxy::start(
        prosody.component(),
        "proxy.localhost",
        "p-secret",
        support::Fault::None,
    );
    let out = Command::new(env!("CARGO_BIN_EXE_streamhost-loadtest"))
        .arg("--xmpp")
        .arg(format!(
            "component:{}:lt.localhost:l-secret",
            prosody.component()
        ))
        .arg("--proxy")
        .arg(proxy.addr.to_string())
        .args([
            "--time-limit",
            "60",
            "setup",
            "--count",
            "50",
            "--concurrency",
            "4",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\nprosody:\n{}",
        String::from_utf8_lossy(&out.stderr),
        prosody.logs()
    );
    assert!(
        stdout.contains("component lt.localhost") && stdout.contains("PASS"),
        "{stdout}"
    );
}

#[test]
fn wrong_component_secret_is_a_clear_error() {
    let prosody = Prosody::with_components(&[("lt.localhost", "l-secret")]);
    let out = Command::new(env!("CARGO_BIN_EXE_streamhost-loadtest"))
        .arg("--xmpp")
        .arg(format!(
            "component:{}:lt.localhost:nope",
            prosody.component()
        ))
        .args(["--proxy", "127.0.0.1:9", "setup", "--count", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lt.localhost"), "{err}");
}
