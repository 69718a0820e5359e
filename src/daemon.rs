//! The daemon: opens the store, builds the fetcher, serves until shutdown.
//!
//! Shutdown, in order: health flips to `NOT_SERVING` and the socket stops
//! taking connections; calls in flight get a bounded grace; then every task
//! the fetch layer started (transfers, prewarms, upkeep) is told to stop and
//! waited for, last-use times are flushed, temp files are removed, and the
//! socket file goes (on every exit path: [`Listener`] removes it on drop).

use std::future::Future;
use std::time::Duration;

use crate::config::Config;
use crate::fetch::{Fetcher, Lifetime};
use crate::server::{self, Listener, ServerError};
use crate::source::{Proxies, SourceError, Sources};
use crate::store::{Store, StoreError};

/// How long stopped tasks get to finish (a transfer removing its temp file,
/// the last flush) before the daemon exits anyway.
const TASK_GRACE: Duration = Duration::from_secs(5);

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store at the root could not be opened.
    #[error("opening the store: {0}")]
    Store(#[source] StoreError),
    /// The sources could not be set up.
    #[error("setting up sources: {0}")]
    Sources(#[source] SourceError),
    /// The metrics endpoint could not be bound.
    #[error("metrics listen {listen}: {source}")]
    Metrics {
        /// The address or path.
        listen: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server could not start or failed.
    #[error(transparent)]
    Server(ServerError),
}

/// Runs the daemon with `config` on an already-bound `listener` until
/// `shutdown` completes. Tests and the binary pass their own shutdown future
/// (the binary: SIGINT/SIGTERM); systemd will pass its listener.
pub async fn run(
    listener: Listener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let lifetime = Lifetime::default();
    // Opening scans blobs/ and reconciles meta.redb: off the runtime.
    let root = config.store.root.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&root))
        .await
        .map_err(|e| {
            DaemonError::Store(StoreError::Io {
                op: "open",
                path: config.store.root.clone(),
                source: std::io::Error::other(e),
            })
        })?
        .map_err(DaemonError::Store)?;
    let fetcher = fetcher(store, &config, lifetime.clone())?;
    if let Some(listen) = config.server.metrics_listen() {
        let endpoint =
            crate::metrics::bind(&listen)
                .await
                .map_err(|source| DaemonError::Metrics {
                    listen: config.server.metrics_listen.clone().unwrap_or_default(),
                    source,
                })?;
        tracing::info!(listen = %endpoint, "serving metrics");
        lifetime.tracker.spawn(crate::metrics::serve(
            endpoint,
            fetcher.clone(),
            lifetime.token.clone(),
        ));
    }
    let upkeep = fetcher.clone();
    lifetime.tracker.spawn(async move { upkeep.upkeep().await });
    lifetime.tracker.spawn(crate::systemd::report(
        fetcher.clone(),
        lifetime.token.clone(),
    ));
    let served = server::serve(fetcher.clone(), listener, &config.server, shutdown).await;
    lifetime.token.cancel();
    lifetime.tracker.close();
    if tokio::time::timeout(TASK_GRACE, lifetime.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?TASK_GRACE, "tasks still running; stopping anyway");
    }
    fetcher.close().await;
    tracing::info!("stopped");
    served.map_err(DaemonError::Server)
}

fn fetcher(store: Store, config: &Config, lifetime: Lifetime) -> Result<Fetcher, DaemonError> {
    let sources = &config.sources;
    let proxies = Proxies::from_env().map_err(DaemonError::Sources)?;
    let shown_proxies = format!("{proxies:?}");
    let sources = Sources::new(
        sources.file_roots(),
        sources.gcs_emulator.as_deref(),
        sources.gcs_anonymous,
        sources.policy(),
        proxies,
        &sources.ca,
    )
    .map_err(DaemonError::Sources)?;
    tracing::info!(
        root = %config.store.root.display(),
        max_size = config.fetch.max_size.0,
        file_roots = ?config.sources.file_roots,
        public_file_roots = ?config.sources.public_file_roots,
        admin_group = config.server.admin_group.as_deref().unwrap_or("none"),
        gcs_emulator = config
            .sources
            .gcs_emulator
            .as_deref()
            .map_or_else(|| "none".to_owned(), redacted_address),
        source_policy = %config.sources.policy().describe(),
        proxies = %shown_proxies,
        ca_file = %config.sources.ca_file.as_ref().map_or("none".to_owned(), |p| {
            format!("{} ({} certificates)", p.display(), config.sources.ca.len())
        }),
        "store open"
    );
    Ok(Fetcher::new(
        store,
        sources,
        config.fetch,
        config.cache,
        lifetime,
    ))
}

/// An operator's address (`host:port` or a URL) fit for the log: a URL's
/// user name, password and query hidden.
fn redacted_address(address: &str) -> String {
    match url::Url::parse(address) {
        Ok(url) if url.has_host() => crate::source::redacted(&url),
        _ => address.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_address_is_logged_without_credentials() {
        assert_eq!(
            redacted_address("http://user:SECRET@127.0.0.1:4443"),
            "http://127.0.0.1:4443/"
        );
        assert_eq!(redacted_address("127.0.0.1:4443"), "127.0.0.1:4443");
    }
}
