//! Metrics in the Prometheus text format, served by `--metrics-listen` on
//! loopback or a unix socket (never on a network address: the numbers say
//! what the node is doing). Counters move where the work happens (the fetch
//! layer); gauges are read from the fetcher at each scrape.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::MetricsListen;
use crate::fetch::{Fetcher, Stats};

/// Log lines dropped because stderr could not be written (the binary's log
/// writer counts them here).
pub static DROPPED_LOG_LINES: AtomicU64 = AtomicU64::new(0);

/// Labels: `[(name, value)]`.
type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the daemon keeps, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    fetches: Family<Labels, Counter>,
    refusals: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    first_byte: Family<Labels, Histogram, fn() -> Histogram>,
    joins: Counter,
    retries: Counter,
    resumes: Counter,
    evictions: Counter,
    evicted_bytes: Counter,
    quarantined: Counter,
    dropped_log_lines: Counter,
    running: Gauge,
    waiting: Gauge,
    cached_bytes: Gauge,
    cached_assets: Gauge,
}

/// Seconds from 10 ms to about 3 hours, by factors of 2.5: a hit, a kernel,
/// a model.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.5, 15))
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("assetd");
        let m = Metrics {
            fetches: Family::default(),
            refusals: Family::default(),
            bytes: Family::default(),
            duration: Family::new_with_constructor(seconds),
            first_byte: Family::new_with_constructor(seconds),
            joins: Counter::default(),
            retries: Counter::default(),
            resumes: Counter::default(),
            evictions: Counter::default(),
            evicted_bytes: Counter::default(),
            quarantined: Counter::default(),
            dropped_log_lines: Counter::default(),
            running: Gauge::default(),
            waiting: Gauge::default(),
            cached_bytes: Gauge::default(),
            cached_assets: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "fetches",
            "Fetch calls by outcome (hit, fetched, refused, failed) and source kind",
            m.fetches.clone(),
        );
        registry.register(
            "refusals",
            "Fetch calls refused before any transfer, by reason",
            m.refusals.clone(),
        );
        registry.register(
            "transferred_bytes",
            "Bytes brought into the cache by transfers, by source kind",
            m.bytes.clone(),
        );
        registry.register(
            "transfer_duration_seconds",
            "Time from a transfer's start to its commit, by source kind",
            m.duration.clone(),
        );
        registry.register(
            "time_to_first_byte_seconds",
            "Time from a transfer's start to its first byte, by source kind",
            m.first_byte.clone(),
        );
        registry.register(
            "single_flight_joins",
            "Fetch calls that joined a transfer already running",
            m.joins.clone(),
        );
        registry.register(
            "retries",
            "Tries retried on the same URL",
            m.retries.clone(),
        );
        registry.register(
            "resumes",
            "Tries that resumed from bytes already written",
            m.resumes.clone(),
        );
        registry.register("evictions", "Assets evicted", m.evictions.clone());
        registry.register(
            "evicted_bytes",
            "Bytes of assets evicted",
            m.evicted_bytes.clone(),
        );
        registry.register(
            "quarantined",
            "Blobs moved to quarantine by verify",
            m.quarantined.clone(),
        );
        registry.register(
            "dropped_log_lines",
            "Log lines dropped because stderr could not be written",
            m.dropped_log_lines.clone(),
        );
        registry.register(
            "transfers_running",
            "Transfers reading from a source",
            m.running.clone(),
        );
        registry.register(
            "transfers_waiting",
            "Transfers waiting for a slot",
            m.waiting.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes of cached assets",
            m.cached_bytes.clone(),
        );
        registry.register("cache_assets", "Cached assets", m.cached_assets.clone());
        Metrics { registry, ..m }
    }
}

/// The kind of a source URL, as a label: its scheme.
pub fn source_kind(url: &url::Url) -> &'static str {
    match url.scheme() {
        "http" => "http",
        "https" => "https",
        "gs" => "gs",
        "file" => "file",
        _ => "other",
    }
}

impl Metrics {
    /// A fetch call ended with `outcome` (`hit`, `fetched`, `refused`,
    /// `failed`) for a URL of `source` kind.
    pub fn fetch(&self, outcome: &'static str, source: &'static str) {
        self.fetches
            .get_or_create(&vec![("outcome", outcome), ("source", source)])
            .inc();
    }

    /// A fetch call was refused for `reason` before any transfer.
    pub fn refusal(&self, reason: &'static str) {
        self.refusals.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// A transfer from `source` committed `bytes` after `secs`.
    pub fn transferred(&self, source: &'static str, bytes: u64, secs: f64) {
        let labels = vec![("source", source)];
        self.bytes.get_or_create(&labels).inc_by(bytes);
        self.duration.get_or_create(&labels).observe(secs);
    }

    /// A transfer from `source` had its first byte `secs` after it started.
    pub fn first_byte(&self, source: &'static str, secs: f64) {
        self.first_byte
            .get_or_create(&vec![("source", source)])
            .observe(secs);
    }

    /// A caller joined a running transfer.
    pub fn joined(&self) {
        self.joins.inc();
    }

    /// A try is retried.
    pub fn retried(&self) {
        self.retries.inc();
    }

    /// A try resumed from bytes already written.
    pub fn resumed(&self) {
        self.resumes.inc();
    }

    /// `assets` assets of `bytes` in all were evicted.
    pub fn evicted(&self, assets: usize, bytes: u64) {
        self.evictions.inc_by(assets as u64);
        self.evicted_bytes.inc_by(bytes);
    }

    /// `blobs` corrupt blobs went to quarantine.
    pub fn quarantined(&self, blobs: usize) {
        self.quarantined.inc_by(blobs as u64);
    }

    /// Everything in the text format, with the gauges set from `stats`.
    pub fn render(&self, stats: Stats) -> String {
        let set = |gauge: &Gauge, n: u64| gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        set(&self.running, stats.running as u64);
        set(&self.waiting, stats.waiting as u64);
        set(&self.cached_bytes, stats.bytes);
        set(&self.cached_assets, stats.assets as u64);
        let dropped = DROPPED_LOG_LINES.load(Ordering::Relaxed);
        self.dropped_log_lines
            .inc_by(dropped.saturating_sub(self.dropped_log_lines.get()));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// A bound metrics endpoint, to serve with [`serve`].
#[derive(Debug)]
pub enum Endpoint {
    /// On loopback.
    Tcp(tokio::net::TcpListener),
    /// On a unix socket (mode 0660), removed when serving ends.
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

impl std::fmt::Display for Endpoint {
    /// The address bound (with the port chosen, for port 0), or the path.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(l) => match l.local_addr() {
                Ok(addr) => write!(f, "http://{addr}/metrics"),
                Err(_) => write!(f, "(unknown address)"),
            },
            Endpoint::Unix(_, path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Binds `listen` (a stale unix socket file is replaced). Needs a tokio
/// runtime.
pub async fn bind(listen: &MetricsListen) -> std::io::Result<Endpoint> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    match listen {
        MetricsListen::Tcp(addr) => Ok(Endpoint::Tcp(tokio::net::TcpListener::bind(addr).await?)),
        MetricsListen::Unix(path) => {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                std::fs::remove_file(path)?;
            }
            let listener = tokio::net::UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            Ok(Endpoint::Unix(listener, path.clone()))
        }
    }
}

/// Scrapes served at once; more connections are closed at once. A scraper
/// needs one; this keeps a flood of slow clients from taking the daemon's
/// file descriptors.
const MAX_SCRAPES: usize = 8;
/// Longest a scrape's connection stays open, request and answer together.
const SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `GET /metrics` on `endpoint` until `stop`: HTTP/1.1, at most
/// [`MAX_SCRAPES`] connections at a time, each closed after
/// [`SCRAPE_TIMEOUT`].
pub async fn serve(
    endpoint: Endpoint,
    fetcher: Fetcher,
    stop: tokio_util::sync::CancellationToken,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    let (listener, path) = match endpoint {
        Endpoint::Tcp(l) => (Accept::Tcp(l), None),
        Endpoint::Unix(l, path) => (Accept::Unix(l), Some(path)),
    };
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over the cap: dropped, so closed, at once.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let fetcher = fetcher.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let answer = scrape(&fetcher, &request);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, conn).await;
        });
    }
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}

/// The answer to one request: the metrics for `GET /metrics`, else 404.
fn scrape<B>(
    fetcher: &Fetcher,
    request: &hyper::Request<B>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, kind, text) = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            hyper::StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            fetcher.metrics().render(fetcher.stats()),
        ),
        _ => (
            hyper::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
    *response.status_mut() = status;
    if let Ok(kind) = hyper::header::HeaderValue::from_str(kind) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, kind);
    }
    response
}

/// A listener of either kind, yielding one stream type.
enum Accept {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// An accepted connection of either kind.
type Stream = Box<dyn AsyncStream>;
trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}

impl Accept {
    async fn accept(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Accept::Tcp(l) => Box::new(l.accept().await?.0),
            Accept::Unix(l) => Box::new(l.accept().await?.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_show_in_the_text() {
        let m = Metrics::default();
        m.fetch("hit", "https");
        m.fetch("hit", "https");
        m.refusal("denied");
        m.transferred("gs", 1000, 0.5);
        let text = m.render(Stats {
            assets: 3,
            bytes: 4096,
            running: 1,
            waiting: 2,
        });
        for line in [
            "assetd_fetches_total{outcome=\"hit\",source=\"https\"} 2",
            "assetd_refusals_total{reason=\"denied\"} 1",
            "assetd_transferred_bytes_total{source=\"gs\"} 1000",
            "assetd_transfer_duration_seconds_count{source=\"gs\"} 1",
            "assetd_cache_assets 3",
            "assetd_cache_bytes 4096",
            "assetd_transfers_waiting 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
    }
}
