//! `peers` in a tiny configuration: the spawned stand-in proxy as "streamhost", beside
//! whichever peers are installed here (Prosody's and ejabberd's mod_proxy65, HAProxy as
//! the plain TCP relay), each measured, or named with how to install it. Loopback only,
//! bounded; nothing the run started is left running.

mod common;

use common::{generator, run_passing};
use streamhost_loadtest::peers::KNOWN;

fn fake_proxy_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    profile_dir.join("examples").join("fake_streamhost")
}

/// Processes whose command line or working directory is under `dir`.
fn processes_under(dir: &std::path::Path) -> Vec<String> {
    let d = dir.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        if cmd.contains(&d) || cwd.starts_with(dir) {
            out.push(format!("{:?}: {cmd}", e.file_name()));
        }
    }
    out
}

#[test]
fn peers_in_a_tiny_configuration() {
    let bin = fake_proxy_bin();
    assert!(bin.is_file(), "{} not built", bin.display());
    let dir = tempfile::tempdir().unwrap();
    // The peers' temp dirs go under this one, to find anything left behind.
    let tmp = tempfile::tempdir().unwrap();
    let out = run_passing(
        generator()
            .env("TMPDIR", tmp.path())
            .arg("--proxy-bin")
            .arg(&bin)
            .args(["--time-limit", "120", "--io-timeout", "10", "--rounds", "2"])
            .arg("--report")
            .arg(dir.path())
            .args(["peers", "--bytes", "16MiB", "--pairs", "1,2"])
            .args(["--setups", "20", "--concurrency", "4", "--idle-pairs", "10"])
            .args(["--hold", "1"]),
        &[
            "== peers",
            "streamhost, 1 pairs",
            "streamhost, 2 pairs",
            "direct, 1 pairs",
            "streamhost setups, concurrency 4",
            "streamhost setup p99, concurrency 4",
            "streamhost RSS per idle pair (10 pairs)",
            "PASS",
        ],
    );
    for k in KNOWN {
        let (name, how) = (k.name, k.how);
        if (k.installed)() {
            for n in [1, 2] {
                let fig = format!("{name}, {n} pairs");
                let line = out
                    .lines()
                    .find(|l| l.contains(&fig))
                    .unwrap_or_else(|| panic!("no {fig}:\n{out}"));
                assert!(line.contains("x ("), "{line}");
                assert!(out.contains(&format!("{name} CPU, {n} pairs")), "{out}");
            }
            // Setups and idle pairs for the SOCKS5 peers; the plain relay has neither.
            let socks5 = !name.starts_with("haproxy");
            for what in ["setups, concurrency 4", "RSS per idle pair (10 pairs)"] {
                let fig = format!("{name} {what}");
                assert_eq!(out.contains(&fig), socks5, "{fig}:\n{out}");
            }
        } else {
            assert!(out.contains(how), "{name}: no {how:?}\n{out}");
        }
    }
    let left = processes_under(tmp.path());
    assert!(left.is_empty(), "left running: {left:?}");
    let svg =
        std::fs::read_to_string(dir.path().join("peers_ratio_to_direct__1_pairs.svg")).unwrap();
    assert!(svg.contains("streamhost (median") && svg.contains("direct = 1.0"));
    let svg = std::fs::read_to_string(dir.path().join("peers_throughput_vs_pairs.svg")).unwrap();
    assert!(svg.contains("ratio to direct") && svg.contains("pairs (log scale)"));
    let svg = std::fs::read_to_string(
        dir.path()
            .join("peers_latency_cdf_setup__concurrency_4.svg"),
    )
    .unwrap();
    assert!(svg.contains("streamhost") && svg.contains("latency (log scale)"));
}
