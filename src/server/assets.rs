//! `assetd.v1.Assets`: each handler parses its request once (with the
//! caller's identity), checks the caller's role, calls the fetch layer and
//! converts the result. No I/O here.

use prost::Message as _;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::convert::{self, asset, bare_asset, fetch_response};
use super::request::{self, Roles, span};
use super::{fetch_status, progress, status};
use crate::config::ServerConfig;
use crate::fetch::Fetcher;
use crate::proto;
use crate::store::{AssetInfo, ListQuery};

/// List page size when the request gives none.
const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest list page: keeps one response well under gRPC's 4 MiB default.
const MAX_PAGE_SIZE: usize = 1000;
/// Most encoded bytes of assets in one list page, 1 MiB: an asset may carry
/// several 8 KiB URLs and many leases, so a count alone does not keep a page
/// under gRPC's 4 MiB default message size. A page holds at least one asset
/// whatever its size, so paging always moves on.
const MAX_PAGE_BYTES: usize = 1 << 20;

/// The service, over a shared [`Fetcher`].
pub struct AssetsService {
    fetcher: Fetcher,
    urls: request::Urls,
    roles: Roles,
}

impl AssetsService {
    /// A service answering from `fetcher`; the admin uids and the members
    /// of the admin group `config` names (besides root and the daemon's
    /// user) are admins.
    pub fn new(fetcher: Fetcher, config: &ServerConfig) -> AssetsService {
        AssetsService {
            fetcher,
            urls: request::Urls::default(),
            roles: Roles::new(config.admin_gid, config.admin_uids.clone()),
        }
    }
}

#[tonic::async_trait]
impl proto::assets_server::Assets for AssetsService {
    async fn fetch(
        &self,
        request: Request<proto::FetchRequest>,
    ) -> Result<Response<proto::FetchResponse>, Status> {
        // No span: this is the hot path, and the fetch layer's log lines
        // carry the caller themselves.
        let caller = self.roles.caller(&request).await?;
        let want = request::want(request.into_inner(), caller, &self.urls)?;
        let fetched = self
            .fetcher
            .fetch(want)
            .await
            .map_err(|e| fetch_status(&e, &caller))?;
        Ok(Response::new(fetch_response(fetched)))
    }

    type FetchProgressStream = progress::EventStream;

    async fn fetch_progress(
        &self,
        request: Request<proto::FetchRequest>,
    ) -> Result<Response<Self::FetchProgressStream>, Status> {
        let caller = self.roles.caller(&request).await?;
        let want = request::want(request.into_inner(), caller, &self.urls)?;
        let span = span("FetchProgress", &caller);
        let started = self
            .fetcher
            .start(want)
            .instrument(span.clone())
            .await
            .map_err(|e| fetch_status(&e, &caller))?;
        Ok(Response::new(progress::events(started, span, caller)))
    }

    async fn stat(
        &self,
        request: Request<proto::StatRequest>,
    ) -> Result<Response<proto::StatResponse>, Status> {
        let caller = self.roles.caller(&request).await?;
        let digest = request::digest(&request.get_ref().digest)?;
        let mut info = self.fetcher.stat(digest).map_err(|e| status(&e))?;
        // Others' leases are theirs: a non-admin sees only its own pins.
        if !caller.admin {
            info.pins.retain(|p| p.owner == caller.uid);
        }
        Ok(Response::new(proto::StatResponse {
            asset: Some(asset(info)),
        }))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let caller = self.roles.caller(&request).await?;
        let req = request.into_inner();
        let after = request::page_token(&req.page_token)?;
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
            url_prefix: request::url_prefix(req.url_prefix)?,
            unleased: req.unleased,
            // A non-admin's lease filters and the pins it sees are its own.
            owner: (!caller.admin).then_some(caller.uid),
        };
        let found = self.fetcher.list(&query);
        Ok(Response::new(page(found, page_size, MAX_PAGE_BYTES)))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let caller = self.roles.caller(&request).await?;
        self.roles.require_admin(&caller)?;
        let digest = request::digest(&request.get_ref().digest)?;
        let force = request.get_ref().force;
        let size = self
            .fetcher
            .delete(digest, force)
            .await
            .map_err(|e| status(&e))?;
        span("Delete", &caller)
            .in_scope(|| tracing::info!(%digest, bytes = size, force, "deleted"));
        Ok(Response::new(proto::DeleteResponse { size }))
    }

    async fn release_lease(
        &self,
        request: Request<proto::ReleaseLeaseRequest>,
    ) -> Result<Response<proto::ReleaseLeaseResponse>, Status> {
        let caller = self.roles.caller(&request).await?;
        let lease = request::lease(request.into_inner().lease)?;
        let released = self
            .fetcher
            .release(lease.clone(), caller)
            .await
            .map_err(|e| status(&e))?;
        span("ReleaseLease", &caller)
            .in_scope(|| tracing::info!(lease, released, "lease released"));
        Ok(Response::new(proto::ReleaseLeaseResponse {
            released: u32::try_from(released).unwrap_or(u32::MAX),
        }))
    }

    async fn gc(
        &self,
        request: Request<proto::GcRequest>,
    ) -> Result<Response<proto::GcResponse>, Status> {
        let caller = self.roles.caller(&request).await?;
        let dry_run = request.get_ref().dry_run;
        // A dry run changes nothing, so anyone may ask. What it tells a
        // non-admin is what the daemon's own gc (every --gc-interval) would
        // evict next, which `List` shows anyone once it has run: the assets
        // and their sizes, never a lease, an owner or a count of pins.
        if !dry_run {
            self.roles
                .require_admin_to("run gc (a dry run is open to anyone)", &caller)?;
        }
        let report = self.fetcher.gc(dry_run).await.map_err(|e| status(&e))?;
        let bytes = report.evicted.iter().map(|b| b.size).sum();
        let evicted = report.evicted.len();
        // A dry run sweeps no pins; should it ever count lapsed ones, others'
        // pins are still no business of a non-admin's.
        let lapsed_pins = if caller.admin { report.lapsed_pins } else { 0 };
        span("Gc", &caller).in_scope(|| {
            if dry_run {
                // Anyone may ask, as often as it likes: not a line each time.
                tracing::debug!(dry_run, evicted, bytes, "gc");
            } else {
                tracing::info!(dry_run, evicted, bytes, lapsed_pins, "gc");
            }
        });
        Ok(Response::new(proto::GcResponse {
            // Files only: digest, path and size, as `List` shows anyone.
            evicted: report.evicted.into_iter().map(bare_asset).collect(),
            bytes,
            lapsed_pins: u32::try_from(lapsed_pins).unwrap_or(u32::MAX),
        }))
    }

    async fn verify(
        &self,
        request: Request<proto::VerifyRequest>,
    ) -> Result<Response<proto::VerifyResponse>, Status> {
        let caller = self.roles.caller(&request).await?;
        self.roles.require_admin(&caller)?;
        let digest = request::optional_digest(&request.get_ref().digest)?;
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
            checked: u32::try_from(report.checked).unwrap_or(u32::MAX),
            corrupt,
        }))
    }

    type PrewarmStream = progress::PrewarmStream;

    async fn prewarm(
        &self,
        request: Request<proto::PrewarmRequest>,
    ) -> Result<Response<Self::PrewarmStream>, Status> {
        let caller = self.roles.caller(&request).await?;
        let req = request.into_inner();
        let mut digests = Vec::with_capacity(req.assets.len());
        let mut wants = Vec::with_capacity(req.assets.len());
        for (index, asset) in req.assets.into_iter().enumerate() {
            digests.push(asset.digest.clone());
            let want = request::want(asset, caller, &self.urls)
                .map_err(|e| super::RequestError::Invalid(format!("asset {index}: {e}")))?;
            wants.push(want);
        }
        let concurrency = match req.concurrency as usize {
            0 => crate::fetch::DEFAULT_PREWARM_CONCURRENCY,
            n => n,
        };
        span("Prewarm", &caller)
            .in_scope(|| tracing::info!(assets = wants.len(), concurrency, "prewarm"));
        let events = self
            .fetcher
            .prewarm(caller, wants, concurrency)
            .map_err(|e| status(&e))?;
        Ok(Response::new(progress::prewarm_events(
            events, digests, caller,
        )))
    }

    async fn list_transfers(
        &self,
        request: Request<proto::ListTransfersRequest>,
    ) -> Result<Response<proto::ListTransfersResponse>, Status> {
        let caller = self.roles.caller(&request).await?;
        self.roles.require_admin(&caller)?;
        let transfers = self
            .fetcher
            .transfers()
            .into_iter()
            .map(convert::transfer)
            .collect();
        Ok(Response::new(proto::ListTransfersResponse { transfers }))
    }

    async fn cancel_transfer(
        &self,
        request: Request<proto::CancelTransferRequest>,
    ) -> Result<Response<proto::CancelTransferResponse>, Status> {
        let caller = self.roles.caller(&request).await?;
        self.roles.require_admin(&caller)?;
        let digest = request::digest(&request.get_ref().digest)?;
        let callers = self.fetcher.cancel(digest).map_err(|e| status(&e))?;
        span("CancelTransfer", &caller)
            .in_scope(|| tracing::info!(%digest, callers, "transfer cancelled"));
        Ok(Response::new(proto::CancelTransferResponse {
            callers: u32::try_from(callers).unwrap_or(u32::MAX),
        }))
    }
}

/// A page of `found` (in digest order): at most `page_size` assets and, past
/// the first, at most `max_bytes` of them encoded. `next_page_token` names
/// the last asset given when more follow.
fn page(found: Vec<AssetInfo>, page_size: usize, max_bytes: usize) -> proto::ListResponse {
    let mut assets = Vec::new();
    let mut bytes = 0;
    let mut next_page_token = String::new();
    let mut last = None;
    for info in found {
        let digest = info.blob.digest;
        let asset = asset(info);
        // As a repeated field: one byte of tag, the length, the message.
        let len = asset.encoded_len();
        let len = 1 + prost::length_delimiter_len(len) + len;
        let full = assets.len() == page_size || (!assets.is_empty() && bytes + len > max_bytes);
        if full {
            next_page_token = last
                .map(|d: crate::digest::Digest| d.hex())
                .unwrap_or_default();
            break;
        }
        bytes += len;
        assets.push(asset);
        last = Some(digest);
    }
    proto::ListResponse {
        assets,
        next_page_token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::store::Blob;

    fn info(n: u8, url_len: usize) -> AssetInfo {
        let digest = Digest::from_bytes([n; 32]);
        AssetInfo {
            blob: Blob {
                digest,
                path: format!("/r/blobs/sha256/{}", digest.hex()).into(),
                size: 1,
                added_unix_seconds: 0,
            },
            last_used: 0,
            urls: (0..8)
                .map(|i| format!("https://h/{i}/{}", "u".repeat(url_len)))
                .collect(),
            pins: Vec::new(),
        }
    }

    #[test]
    fn a_list_page_stops_at_its_byte_bound_and_the_token_continues_there() {
        // About 64 KiB per asset: 16 fit in 1 MiB.
        let found: Vec<_> = (1..=40).map(|n| info(n, 8000)).collect();
        let page = page(found, 100, MAX_PAGE_BYTES);
        assert_eq!(page.assets.len(), 16);
        assert!(page.encode_to_vec().len() <= MAX_PAGE_BYTES + 100);
        assert_eq!(page.next_page_token, Digest::from_bytes([16; 32]).hex());
    }

    #[test]
    fn a_list_page_stops_at_its_count_and_holds_one_asset_whatever_its_size() {
        let found: Vec<_> = (1..=5).map(|n| info(n, 10)).collect();
        let by_count = page(found.clone(), 3, MAX_PAGE_BYTES);
        assert_eq!(by_count.assets.len(), 3);
        assert_eq!(by_count.next_page_token, Digest::from_bytes([3; 32]).hex());
        let last = page(found.clone(), 5, MAX_PAGE_BYTES);
        assert_eq!((last.assets.len(), last.next_page_token.as_str()), (5, ""));
        let one = page(found, 100, 10);
        assert_eq!(one.assets.len(), 1, "one asset even past the bound");
        assert_eq!(one.next_page_token, Digest::from_bytes([1; 32]).hex());
    }
}
