//! Every scenario against streamhost's real io_uring data plane, run inside the generator
//! (`--xmpp in-process`: activation through the data plane's API). Small, bounded loads.

mod common;

use common::{generator, run_passing};

fn run(args: &[&str]) -> String {
    run_passing(
        generator()
            .args([
                "--xmpp",
                "in-process",
                "--time-limit",
                "60",
                "--io-timeout",
                "10",
            ])
            .args(args),
        &["PASS", "in-process"],
    )
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
