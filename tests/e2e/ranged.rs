//! Ranged transfers against a real server (nginx from Debian, which serves
//! byte ranges, `ETag` and `If-Match` as big artifact servers do), counted
//! from its access log.

use std::path::Path;

use crate::common::peer::Peer;
use crate::common::{TestDaemon, digest_of, fetch_req, random_bytes};

/// nginx serving `files` over plain HTTP on 127.0.0.1, logging each
/// request's `Range` header and status.
struct Nginx(Peer);

impl Nginx {
    fn start(files: &[(&str, &[u8])]) -> Option<Nginx> {
        crate::common::peer::nginx(files, "", "").map(Nginx)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.0.port)
    }

    /// Each request nginx answered: (status, Range header).
    fn requests(&self) -> Vec<(u16, String)> {
        self.0
            .access_log()
            .iter()
            .filter_map(|l| {
                let (status, rest) = l.split_once(' ')?;
                let range = rest.split('"').nth(1)?.to_owned();
                Some((status.parse().ok()?, range))
            })
            .collect()
    }
}

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_asset_comes_in_pieces_over_several_connections() {
    let body = random_bytes(40 * MIB, 1200);
    let Some(nginx) = Nginx::start(&[("rootfs.img", &body)]) else {
        return;
    };
    let digest = digest_of(&body);
    let daemon = TestDaemon::start_with(&["--ranged-min-size", "16MiB"]);
    let fetched = daemon
        .client()
        .await
        .fetch(fetch_req(&nginx.url("/rootfs.img"), &digest, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), body);
    // 8 MiB pieces: the first from the plain GET, four more as ranges.
    // (nginx logs a request when it ends: the first GET, cut short after
    // its piece, may come last.)
    let requests = nginx.requests();
    assert_eq!(requests.len(), 5, "{requests:?}");
    let plain: Vec<_> = requests.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(plain, vec![&(200, "-".to_owned())], "{requests:?}");
    let mut ranges: Vec<String> = requests
        .iter()
        .filter(|(status, _)| *status == 206)
        .map(|(_, range)| range.clone())
        .collect();
    ranges.sort();
    let piece = 8 * MIB;
    let mut wanted: Vec<String> = (1..5)
        .map(|i| {
            format!(
                "bytes={}-{}",
                i * piece,
                ((i + 1) * piece).min(body.len()) - 1
            )
        })
        .collect();
    wanted.sort();
    assert_eq!(ranges, wanted);
    assert!(daemon.log().contains("reading in pieces"));
    daemon
        .wait_ingest_empty(std::time::Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_assets_and_one_connection_read_one_stream() {
    let body = random_bytes(20 * MIB, 1201);
    let Some(nginx) = Nginx::start(&[("a.img", &body), ("b.img", &body[..10 * MIB])]) else {
        return;
    };
    // Above the threshold, but one connection.
    let daemon = TestDaemon::start_with(&["--ranged-min-size", "16MiB", "--connections", "1"]);
    let mut client = daemon.client().await;
    client
        .fetch(fetch_req(&nginx.url("/a.img"), &digest_of(&body), ""))
        .await
        .unwrap();
    // Below the threshold.
    let daemon = TestDaemon::start_with(&["--ranged-min-size", "16MiB"]);
    let small = &body[..10 * MIB];
    let fetched = daemon
        .client()
        .await
        .fetch(fetch_req(&nginx.url("/b.img"), &digest_of(small), ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(std::fs::read(Path::new(&fetched.path)).unwrap(), small);
    assert_eq!(
        nginx.requests(),
        vec![(200, "-".to_owned()), (200, "-".to_owned())]
    );
    // A request may ask for one stream (or fewer connections, never more).
    let mut req = fetch_req(&nginx.url("/a.img"), &digest_of(&body), "");
    req.connections = 1;
    daemon.client().await.fetch(req).await.unwrap();
    assert_eq!(nginx.requests().len(), 3, "{:?}", nginx.requests());
}

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::Code;

use crate::common::assert_status;
use crate::common::http::{Fault, HttpServer, Reply};

/// `body` as pieces, with `etag`, and `fault`.
fn pieces(body: &Arc<Vec<u8>>, etag: Option<&'static str>, fault: Fault) -> Reply {
    Reply::Pieces {
        body: body.clone(),
        etag,
        fault,
    }
}

/// A fresh daemon reading pieces from 16 MiB on, which fetches `url` and
/// must get exactly `body`, leaving nothing in `ingest/` (no temp file, no
/// sidecar); returned for the test to look at.
async fn fetch_in_pieces(url: &str, body: &[u8]) -> TestDaemon {
    let daemon = TestDaemon::start_with(&PIECED);
    let fetched = daemon
        .client()
        .await
        .fetch(fetch_req(url, &digest_of(body), ""))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()))
        .into_inner();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), body);
    daemon
        .wait_ingest_empty(std::time::Duration::from_secs(5))
        .await;
    daemon
}

/// How many requests asked for each `Range` ("-" for none).
fn by_range(http: &HttpServer) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for range in http.ranges() {
        *counts
            .entry(range.unwrap_or_else(|| "-".into()))
            .or_default() += 1;
    }
    counts
}

const PIECED: [&str; 2] = ["--ranged-min-size", "16MiB"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_that_breaks_is_retried_alone() {
    let body = Arc::new(random_bytes(24 * MIB, 1202));
    let http = HttpServer::start().await;
    // The first GET, then the first range request to arrive breaks halfway.
    let url = http.sequence(
        "/img",
        vec![
            pieces(&body, Some("\"v1\""), Fault::None),
            pieces(&body, Some("\"v1\""), Fault::CutAfter(3 * MIB)),
            pieces(&body, Some("\"v1\""), Fault::None),
        ],
    );
    fetch_in_pieces(&url, &body).await;
    // Pieces 1 and 2 asked once each, but one of them again from where it
    // broke: 3 MiB in.
    let counts = by_range(&http);
    assert_eq!(counts.get("-"), Some(&1), "{counts:?}");
    let piece = 8 * MIB;
    let retried: Vec<_> = counts
        .keys()
        .filter(|r| {
            let start = r.strip_prefix("bytes=").and_then(|r| r.split_once('-'));
            start.is_some_and(|(a, _)| a.parse::<usize>().is_ok_and(|a| a % piece != 0))
        })
        .collect();
    assert_eq!(retried.len(), 1, "one piece resumed mid-way: {counts:?}");
    assert_eq!(http.requests(), 4, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_mid_transfer_starts_over_in_one_stream() {
    let old = Arc::new(random_bytes(24 * MIB, 1203));
    let http = HttpServer::start().await;
    // The first GET names v1; every later request finds v2 (same bytes
    // here, so the result verifies): the pieces get 412, the transfer
    // starts over in one stream from byte 0.
    let url = http.sequence(
        "/img",
        vec![
            pieces(&old, Some("\"v1\""), Fault::None),
            pieces(&old, Some("\"v2\""), Fault::None),
        ],
    );
    let daemon = fetch_in_pieces(&url, &old).await;
    let counts = by_range(&http);
    assert_eq!(
        counts.get("-"),
        Some(&2),
        "one GET, then one stream: {counts:?}"
    );
    assert!(daemon.log().contains("changed while it was read in pieces"));
    daemon
        .wait_ingest_empty(std::time::Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_content_range_is_refused_and_one_stream_reads_the_asset() {
    let body = Arc::new(random_bytes(24 * MIB, 1204));
    let http = HttpServer::start().await;
    let url = http.sequence(
        "/img",
        vec![
            pieces(&body, Some("\"v1\""), Fault::None),
            pieces(&body, Some("\"v1\""), Fault::WrongRange),
            pieces(&body, Some("\"v1\""), Fault::None),
        ],
    );
    let daemon = fetch_in_pieces(&url, &body).await;
    assert!(daemon.log().contains("Content-Range"), "{}", daemon.log());
    assert_eq!(by_range(&http).get("-"), Some(&2), "{:?}", by_range(&http));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_validators_pieces_are_still_read_and_the_digest_decides() {
    let body = Arc::new(random_bytes(24 * MIB, 1205));
    let http = HttpServer::start().await;
    let url = http.route("/img", pieces(&body, None, Fault::None));
    let daemon = TestDaemon::start_with(&PIECED);
    let mut client = daemon.client().await;
    let fetched = client
        .fetch(fetch_req(&url, &digest_of(&body), ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), *body);
    assert_eq!(http.requests(), 3, "{:?}", by_range(&http));

    // A digest that does not match: one fresh stream, then DATA_LOSS, and
    // nothing left behind.
    let other = http.route("/other", pieces(&body, None, Fault::None));
    let wrong = digest_of(b"something else");
    assert_status(
        client.fetch(fetch_req(&other, &wrong, "")).await,
        Code::DataLoss,
        &[&wrong],
    );
    assert_eq!(http.requests_to("/other"), 4, "3 for the pieces, 1 stream");
    daemon
        .wait_ingest_empty(std::time::Duration::from_secs(5))
        .await;
    assert_eq!(daemon.blobs().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_declared_size_is_judged_before_any_piece() {
    let body = Arc::new(random_bytes(24 * MIB, 1206));
    let http = HttpServer::start().await;
    let url = http.route("/img", pieces(&body, Some("\"v1\""), Fault::None));
    let daemon = TestDaemon::start_with(&["--ranged-min-size", "16MiB", "--max-size", "20MiB"]);
    assert_status(
        daemon
            .client()
            .await
            .fetch(fetch_req(&url, &digest_of(&body), ""))
            .await,
        Code::ResourceExhausted,
        &["25165824"],
    );
    assert_eq!(http.requests(), 1, "no piece was asked for");
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_written_before_a_kill_9_are_not_asked_for_again() {
    let body = Arc::new(random_bytes(24 * MIB, 1207));
    let digest = digest_of(&body);
    let http = HttpServer::start().await;
    // The GET (piece 0) and the first range arrive; the second range
    // hangs. After the restart, everything answers.
    let ok = pieces(&body, Some("\"v1\""), Fault::None);
    let url = http.sequence(
        "/img",
        vec![
            ok.clone(),
            ok.clone(),
            pieces(&body, Some("\"v1\""), Fault::Hang),
            ok,
        ],
    );
    let mut daemon = TestDaemon::start_with(&PIECED);
    let task = daemon.fetch_in_background(&url, &digest).await;
    // Two of the three pieces are on disk, and said so in the sidecar.
    crate::common::wait_until(
        std::time::Duration::from_secs(30),
        "two pieces saved",
        || daemon.durable_partial_bytes() >= 16 * MIB as u64,
    )
    .await;
    daemon.kill9();
    task.abort();
    daemon.start_again(&PIECED);
    let fetched = daemon
        .client()
        .await
        .fetch(fetch_req(&url, &digest, ""))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()))
        .into_inner();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), *body);
    // After the restart: the GET (for the version), then only the piece
    // that hung.
    let ranges = http.ranges();
    assert_eq!(ranges.len(), 5, "{ranges:?}");
    assert_eq!(ranges[3], None, "{ranges:?}");
    assert_eq!(ranges[4], ranges[2], "only the missing piece: {ranges:?}");
    daemon
        .wait_ingest_empty(std::time::Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranged_transfer_whose_caller_leaves_stops_and_leaves_nothing() {
    let body = Arc::new(random_bytes(24 * MIB, 1208));
    let digest = digest_of(&body);
    let http = HttpServer::start().await;
    // Piece 0 arrives; every range request hangs.
    let url = http.sequence(
        "/img",
        vec![
            pieces(&body, Some("\"v1\""), Fault::None),
            pieces(&body, Some("\"v1\""), Fault::Hang),
        ],
    );
    let daemon = TestDaemon::start_with(&PIECED);
    let mut client = daemon.client().await;
    let gone = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        client.fetch(fetch_req(&url, &digest, "")),
    )
    .await;
    assert!(gone.is_err(), "the pieces hang, so the fetch can't end");
    drop(client);
    // The only caller left: every piece stops, the file and its sidecar go.
    daemon
        .wait_ingest_empty(std::time::Duration::from_secs(10))
        .await;
    daemon.assert_empty();
    assert!(
        daemon.log().contains("every caller left"),
        "{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_that_stalls_is_retried_alone() {
    let body = Arc::new(random_bytes(24 * MIB, 1209));
    let http = HttpServer::start().await;
    // The first range request to arrive goes silent after its head.
    let url = http.sequence(
        "/img",
        vec![
            pieces(&body, Some("\"v1\""), Fault::None),
            pieces(&body, Some("\"v1\""), Fault::Hang),
            pieces(&body, Some("\"v1\""), Fault::None),
        ],
    );
    let daemon = TestDaemon::start_with(&["--ranged-min-size", "16MiB", "--stall-timeout", "1s"]);
    let fetched = daemon
        .client()
        .await
        .fetch(fetch_req(&url, &digest_of(&body), ""))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()))
        .into_inner();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), *body);
    // The stalled range was asked for again, the other once, the GET once.
    let counts = by_range(&http);
    let mut asked: Vec<usize> = counts.values().copied().collect();
    asked.sort();
    assert_eq!(asked, vec![1, 1, 2], "{counts:?}");
    assert!(
        daemon.log().contains("retrying a piece"),
        "{}",
        daemon.log()
    );
    daemon
        .wait_ingest_empty(std::time::Duration::from_secs(5))
        .await;
}
