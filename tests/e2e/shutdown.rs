//! The daemon's lifecycle: `daemon::run` on a listener it is handed, and a
//! clean shutdown (health first, a bounded grace, nothing left behind).

use std::time::{Duration, Instant};

use assetd::proto::assets_client::AssetsClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::http::{HttpServer, Reply};
use crate::common::{TestDaemon, channel, digest_of, fetch_req, random_bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flips_health_lets_short_calls_finish_and_leaves_nothing() {
    let http = HttpServer::start().await;
    // One fetch that ends within the grace, one that never would.
    let short = random_bytes(256 << 10, 900);
    let short_url = http.route("/short", Reply::slow(&short, 32 << 10, 100));
    let long = random_bytes(64 << 20, 901);
    let long_url = http.route("/long", Reply::slow(&long, 64 << 10, 100));
    let mut daemon = TestDaemon::start();
    let socket = daemon.socket.clone();
    let conn = channel(&socket).await;

    let mut watch = HealthClient::new(conn.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let mut a = AssetsClient::new(conn.clone());
    let long_req = fetch_req(&long_url, &digest_of(&long), "");
    let long_call = tokio::spawn(async move { a.fetch(long_req).await });
    let mut b = AssetsClient::new(conn);
    let short_req = fetch_req(&short_url, &digest_of(&short), "");
    let short_call = tokio::spawn(async move { b.fetch(short_req).await });
    // Both transfers are under way before the signal.
    crate::common::wait_until(Duration::from_secs(10), "both requests", || {
        http.requests() >= 2
    })
    .await;

    let signalled = Instant::now();
    daemon.sigterm();
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(
        next.status,
        ServingStatus::NotServing as i32,
        "health goes NOT_SERVING first"
    );
    let short_done = short_call.await.unwrap();
    assert!(
        short_done.is_ok(),
        "a call that ends within the grace completes: {short_done:?}"
    );
    assert!(
        long_call.await.unwrap().is_err(),
        "a call past the grace is cut off"
    );
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "bounded: {:?}",
        signalled.elapsed()
    );
    assert!(!socket.exists(), "the socket file is removed");
    assert_eq!(
        daemon.ingest(),
        Vec::<String>::new(),
        "no temp file is left"
    );
    let hex = &digest_of(&short)["sha256:".len()..];
    assert_eq!(
        daemon.blobs(),
        vec![hex.to_owned()],
        "only the finished asset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_a_listener_it_is_handed_until_told_to_stop() {
    let http = HttpServer::start().await;
    let body = random_bytes(1 << 20, 910);
    let url = http.route("/a", Reply::Body(body.clone()));
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("handed.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let mut config = assetd::config::Config::default();
    config.store.root = dir.path().join("root");
    config.server.socket = socket.clone();
    config.sources.allow_source = vec![crate::common::ALLOW_LOOPBACK[1].parse().unwrap()];
    let config = config.validate().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(assetd::daemon::run(
        assetd::server::Listener::inherited(listener),
        config,
        async move {
            let _ = stopped.await;
        },
    ));

    let mut client = AssetsClient::new(channel(&socket).await);
    let fetched = client
        .fetch(fetch_req(&url, &digest_of(&body), ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), body);
    drop(client);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), daemon)
        .await
        .expect("run returns after its shutdown future")
        .unwrap()
        .unwrap();
    assert!(
        socket.exists(),
        "a listener the daemon did not bind is left to its owner"
    );
}
