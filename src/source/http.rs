//! `http://` and `https://`, through reqwest with rustls.
//!
//! Every URL a caller sends is held to the [`SourcePolicy`]: the URL before
//! the request and at each redirect hop (redirects are followed here, one
//! hop at a time, each routed on its own), and each address a host name
//! resolves to (by the client's resolver, which drops refused addresses), so
//! the addresses connected to are exactly those checked and a DNS answer
//! that changes after a check cannot slip through. IP-literal hosts are not
//! resolved; the URL check covers them.
//!
//! A proxy from `HTTP_PROXY`/`HTTPS_PROXY` ([`Proxies`]) is the operator's
//! and trusted: a URL it takes goes through a client whose resolver
//! resolves the proxy's own name only, without the policy; the target's
//! name is resolved by the proxy, so only the URL-level rules (IP literal,
//! host, URL prefix, and `localhost` names) apply to it. URLs `NO_PROXY`
//! keeps direct go through the guarded clients, as without a proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{StatusCode, header};
use tokio_stream::StreamExt as _;
use url::Url;

use super::policy::{self, Refused, SourcePolicy};
use super::proxy::Proxies;
use super::tls::CaBundle;
use super::{Access, OpenFuture, Opened, Resume, Source, SourceError};

/// Redirects followed before giving up: enough for CDNs and signed-URL
/// hops, few enough that a loop ends quickly.
const MAX_REDIRECTS: usize = 10;
/// Time to establish a connection (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads objects over HTTP(S). One client per route, each reused across
/// requests: direct; direct for URLs under an allow rule's URL prefix on a
/// host name, whose resolver lifts the default refusal for that host (so no
/// pooled connection or resolver ever carries the lift to other URLs); and
/// through the proxy.
pub struct HttpSource {
    policy: Arc<SourcePolicy>,
    proxies: Arc<Proxies>,
    direct: reqwest::Client,
    by_prefix: reqwest::Client,
    proxied: reqwest::Client,
}

impl HttpSource {
    /// A source with bounded redirects and a connect timeout, held to
    /// `policy`, going through `proxies` where they say, trusting `ca` on
    /// top of the system's roots.
    pub fn new(
        policy: Arc<SourcePolicy>,
        proxies: Arc<Proxies>,
        ca: &CaBundle,
    ) -> Result<HttpSource, SourceError> {
        let direct = guarded_client(&policy, false, ca)?;
        let by_prefix = match policy.has_name_prefixes() {
            true => guarded_client(&policy, true, ca)?,
            false => direct.clone(),
        };
        let proxied = match proxies.any() {
            true => proxied_client(&proxies, ca)?,
            false => direct.clone(),
        };
        Ok(HttpSource {
            policy,
            proxies,
            direct,
            by_prefix,
            proxied,
        })
    }

    /// The client for `url` (the caller's or a redirect hop's), once the
    /// policy allows it at the URL level.
    fn route(&self, url: &Url) -> Result<&reqwest::Client, Refused> {
        self.policy.check_url(url)?;
        if self.proxies.intercepts(url) {
            self.policy.check_proxied(url)?;
            return Ok(&self.proxied);
        }
        Ok(match self.policy.allowed_by_prefix(url) {
            true => &self.by_prefix,
            false => &self.direct,
        })
    }

    async fn get(&self, url: &Url, resume: Option<&Resume>) -> Result<Opened, SourceError> {
        // If-Range: the server sends the rest only if the object is still
        // the version we began with, else the whole new one (200).
        let headers = match resume {
            Some(resume) => vec![
                (header::RANGE, format!("bytes={}-", resume.offset)),
                (header::IF_RANGE, resume.validator.clone()),
            ],
            None => Vec::new(),
        };
        let response = self.send(url, &headers).await?;
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
        // Pieces may be read when the server says it serves byte ranges.
        let ranges = status == StatusCode::OK
            && response
                .headers()
                .get(header::ACCEPT_RANGES)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"bytes"));
        Ok(Opened {
            size,
            offset,
            validator,
            ranges,
            body: body(url, response),
        })
    }

    /// Bytes `range` of the version `validator` names: `If-Match` for a
    /// strong ETag, `If-Unmodified-Since` for a Last-Modified date.
    async fn get_range(
        &self,
        url: &Url,
        range: std::ops::Range<u64>,
        validator: Option<&str>,
    ) -> Result<Opened, SourceError> {
        let last = range.end.saturating_sub(1);
        let mut headers = vec![(header::RANGE, format!("bytes={}-{last}", range.start))];
        match validator {
            Some(etag) if etag.starts_with('"') => {
                headers.push((header::IF_MATCH, etag.to_owned()));
            }
            Some(date) => headers.push((header::IF_UNMODIFIED_SINCE, date.to_owned())),
            None => {}
        }
        let response = self.send(url, &headers).await?;
        let status = response.status();
        if status == StatusCode::PRECONDITION_FAILED {
            return Err(SourceError::Changed {
                url: super::redacted(url),
                detail: "HTTP 412 to a piece's If-Match or If-Unmodified-Since".to_owned(),
            });
        }
        if status != StatusCode::PARTIAL_CONTENT {
            return Err(match status.is_success() {
                true => SourceError::BadRange {
                    url: super::redacted(url),
                    offset: range.start,
                    got: format!("HTTP {status} to a range request"),
                },
                false => SourceError::from_status(url, status, retry_after(&response), "GET"),
            });
        }
        let got = response
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if parse_content_range_exact(&got) != Some((range.start, last)) {
            return Err(SourceError::BadRange {
                url: super::redacted(url),
                offset: range.start,
                got: format!("Content-Range {got:?} for bytes {}-{last}", range.start),
            });
        }
        let size = content_range_total(url, &response, range.start)?;
        Ok(Opened {
            size,
            offset: range.start,
            validator: validator.map(str::to_owned),
            ranges: true,
            body: body(url, response),
        })
    }

    /// Sends a GET for `url` with `headers`, following redirects one hop at
    /// a time, each checked against the policy and routed on its own.
    async fn send(
        &self,
        url: &Url,
        headers: &[(header::HeaderName, String)],
    ) -> Result<reqwest::Response, SourceError> {
        let mut at = url.clone();
        let mut hops = 0;
        loop {
            let client = self.route(&at).map_err(|r| denied(url, r))?;
            let mut request = client.get(at.clone());
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let response = request
                .send()
                .await
                .map_err(|e| match policy::refusal(&e) {
                    Some(refused) => denied(url, refused.clone()),
                    None => SourceError::reqwest(url, e),
                })?;
            let next = match redirect(&at, &response) {
                None => return Ok(response),
                Some(next) => next,
            };
            let fail = |detail: String| SourceError::Transport {
                url: super::redacted(url),
                detail,
                retryable: false,
            };
            if hops == MAX_REDIRECTS {
                return Err(fail(format!(
                    "too many redirects (more than {MAX_REDIRECTS})"
                )));
            }
            hops += 1;
            at = next.map_err(fail)?;
        }
    }
}

/// The response's body as a stream; a failure mid-body is a broken
/// transfer, always worth resuming.
fn body(url: &Url, response: reqwest::Response) -> super::ByteStream {
    let url = url.clone();
    Box::pin(
        response
            .bytes_stream()
            .map(move |chunk| chunk.map_err(|e| SourceError::body(&url, e))),
    )
}

/// Where a redirect `response` to a request for `at` leads, if it is one
/// (301, 302, 303, 307, 308 with a `Location`); an error text when that is
/// not a URL to follow.
fn redirect(at: &Url, response: &reqwest::Response) -> Option<Result<Url, String>> {
    if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = response.headers().get(header::LOCATION)?;
    let next = location
        .to_str()
        .ok()
        .and_then(|l| at.join(l).ok())
        .ok_or_else(|| "a redirect with a malformed Location".to_owned());
    Some(next.and_then(|next| match next.scheme() {
        "http" | "https" => Ok(next),
        other => Err(format!(
            "a redirect to a {other}:// URL; only http and https redirects are followed"
        )),
    }))
}

impl Source for HttpSource {
    /// Who gave the URL does not matter here: the source policy judges
    /// every caller's URL alike.
    fn open<'a>(
        &'a self,
        url: &'a Url,
        resume: Option<&'a Resume>,
        _access: Access,
    ) -> OpenFuture<'a> {
        Box::pin(self.get(url, resume))
    }

    fn open_range<'a>(
        &'a self,
        url: &'a Url,
        range: std::ops::Range<u64>,
        validator: Option<&'a str>,
        _access: Access,
    ) -> OpenFuture<'a> {
        Box::pin(self.get_range(url, range, validator))
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
    parse_content_range(range, offset).ok_or_else(|| SourceError::BadRange {
        url: super::redacted(url),
        offset,
        got: format!("Content-Range {range:?}"),
    })
}

/// The total size in a `Content-Range` value `bytes FIRST-LAST/TOTAL`
/// whose FIRST is `offset`: `Some(None)` for a `*` total, `None` for a
/// value that is not valid (RFC 9110 14.4: digits only, FIRST <= LAST <
/// TOTAL) or starts elsewhere.
pub(crate) fn parse_content_range(range: &str, offset: u64) -> Option<Option<u64>> {
    let (span, total) = range.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last) = (digits(first)?, digits(last)?);
    let total = match total {
        "*" => None,
        t => Some(digits(t)?),
    };
    let valid = first <= last && total.is_none_or(|t| last < t);
    (valid && first == offset).then_some(total)
}

/// FIRST and LAST of a valid `Content-Range` value (see
/// [`parse_content_range`]).
pub(crate) fn parse_content_range_exact(range: &str) -> Option<(u64, u64)> {
    let (span, _) = range.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last) = (digits(first)?, digits(last)?);
    parse_content_range(range, first)?;
    Some((first, last))
}

/// `text` as a number if it is only ASCII digits (`u64::from_str` also
/// takes a leading `+`, which HTTP's grammar does not).
fn digits(text: &str) -> Option<u64> {
    match !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        true => text.parse().ok(),
        false => None,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for 429/503 and is
/// left to the backoff).
pub(super) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    parse_retry_after(response.headers().get(header::RETRY_AFTER)?.to_str().ok()?)
}

/// A `Retry-After` value in seconds; `None` for the HTTP-date form or
/// anything else.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    digits(value.trim()).map(Duration::from_secs)
}

fn denied(url: &Url, refused: Refused) -> SourceError {
    SourceError::Denied {
        url: super::redacted(url),
        reason: refused.reason,
    }
}

/// A direct client for caller URLs: its resolver holds every address to
/// `policy`; `by_prefix` for URLs under an allow rule's URL prefix.
fn guarded_client(
    policy: &Arc<SourcePolicy>,
    by_prefix: bool,
    ca: &CaBundle,
) -> Result<reqwest::Client, SourceError> {
    let resolver = GuardedResolver {
        policy: policy.clone(),
        by_prefix,
    };
    build(client_builder(ca).no_proxy().dns_resolver(resolver))
}

/// A client for caller URLs the proxies take (reqwest reads the same
/// variables as [`Proxies`]): its resolver resolves the proxies' own names
/// and nothing else, so it can never lift the policy for a target.
fn proxied_client(proxies: &Proxies, ca: &CaBundle) -> Result<reqwest::Client, SourceError> {
    let resolver = ProxyResolver {
        names: proxies.names().to_vec(),
    };
    build(client_builder(ca).dns_resolver(resolver))
}

/// Resolves with the system resolver, then keeps only the addresses the
/// policy allows; none left is the policy's refusal of the first.
struct GuardedResolver {
    policy: Arc<SourcePolicy>,
    by_prefix: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let by_prefix = self.by_prefix;
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let mut refused = None;
            let kept: Vec<SocketAddr> = found
                .filter(
                    |addr| match policy.check_resolved(&name, addr.ip(), by_prefix) {
                        Ok(()) => true,
                        Err(r) => {
                            refused.get_or_insert(r);
                            false
                        }
                    },
                )
                .collect();
            match (kept.is_empty(), refused) {
                (true, Some(refused)) => Err(refused.into()),
                _ => Ok(Box::new(kept.into_iter()) as Addrs),
            }
        })
    }
}

/// Resolves the proxies' host names (the operator's, trusted: no policy);
/// any other name is refused, as only the proxy is connected to.
struct ProxyResolver {
    names: Vec<String>,
}

impl Resolve for ProxyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let name = name.as_str().to_owned();
        let is_proxy = self.names.iter().any(|n| n.eq_ignore_ascii_case(&name));
        Box::pin(async move {
            if !is_proxy {
                let refused = Refused {
                    reason: format!("{name} is not a proxy; only the proxy is connected to"),
                };
                return Err(refused.into());
            }
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            Ok(Box::new(found.into_iter()) as Addrs)
        })
    }
}

/// An HTTP client for an endpoint the operator configured (trusted: no
/// policy), with assetd's user agent and connect timeout, trusting `ca`,
/// through the environment's proxies.
pub(super) fn client(ca: &CaBundle) -> Result<reqwest::Client, SourceError> {
    build(client_builder(ca))
}

/// assetd's user agent and connect timeout, `ca` on top of the system's
/// roots, and no redirects (the HTTP source follows them itself; GCS
/// sends none).
fn client_builder(ca: &CaBundle) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .user_agent(concat!("assetd/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    ca.apply(builder)
}

fn build(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, SourceError> {
    builder.build().map_err(|e| SourceError::Transport {
        url: String::new(),
        detail: format!("building the HTTP client: {}", crate::error_chain(&e)),
        retryable: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_is_taken_only_when_valid_and_at_the_offset() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000", 100),
            Some(Some(1000))
        );
        assert_eq!(parse_content_range("bytes 100-199/*", 100), Some(None));
        for (bad, offset) in [
            ("bytes 100-199/1000", 0),
            ("bytes */1000", 100),
            // Found by the fuzz target `content_range`: a LAST that is not
            // a number, or before FIRST, or a TOTAL not past LAST, or a `+`.
            ("bytes 0-*****99/*", 0),
            ("bytes 100-50/1000", 100),
            ("bytes 100-199/150", 100),
            ("bytes 100-199/199", 100),
            ("bytes +100-199/1000", 100),
            ("bytes 100-199/+1000", 100),
            ("bytes 100-/1000", 100),
        ] {
            assert_eq!(parse_content_range(bad, offset), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_takes_only_delay_seconds() {
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        // Found by the fuzz target `retry_after`: `u64::from_str` takes `+5`.
        for bad in ["+5", "-5", "", "1.5", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(bad), None, "{bad:?}");
        }
    }
}
