//! The meshpilot binary: parses the command line and hands off to one command module.

mod agent_cmd;
mod bootstrap_cmd;
mod cli;
mod config_dump;
mod config_tables;
mod control_plane;
mod discovery;
mod inject_cmd;
mod iptables_cmd;
mod logging;
mod monitoring;
mod proxy_config;
mod proxy_status;
mod tables;
mod webhook;

use clap::Parser;

// jemalloc, with the settings in `.cargo/config.toml`, gives freed pages back to the OS
// within a second: a burst of connecting sidecars no longer leaves its buffers in the
// steady-state RSS (2,000 held sidecars: glibc 157-167 MiB, jemalloc 141-147 MiB).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    logging::init(&cli.log_level, cli.log_format);
    let result = match cli.command {
        cli::Command::ConfigDump(args) => config_dump::run(args),
        cli::Command::Discovery(args) => discovery::run(args),
        cli::Command::Bootstrap(args) => bootstrap_cmd::run(args),
        cli::Command::Iptables(args) => iptables_cmd::run(args),
        cli::Command::ProxyStatus(args) => proxy_status::run(args),
        cli::Command::ProxyConfig(args) => proxy_config::run(args),
        cli::Command::Agent(args) => agent_cmd::run(args),
        cli::Command::Inject(args) => inject_cmd::run(args),
        cli::Command::Webhook(args) => webhook::run(args),
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
