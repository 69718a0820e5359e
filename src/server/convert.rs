//! Typed results into `assetd.v1` messages.

use crate::fetch::{Fetched, Progress, TransferInfo};
use crate::proto;
use crate::store::{AssetInfo, Blob};

/// What `Fetch` returns (and `FetchProgress` ends with).
pub(super) fn fetch_response(fetched: Fetched) -> proto::FetchResponse {
    proto::FetchResponse {
        digest: fetched.blob.digest.to_string(),
        path: fetched.blob.path.to_string_lossy().into_owned(),
        size: fetched.blob.size,
        cache_hit: fetched.cache_hit,
    }
}

/// A transfer's progress.
pub(super) fn progress(p: &Progress) -> proto::Progress {
    proto::Progress {
        bytes_done: p.done,
        bytes_total: p.total.unwrap_or(0),
        bytes_per_second: p.rate(),
        source: p.source.clone(),
    }
}

/// An asset with its metadata.
pub(super) fn asset(info: AssetInfo) -> proto::Asset {
    proto::Asset {
        last_used_unix_ms: info.last_used,
        urls: info.urls,
        leases: info
            .pins
            .into_iter()
            .map(|p| proto::LeaseHold {
                lease: p.lease,
                expires_unix_ms: p.expires.unwrap_or(0),
                owner_uid: p.owner,
            })
            .collect(),
        ..bare_asset(info.blob)
    }
}

/// An asset as a file only.
pub(super) fn bare_asset(blob: Blob) -> proto::Asset {
    proto::Asset {
        digest: blob.digest.to_string(),
        path: blob.path.display().to_string(),
        size: blob.size,
        added_unix_seconds: blob.added_unix_seconds,
        ..Default::default()
    }
}

/// A running transfer, for admins.
pub(super) fn transfer(t: TransferInfo) -> proto::Transfer {
    proto::Transfer {
        digest: t.digest.to_string(),
        urls: t.urls,
        progress: Some(progress(&t.progress)),
        callers: u32::try_from(t.callers).unwrap_or(u32::MAX),
        started_by_uid: t.started_by,
    }
}
