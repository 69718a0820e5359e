//! The daemon: opens the store, builds the fetcher, serves until shutdown.

use std::future::Future;
use std::sync::Arc;

use crate::config::{Config, MinFree};
use crate::fetch::{FetchOptions, Fetcher};
use crate::server::{self, ServerError};
use crate::source::{SourceError, Sources};
use crate::store::EvictPolicy;
use crate::store::{Store, StoreError};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store at the root could not be opened.
    #[error("opening the store: {0}")]
    Store(#[source] StoreError),
    /// The sources could not be set up.
    #[error("setting up sources: {0}")]
    Sources(#[source] SourceError),
    /// The server could not start or failed.
    #[error(transparent)]
    Server(ServerError),
}

/// Runs the daemon with `config` until `shutdown` completes. Tests pass their
/// own shutdown future; the binary passes SIGINT/SIGTERM.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    // The socket first: a second daemon is refused before it touches a root.
    let listener = server::bind(&config.socket).map_err(DaemonError::Server)?;
    let fetcher = match fetcher(&config) {
        Ok(fetcher) => fetcher,
        Err(e) => {
            server::unbind(&config.socket);
            return Err(e);
        }
    };
    let gc = tokio::spawn(collect_garbage(fetcher.clone(), config.gc_interval));
    let served = server::serve(fetcher, listener, &config.socket, shutdown).await;
    gc.abort();
    served.map_err(DaemonError::Server)
}

/// Every `interval`: drops lapsed leases and evicts what no longer fits.
async fn collect_garbage(fetcher: Arc<Fetcher>, interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match fetcher.gc(false).await {
            Ok(report) if !report.evicted.is_empty() || report.lapsed_pins > 0 => {
                let bytes: u64 = report.evicted.iter().map(|b| b.size).sum();
                tracing::info!(
                    evicted = report.evicted.len(),
                    bytes,
                    lapsed_pins = report.lapsed_pins,
                    "gc"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "gc failed"),
        }
    }
}

fn fetcher(config: &Config) -> Result<Arc<Fetcher>, DaemonError> {
    let store = Store::open(&config.root).map_err(DaemonError::Store)?;
    let sources = Sources::new(
        config.file_roots.clone(),
        config.gcs_emulator.as_deref(),
        config.gcs_anonymous,
    )
    .map_err(DaemonError::Sources)?;
    tracing::info!(
        root = %config.root.display(),
        max_size = config.max_size,
        file_roots = ?config.file_roots,
        gcs_emulator = config.gcs_emulator.as_deref().unwrap_or("none"),
        "store open"
    );
    let options = FetchOptions {
        max_size: config.max_size,
        max_transfers: config.max_transfers,
        max_per_host: config.max_per_host,
        attempts: config.attempts,
        stall_timeout: config.stall_timeout,
        reserve_free: config.reserve_free,
        evict: EvictPolicy {
            max_bytes: config.max_cache_bytes,
            min_free_bytes: match config.min_free {
                MinFree::Bytes(n) => n,
                _ => 0,
            },
            min_free_percent: match config.min_free {
                MinFree::Percent(p) => p,
                _ => 0,
            },
        },
    };
    Ok(Arc::new(Fetcher::new(Arc::new(store), sources, options)))
}
