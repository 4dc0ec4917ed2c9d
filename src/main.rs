//! The `hero_executor` binary: parse the CLI, set up logging, run the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use hero_executor::cli::Cli;
use hero_executor::config::LogFormat;
use hero_executor::{AppState, server};
use tracing_subscriber::EnvFilter;

/// mimalloc: a call allocates and frees many small buffers across threads; glibc's malloc
/// took a fifth of the executor's CPU under load (`make bench`, README Performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = &cli.command {
        return run_command(&cli, command);
    }
    init_tracing(cli.log_format);
    let config = match cli.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("hero_executor: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.info {
        print!("{}", hero_executor::lifecycle::info(&config));
        return ExitCode::SUCCESS;
    }
    if cli.start || cli.stop {
        return lifecycle(&cli, &config);
    }
    let workers = cli.workers.map_or_else(server::default_workers, usize::from);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hero_executor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let bound = match server::bind(&config).await {
            Ok(bound) => bound,
            Err(e) => {
                eprintln!("hero_executor: {e}");
                return ExitCode::FAILURE;
            }
        };
        let state = match AppState::new(config) {
            Ok(state) => state,
            Err(e) => {
                eprintln!("hero_executor: {e}");
                return ExitCode::FAILURE;
            }
        };
        server::run(state, bound, server::termination_signal()).await;
        ExitCode::SUCCESS
    })
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

/// Runs a client-side subcommand against the daemon.
fn run_command(cli: &Cli, command: &hero_executor::cli::Command) -> ExitCode {
    let result = hero_executor::config::default_socket_dir(cli.socket_dir.as_deref())
        .map_err(hero_executor::cli::Failed::from)
        .and_then(|socket_dir| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))?;
            runtime.block_on(hero_executor::cli::run(command, &socket_dir))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failed) => {
            eprintln!("hero_executor: {}", failed.message);
            ExitCode::from(failed.code)
        }
    }
}

/// `--start` / `--stop`.
fn lifecycle(cli: &Cli, config: &hero_executor::config::Config) -> ExitCode {
    let timeout = std::time::Duration::from_secs(cli.start_timeout_secs.max(1));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hero_executor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.start {
            true => hero_executor::lifecycle::start(config, &cli.daemon_args(config), timeout).await,
            false => hero_executor::lifecycle::stop(config, timeout).await,
        }
    });
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hero_executor: {e}");
            ExitCode::FAILURE
        }
    }
}
