//! The files under deploy/ agree with the code: the Grafana dashboard queries only
//! metrics the endpoint exports, the Kubernetes config is valid and wired to its Secret
//! and probe, and the systemd unit's command lines are accepted by the binary.

mod common;

use common::scrape;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use streamhost::config::{Config, Engine};
use streamhost::control::config::Secret;
use streamhost::control::{self, ControlConfig};

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `expr` string anywhere in the dashboard.
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("streamhost_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Sample names of a live scrape with a (never connected) component configured.
fn exported_names() -> BTreeSet<String> {
    let h = Arc::new(streamhost::Server::start(common::config(Engine::Copy)).unwrap());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cc = ControlConfig {
        server: format!("127.0.0.1:{port}"),
        jid: "proxy.example.org".into(),
        secret: Some(Secret::new("x")),
        ..ControlConfig::default()
    };
    let c = control::spawn(cc.resolve(h.local_addrs()).unwrap(), h.clone()).unwrap();
    let local = "127.0.0.1:0".parse().unwrap();
    let m = streamhost::metrics::serve(local, h.clone(), Some(c.status())).unwrap();
    let (status, _, body) = scrape::get(m.local_addr(), "/metrics");
    assert_eq!(status, 200);
    m.stop();
    c.stop();
    scrape::names(&body)
}

#[test]
fn grafana_dashboard_queries_only_exported_metrics() {
    let d: Value = serde_json::from_str(&read("deploy/grafana/streamhost-dashboard.json"))
        .expect("the dashboard is JSON");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "DS_PROMETHEUS"));
    let panels = d["panels"].as_array().unwrap();
    let ids: BTreeSet<_> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
    }

    let mut all = Vec::new();
    exprs(&d, &mut all);
    assert!(all.len() >= panels.len());
    let exported = exported_names();
    let mut used = BTreeSet::new();
    for e in &all {
        let names = metric_names(e);
        assert!(!names.is_empty(), "no streamhost metric in {e}");
        for n in names {
            assert!(exported.contains(&n), "{n} (in {e}) is not exported");
            used.insert(n);
        }
    }
    for want in [
        "streamhost_relay_bytes_total",
        "streamhost_relays_active",
        "streamhost_connections_open",
        "streamhost_refusals_total",
        "streamhost_component_activation_duration_seconds_bucket",
        "streamhost_component_state",
    ] {
        assert!(used.contains(want), "the dashboard does not show {want}");
    }
}

/// The `streamhost.toml: |` block of the ConfigMap, dedented.
fn configmap_toml(yaml: &str) -> String {
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.ends_with("streamhost.toml: |"));
    lines.next().expect("a streamhost.toml key");
    let mut out = String::new();
    for l in lines.take_while(|l| l.is_empty() || l.starts_with("    ")) {
        out.push_str(l.get(4..).unwrap_or(""));
        out.push('\n');
    }
    out
}

#[test]
fn kubernetes_config_is_valid_and_wired_to_secret_and_probe() {
    let yaml = read("deploy/kubernetes/streamhost.yaml");
    // Every pod advertises its own node: the init container renders the node's address
    // (downward API) into the config the proxy reads.
    let template = configmap_toml(&yaml);
    assert!(
        template.contains("advertise = [\"@NODE_IP@:7777\"]"),
        "{template}"
    );
    for wired in [
        "sed -e \"s/@NODE_IP@/$NODE_IP/g\"",
        "/etc/streamhost-template/streamhost.toml > /etc/streamhost/streamhost.toml",
        "- name: NODE_IP\n              valueFrom:\n                fieldRef:\n                  fieldPath: status.hostIP",
        "- name: template\n              mountPath: /etc/streamhost-template",
        "- name: config\n              mountPath: /etc/streamhost\n",
        "- name: config\n          emptyDir:",
        "args: [\"--config\", \"/etc/streamhost/streamhost.toml\"",
    ] {
        assert!(yaml.contains(wired), "not wired: {wired}");
    }
    let rendered = template.replace("@NODE_IP@", "192.0.2.10");
    let mut c = Config::from_toml_str(&rendered, "configmap").unwrap();
    let comp = c.component.as_mut().expect("a [component] section");
    let var = comp
        .secret_env
        .take()
        .expect("the secret comes from the environment");
    assert!(
        yaml.contains(&format!(
            "- name: {var}\n              valueFrom:\n                secretKeyRef:"
        )),
        "{var} is not set from the Secret"
    );
    assert_eq!(comp.advertise, ["192.0.2.10:7777"]);
    comp.secret = Some(Secret::new("x"));
    c.validate().unwrap();
    let port = c
        .metrics
        .listen
        .expect("metrics enabled for the probe")
        .port();
    assert!(yaml.contains(&format!(
        "- name: metrics\n              containerPort: {port}\n"
    )));
    assert!(yaml.contains("path: /ready\n              port: metrics\n"));
    assert!(yaml.contains("hostNetwork: true"));
}

#[test]
fn systemd_unit_command_lines_are_accepted() {
    let unit = read("deploy/systemd/streamhost.service");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("streamhost.toml");
    std::fs::write(
        &conf,
        "listen = [\"127.0.0.1:7777\"]\n[metrics]\nlisten = \"127.0.0.1:9477\"\n",
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_streamhost");
    for key in ["ExecStartPre=", "ExecStart="] {
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}"));
        let mut args: Vec<String> = line
            .split_whitespace()
            .map(|a| a.replace("/etc/streamhost/streamhost.toml", conf.to_str().unwrap()))
            .collect();
        assert_eq!(args.remove(0), "/usr/local/bin/streamhost");
        if key == "ExecStart=" {
            // Parse the same flags, then validate instead of running.
            args.extend(["check-config".into(), conf.to_str().unwrap().into()]);
        }
        let out = Command::new(bin).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{key}{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for l in [
        "io_uring_setup io_uring_enter io_uring_register",
        "LimitNOFILE=1048576",
        "Type=notify",
        "NotifyAccess=all",
        "RuntimeDirectory=streamhost",
    ] {
        assert!(unit.contains(l), "{l}");
    }
}
