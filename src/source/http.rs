//! `http://` and `https://`, through reqwest with rustls.

use std::time::Duration;

use reqwest::StatusCode;
use tokio_stream::StreamExt as _;
use url::Url;

use super::{OpenFuture, Opened, Source, SourceError};

/// Redirects followed before giving up: enough for CDNs and signed-URL
/// hops, few enough that a loop ends quickly.
const MAX_REDIRECTS: usize = 10;
/// Time to establish a connection (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

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

    async fn get(&self, url: &Url) -> Result<Opened, SourceError> {
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| SourceError::transport(url, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_error(url, status));
        }
        let size = response.content_length();
        let stream_url = url.clone();
        let body = response
            .bytes_stream()
            .map(move |chunk| chunk.map_err(|e| SourceError::transport(&stream_url, &e)));
        Ok(Opened {
            size,
            body: Box::pin(body),
        })
    }
}

impl Source for HttpSource {
    fn open<'a>(&'a self, url: &'a Url) -> OpenFuture<'a> {
        Box::pin(self.get(url))
    }
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
            detail: format!("building the HTTP client: {e}"),
        })
}

fn status_error(url: &Url, status: StatusCode) -> SourceError {
    let url = url.to_string();
    match status {
        StatusCode::NOT_FOUND | StatusCode::GONE => SourceError::NotFound {
            url,
            detail: format!("HTTP {status}"),
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SourceError::Denied {
            url,
            reason: format!("upstream answered HTTP {status}"),
        },
        _ => SourceError::Status {
            url,
            status: status.as_u16(),
        },
    }
}
