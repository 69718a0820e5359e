//! Sources: where bytes come from, one module per URL scheme.
//!
//! A [`Source`] opens a URL as a stream of [`Bytes`] and reports the size when
//! it knows it. [`Sources`] picks the source by scheme. Sources know nothing
//! of disk, digests or limits: the fetch layer decides what to do with the
//! bytes and when to stop reading.

pub(crate) mod file;
pub(crate) mod gcs;
pub(crate) mod http;
pub mod policy;
pub mod proxy;
pub mod tls;

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_stream::Stream;
use url::Url;

pub use file::{FileRoot, FileSource};
pub use gcs::GcsSource;
pub use http::HttpSource;
pub use policy::{SourcePolicy, SourceRule};
pub use proxy::Proxies;
pub use tls::CaBundle;

/// The longest URL a request may carry, in bytes. Real URLs, signed ones
/// included, stay well under it; far longer ones are refused at the edge
/// before they reach a source (reqwest refuses past 64 KiB, and a status
/// quoting one would not fit HTTP/2's header limits).
pub const MAX_URL_LEN: usize = 8192;

/// How many characters of a URL (or other caller-given text) messages and
/// logs quote; see [`bounded`].
pub const QUOTED_CHARS: usize = 256;

/// `text` as messages and logs quote it: its first [`QUOTED_CHARS`]
/// characters, and "…" when there were more. A status carrying a whole
/// multi-kilobyte URL can exceed a client's HTTP/2 header limit and arrive
/// as a protocol error instead of the reason.
pub fn bounded(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(QUOTED_CHARS) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
    }
}

/// A source failure, naming the URL (at most [`QUOTED_CHARS`] of it).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The URL does not parse or lacks a part the scheme needs.
    #[error("malformed URL {:?}: {reason}", bounded(.url))]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No source serves this scheme.
    #[error("unsupported URL scheme {:?} in {}: supported are {supported}", bounded(.scheme), bounded(.url))]
    UnsupportedScheme {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
        /// The schemes this daemon serves, comma-separated.
        supported: String,
    },
    /// The source has no such object.
    #[error("{}: not found ({detail})", bounded(.url))]
    NotFound {
        /// The URL.
        url: String,
        /// What the source said.
        detail: String,
    },
    /// The daemon's policy or the upstream refuses this URL.
    #[error("{}: permission denied: {reason}", bounded(.url))]
    Denied {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The upstream answered with an error status.
    #[error("{}: upstream answered HTTP {status}", bounded(.url))]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// How long the upstream asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The connection or transfer failed.
    #[error("{}: transfer failed: {detail}", bounded(.url))]
    Transport {
        /// The URL.
        url: String,
        /// The client's error with its causes, outermost first.
        detail: String,
        /// Whether trying again may help (a reset, not a redirect loop).
        retryable: bool,
    },
    /// The upstream answered a resumed read with bytes from elsewhere.
    #[error("{}: asked for bytes from {offset}, got {got}", bounded(.url))]
    BadRange {
        /// The URL.
        url: String,
        /// The offset asked for.
        offset: u64,
        /// What the upstream's `Content-Range` said.
        got: String,
    },
    /// The object is no longer the version a ranged read began with.
    #[error("{}: the object changed while it was read in pieces ({detail})", bounded(.url))]
    Changed {
        /// The URL.
        url: String,
        /// How it showed.
        detail: String,
    },
    /// The source cannot read byte ranges of this object.
    #[error("{}: byte ranges are not supported here", bounded(.url))]
    NoRanges {
        /// The URL.
        url: String,
    },
    /// The bytes do not match the checksum the source published.
    #[error("{}: {algorithm} mismatch: expected {expected}, got {actual}", bounded(.url))]
    ChecksumMismatch {
        /// The URL.
        url: String,
        /// The checksum, such as "crc32c".
        algorithm: &'static str,
        /// What the source published, in hex.
        expected: String,
        /// What the bytes that arrived give, in hex.
        actual: String,
    },
    /// Reading a local file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// `url` fit for logs, messages and metadata: user name and password gone,
/// query values hidden (a query part with no `=` is hidden whole), and an
/// `http(s)` fragment dropped, as they often carry signatures (signed URLs)
/// or credentials. A `gs://` fragment is a generation and is kept.
pub fn redacted(url: &Url) -> String {
    let keep_fragment = url.scheme() == "gs";
    // Most URLs carry none of these: no copy and reparse for them.
    if url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && (url.fragment().is_none() || keep_fragment)
    {
        return url.as_str().to_owned();
    }
    let mut shown = url.clone();
    // The user name may be a token too (`https://TOKEN@host/`).
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.set_query(None);
    let fragment = shown
        .fragment()
        .filter(|_| keep_fragment)
        .map(str::to_owned);
    shown.set_fragment(None);
    let mut text = shown.to_string();
    if let Some(query) = url.query() {
        let parts: Vec<&str> = query
            .split('&')
            .map(|part| match part.split_once('=') {
                Some((key, _)) => key,
                None => "",
            })
            .collect();
        let shown: Vec<String> = parts
            .iter()
            .map(|key| {
                if key.is_empty() {
                    "…".to_owned()
                } else {
                    format!("{key}=…")
                }
            })
            .collect();
        text = format!("{text}?{}", shown.join("&"));
    }
    if let Some(fragment) = fragment {
        text = format!("{text}#{fragment}");
    }
    text
}

/// A source URL, parsed once at the edge, with its redacted form for logs,
/// messages and metadata (see [`redacted`]). Cheap to clone (shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceUrl(Arc<ParsedUrl>);

#[derive(Debug, PartialEq, Eq)]
struct ParsedUrl {
    url: Url,
    redacted: String,
}

impl SourceUrl {
    /// Parses `text`. Errors: [`SourceError::InvalidUrl`].
    pub fn parse(text: &str) -> Result<SourceUrl, SourceError> {
        let url = Url::parse(text).map_err(|e| SourceError::InvalidUrl {
            url: text.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(SourceUrl::from(url))
    }

    /// The URL itself, secrets and all: for the source that reads it only.
    pub fn url(&self) -> &Url {
        &self.0.url
    }

    /// The URL fit for logs, messages and metadata.
    pub fn redacted(&self) -> &str {
        &self.0.redacted
    }
}

impl From<Url> for SourceUrl {
    fn from(url: Url) -> SourceUrl {
        let redacted = redacted(&url);
        SourceUrl(Arc::new(ParsedUrl { url, redacted }))
    }
}

/// The redacted URL, bounded (see [`bounded`]): what logs show.
impl std::fmt::Display for SourceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&bounded(self.redacted()))
    }
}

impl SourceError {
    /// A transfer error for `url`, keeping the chain of causes readable.
    pub fn transport(
        url: &Url,
        err: &(dyn std::error::Error + 'static),
        retryable: bool,
    ) -> SourceError {
        SourceError::Transport {
            url: redacted(url),
            detail: crate::error_chain(err),
            retryable,
        }
    }

    /// A reqwest failure: retryable unless it is about the request itself
    /// (a redirect loop, a malformed response) or TLS refused the server's
    /// certificate (that takes the operator or the server to change).
    pub fn reqwest(url: &Url, err: reqwest::Error) -> SourceError {
        let retryable = !(err.is_redirect()
            || err.is_builder()
            || err.is_decode()
            || tls::is_certificate_error(&err));
        // The error's own text names the URL in full: leave it out.
        SourceError::transport(url, &err.without_url(), retryable)
    }

    /// A failure while reading a body: a broken transfer, always worth
    /// resuming.
    pub fn body(url: &Url, err: reqwest::Error) -> SourceError {
        SourceError::transport(url, &err.without_url(), true)
    }

    /// The error for an HTTP error status answering `what` (a GET, a
    /// metadata read...): 404 and 410 are not found, 401 and 403 denied, the
    /// rest a status (retryable or not, see [`SourceError::is_retryable`]).
    pub fn from_status(
        url: &Url,
        status: reqwest::StatusCode,
        retry_after: Option<Duration>,
        what: &str,
    ) -> SourceError {
        let url = redacted(url);
        match status.as_u16() {
            404 | 410 => SourceError::NotFound {
                url,
                detail: format!("{what}: HTTP {status}"),
            },
            401 | 403 => SourceError::Denied {
                url,
                reason: format!("{what}: upstream answered HTTP {status}"),
            },
            code => SourceError::Status {
                url,
                status: code,
                retry_after,
            },
        }
    }

    /// Whether the same URL may succeed if tried again: connection failures,
    /// resets, 408, 429 and 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Transport { retryable, .. } => *retryable,
            SourceError::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            _ => false,
        }
    }

    /// How long the upstream asked to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The bytes of an object, as they arrive.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, SourceError>> + Send>>;

/// Where to go on with an interrupted read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Bytes already received.
    pub offset: u64,
    /// The [`Opened::validator`] of the first read: the version to go on with.
    pub validator: String,
}

/// An opened object.
pub struct Opened {
    /// The whole object's size when the source declares one (for HTTP,
    /// `Content-Length` or the total in `Content-Range`). It is a claim; the
    /// byte count is checked against it.
    pub size: Option<u64>,
    /// Where `body` starts: the resume offset when the source honoured it,
    /// else 0 (the whole object again).
    pub offset: u64,
    /// Names this version of the object for a later [`Resume`]; `None` when
    /// the source cannot resume it.
    pub validator: Option<String>,
    /// Whether the source serves byte ranges of this version
    /// ([`Source::open_range`]): it said so (`Accept-Ranges: bytes`, a 206)
    /// and named the version, or needs no name for it.
    pub ranges: bool,
    /// The object's bytes from `offset`.
    pub body: ByteStream,
}

/// Who gave a URL, as a source judges what it may read for them: the
/// peer credentials and role of the caller that asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// An admin may bring into the cache what others could not read.
    pub admin: bool,
    /// The giver's user id.
    pub uid: u32,
    /// The giver's group id.
    pub gid: u32,
}

/// A future returned by [`Source::open`].
pub type OpenFuture<'a> = Pin<Box<dyn Future<Output = Result<Opened, SourceError>> + Send + 'a>>;

/// One URL scheme's way of reading objects.
pub trait Source: Send + Sync {
    /// Opens `url` for reading, from `resume.offset` when given and the
    /// object is still the version `resume.validator` names, else from the
    /// first byte ([`Opened::offset`] says which), for the caller `access`
    /// describes (who gave the URL). Dropping the future or the stream
    /// cancels the transfer.
    fn open<'a>(
        &'a self,
        url: &'a Url,
        resume: Option<&'a Resume>,
        access: Access,
    ) -> OpenFuture<'a>;

    /// Opens bytes `range` of the version `validator` names (an
    /// [`Opened::validator`]; `None` when the source gave none, and the
    /// digest alone guards the result). Errors: [`SourceError::Changed`]
    /// when the object is another version now, [`SourceError::BadRange`]
    /// when the source answers with other bytes than asked,
    /// [`SourceError::NoRanges`] when it cannot read ranges at all.
    fn open_range<'a>(
        &'a self,
        url: &'a Url,
        range: std::ops::Range<u64>,
        validator: Option<&'a str>,
        access: Access,
    ) -> OpenFuture<'a> {
        let _ = (range, validator, access);
        Box::pin(std::future::ready(Err(SourceError::NoRanges {
            url: redacted(url),
        })))
    }
}

/// The sources this daemon serves, by URL scheme.
#[derive(Clone)]
pub struct Sources {
    by_scheme: HashMap<&'static str, Arc<dyn Source>>,
}

impl Sources {
    /// `http`, `https`, `gs` (see [`GcsSource::new`] for `gcs_emulator` and
    /// `gcs_anonymous`) and `file` (only inside `file_roots`, see
    /// [`FileSource`]). `policy`
    /// holds the URLs callers send over `http(s)` and the buckets of `gs://`.
    /// `http(s)` and `gs://` go through `proxies` where they say (reqwest
    /// reads the same variables) and trust `ca` on top of the system's roots.
    pub fn new(
        file_roots: Vec<FileRoot>,
        gcs_emulator: Option<&str>,
        gcs_anonymous: bool,
        policy: SourcePolicy,
        proxies: Proxies,
        ca: &CaBundle,
    ) -> Result<Sources, SourceError> {
        let policy = Arc::new(policy);
        let http: Arc<dyn Source> =
            Arc::new(HttpSource::new(policy.clone(), Arc::new(proxies), ca)?);
        let gcs = GcsSource::trusting(gcs_emulator, gcs_anonymous, ca)?;
        let gcs: Arc<dyn Source> = Arc::new(gcs.with_policy(policy));
        let file: Arc<dyn Source> = Arc::new(FileSource::new(file_roots));
        let by_scheme = HashMap::from([
            ("http", http.clone()),
            ("https", http),
            ("gs", gcs),
            ("file", file),
        ]);
        Ok(Sources { by_scheme })
    }

    /// The source for `url`'s scheme. Errors: [`SourceError::UnsupportedScheme`].
    pub fn resolve(&self, url: &SourceUrl) -> Result<Arc<dyn Source>, SourceError> {
        match self.by_scheme.get(url.url().scheme()) {
            Some(source) => Ok(source.clone()),
            None => {
                let mut supported: Vec<_> = self.by_scheme.keys().copied().collect();
                supported.sort_unstable();
                Err(SourceError::UnsupportedScheme {
                    url: url.redacted().to_owned(),
                    scheme: url.url().scheme().to_owned(),
                    supported: supported.join(", "),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_malformed_urls_and_unknown_schemes() {
        let sources = Sources::new(
            Vec::new(),
            None,
            true,
            SourcePolicy::default(),
            Proxies::default(),
            &CaBundle::default(),
        )
        .unwrap();
        let err = SourceUrl::parse("not a url").err().unwrap();
        assert!(matches!(err, SourceError::InvalidUrl { .. }), "{err}");
        assert!(err.to_string().contains("\"not a url\""), "{err}");
        let ftp = SourceUrl::parse("ftp://u:secret@host/x?sig=abc").unwrap();
        let err = sources.resolve(&ftp).err().unwrap();
        assert!(err.to_string().contains("\"ftp\""), "{err}");
        assert!(err.to_string().contains("file, gs, http, https"), "{err}");
        assert!(!err.to_string().contains("secret") && !err.to_string().contains("abc"));
        let https = SourceUrl::parse("https://host/x").unwrap();
        assert!(sources.resolve(&https).is_ok());
    }

    #[test]
    fn messages_quote_a_bounded_prefix_of_a_url() {
        let long = format!("https://h/{}", "é".repeat(5000));
        let url = SourceUrl::parse(&long).unwrap();
        let shown = url.to_string();
        assert_eq!(shown.chars().count(), QUOTED_CHARS + 1);
        assert!(shown.ends_with('…') && shown.starts_with("https://h/"));
        let err = SourceError::NotFound {
            url: url.redacted().to_owned(),
            detail: "HTTP 404".into(),
        };
        assert!(err.to_string().len() < 1024, "{err}");
        let err = SourceUrl::parse(&format!("no scheme {long}"))
            .err()
            .unwrap();
        assert!(err.to_string().len() < 1024, "{err}");
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn redaction_hides_userinfo_and_query_values() {
        let url = SourceUrl::parse("https://TOKEN:pw@h/x?sig=abc&v=1#frag").unwrap();
        assert_eq!(url.redacted(), "https://h/x?sig=…&v=…");
        let plain = SourceUrl::parse("https://h/x").unwrap();
        assert_eq!(plain.redacted(), "https://h/x");
        // A bare token in the query, or one in the fragment, is hidden too.
        let bare = SourceUrl::parse("http://h/a?AKIA_SECRET&sig=abc#frag-secret").unwrap();
        assert_eq!(bare.redacted(), "http://h/a?…&sig=…");
        let fragment = SourceUrl::parse("https://h/a#token").unwrap();
        assert_eq!(fragment.redacted(), "https://h/a");
        // A gs:// fragment is a generation: kept.
        let gs = SourceUrl::parse("gs://b/o#1234").unwrap();
        assert_eq!(gs.redacted(), "gs://b/o#1234");
    }
}
