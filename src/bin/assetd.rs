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
    /// Transfers running at once; the rest wait in order
    #[arg(long, default_value_t = config::DEFAULT_MAX_TRANSFERS)]
    max_transfers: usize,
    /// Transfers running at once against one host
    #[arg(long, default_value_t = config::DEFAULT_MAX_PER_HOST)]
    max_per_host: usize,
    /// Tries per URL before the next mirror (starts over after progress)
    #[arg(long, default_value_t = config::DEFAULT_ATTEMPTS)]
    attempts: u32,
    /// No bytes for this long is a failure, retried (500ms, 30s, 2m): long
    /// enough for a slow CDN's first byte, short enough to notice a dead link
    #[arg(long, default_value = "30s", value_parser = config::parse_duration)]
    stall_timeout: std::time::Duration,
    /// Most bytes of cached assets; least recently used unleased ones are
    /// evicted past it (0: no cap)
    #[arg(long, default_value = "0", value_parser = config::parse_size)]
    max_cache_bytes: u64,
    /// Free space eviction keeps on the file system: bytes or a percentage
    /// (10%); 0 for none
    #[arg(long, default_value = "0", value_parser = config::parse_min_free)]
    min_free: config::MinFree,
    /// Time between garbage collections (lapsed leases, eviction)
    #[arg(long, default_value = "60s", value_parser = config::parse_duration)]
    gc_interval: std::time::Duration,
    /// Free space to keep on the store's file system, for logs and the node's
    /// other work
    #[arg(long, default_value = "512MiB", value_parser = config::parse_size)]
    reserve_free: u64,
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
        max_transfers: args.max_transfers,
        max_per_host: args.max_per_host,
        attempts: args.attempts,
        stall_timeout: args.stall_timeout,
        reserve_free: args.reserve_free,
        max_cache_bytes: (args.max_cache_bytes > 0).then_some(args.max_cache_bytes),
        min_free: args.min_free,
        gc_interval: args.gc_interval,
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
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal().map_err(|e| format!("installing signal handlers: {e}"))?;
        assetd::daemon::run(config, shutdown)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("assetd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now, before the socket is
/// bound: a signal sent as soon as clients can connect must stop the daemon
/// cleanly, not kill it. The returned future completes on either signal.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    })
}
