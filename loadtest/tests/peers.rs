//! `peers` in a tiny configuration: the spawned stand-in proxy as "streamhost", Prosody's
//! mod_proxy65 beside it when Prosody is installed (otherwise the line that says how to
//! install it), the same transfers interleaved with direct TCP. Loopback only, bounded.

mod common;

use common::{generator, run_passing};

fn fake_proxy_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    profile_dir.join("examples").join("fake_streamhost")
}

#[test]
fn peers_in_a_tiny_configuration() {
    let bin = fake_proxy_bin();
    assert!(bin.is_file(), "{} not built", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let out = run_passing(
        generator()
            .arg("--proxy-bin")
            .arg(&bin)
            .args(["--time-limit", "60", "--io-timeout", "10", "--rounds", "2"])
            .arg("--report")
            .arg(dir.path())
            .args(["peers", "--bytes", "16MiB"]),
        &[
            "== peers",
            "streamhost, 1 pairs",
            "direct, 1 pairs",
            "ejabberd",
            "PASS",
        ],
    );
    if streamhost_loadtest::peers::installed("prosody") {
        let line = out
            .lines()
            .find(|l| l.contains("prosody mod_proxy65, 1 pairs"))
            .unwrap_or_else(|| panic!("no Prosody figure:\n{out}"));
        assert!(line.contains("x ("), "{line}");
        assert!(out.contains("prosody mod_proxy65 CPU, 1 pairs"), "{out}");
    } else {
        assert!(out.contains("apt-get install prosody"), "{out}");
    }
    let svg =
        std::fs::read_to_string(dir.path().join("peers_ratio_to_direct__1_pairs.svg")).unwrap();
    assert!(svg.contains("streamhost (median") && svg.contains("direct = 1.0"));
}
