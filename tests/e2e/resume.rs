//! Partial downloads survive a restart: killed (`kill -9`) or stopped
//! (SIGTERM) halfway, the daemon asks the source only for what it lacks
//! after it starts again.

use std::time::Duration;

use crate::common::http::{HttpServer, Reply};
use crate::common::{TestDaemon, digest_of, fetch_req, random_bytes, wait_until};

const MIB: usize = 1 << 20;

/// Starts a fetch of `url` (which hangs at 110 MiB), waits until a resume
/// point past 90 MiB is on disk, and returns the task.
async fn fetch_until_a_resume_point(
    daemon: &TestDaemon,
    url: &str,
    digest: &str,
) -> tokio::task::JoinHandle<()> {
    let task = daemon.fetch_in_background(url, digest).await;
    // A resume point past 90 MiB (about half way) is on disk.
    wait_until(
        Duration::from_secs(60),
        "a resume point past 90 MiB",
        || daemon.durable_partial_bytes() >= 90 * MIB as u64,
    )
    .await;
    task
}

/// `path` on `http`: the whole body, stalling after 110 MiB, then `then`.
fn stalls_then(http: &HttpServer, body: &[u8], then: Reply) -> String {
    http.sequence(
        "/rootfs.img",
        vec![
            Reply::Stall {
                body: body.to_vec(),
                after: 110 * MIB,
            },
            then,
        ],
    )
}

/// Fetches again and checks the bytes; returns the second request's range
/// and the body bytes the source sent for it.
async fn fetch_again(
    daemon: &TestDaemon,
    http: &HttpServer,
    url: &str,
    body: &[u8],
) -> (Option<String>, u64) {
    let before = http.body_bytes();
    let fetched = daemon
        .client()
        .await
        .fetch(fetch_req(url, &digest_of(body), ""))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()))
        .into_inner();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), body);
    daemon.wait_ingest_empty(Duration::from_secs(5)).await;
    (
        http.ranges().last().cloned().flatten(),
        http.body_bytes() - before,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_at_half_way_the_source_sends_only_what_is_missing() {
    let body = random_bytes(200 * MIB, 1300);
    let digest = digest_of(&body);
    let http = HttpServer::start().await;
    let url = stalls_then(&http, &body, Reply::Ranged(body.clone()));
    let mut daemon = TestDaemon::start();
    let task = fetch_until_a_resume_point(&daemon, &url, &digest).await;
    daemon.kill9();
    task.abort();
    daemon.start_again(&[]);
    assert!(
        daemon.log().contains("kept partial downloads to resume"),
        "{}",
        daemon.log()
    );
    let (range, resent) = fetch_again(&daemon, &http, &url, &body).await;
    let from: u64 = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or_else(|| panic!("not a resumed request: {range:?}"));
    assert!(from >= 90 * MIB as u64, "resumed from {from}");
    assert!(
        resent <= (body.len() as f64 * 0.6) as u64,
        "{resent} bytes sent again of {}",
        body.len()
    );
    assert!(daemon.log().contains("resuming a partial download"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_mid_transfer_keeps_the_bytes_for_the_restart() {
    let body = random_bytes(200 * MIB, 1301);
    let digest = digest_of(&body);
    let http = HttpServer::start().await;
    let url = stalls_then(&http, &body, Reply::Ranged(body.clone()));
    let mut daemon = TestDaemon::start();
    let task = fetch_until_a_resume_point(&daemon, &url, &digest).await;
    // All 110 MiB sent, and time for the daemon to take them in.
    wait_until(Duration::from_secs(30), "the source sent 110 MiB", || {
        http.body_bytes() >= 110 * MIB as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.sigterm();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    task.abort();
    daemon.start_again(&[]);
    let (range, resent) = fetch_again(&daemon, &http, &url, &body).await;
    // Stopped, it saved all it had (the source sent 110 MiB), not just its
    // last checkpoint (a multiple of 16 MiB: 96), and the source sends
    // exactly the rest.
    let from: u64 = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or_else(|| panic!("not a resumed request: {range:?}"));
    assert!(
        from > 100 * MIB as u64 && from <= 110 * MIB as u64,
        "resumed from {from}"
    );
    assert_eq!(resent, body.len() as u64 - from);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_past_its_keep_time_or_changed_upstream_is_not_used() {
    let body = random_bytes(200 * MIB, 1302);
    let digest = digest_of(&body);
    let http = HttpServer::start().await;
    // After the restart the source no longer honours the validator: it
    // answers the resume with the whole object, which starts over.
    let url = stalls_then(&http, &body, Reply::Body(body.clone()));
    let mut daemon = TestDaemon::start();
    let task = fetch_until_a_resume_point(&daemon, &url, &digest).await;
    daemon.kill9();
    task.abort();
    daemon.start_again(&[]);
    let (_, resent) = fetch_again(&daemon, &http, &url, &body).await;
    assert_eq!(resent, body.len() as u64, "started over");

    // With --keep-partials 0s, nothing is kept at start.
    let http = HttpServer::start().await;
    let url = http.route(
        "/rootfs.img",
        Reply::Stall {
            body: body.clone(),
            after: 110 * MIB,
        },
    );
    let mut daemon = TestDaemon::start();
    let other = random_bytes(200 * MIB, 1303);
    let task = fetch_until_a_resume_point(&daemon, &url, &digest_of(&other)).await;
    daemon.kill9();
    task.abort();
    daemon.start_again(&["--keep-partials", "0s"]);
    daemon.assert_empty();
}
