//! `assetd`: the daemon. Parses flags, sets up logging, runs until SIGINT or
//! SIGTERM.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use assetd::config::{self, Config};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// Node-local fetcher of verified assets into a content-addressed cache.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Store folder [default: /var/lib/assetd for root, else ~/.cache/assetd]
    #[arg(long, env = "ASSETD_ROOT")]
    root: Option<PathBuf>,
    /// gRPC unix socket [default: /run/assetd/assetd.sock for root, else
    /// $XDG_RUNTIME_DIR/assetd/assetd.sock]
    #[arg(long, env = "ASSETD_SOCKET")]
    socket: Option<PathBuf>,
    /// A folder file:// URLs may read from (repeatable); none disables file://
    #[arg(long = "file-root", value_name = "DIR")]
    file_roots: Vec<PathBuf>,
    /// Largest asset accepted, in bytes or with a unit (512MiB, 8GiB)
    #[arg(long, default_value = "8GiB", value_parser = config::parse_size)]
    max_size: u64,
    /// Read gs:// without credentials (public buckets); otherwise Application
    /// Default Credentials
    #[arg(long)]
    gcs_anonymous: bool,
    /// A GCS emulator (host:port or URL) to read gs:// from, without credentials
    #[arg(long, value_name = "HOST", env = "STORAGE_EMULATOR_HOST")]
    gcs_emulator: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let (default_root, default_socket) = config::default_paths();
    let config = Config {
        root: args.root.unwrap_or(default_root),
        socket: args.socket.unwrap_or(default_socket),
        file_roots: args.file_roots,
        max_size: args.max_size,
        gcs_emulator: args.gcs_emulator.filter(|h| !h.is_empty()),
        gcs_anonymous: args.gcs_anonymous,
    };
    let config = match config.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("assetd: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("assetd: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(assetd::daemon::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("assetd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
