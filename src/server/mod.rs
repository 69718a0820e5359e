//! The gRPC edge: the unix socket, the `assetd.v1.Assets` service, gRPC
//! health and reflection. Talks only to [`crate::fetch`].
//!
//! - [`request`]: a request parsed once into typed values plus the caller's
//!   identity and role;
//! - [`status`]: the one mapping from errors to `tonic::Status`;
//! - [`convert`]: typed results into proto messages;
//! - `assets` (the handlers) and `progress` (the server streams).

mod accept;
mod assets;
pub(crate) mod authority;
mod convert;
mod idle;
mod progress;
pub(crate) mod request;
mod socket;
mod status;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use tonic::transport::Server;

use crate::config::ServerConfig;
use crate::fetch::Fetcher;
use crate::proto::assets_server::AssetsServer;
pub use assets::AssetsService;
pub use socket::Listener;
pub use status::{RequestError, fetch_status, status};

/// The encoded descriptors of `assetd.v1`, served by reflection.
const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("assetd_descriptor");

/// How long shutdown waits for open calls and connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A failure to start or run the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process answers on the socket.
    #[error("another daemon is already serving {path}; stop it or choose another --socket")]
    AlreadyServing {
        /// The socket.
        path: PathBuf,
    },
    /// Something that is not a socket sits at the socket's path.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Setting up the socket failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The socket systemd passed cannot be served.
    #[error("socket activation: {reason}")]
    Activation {
        /// What is wrong.
        reason: String,
    },
    /// The listener was already taken.
    #[error("no listener to serve on")]
    NoListener,
    /// Building the reflection service failed.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed while serving.
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Calls open at once on one connection; more wait in the client (once it
/// has the daemon's settings). With [`MAX_REQUEST_BYTES`] and the
/// connections per user, this bounds what one user can make the daemon
/// buffer: 16 connections × 64 calls × 256 KiB = 256 MiB.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// Largest request message accepted: a fetch with 16 mirrors of the
/// longest URLs (8 KiB each) fits, as does a prewarm batch of a thousand
/// assets with ordinary URLs; a larger one is refused before it is held.
pub const MAX_REQUEST_BYTES: usize = 256 << 10;

/// Time between HTTP/2 pings on an open connection.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(30);
/// A ping unanswered this long closes the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Time between looks at whether the metadata store takes writes.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Keeps the Assets service's health in step with the metadata store:
/// `NOT_SERVING` while it takes no writes (a full disk, say; the calls that
/// need it fail then), `SERVING` again once it does. Stops when `stop`
/// fires.
async fn watch_metadata(
    fetcher: Fetcher,
    health: tonic_health::server::HealthReporter,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    let mut serving = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let writable = fetcher.metadata_writable();
        if writable == serving {
            continue;
        }
        serving = writable;
        if serving {
            health.set_serving::<AssetsServer<AssetsService>>().await;
        } else {
            tracing::warn!("metadata store not writable: health is NOT_SERVING until it is");
            health
                .set_not_serving::<AssetsServer<AssetsService>>()
                .await;
        }
    }
}

/// Serves the API on `listener` until `shutdown` completes: then health
/// flips to `NOT_SERVING`, no new connection is taken, and calls in flight
/// get [`SHUTDOWN_GRACE`] to finish. The socket file goes with `listener`.
pub async fn serve(
    fetcher: Fetcher,
    mut listener: Listener,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let Some(unix) = listener.take() else {
        return Err(ServerError::NoListener);
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AssetsServer<AssetsService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    // grpcurl 1.8.6 only speaks v1alpha.
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let shown = listener.path().map(|p| p.display().to_string());
    tracing::info!(socket = shown.as_deref().unwrap_or("inherited"), "serving");
    crate::systemd::ready();
    let watching = CancellationToken::new();
    tokio::spawn(watch_metadata(
        fetcher.clone(),
        health.clone(),
        watching.clone(),
    ));
    let (stopping, stopped) = oneshot::channel();
    let keeper = fetcher.clone();
    let shutdown = async move {
        shutdown.await;
        crate::systemd::stopping();
        // INVARIANT: before any connection closes, so a transfer whose
        // callers go with them keeps its bytes for the restart.
        keeper.keep_partials();
        // INVARIANT: the watch stops first, so it can't flip health back.
        watching.cancel();
        // INVARIANT: NOT_SERVING before the listener closes, so a health
        // check on an open connection sees the daemon going.
        health
            .set_not_serving::<AssetsServer<AssetsService>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = stopping.send(());
    };
    // Every connection goes through FixAuthority so that grpcurl 1.8.6 works
    // with an absolute socket path.
    let incoming = accept::incoming(unix, config);
    let serving = Server::builder()
        // A peer that stops answering pings (gone, or hostile) is closed.
        .http2_keepalive_interval(Some(KEEPALIVE_EVERY))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        // Marks each open call on its connection, for the idle clock.
        .layer(idle::TrackCalls)
        .add_service(health_service.max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(reflection_v1.max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(reflection_v1alpha.max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(
            AssetsServer::new(AssetsService::new(fetcher, config))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown);
    // Graceful shutdown waits for every client to close its connection; a
    // stuck client must not keep the daemon alive.
    let grace = async {
        match stopped.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            Err(_) => std::future::pending().await,
        }
    };
    let served = tokio::select! {
        served = serving => served,
        () = grace => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "clients still connected; stopping anyway");
            Ok(())
        }
    };
    drop(listener);
    served?;
    Ok(())
}
