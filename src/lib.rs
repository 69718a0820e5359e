//! assetd: a node-local daemon that puts large, immutable assets (VM kernels,
//! root filesystem images, model weights) into a verified, content-addressed
//! cache that every sandbox on the node shares read-only.
//!
//! Clients ask over gRPC on a unix socket: "make sure `sha256:X`, from this
//! URL, is on this node". Bytes stream to a temp file while being hashed and
//! counted under a size limit; only a verified, fsynced file is renamed into
//! the cache.
//!
//! # Layout
//!
//! - [`digest`]: `sha256:<hex>` parsed once into a [`digest::Digest`].
//! - [`config`]: one serde tree, a section per component, validated once.
//! - [`store`]: the on-disk cache behind an in-memory index: ingest (limit,
//!   hash, temp file), commit, pins, delete, eviction, verify, `meta.redb`,
//!   layout checks. Knows nothing of networks.
//! - [`source`]: one module per URL scheme behind the [`source::Source`]
//!   trait, and the source policy (which addresses callers' URLs may reach).
//!   Knows nothing of disk.
//! - [`fetch`]: the only door to the store: single flight, transfers,
//!   limits (per user too), prewarm, upkeep.
//! - [`server`]: the tonic edge on a unix socket: requests parsed once with
//!   the caller's role, errors mapped to statuses once.
//! - [`metrics`]: Prometheus counters and gauges, served on loopback.
//! - [`systemd`]: socket activation and the notify protocol.
//! - [`daemon`]: wires them together; `run(listener, config, shutdown)`.
//! - [`proto`]: the generated `assetd.v1` messages, server and client.
//!
//! `fuzzing` (hidden) gives the fuzz targets in `fuzz/` the parsers that
//! are private to their modules.

pub mod config;
pub mod daemon;
pub mod digest;
pub mod fetch;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod server;
pub mod source;
pub mod store;
pub mod systemd;

/// `err` and its causes, outermost first, joined with ": ".
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The generated `assetd.v1` API.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("assetd.v1");
}
