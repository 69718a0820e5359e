//! `assetd.v1.Assets`: request validation, the calls into the fetch layer,
//! and the one mapping from errors to gRPC status codes.

use std::sync::Arc;

use tonic::transport::server::UdsConnectInfo;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument as _;

use super::progress;
use crate::digest::Digest;
use crate::fetch::{FetchError, Fetched, Fetcher, Want};
use crate::proto;
use crate::source::SourceError;
use crate::store::{Blob, StoreError};

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
        let blob = self.fetcher.store().stat(&digest).map_err(store_status)?;
        let blob = blob.ok_or_else(|| status(&FetchError::NotCached { digest }))?;
        Ok(Response::new(proto::StatResponse {
            asset: Some(asset(blob)),
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
        // One more than the page tells whether another page follows.
        let mut blobs = self
            .fetcher
            .store()
            .list(after.as_ref(), page_size + 1)
            .map_err(store_status)?;
        let next_page_token = if blobs.len() > page_size {
            blobs.truncate(page_size);
            blobs.last().map(|b| b.digest.hex()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(proto::ListResponse {
            assets: blobs.into_iter().map(asset).collect(),
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
        let size = self.fetcher.delete(&digest).map_err(|e| status(&e))?;
        span.in_scope(|| tracing::info!(%digest, bytes = size, "deleted"));
        Ok(Response::new(proto::DeleteResponse { size }))
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
            "only uid 0 or the daemon's uid {me} may delete; the caller is uid {uid}"
        ))),
        None => Err(Status::permission_denied(
            "the caller's credentials are unknown; only uid 0 or the daemon's uid may delete",
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
    Ok(Want {
        digest: parse_digest(&req.digest)?,
        url: req.url,
        mirrors: req.mirrors,
        size: nonzero(req.size),
        max_size: nonzero(req.max_size),
    })
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

fn asset(blob: Blob) -> proto::Asset {
    proto::Asset {
        digest: blob.digest.to_string(),
        path: blob.path.display().to_string(),
        size: blob.size,
        added_unix_seconds: blob.added_unix_seconds,
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
            StoreError::Io { .. } if e.is_no_space() => Code::ResourceExhausted,
            StoreError::Io { .. } | StoreError::Locked { .. } | StoreError::NotOwned { .. } => {
                Code::Internal
            }
        },
        FetchError::RequestTooLarge { .. } | FetchError::DeclaredTooLarge { .. } => {
            Code::ResourceExhausted
        }
        FetchError::DeclaredSizeMismatch { .. } | FetchError::CachedSizeMismatch { .. } => {
            Code::DataLoss
        }
        FetchError::Stalled { .. } => Code::Unavailable,
        FetchError::NotCached { .. } => Code::NotFound,
        FetchError::InProgress { .. } => Code::FailedPrecondition,
        FetchError::Lost { .. } | FetchError::Transfer(_) => Code::Internal,
    }
}
