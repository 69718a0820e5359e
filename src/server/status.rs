//! The one mapping from errors to gRPC statuses: an exhaustive match over
//! fetch errors, plus [`RequestError`] for requests refused at the edge.
//! Messages are the errors' own text, which name the expected values and
//! the actual ones where the caller may know them.

use tonic::{Code, Status};

use crate::fetch::{Caller, FetchError};
use crate::source::SourceError;
use crate::store::StoreError;

/// A request refused before it reaches the fetch layer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A field is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this.
    #[error("{0}")]
    Denied(String),
}

impl From<RequestError> for Status {
    fn from(err: RequestError) -> Status {
        let code = match err {
            RequestError::Invalid(_) => Code::InvalidArgument,
            RequestError::Denied(_) => Code::PermissionDenied,
        };
        Status::new(code, err.to_string())
    }
}

/// The status a caller sees for `err`.
pub fn status(err: &FetchError) -> Status {
    Status::new(code(err.root()), err.to_string())
}

/// The status `caller` sees for a fetch's `err`. A caller that is not an
/// admin learns that the bytes did not match and what it expected, never the
/// actual digest, size or checksum: those would describe a source it may
/// not be able to read (the log keeps them, for admins).
pub fn fetch_status(err: &FetchError, caller: &Caller) -> Status {
    let root = err.root();
    match public_message(root) {
        Some(message) if !caller.admin => Status::new(code(root), message),
        _ => status(err),
    }
}

fn public_message(err: &FetchError) -> Option<String> {
    let unmatched = "the bytes fetched do not match it";
    Some(match err {
        FetchError::Store(StoreError::DigestMismatch { expected, .. }) => {
            format!("digest mismatch: expected {expected}; {unmatched}")
        }
        FetchError::Store(StoreError::SizeMismatch { expected, .. }) => {
            format!("size mismatch: expected {expected} bytes; {unmatched}")
        }
        FetchError::DeclaredSizeMismatch { url, expected, .. } => {
            format!("size mismatch: expected {expected} bytes; {url} declares another size")
        }
        FetchError::DeclaredTooLarge { url, limit, .. } => {
            format!("{url} declares more than the size limit of {limit} bytes")
        }
        FetchError::Source(SourceError::ChecksumMismatch { url, algorithm, .. }) => {
            format!("{url}: {algorithm} mismatch: {unmatched}")
        }
        _ => return None,
    })
}

fn code(err: &FetchError) -> Code {
    match err {
        FetchError::Source(e) => source_code(e),
        FetchError::Store(e) => store_code(e),
        FetchError::RequestTooLarge { .. }
        | FetchError::AssetTooLarge { .. }
        | FetchError::DeclaredTooLarge { .. }
        | FetchError::NeverFits { .. }
        | FetchError::Evicted { .. }
        | FetchError::TooManyPrewarms { .. } => Code::ResourceExhausted,
        FetchError::DeclaredSizeMismatch { .. } | FetchError::SizeMismatch { .. } => Code::DataLoss,
        FetchError::Stalled { .. }
        | FetchError::TooSlow { .. }
        | FetchError::AttemptTimedOut { .. }
        | FetchError::ShuttingDown => Code::Unavailable,
        FetchError::InProgress { .. } => Code::FailedPrecondition,
        FetchError::Cancelled { .. } => Code::Cancelled,
        FetchError::NoTransfer { .. } => Code::NotFound,
        FetchError::Panicked { .. } | FetchError::Lost { .. } => Code::Internal,
        FetchError::Transfer(inner) => code(inner),
    }
}

fn source_code(err: &SourceError) -> Code {
    match err {
        SourceError::InvalidUrl { .. } | SourceError::UnsupportedScheme { .. } => {
            Code::InvalidArgument
        }
        SourceError::NotFound { .. } => Code::NotFound,
        SourceError::Denied { .. } => Code::PermissionDenied,
        SourceError::ChecksumMismatch { .. } => Code::DataLoss,
        SourceError::Status { .. }
        | SourceError::Transport { .. }
        | SourceError::BadRange { .. }
        | SourceError::Changed { .. }
        | SourceError::NoRanges { .. }
        | SourceError::Io { .. } => Code::Unavailable,
    }
}

fn store_code(err: &StoreError) -> Code {
    match err {
        StoreError::LimitExceeded { .. }
        | StoreError::NoSpace { .. }
        | StoreError::TooManyLeases { .. }
        | StoreError::TooMuchLeased { .. } => Code::ResourceExhausted,
        StoreError::SizeMismatch { .. } | StoreError::DigestMismatch { .. } => Code::DataLoss,
        StoreError::NotCached { .. } => Code::NotFound,
        StoreError::Leased { .. } => Code::FailedPrecondition,
        StoreError::Io { .. } if err.is_no_space() => Code::ResourceExhausted,
        // The metadata store not being writable is a node problem a retry
        // elsewhere may avoid; a full disk says so. It heals by itself
        // once writes succeed again, so never INTERNAL.
        StoreError::Meta(_) if err.is_no_space() => Code::ResourceExhausted,
        StoreError::Meta(_) => Code::Unavailable,
        StoreError::Io { .. } | StoreError::Locked { .. } | StoreError::NotOwned { .. } => {
            Code::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::digest::Digest;
    use crate::store::MetaError;

    fn d() -> Digest {
        Digest::from_bytes([7; 32])
    }

    #[test]
    fn the_table_maps_each_kind_of_failure() {
        let cases: Vec<(FetchError, Code)> = vec![
            (
                FetchError::Source(SourceError::NotFound {
                    url: "http://h/x".into(),
                    detail: "GET: HTTP 404".into(),
                }),
                Code::NotFound,
            ),
            (
                FetchError::Store(StoreError::DigestMismatch {
                    expected: d(),
                    actual: Digest::from_bytes([8; 32]),
                }),
                Code::DataLoss,
            ),
            (
                FetchError::Store(StoreError::LimitExceeded { limit: 10 }),
                Code::ResourceExhausted,
            ),
            (
                FetchError::Store(StoreError::Leased {
                    digest: d(),
                    leases: "a".into(),
                }),
                Code::FailedPrecondition,
            ),
            (
                FetchError::Store(StoreError::NotCached { digest: d() }),
                Code::NotFound,
            ),
            (
                FetchError::AssetTooLarge {
                    digest: d(),
                    size: 20,
                    limit: 10,
                },
                Code::ResourceExhausted,
            ),
            (FetchError::ShuttingDown, Code::Unavailable),
            (
                FetchError::Store(StoreError::Meta(MetaError::Broken {
                    path: "/r/meta.redb".into(),
                    cause: "No space left on device (os error 28)".into(),
                    no_space: true,
                })),
                Code::ResourceExhausted,
            ),
            (
                FetchError::Store(StoreError::Meta(MetaError::Broken {
                    path: "/r/meta.redb".into(),
                    cause: "Input/output error (os error 5)".into(),
                    no_space: false,
                })),
                Code::Unavailable,
            ),
            (
                FetchError::Store(StoreError::Meta(MetaError::Redb {
                    path: "/r/meta.redb".into(),
                    source: redb::Error::Io(std::io::Error::from_raw_os_error(nix::libc::ENOSPC)),
                })),
                Code::ResourceExhausted,
            ),
            (
                FetchError::Store(StoreError::Meta(MetaError::Redb {
                    path: "/r/meta.redb".into(),
                    source: redb::Error::PreviousIo,
                })),
                Code::Unavailable,
            ),
            (
                FetchError::InProgress { digest: d() },
                Code::FailedPrecondition,
            ),
            (FetchError::Lost { digest: d() }, Code::Internal),
        ];
        for (err, want) in cases {
            let status = status(&err);
            assert_eq!(status.code(), want, "{err}");
            assert_eq!(status.message(), err.to_string());
        }
    }

    #[test]
    fn a_shared_transfers_failure_maps_as_its_cause() {
        let cause = FetchError::Stalled {
            url: "http://h/x".into(),
            secs: 30.0,
        };
        let shared = FetchError::Transfer(Arc::new(FetchError::Transfer(Arc::new(cause))));
        let status = status(&shared);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("stalled"), "{}", status.message());
    }

    #[test]
    fn only_admins_learn_what_the_bytes_were() {
        let actual = Digest::from_bytes([8; 32]);
        let err = FetchError::Transfer(Arc::new(FetchError::Store(StoreError::DigestMismatch {
            expected: d(),
            actual,
        })));
        let mut caller = Caller {
            uid: 1000,
            gid: 1000,
            pid: None,
            admin: false,
        };
        let seen = fetch_status(&err, &caller);
        assert_eq!(seen.code(), Code::DataLoss);
        assert!(
            seen.message().contains(&d().to_string()),
            "{}",
            seen.message()
        );
        assert!(
            !seen.message().contains(&actual.to_string()),
            "{}",
            seen.message()
        );
        caller.admin = true;
        assert!(
            fetch_status(&err, &caller)
                .message()
                .contains(&actual.to_string())
        );
    }

    #[test]
    fn request_errors_are_invalid_argument_or_permission_denied() {
        let s = Status::from(RequestError::Invalid("malformed digest \"x\"".into()));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "malformed digest \"x\"");
        let s = Status::from(RequestError::Denied("uid 1000 may not".into()));
        assert_eq!(s.code(), Code::PermissionDenied);
    }
}
