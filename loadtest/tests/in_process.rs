//! Every scenario against streamhost's real io_uring data plane, run inside the generator
//! (`--xmpp in-process`: activation through the data plane's API). Small, bounded loads.

use std::process::Command;

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_streamhost-loadtest"))
        .args([
            "--xmpp",
            "in-process",
            "--time-limit",
            "60",
            "--io-timeout",
            "10",
        ])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("PASS") && stdout.contains("in-process"),
        "{stdout}"
    );
    stdout
}

#[test]
fn bulk_both_ways_copy_and_splice() {
    for engine in ["copy", "splice"] {
        let out = run(&[
            "--engine",
            engine,
            "bulk",
            "--pairs",
            "1,3",
            "--bytes",
            "32MiB",
            "--both-ways",
        ]);
        assert!(out.contains(&format!("engine {engine}")), "{out}");
        assert!(out.contains("aggregate, 3 pairs"), "{out}");
    }
}

#[test]
fn setup_idle_and_mixed() {
    let out = run(&["setup", "--count", "300", "--concurrency", "8"]);
    assert!(
        out.contains("setups") && out.contains("activation"),
        "{out}"
    );
    let out = run(&["idle", "--pairs", "300", "--hold", "1"]);
    assert!(out.contains("pairs held") && out.contains("300"), "{out}");
    let out = run(&["mixed", "--rate", "100", "--duration", "1", "--max", "8MiB"]);
    assert!(out.contains("goodput"), "{out}");
}
