//! The meshpilot binary: parses the command line and hands off to one command module.

mod cli;
mod config_dump;
mod logging;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    logging::init(&cli.log_level, cli.log_format);
    let result = match cli.command {
        cli::Command::ConfigDump(args) => config_dump::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One line: the chain of causes, outermost first.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
