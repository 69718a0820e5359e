//! `assetd.v1.Assets`: request validation, the calls into the fetch layer,
//! and the one mapping from errors to gRPC status codes.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::server::UdsConnectInfo;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument as _;

use super::progress;
use crate::digest::Digest;
use crate::fetch::{FetchError, Fetched, Fetcher, Lease, Want};
use crate::proto;
use crate::source::SourceError;
use crate::store::{AssetInfo, Blob, ListQuery, StoreError};

/// List page size when the request gives none.
const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest list page: keeps one response well under gRPC's 4 MiB default.
const MAX_PAGE_SIZE: usize = 1000;

/// The service, over a shared [`Fetcher`].
pub struct AssetsService {
    fetcher: Arc<Fetcher>,
}

impl AssetsService {
    /// A service answering from `fetcher`.
    pub fn new(fetcher: Arc<Fetcher>) -> AssetsService {
        AssetsService { fetcher }
    }
}

#[tonic::async_trait]
impl proto::assets_server::Assets for AssetsService {
    async fn fetch(
        &self,
        request: Request<proto::FetchRequest>,
    ) -> Result<Response<proto::FetchResponse>, Status> {
        let span = peer_span("Fetch", &request);
        let want = want(request.into_inner())?;
        let fetched = self
            .fetcher
            .fetch(want)
            .instrument(span)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(fetch_response(fetched)))
    }

    type FetchProgressStream = progress::EventStream;

    async fn fetch_progress(
        &self,
        request: Request<proto::FetchRequest>,
    ) -> Result<Response<Self::FetchProgressStream>, Status> {
        let span = peer_span("FetchProgress", &request);
        let want = want(request.into_inner())?;
        let started = span
            .in_scope(|| self.fetcher.start(want))
            .map_err(|e| status(&e))?;
        Ok(Response::new(progress::events(started, span)))
    }

    async fn stat(
        &self,
        request: Request<proto::StatRequest>,
    ) -> Result<Response<proto::StatResponse>, Status> {
        let digest = parse_digest(&request.get_ref().digest)?;
        let info = self.fetcher.store().info(&digest).map_err(store_status)?;
        let info = info.ok_or_else(|| status(&FetchError::NotCached { digest }))?;
        Ok(Response::new(proto::StatResponse {
            asset: Some(asset(info)),
        }))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let req = request.into_inner();
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(Digest::from_hex(token).map_err(|e| {
                Status::invalid_argument(format!("malformed page_token {token:?}: {}", e.reason))
            })?),
        };
        let page_size = match req.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let query = ListQuery {
            after,
            // One more than the page tells whether another page follows.
            limit: page_size + 1,
            lease: nonempty(req.lease),
            url_prefix: nonempty(req.url_prefix),
            unleased: req.unleased,
        };
        let mut found = self.fetcher.store().list(&query).map_err(store_status)?;
        let next_page_token = if found.len() > page_size {
            found.truncate(page_size);
            found
                .last()
                .map(|a| a.blob.digest.hex())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(proto::ListResponse {
            assets: found.into_iter().map(asset).collect(),
            next_page_token,
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let span = peer_span("Delete", &request);
        require_admin(&request)?;
        let digest = parse_digest(&request.get_ref().digest)?;
        let force = request.get_ref().force;
        let size = self
            .fetcher
            .delete(&digest, force)
            .map_err(|e| status(&e))?;
        span.in_scope(|| tracing::info!(%digest, bytes = size, force, "deleted"));
        Ok(Response::new(proto::DeleteResponse { size }))
    }

    async fn release_lease(
        &self,
        request: Request<proto::ReleaseLeaseRequest>,
    ) -> Result<Response<proto::ReleaseLeaseResponse>, Status> {
        let span = peer_span("ReleaseLease", &request);
        let lease = parse_lease(request.into_inner().lease)?;
        let released = self
            .fetcher
            .release(lease.clone())
            .await
            .map_err(|e| status(&e))?;
        span.in_scope(|| tracing::info!(lease, released, "lease released"));
        Ok(Response::new(proto::ReleaseLeaseResponse {
            released: released as u32,
        }))
    }

    async fn gc(
        &self,
        request: Request<proto::GcRequest>,
    ) -> Result<Response<proto::GcResponse>, Status> {
        let span = peer_span("Gc", &request);
        require_admin(&request)?;
        let dry_run = request.get_ref().dry_run;
        let report = self.fetcher.gc(dry_run).await.map_err(|e| status(&e))?;
        let bytes = report.evicted.iter().map(|b| b.size).sum();
        let evicted = report.evicted.len();
        span.in_scope(|| {
            tracing::info!(
                dry_run,
                evicted,
                bytes,
                lapsed_pins = report.lapsed_pins,
                "gc"
            )
        });
        Ok(Response::new(proto::GcResponse {
            evicted: report.evicted.into_iter().map(bare_asset).collect(),
            bytes,
            lapsed_pins: report.lapsed_pins as u32,
        }))
    }

    async fn verify(
        &self,
        request: Request<proto::VerifyRequest>,
    ) -> Result<Response<proto::VerifyResponse>, Status> {
        require_admin(&request)?;
        let digest = match request.get_ref().digest.as_str() {
            "" => None,
            d => Some(parse_digest(d)?),
        };
        let report = self.fetcher.verify(digest).await.map_err(|e| status(&e))?;
        let corrupt = report
            .corrupt
            .into_iter()
            .map(|c| proto::CorruptAsset {
                digest: c.digest.to_string(),
                actual: c.actual.to_string(),
                quarantined_path: c.quarantined.display().to_string(),
            })
            .collect();
        Ok(Response::new(proto::VerifyResponse {
            checked: report.checked as u32,
            corrupt,
        }))
    }

    type PrewarmStream = progress::PrewarmStream;

    async fn prewarm(
        &self,
        request: Request<proto::PrewarmRequest>,
    ) -> Result<Response<Self::PrewarmStream>, Status> {
        let span = peer_span("Prewarm", &request);
        let req = request.into_inner();
        let mut digests = Vec::with_capacity(req.assets.len());
        let mut wants = Vec::with_capacity(req.assets.len());
        for (index, asset) in req.assets.into_iter().enumerate() {
            digests.push(asset.digest.clone());
            let want = want(asset)
                .map_err(|s| Status::invalid_argument(format!("asset {index}: {}", s.message())))?;
            wants.push(want);
        }
        let concurrency = match req.concurrency as usize {
            0 => crate::fetch::DEFAULT_PREWARM_CONCURRENCY,
            n => n,
        };
        span.in_scope(|| tracing::info!(assets = wants.len(), concurrency, "prewarm"));
        let events = self.fetcher.prewarm(wants, concurrency);
        Ok(Response::new(progress::prewarm_events(events, digests)))
    }
}

/// A span naming the call and the caller's credentials, for the log lines
/// the call makes.
fn peer_span<T>(call: &'static str, request: &Request<T>) -> tracing::Span {
    let cred = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred);
    match cred {
        Some(c) => tracing::info_span!("rpc", call, uid = c.uid(), pid = c.pid()),
        None => tracing::info_span!("rpc", call),
    }
}

/// Changing the cache is for admins: root, or the daemon's own user. Every
/// user with access to the socket may fetch and look.
fn require_admin<T>(request: &Request<T>) -> Result<(), Status> {
    let me = nix::unistd::geteuid().as_raw();
    let cred = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred);
    match cred.map(|c| c.uid()) {
        Some(uid) if uid == 0 || uid == me => Ok(()),
        Some(uid) => Err(Status::permission_denied(format!(
            "only uid 0 or the daemon's uid {me} may change or verify the cache; the caller is uid {uid}"
        ))),
        None => Err(Status::permission_denied(
            "the caller's credentials are unknown; only uid 0 or the daemon's uid may do this",
        )),
    }
}

fn parse_digest(value: &str) -> Result<Digest, Status> {
    value
        .parse()
        .map_err(|e: crate::digest::DigestError| Status::invalid_argument(e.to_string()))
}

/// Parses a fetch request into what the fetch layer takes.
fn want(req: proto::FetchRequest) -> Result<Want, Status> {
    let lease = match req.lease.as_str() {
        "" if req.lease_ttl_seconds > 0 => {
            return Err(Status::invalid_argument(
                "lease_ttl_seconds without a lease",
            ));
        }
        "" => None,
        _ => Some(Lease {
            name: parse_lease(req.lease)?,
            ttl: nonzero(req.lease_ttl_seconds).map(Duration::from_secs),
        }),
    };
    Ok(Want {
        digest: parse_digest(&req.digest)?,
        url: req.url,
        mirrors: req.mirrors,
        size: nonzero(req.size),
        max_size: nonzero(req.max_size),
        lease,
    })
}

/// A lease name: 1 to 256 printable characters.
fn parse_lease(name: String) -> Result<String, Status> {
    let printable = !name.is_empty() && name.len() <= 256 && !name.chars().any(char::is_control);
    if printable {
        Ok(name)
    } else {
        Err(Status::invalid_argument(format!(
            "malformed lease {name:?}: want 1 to 256 printable characters"
        )))
    }
}

pub(super) fn fetch_response(fetched: Fetched) -> proto::FetchResponse {
    proto::FetchResponse {
        digest: fetched.blob.digest.to_string(),
        path: fetched.blob.path.display().to_string(),
        size: fetched.blob.size,
        cache_hit: fetched.cache_hit,
    }
}

fn nonzero(n: u64) -> Option<u64> {
    (n != 0).then_some(n)
}

fn asset(info: AssetInfo) -> proto::Asset {
    proto::Asset {
        last_used_unix_ms: info.last_used,
        urls: info.urls,
        leases: info
            .pins
            .into_iter()
            .map(|p| proto::LeaseHold {
                lease: p.lease,
                expires_unix_ms: p.expires.unwrap_or(0),
            })
            .collect(),
        ..bare_asset(info.blob)
    }
}

fn bare_asset(blob: Blob) -> proto::Asset {
    proto::Asset {
        digest: blob.digest.to_string(),
        path: blob.path.display().to_string(),
        size: blob.size,
        added_unix_seconds: blob.added_unix_seconds,
        ..Default::default()
    }
}

fn store_status(err: StoreError) -> Status {
    status(&FetchError::Store(err))
}

/// The one mapping from errors to gRPC status codes.
pub(super) fn status(err: &FetchError) -> Status {
    Status::new(code(err.root()), err.to_string())
}

fn code(err: &FetchError) -> Code {
    match err {
        FetchError::Source(e) => match e {
            SourceError::InvalidUrl { .. } | SourceError::UnsupportedScheme { .. } => {
                Code::InvalidArgument
            }
            SourceError::NotFound { .. } => Code::NotFound,
            SourceError::Denied { .. } => Code::PermissionDenied,
            SourceError::ChecksumMismatch { .. } => Code::DataLoss,
            SourceError::Status { .. }
            | SourceError::Transport { .. }
            | SourceError::BadRange { .. }
            | SourceError::Io { .. } => Code::Unavailable,
        },
        FetchError::Store(e) => match e {
            StoreError::LimitExceeded { .. } => Code::ResourceExhausted,
            StoreError::SizeMismatch { .. } | StoreError::DigestMismatch { .. } => Code::DataLoss,
            StoreError::NoSpace { .. } => Code::ResourceExhausted,
            StoreError::Leased { .. } => Code::FailedPrecondition,
            StoreError::Io { .. } if e.is_no_space() => Code::ResourceExhausted,
            StoreError::Io { .. }
            | StoreError::Meta(_)
            | StoreError::Locked { .. }
            | StoreError::NotOwned { .. } => Code::Internal,
        },
        FetchError::RequestTooLarge { .. } | FetchError::DeclaredTooLarge { .. } => {
            Code::ResourceExhausted
        }
        FetchError::DeclaredSizeMismatch { .. } | FetchError::CachedSizeMismatch { .. } => {
            Code::DataLoss
        }
        FetchError::Stalled { .. } => Code::Unavailable,
        FetchError::NeverFits { .. } => Code::ResourceExhausted,
        FetchError::Panicked { .. } => Code::Internal,
        FetchError::NotCached { .. } => Code::NotFound,
        FetchError::InProgress { .. } => Code::FailedPrecondition,
        FetchError::Lost { .. } | FetchError::Transfer(_) => Code::Internal,
    }
}
