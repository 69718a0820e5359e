//! The pipeline under faults and load: resume, retries, stalls, lying
//! upstreams, mirrors, single flight, cancellation and progress.

use std::time::{Duration, Instant};

use assetd::proto::FetchRequest;
use assetd::proto::fetch_event::Event;
use tonic::Code;

use crate::common::http::{HttpServer, Reply};
use crate::common::{TestDaemon, WRONG_DIGEST, assert_status, digest_of, random_bytes};

fn request(url: &str, digest: &str) -> FetchRequest {
    FetchRequest {
        url: url.to_owned(),
        digest: digest.to_owned(),
        ..Default::default()
    }
}

/// Fetches `url` and checks the blob holds `body`.
async fn fetch_ok(daemon: &TestDaemon, url: &str, body: &[u8]) {
    let reply = daemon
        .client()
        .await
        .fetch(request(url, &digest_of(body)))
        .await
        .unwrap()
        .into_inner();
    assert!(
        std::fs::read(&reply.path).unwrap() == body,
        "blob differs from the upstream's bytes"
    );
    assert!(daemon.ingest().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_or_reset_transfer_resumes_from_where_it_broke() {
    let http = HttpServer::start().await;
    let body = random_bytes(4 << 20, 41);
    for (path, reset) in [("/closed", false), ("/reset", true)] {
        let cut = Reply::Cut {
            body: body.clone(),
            after: 3 << 20,
            reset,
            ranged: true,
        };
        let url = http.sequence(path, vec![cut, Reply::Ranged(body.clone())]);
        let daemon = TestDaemon::start();
        let sent_before = http.body_bytes();
        fetch_ok(&daemon, &url, &body).await;
        let ranges = http.ranges();
        let resumed = ranges
            .last()
            .unwrap()
            .as_deref()
            .unwrap_or_else(|| panic!("{path}: no Range on the retry"));
        let offset: u64 = resumed["bytes=".len()..resumed.len() - 1].parse().unwrap();
        assert!(offset > 0, "{path}: resumed from {offset}");
        // Only what was lost in flight is sent twice.
        let sent = http.body_bytes() - sent_before;
        assert!(
            sent <= body.len() as u64 + (1 << 20),
            "{path}: {sent} bytes for {}",
            body.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_ignored_starts_over_with_a_correct_file() {
    let http = HttpServer::start().await;
    let body = random_bytes(3 << 20, 42);
    let cut = Reply::Cut {
        body: body.clone(),
        after: 1 << 20,
        reset: false,
        ranged: false,
    };
    let url = http.sequence("/norange", vec![cut, Reply::Body(body.clone())]);
    let daemon = TestDaemon::start();
    fetch_ok(&daemon, &url, &body).await;
    assert_eq!(http.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_statuses_are_retried_and_retry_after_honoured() {
    let http = HttpServer::start().await;
    let body = random_bytes(1 << 20, 43);
    let busy = http.sequence(
        "/busy",
        vec![
            Reply::status(503),
            Reply::status(502),
            Reply::Body(body.clone()),
        ],
    );
    let daemon = TestDaemon::start();
    fetch_ok(&daemon, &busy, &body).await;
    assert_eq!(http.requests(), 3);

    let body = random_bytes(1 << 20, 44);
    let limited = Reply::Status(429, vec![("Retry-After", "1".into())]);
    let url = http.sequence("/limited", vec![limited, Reply::Body(body.clone())]);
    let started = Instant::now();
    fetch_ok(&daemon, &url, &body).await;
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 not honoured"
    );
    assert!(daemon.log().contains("retrying"), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded_and_leave_nothing() {
    let http = HttpServer::start().await;
    let down = http.route("/down", Reply::status(503));
    let daemon = TestDaemon::start_with(&["--attempts", "3"]);
    let result = daemon
        .client()
        .await
        .fetch(request(&down, WRONG_DIGEST))
        .await;
    assert_status(result, Code::Unavailable, &[&down, "503"]);
    assert_eq!(http.requests(), 3);
    // A client error is not retried.
    let gone = http.route("/gone", Reply::status(403));
    let result = daemon
        .client()
        .await
        .fetch(request(&gone, WRONG_DIGEST))
        .await;
    assert_status(result, Code::PermissionDenied, &[&gone]);
    assert_eq!(http.requests(), 4);
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_transfer_is_retried_then_given_up() {
    let http = HttpServer::start().await;
    let body = random_bytes(2 << 20, 45);
    let stall = Reply::Stall {
        body: body.clone(),
        after: 512 << 10,
    };
    let url = http.sequence("/hiccup", vec![stall, Reply::Ranged(body.clone())]);
    let daemon = TestDaemon::start_with(&["--stall-timeout", "300ms", "--attempts", "2"]);
    fetch_ok(&daemon, &url, &body).await;
    assert!(http.ranges()[1].is_some(), "the retry resumes");

    // A stall after some bytes is resumed (and counts as progress); one
    // with no bytes at all is given up after --attempts.
    let other = random_bytes(2 << 20, 54);
    let stall = Reply::Stall {
        body: other.clone(),
        after: 0,
    };
    let dead = http.route("/dead", stall);
    let result = daemon
        .client()
        .await
        .fetch(request(&dead, &digest_of(&other)))
        .await;
    assert_status(result, Code::Unavailable, &[&dead, "stalled"]);
    assert_eq!(http.requests(), 4, "two tries on /hiccup, two on /dead");
    daemon.wait_ingest_empty(Duration::from_secs(2)).await;
    assert_eq!(daemon.blobs().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_content_length_never_yields_a_wrong_file() {
    let http = HttpServer::start().await;
    let body = random_bytes(1 << 20, 46);
    let daemon = TestDaemon::start_with(&["--attempts", "2"]);
    let mut client = daemon.client().await;
    // Declares more than it sends: a broken transfer, retried, then given up.
    let short = http.route(
        "/short",
        Reply::Claims {
            claimed: 2 << 20,
            body: body.clone(),
        },
    );
    let result = client.fetch(request(&short, &digest_of(&body))).await;
    assert_status(result, Code::Unavailable, &[&short]);
    // Declares less than it sends: the declared bytes do not verify.
    let long = http.route(
        "/long",
        Reply::Claims {
            claimed: 1000,
            body: body.clone(),
        },
    );
    let result = client.fetch(request(&long, &digest_of(&body))).await;
    assert_status(
        result,
        Code::DataLoss,
        &["digest mismatch", &digest_of(&body)],
    );
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_loop_fails_without_retrying() {
    let http = HttpServer::start().await;
    let url = http.route("/loop", Reply::Redirect("/loop".into()));
    let daemon = TestDaemon::start();
    let result = daemon
        .client()
        .await
        .fetch(request(&url, WRONG_DIGEST))
        .await;
    assert_status(result, Code::Unavailable, &["redirect"]);
    assert_eq!(
        http.requests(),
        11,
        "the first request and 10 redirects, once"
    );
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_are_tried_in_order_when_one_fails() {
    let http = HttpServer::start().await;
    let body = random_bytes(1 << 20, 47);
    let missing = http.route("/missing", Reply::status(404));
    let wrong = http.route("/wrong", Reply::Body(random_bytes(1 << 20, 48)));
    let good = http.route("/good", Reply::Body(body.clone()));
    let daemon = TestDaemon::start();
    let req = FetchRequest {
        mirrors: vec![wrong.clone(), good.clone()],
        ..request(&missing, &digest_of(&body))
    };
    let reply = daemon.client().await.fetch(req).await.unwrap().into_inner();
    assert!(std::fs::read(reply.path).unwrap() == body);
    assert_eq!(http.requests(), 3);
    let log = daemon.log();
    assert!(
        log.contains("source failed") && log.contains("digest mismatch"),
        "{log}"
    );

    // A malformed mirror is refused before anything is fetched.
    let bad = FetchRequest {
        mirrors: vec!["ftp://x/y".into()],
        ..request(&good, WRONG_DIGEST)
    };
    let result = daemon.client().await.fetch(bad).await;
    assert_status(result, Code::InvalidArgument, &["\"ftp\""]);
    assert_eq!(http.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_transfer() {
    let http = HttpServer::start().await;
    // Slow enough (about 2.5 s) that all 64 callers join while it runs.
    let body = random_bytes(8 << 20, 49);
    let digest = digest_of(&body);
    let slow = Reply::slow(&body, 128 << 10, 40);
    let url = http.route("/rootfs", slow);
    // Other URLs for the same digest join the same transfer.
    let other = http.route("/other", Reply::Body(body.clone()));
    let daemon = TestDaemon::start();
    let mut calls = Vec::new();
    for i in 0..64 {
        let mut client = daemon.client().await;
        let url = if i % 2 == 0 {
            url.clone()
        } else {
            other.clone()
        };
        let req = request(&url, &digest);
        calls.push(tokio::spawn(async move { client.fetch(req).await }));
        if i == 0 {
            while http.body_bytes() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let mut paths = Vec::new();
    for call in calls {
        let reply = call.await.unwrap().unwrap().into_inner();
        assert!(!reply.cache_hit, "every caller joined the transfer");
        paths.push(reply.path);
    }
    paths.dedup();
    assert_eq!(paths.len(), 1, "every caller gets the same path");
    assert_eq!(http.requests(), 1, "exactly one upstream transfer");
    assert_eq!(http.body_bytes(), body.len() as u64);
    assert!(std::fs::read(&paths[0]).unwrap() == body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_callers_leaving_does_not_stop_the_transfer() {
    let http = HttpServer::start().await;
    let body = random_bytes(4 << 20, 50);
    let digest = digest_of(&body);
    let slow = Reply::slow(&body, 128 << 10, 20);
    let url = http.route("/slow", slow);
    let daemon = TestDaemon::start();
    let (mut a, mut b) = (daemon.client().await, daemon.client().await);
    let (req_a, req_b) = (request(&url, &digest), request(&url, &digest));
    let leaving = tokio::spawn(async move { a.fetch(req_a).await });
    while http.body_bytes() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let staying = tokio::spawn(async move { b.fetch(req_b).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    leaving.abort();
    let reply = staying.await.unwrap().unwrap().into_inner();
    assert!(std::fs::read(reply.path).unwrap() == body);
    assert_eq!(http.requests(), 1);
    assert_eq!(http.hangups(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_progress_streams_progress_then_the_result() {
    let http = HttpServer::start().await;
    let body = random_bytes(6 << 20, 51);
    let digest = digest_of(&body);
    let slow = Reply::slow(&body, 256 << 10, 30);
    let url = http.route("/slow", slow);
    let daemon = TestDaemon::start();
    let mut first = daemon
        .client()
        .await
        .fetch_progress(request(&url, &digest))
        .await
        .unwrap()
        .into_inner();
    while http.body_bytes() < 3 << 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A caller joining midway sees the transfer from where it is.
    let mut joined = daemon
        .client()
        .await
        .fetch_progress(request(&url, &digest))
        .await
        .unwrap()
        .into_inner();
    let Some(Event::Progress(p)) = joined.message().await.unwrap().unwrap().event else {
        panic!("the first event is progress");
    };
    assert!(p.bytes_done >= 2 << 20, "joined at {} bytes", p.bytes_done);
    assert_eq!(p.bytes_total, body.len() as u64);
    assert_eq!(p.source, url);

    let mut events = Vec::new();
    while let Some(event) = first.message().await.unwrap() {
        events.push(event.event.unwrap());
    }
    let Some(Event::Done(done)) = events.pop() else {
        panic!("the last event is the result");
    };
    assert_eq!(done.digest, digest);
    assert!(!done.cache_hit);
    let done_bytes: Vec<u64> = events
        .iter()
        .map(|e| match e {
            Event::Progress(p) => p.bytes_done,
            Event::Done(_) => panic!("one result only"),
        })
        .collect();
    assert!(
        done_bytes.len() >= 3,
        "progress about every 250 ms: {done_bytes:?}"
    );
    assert!(
        done_bytes.windows(2).all(|w| w[0] <= w[1]),
        "{done_bytes:?}"
    );
    while joined.message().await.unwrap().is_some() {}
    assert_eq!(http.requests(), 1);

    // A hit answers with the result alone.
    let mut hit = daemon
        .client()
        .await
        .fetch_progress(request(&url, &digest))
        .await
        .unwrap()
        .into_inner();
    let Some(Event::Done(done)) = hit.message().await.unwrap().unwrap().event else {
        panic!("a hit is one result");
    };
    assert!(done.cache_hit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_wait_for_a_slot_in_order() {
    let http = HttpServer::start().await;
    let daemon = TestDaemon::start_with(&["--max-transfers", "1"]);
    let first = random_bytes(2 << 20, 52);
    let second = random_bytes(1 << 20, 53);
    let slow = Reply::slow(&first, 256 << 10, 30);
    let url_a = http.route("/a", slow);
    let url_b = http.route("/b", Reply::Body(second.clone()));
    let (mut a, mut b) = (daemon.client().await, daemon.client().await);
    let req_a = request(&url_a, &digest_of(&first));
    let call_a = tokio::spawn(async move { a.fetch(req_a).await });
    while http.body_bytes() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut waiting = b
        .fetch_progress(request(&url_b, &digest_of(&second)))
        .await
        .unwrap()
        .into_inner();
    let Some(Event::Progress(p)) = waiting.message().await.unwrap().unwrap().event else {
        panic!("progress while waiting");
    };
    assert_eq!(p.source, "", "waiting for a slot");
    assert_eq!(http.requests(), 1, "the second transfer has not started");
    call_a.await.unwrap().unwrap();
    while waiting.message().await.unwrap().is_some() {}
    assert_eq!(http.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_deadline_bounds_the_transfer() {
    let http = HttpServer::start().await;
    let body = random_bytes(4 << 20, 55);
    let slow = Reply::slow(&body, 64 << 10, 20);
    let url = http.route("/slow", slow);
    let daemon = TestDaemon::start();
    let mut req = tonic::Request::new(request(&url, &digest_of(&body)));
    req.set_timeout(Duration::from_millis(300));
    let status = daemon.client().await.fetch(req).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    daemon.wait_ingest_empty(Duration::from_secs(2)).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while http.hangups() == 0 {
        assert!(Instant::now() < deadline, "the upstream transfer goes on");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_is_a_stall_and_runs_out_of_tries() {
    let http = HttpServer::start().await;
    let body = random_bytes(64 << 10, 77);
    // 16 bytes every 100 ms: never silent for a stall timeout, but 160
    // bytes a second, far below the minimum rate.
    let url = http.route("/trickle", Reply::slow(&body, 16, 100));
    let daemon = TestDaemon::start_with(&[
        "--stall-timeout",
        "500ms",
        "--min-rate",
        "1KiB",
        "--attempts",
        "2",
    ]);
    let started = std::time::Instant::now();
    let result = daemon
        .client()
        .await
        .fetch(request(&url, &digest_of(&body)))
        .await;
    assert_status(
        result,
        Code::Unavailable,
        &["/trickle", "below the minimum rate of 1024 bytes/s"],
    );
    // Each try brought a few bytes: not enough to count as progress, so
    // the tries ran out instead of starting over for ever.
    assert_eq!(http.requests(), 2);
    assert!(started.elapsed() < Duration::from_secs(20));
    daemon.wait_ingest_empty(Duration::from_secs(2)).await;
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_past_the_attempt_timeout_fails_and_counts_whatever_it_brought() {
    let http = HttpServer::start().await;
    let body = random_bytes(4 << 20, 78);
    // 640 KiB a second: well above the minimum rate, and each 2 s try
    // brings more than the 1 MiB that would start the tries over.
    let url = http.route("/steady", Reply::slow(&body, 64 << 10, 100));
    let daemon = TestDaemon::start_with(&["--attempt-timeout", "2s", "--attempts", "2"]);
    let result = daemon
        .client()
        .await
        .fetch(request(&url, &digest_of(&body)))
        .await;
    assert_status(
        result,
        Code::Unavailable,
        &[
            "/steady",
            "the try took longer than --attempt-timeout (2 s)",
        ],
    );
    assert_eq!(http.requests(), 2, "two tries, then given up");
    daemon.wait_ingest_empty(Duration::from_secs(2)).await;
    daemon.assert_empty();
}
