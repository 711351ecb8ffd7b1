use clap::Parser;
use std::process::ExitCode;
use streamhost_loadtest::cli::{Cli, Cmd, QuickArgs};
use streamhost_loadtest::report::{compare, table};
use streamhost_loadtest::runner;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cmd = cli.cmd.unwrap_or(Cmd::Quick(QuickArgs::default()));
    if let Cmd::Compare { a, b } = &cmd {
        return match (compare::load(a), compare::load(b)) {
            (Ok(a), Ok(b)) => {
                print!("{}", compare::compare(&a, &b));
                ExitCode::SUCCESS
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("streamhost-loadtest: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match runner::run(&cmd, &cli.common) {
        Ok(rep) => {
            print!("{}", table::terminal(&rep));
            if let Some(d) = &cli.common.report {
                println!("report written to {}", d.display());
            }
            if rep.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("streamhost-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}
