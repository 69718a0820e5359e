//! The seams between callers (issue 9, "Prove it"): a shared transfer is
//! fair to every caller's URLs and limits, a path returned with a lease
//! stays valid under deletes, eviction and Gc, and an unleased fetch gets
//! a grace before eviction.
//!
//! The fairness tests order events with gates on the HTTP server, never
//! with sleeps: the first caller's request is held until a second caller has
//! joined the transfer (its first `FetchProgress` event says so).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use assetd::proto::fetch_event::Event;
use assetd::proto::{
    DeleteRequest, FetchEvent, FetchRequest, FetchResponse, GcRequest, ListRequest,
    ReleaseLeaseRequest,
};
use tonic::{Code, Status, Streaming};

use crate::common::http::{Gate, HttpServer, Reply};
use crate::common::{
    Rng, TestDaemon, assert_status, digest_of, fetch_req, random_bytes, serve_assets, wait_until,
};

/// Long enough for anything these tests wait on, on a busy machine.
const PATIENCE: Duration = Duration::from_secs(10);

/// Starts `req` as `FetchProgress` and waits for its first event, which must
/// be progress: the caller is now waiting on the running transfer.
async fn join(daemon: &TestDaemon, req: FetchRequest) -> Streaming<FetchEvent> {
    let mut events = daemon
        .client()
        .await
        .fetch_progress(req)
        .await
        .expect("FetchProgress starts")
        .into_inner();
    match events.message().await {
        Ok(Some(FetchEvent {
            event: Some(Event::Progress(_)),
        })) => events,
        other => panic!("the joiner should wait on the running transfer, got {other:?}"),
    }
}

/// The result a `FetchProgress` stream ends with.
async fn outcome(mut events: Streaming<FetchEvent>) -> Result<FetchResponse, Status> {
    loop {
        match events.message().await? {
            Some(FetchEvent {
                event: Some(Event::Done(done)),
            }) => return Ok(done),
            Some(_) => {}
            None => panic!("FetchProgress ended without a result"),
        }
    }
}

/// Starts a plain `Fetch` of `req` in its own task.
async fn spawn_fetch(
    daemon: &TestDaemon,
    req: FetchRequest,
) -> tokio::task::JoinHandle<Result<FetchResponse, Status>> {
    let mut client = daemon.client().await;
    tokio::spawn(async move { client.fetch(req).await.map(tonic::Response::into_inner) })
}

/// Asserts that `reply` names `body`'s blob and that the file holds `body`.
#[track_caller]
fn assert_blob(daemon: &TestDaemon, reply: &FetchResponse, body: &[u8]) {
    let digest = digest_of(body);
    assert_eq!(reply.digest, digest);
    assert_eq!(reply.size, body.len() as u64);
    assert_eq!(reply.path, daemon.blob_path(&digest).display().to_string());
    assert!(
        std::fs::read(&reply.path).expect("read the blob") == body,
        "the blob differs from the upstream's bytes"
    );
}

/// Asserts that the transfer left one blob, `body`'s, and no temp file.
async fn assert_only(daemon: &TestDaemon, body: &[u8]) {
    daemon.wait_ingest_empty(Duration::from_secs(2)).await;
    assert_eq!(daemon.blob_digests(), [digest_of(body)].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_url_does_not_fail_a_joiner_with_a_good_one() {
    let http = HttpServer::start().await;
    let body = random_bytes(1 << 20, 900);
    let digest = digest_of(&body);
    let gate = Gate::default();
    let dead = http.route("/dead", Reply::held(&gate, Reply::status(404)));
    let good = http.route("/good", Reply::Body(body.clone()));
    let daemon = TestDaemon::start();
    let a = spawn_fetch(&daemon, fetch_req(&dead, &digest, "")).await;
    wait_until(PATIENCE, "A's transfer asks for its URL", || {
        http.requests_to("/dead") == 1
    })
    .await;
    let b = join(&daemon, fetch_req(&good, &digest, "")).await;
    gate.open();

    // B's URL joined the transfer's list after A's: tried once A's fails.
    let b = outcome(b)
        .await
        .unwrap_or_else(|s| panic!("B gave a good URL and must get the asset, got {s:?}"));
    assert_blob(&daemon, &b, &body);
    // One transfer per digest: once it holds the verified bytes, A's digest
    // is satisfied too, whichever caller's URL gave them.
    let a = a
        .await
        .unwrap()
        .unwrap_or_else(|s| panic!("the shared transfer got A's digest, A must get it: {s:?}"));
    assert_eq!(a.path, b.path);
    assert_eq!(
        (http.requests_to("/dead"), http.requests_to("/good")),
        (1, 1),
        "one try per URL (a 404 is not retried)"
    );
    assert_only(&daemon, &body).await;
}

/// A starts with `max_size` 1 MiB on a 2 MiB asset, served by the reply
/// `reply` builds behind a gate; B joins without a limit once `started`
/// holds, then the gate opens. B gets the asset; A is judged on the result.
async fn a_low_limit_and_a_joiner(
    reply: impl FnOnce(&Gate, &[u8]) -> Reply,
    started: impl Fn(&HttpServer) -> bool,
) {
    let http = HttpServer::start().await;
    let body = random_bytes(2 << 20, 910);
    let digest = digest_of(&body);
    let gate = Gate::default();
    let url = http.route("/asset", reply(&gate, &body));
    let daemon = TestDaemon::start();
    let limited = FetchRequest {
        max_size: 1 << 20,
        ..fetch_req(&url, &digest, "")
    };
    let a = spawn_fetch(&daemon, limited).await;
    wait_until(PATIENCE, "A's transfer is under way", || started(&http)).await;
    let b = join(&daemon, fetch_req(&url, &digest, "")).await;
    gate.open();

    let b = outcome(b).await.unwrap_or_else(|s| {
        panic!("B set no limit: the transfer runs under the most permissive one, got {s:?}")
    });
    assert_blob(&daemon, &b, &body);
    assert_status(
        a.await.unwrap(),
        Code::ResourceExhausted,
        &["2097152", "1048576"],
    );
    assert_eq!(http.requests_to("/asset"), 1, "one transfer");
    assert_only(&daemon, &body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_hears_of_its_own_urls_failure_only() {
    let http = HttpServer::start().await;
    let body = random_bytes(64 << 10, 905);
    let digest = digest_of(&body);
    let gate = Gate::default();
    let dead = http.route("/a-dead", Reply::held(&gate, Reply::status(404)));
    let busy = http.route("/b-busy", Reply::status(503));
    let daemon = TestDaemon::start_with(&["--attempts", "1"]);
    let a = spawn_fetch(&daemon, fetch_req(&dead, &digest, "")).await;
    wait_until(PATIENCE, "A's transfer asks for its URL", || {
        http.requests_to("/a-dead") == 1
    })
    .await;
    let b = join(&daemon, fetch_req(&busy, &digest, "")).await;
    gate.open();

    // Both URLs were tried by the one transfer; each caller is told of its
    // own URL's failure, never of the other's.
    let b = outcome(b).await;
    assert_status(b.clone(), Code::Unavailable, &["/b-busy", "503"]);
    assert!(!b.unwrap_err().message().contains("/a-dead"));
    let a = a.await.unwrap();
    assert_status(a.clone(), Code::NotFound, &["/a-dead"]);
    assert!(!a.unwrap_err().message().contains("/b-busy"));
    assert_eq!(http.requests_to("/b-busy"), 1);
    daemon.wait_ingest_empty(Duration::from_secs(2)).await;
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_max_size_does_not_fail_a_joiner_without_one() {
    // Held before the headers: the declared size arrives after B joined.
    a_low_limit_and_a_joiner(
        |gate, body| Reply::held(gate, Reply::Body(body.to_vec())),
        |http| http.requests_to("/asset") == 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_max_size_does_not_cut_a_joiners_transfer_midway() {
    // No declared size, and paused at 512 KiB, below A's limit: the running
    // transfer must take B's limit.
    a_low_limit_and_a_joiner(
        |gate, body| Reply::Paused {
            body: body.to_vec(),
            after: 512 << 10,
            gate: gate.clone(),
        },
        |http| http.body_bytes() == 512 << 10,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_size_does_not_fail_a_joiner_without_one() {
    let http = HttpServer::start().await;
    let body = random_bytes(2 << 20, 920);
    let digest = digest_of(&body);
    let gate = Gate::default();
    let url = http.route("/asset", Reply::held(&gate, Reply::Body(body.clone())));
    let daemon = TestDaemon::start();
    let wrong = FetchRequest {
        size: 3_000_000,
        ..fetch_req(&url, &digest, "")
    };
    let a = spawn_fetch(&daemon, wrong).await;
    wait_until(PATIENCE, "A's transfer asks for its URL", || {
        http.requests_to("/asset") == 1
    })
    .await;
    let b = join(&daemon, fetch_req(&url, &digest, "")).await;
    gate.open();

    let b = outcome(b).await.unwrap_or_else(|s| {
        panic!("B gave no size: A's size must not fail B's transfer, got {s:?}")
    });
    assert_blob(&daemon, &b, &body);
    assert_status(a.await.unwrap(), Code::DataLoss, &["3000000", "2097152"]);
    assert_eq!(http.requests_to("/asset"), 1, "one transfer");
    assert_only(&daemon, &body).await;
}

/// Size of each asset in the churn tests.
const CHURN_ASSET: usize = 64 << 10;
/// Assets the churn tests serve; the cache has room for half of them.
const CHURN_ASSETS: usize = 6;
/// Callers fetching at once.
const CHURN_WORKERS: u64 = 16;
/// Fetches in all; the run also ends after [`CHURN_FOR`].
const CHURN_ROUNDS: usize = 2000;
const CHURN_FOR: Duration = Duration::from_secs(8);

/// What one caller saw.
#[derive(Debug, Default)]
struct Tally {
    fetched: usize,
    /// RESOURCE_EXHAUSTED: the cache was full of leased assets.
    exhausted: usize,
}

/// What the admin saw.
#[derive(Debug, Default)]
struct AdminTally {
    deleted: usize,
    /// FAILED_PRECONDITION: leased, or being fetched.
    refused: usize,
    /// NOT_FOUND: not cached.
    missing: usize,
    gc_runs: usize,
    evicted: usize,
}

/// Asserts that the path `lease` was given for `digest` is its blob and
/// that the file is there and verifies.
async fn assert_leased_path(
    daemon: &TestDaemon,
    path: &str,
    digest: &str,
    lease: &str,
    when: &str,
) {
    assert_eq!(
        path,
        daemon.blob_path(digest).display().to_string(),
        "{lease}: path of {digest}"
    );
    match tokio::fs::read(path).await {
        Ok(bytes) => assert_eq!(
            digest_of(&bytes),
            digest,
            "{lease}: {path} does not verify {when}"
        ),
        Err(e) => panic!("{lease}: {path} of {digest} is gone {when}: {e}"),
    }
}

/// One caller: fetch a random asset with a fresh lease, check its path,
/// hold it a moment, check again, release.
async fn churn_worker(
    id: u64,
    daemon: Arc<TestDaemon>,
    assets: Arc<Vec<(String, Vec<u8>, String)>>,
    rounds: Arc<AtomicUsize>,
    deadline: Instant,
) -> Tally {
    let mut client = daemon.client().await;
    let mut rng = Rng::new(id);
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let round = rounds.fetch_add(1, Ordering::SeqCst);
        if round >= CHURN_ROUNDS {
            break;
        }
        let (url, _, digest) = &assets[rng.below(assets.len() as u64) as usize];
        let lease = format!("worker-{id}-round-{round}");
        match client.fetch(fetch_req(url, digest, &lease)).await {
            Ok(reply) => {
                let path = reply.into_inner().path;
                assert_leased_path(&daemon, &path, digest, &lease, "right after Fetch").await;
                tokio::time::sleep(Duration::from_millis(rng.below(10))).await;
                assert_leased_path(&daemon, &path, digest, &lease, "before ReleaseLease").await;
                let release = ReleaseLeaseRequest {
                    lease: lease.clone(),
                };
                let released = client.release_lease(release).await.unwrap().into_inner();
                assert_eq!(released.released, 1, "{lease} held {digest}");
                tally.fetched += 1;
            }
            Err(s) if s.code() == Code::ResourceExhausted => tally.exhausted += 1,
            Err(s) => panic!("{lease}: fetch of {digest} failed: {s:?}"),
        }
        // Unleased for a moment, so that eviction has something to do.
        tokio::time::sleep(Duration::from_millis(rng.below(10))).await;
    }
    tally
}

/// The admin: deletes a random asset (never forced), then collects garbage,
/// until `stop`.
async fn churn_admin(
    daemon: Arc<TestDaemon>,
    assets: Arc<Vec<(String, Vec<u8>, String)>>,
    stop: Arc<AtomicBool>,
) -> AdminTally {
    let mut client = daemon.client().await;
    let mut rng = Rng::new(99);
    let mut tally = AdminTally::default();
    while !stop.load(Ordering::SeqCst) {
        let digest = assets[rng.below(assets.len() as u64) as usize].2.clone();
        let delete = DeleteRequest {
            digest,
            force: false,
        };
        match client.delete(delete).await {
            Ok(_) => tally.deleted += 1,
            Err(s) if s.code() == Code::FailedPrecondition => tally.refused += 1,
            Err(s) if s.code() == Code::NotFound => tally.missing += 1,
            Err(s) => panic!("Delete failed: {s:?}"),
        }
        let gc = client.gc(GcRequest { dry_run: false }).await.unwrap();
        tally.gc_runs += 1;
        tally.evicted += gc.into_inner().evicted.len();
        tokio::time::sleep(Duration::from_millis(rng.below(5))).await;
    }
    tally
}

/// Many callers fetch with leases from a few assets while the cache has
/// room for half of them, the daemon collects garbage every 200 ms and an
/// admin deletes and collects in a loop. Invariant 8: every path returned
/// with a lease exists and verifies until the lease is released.
async fn leased_paths_hold_under_churn(extra_args: &[&str]) {
    let http = HttpServer::start().await;
    let assets = Arc::new(serve_assets(&http, CHURN_ASSETS, CHURN_ASSET, 930));
    let cap = (CHURN_ASSETS / 2 * CHURN_ASSET).to_string();
    let mut args = vec!["--max-cache-bytes", &cap, "--gc-interval", "200ms"];
    args.extend_from_slice(extra_args);
    let daemon = Arc::new(TestDaemon::start_with(&args));
    let deadline = Instant::now() + CHURN_FOR;
    let rounds = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let admin = tokio::spawn(churn_admin(daemon.clone(), assets.clone(), stop.clone()));
    let mut workers = tokio::task::JoinSet::new();
    for id in 0..CHURN_WORKERS {
        let worker = churn_worker(id, daemon.clone(), assets.clone(), rounds.clone(), deadline);
        workers.spawn(worker);
    }
    let mut tally = Tally::default();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(one) => {
                tally.fetched += one.fetched;
                tally.exhausted += one.exhausted;
            }
            Err(e) => {
                // Stop the rest first, so the daemon's log is printed.
                workers.shutdown().await;
                admin.abort();
                let _ = admin.await;
                panic!("a caller failed: {e}");
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let admin = admin.await.expect("the admin failed");
    eprintln!("churn: {tally:?}, {admin:?}");

    let tries = tally.fetched + tally.exhausted;
    assert!(
        tally.fetched >= 100 && tally.fetched * 2 > tries,
        "most fetches should succeed: {tally:?}"
    );
    daemon.wait_ingest_empty(Duration::from_secs(5)).await;
    daemon.assert_consistent("after the churn").await;
    let all = ListRequest {
        page_size: 1000,
        ..Default::default()
    };
    let listed = daemon.client().await.list(all).await.unwrap().into_inner();
    for asset in listed.assets {
        assert!(
            asset.leases.is_empty(),
            "every lease was released: {asset:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_paths_hold_under_deletes_and_gc() {
    leased_paths_hold_under_churn(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_paths_hold_under_prompt_eviction() {
    // A grace shorter than the pauses between fetches: every unleased asset
    // is fair game for eviction almost at once.
    leased_paths_hold_under_churn(&["--unleased-grace", "5ms"]).await;
}

/// Fetches asset X without a lease, then two more with leases into a cache
/// with room for two; returns when X's fetch began.
async fn unleased_then_two_leased(
    daemon: &TestDaemon,
    assets: &[(String, Vec<u8>, String)],
) -> Instant {
    let mut client = daemon.client().await;
    let began = Instant::now();
    let (url, _, x) = &assets[0];
    client.fetch(fetch_req(url, x, "")).await.unwrap();
    for (i, (url, _, digest)) in assets[1..].iter().enumerate() {
        let lease = format!("sandbox-{i}");
        client.fetch(fetch_req(url, digest, &lease)).await.unwrap();
    }
    began
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unleased_asset_outlives_eviction_for_its_grace() {
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 3, 64 << 10, 940);
    let daemon = TestDaemon::start_with(&["--max-cache-bytes", "128KiB"]);
    unleased_then_two_leased(&daemon, &assets).await;
    let x = &assets[0].2;
    // Over the cap, and X the only unleased asset: still within the
    // default grace of 60 s, its caller may not have opened it yet.
    let all: BTreeSet<String> = assets.iter().map(|a| a.2.clone()).collect();
    assert_eq!(daemon.blob_digests(), all, "X was evicted within its grace");
    let gc = daemon
        .client()
        .await
        .gc(GcRequest { dry_run: false })
        .await
        .unwrap()
        .into_inner();
    assert!(gc.evicted.is_empty(), "Gc within the grace: {gc:?}");
    assert!(std::fs::read(daemon.blob_path(x)).unwrap() == assets[0].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unleased_asset_is_evicted_once_its_grace_ends() {
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 3, 64 << 10, 950);
    let args = ["--max-cache-bytes", "128KiB", "--unleased-grace", "1s"];
    let daemon = TestDaemon::start_with(&args);
    let began = unleased_then_two_leased(&daemon, &assets).await;
    let x = daemon.blob_path(&assets[0].2);
    let mut client = daemon.client().await;
    loop {
        client.gc(GcRequest { dry_run: false }).await.unwrap();
        if !x.exists() {
            break;
        }
        assert!(began.elapsed() < PATIENCE, "X outlived its grace");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // X's last use is no earlier than `began` (the daemon's clock counts
    // whole milliseconds).
    let evicted = began.elapsed();
    assert!(
        evicted >= Duration::from_millis(950),
        "X was evicted within its grace, {evicted:?} after its fetch began"
    );
    let leased: BTreeSet<String> = assets[1..].iter().map(|a| a.2.clone()).collect();
    assert_eq!(daemon.blob_digests(), leased);
}
