//! `http://` and `https://`, through reqwest with rustls.

use std::time::Duration;

use reqwest::{StatusCode, header};
use tokio_stream::StreamExt as _;
use url::Url;

use super::{OpenFuture, Opened, Resume, Source, SourceError};

/// Redirects followed before giving up: enough for CDNs and signed-URL
/// hops, few enough that a loop ends quickly.
const MAX_REDIRECTS: usize = 10;
/// Time to establish a connection (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads objects over HTTP(S). One client, so connections are reused.
pub struct HttpSource {
    client: reqwest::Client,
}

impl HttpSource {
    /// A source with bounded redirects and a connect timeout.
    pub fn new() -> Result<HttpSource, SourceError> {
        let client = client(Some(MAX_REDIRECTS))?;
        Ok(HttpSource { client })
    }

    async fn get(&self, url: &Url, resume: Option<&Resume>) -> Result<Opened, SourceError> {
        let mut request = self.client.get(url.clone());
        if let Some(resume) = resume {
            // If-Range: the server sends the rest only if the object is still
            // the version we began with, else the whole new one (200).
            request = request
                .header(header::RANGE, format!("bytes={}-", resume.offset))
                .header(header::IF_RANGE, &resume.validator);
        }
        let response = request
            .send()
            .await
            .map_err(|e| SourceError::reqwest(url, e))?;
        let status = response.status();
        let (offset, size) = match (status, resume) {
            (StatusCode::PARTIAL_CONTENT, Some(resume)) => (
                resume.offset,
                content_range_total(url, &response, resume.offset)?,
            ),
            (s, _) if s.is_success() => (0, response.content_length()),
            (s, _) => {
                return Err(SourceError::from_status(
                    url,
                    s,
                    retry_after(&response),
                    "GET",
                ));
            }
        };
        let validator = validator(&response);
        let stream_url = url.clone();
        let body = response
            .bytes_stream()
            // A failure mid-body is a broken transfer: always worth resuming.
            .map(move |chunk| chunk.map_err(|e| SourceError::body(&stream_url, e)));
        Ok(Opened {
            size,
            offset,
            validator,
            body: Box::pin(body),
        })
    }
}

impl Source for HttpSource {
    fn open<'a>(&'a self, url: &'a Url, resume: Option<&'a Resume>) -> OpenFuture<'a> {
        Box::pin(self.get(url, resume))
    }
}

/// What names this version for `If-Range`: a strong ETag, else
/// Last-Modified (weak ETags are not allowed there).
fn validator(response: &reqwest::Response) -> Option<String> {
    let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
    header(header::ETAG)
        .filter(|etag| !etag.starts_with("W/"))
        .or_else(|| header(header::LAST_MODIFIED))
        .map(str::to_owned)
}

/// Checks that a 206 starts at `offset` and returns the object's total size
/// from `Content-Range: bytes START-END/TOTAL` (`None` for `*`).
fn content_range_total(
    url: &Url,
    response: &reqwest::Response,
    offset: u64,
) -> Result<Option<u64>, SourceError> {
    let range = response
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bad = || SourceError::BadRange {
        url: super::redacted(url),
        offset,
        got: format!("Content-Range {range:?}"),
    };
    let (span, total) = range
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('/'))
        .ok_or_else(bad)?;
    let start = span
        .split_once('-')
        .and_then(|(s, _)| s.parse::<u64>().ok());
    if start != Some(offset) {
        return Err(bad());
    }
    match total {
        "*" => Ok(None),
        t => t.parse().map(Some).map_err(|_| bad()),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for 429/503 and is
/// left to the backoff).
pub(super) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

/// An HTTP client with assetd's user agent and connect timeout, following
/// up to `redirects` redirects (none when `None`).
pub(super) fn client(redirects: Option<usize>) -> Result<reqwest::Client, SourceError> {
    let policy = match redirects {
        Some(n) => reqwest::redirect::Policy::limited(n),
        None => reqwest::redirect::Policy::none(),
    };
    reqwest::Client::builder()
        .user_agent(concat!("assetd/", env!("CARGO_PKG_VERSION")))
        .redirect(policy)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| SourceError::Transport {
            url: String::new(),
            detail: format!("building the HTTP client: {}", crate::error_chain(&e)),
            retryable: false,
        })
}
