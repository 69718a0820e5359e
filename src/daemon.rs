//! The daemon: opens the store, builds the fetcher, serves until shutdown.

use std::future::Future;
use std::sync::Arc;

use crate::config::Config;
use crate::fetch::{FetchOptions, Fetcher};
use crate::server::{self, ServerError};
use crate::source::{SourceError, Sources};
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
    server::serve(fetcher, listener, &config.socket, shutdown)
        .await
        .map_err(DaemonError::Server)
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
    };
    Ok(Arc::new(Fetcher::new(Arc::new(store), sources, options)))
}
