//! Running the generator's binary from the tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::process::Command;

pub fn generator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_streamhost-loadtest"))
}

/// Runs `cmd`, which must exit 0 and print each of `needles`; returns its stdout. A failure
/// shows stdout and stderr.
pub fn run_passing(cmd: &mut Command, needles: &[&str]) -> String {
    let out = cmd.output().expect("the generator runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?}:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in needles {
        assert!(stdout.contains(n), "{n:?} missing:\n{stdout}");
    }
    stdout
}
