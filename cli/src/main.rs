use std::process::ExitCode;

use clap::Parser;
use indigo_cli::{self as cli, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    match cli::run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the reason and its causes, for people and for scripts' logs.
            eprintln!("indigo: {}", format!("{error:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
