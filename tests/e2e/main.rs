//! End-to-end tests: the real `assetd` binary on a temp socket and root,
//! driven through its gRPC API, `assetctl` and the real grpcurl.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod admin;
mod cli;
mod common;
mod config;
mod disk;
mod fair;
mod fetch;
mod file_access;
mod gcs;
mod grpcurl;
mod hostile_edge;
mod hostile_store;
mod leases;
mod lifecycle;
mod metrics;
mod oracle;
mod pipeline;
mod policy;
mod proxy_tls;
mod ranged;
mod seams;
mod shutdown;
mod systemd;
