//! The source policy against the real daemon: loopback, link-local and the
//! like refused by default with no connection made, on the URL, on the
//! address a name resolves to and at every redirect hop; allow rules lift
//! only what they match, deny rules win, a bad rule stops start-up.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tonic::Code;

use crate::common::http::{HttpServer, Reply};
use crate::common::{
    AcceptCounter, TestDaemon, WRONG_DIGEST, assert_status, daemon_command, digest_of, fetch_req,
    random_bytes,
};

/// Fetches `url` from `daemon` with a digest nothing matches.
async fn fetch(daemon: &TestDaemon, url: &str) -> Result<(), tonic::Status> {
    let mut client = daemon.client().await;
    client
        .fetch(fetch_req(url, WRONG_DIGEST, ""))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_url_is_refused_by_default_without_connecting() {
    let listener = AcceptCounter::start().await;
    let daemon = TestDaemon::start_strict(&[]);
    let url = format!("http://127.0.0.1:{}/secret", listener.port);
    assert_status(
        fetch(&daemon, &url).await,
        Code::PermissionDenied,
        &[
            "127.0.0.1 is a loopback address, refused by default; allow it with --allow-source 127.0.0.0/8",
        ],
    );
    assert_eq!(listener.accepted(), 0, "no connection is made");
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_loopback_and_ipv4_mapped_loopback_are_refused() {
    let listener = AcceptCounter::start().await;
    let daemon = TestDaemon::start_strict(&[]);
    let port = listener.port;
    assert_status(
        fetch(&daemon, &format!("http://[::1]:{port}/secret")).await,
        Code::PermissionDenied,
        &["::1 is a loopback address", "--allow-source ::1/128"],
    );
    // Connected, this one would reach the listener on 127.0.0.1.
    assert_status(
        fetch(&daemon, &format!("http://[::ffff:127.0.0.1]:{port}/secret")).await,
        Code::PermissionDenied,
        &["is a loopback address", "--allow-source 127.0.0.0/8"],
    );
    assert_eq!(listener.accepted(), 0, "no connection is made");
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_address_is_refused_before_any_connection() {
    let daemon = TestDaemon::start_strict(&[]);
    let started = Instant::now();
    assert_status(
        fetch(
            &daemon,
            "http://169.254.169.254/computeMetadata/v1/instance/",
        )
        .await,
        Code::PermissionDenied,
        &[
            "169.254.169.254 is a link-local address, refused by default; allow it with --allow-source 169.254.0.0/16",
        ],
    );
    // A connection attempt would wait for its timeout (10 s) or be retried.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, took {:?}",
        started.elapsed()
    );
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_name_resolving_to_loopback_is_refused_at_resolve_time() {
    let listener = AcceptCounter::start().await;
    let daemon = TestDaemon::start_strict(&[]);
    assert_status(
        fetch(
            &daemon,
            &format!("http://localhost:{}/secret", listener.port),
        )
        .await,
        Code::PermissionDenied,
        &[
            "localhost resolves to",
            "a loopback address, refused by default",
        ],
    );
    assert_eq!(listener.accepted(), 0, "no connection is made");
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowing_a_host_name_lifts_the_refusal_for_its_addresses() {
    let http = HttpServer::start().await;
    let body = random_bytes(4096, 81);
    http.route("/named", Reply::Body(body.clone()));
    let daemon = TestDaemon::start_strict(&["--allow-source", "localhost"]);
    let url = format!("http://localhost:{}/named", http.port);
    let mut client = daemon.client().await;
    client
        .fetch(fetch_req(&url, &digest_of(&body), ""))
        .await
        .expect("an allowed host name is fetched");
    assert_eq!(daemon.blobs().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_from_an_allowed_prefix_to_loopback_is_refused() {
    let http = HttpServer::start().await;
    let target = AcceptCounter::start().await;
    let body = random_bytes(4096, 82);
    let allowed = http.route("/ok", Reply::Body(body.clone()));
    let hop = http.route(
        "/hop",
        Reply::Redirect(format!("http://127.0.0.1:{}/secret", target.port)),
    );
    let prefix = format!("http://127.0.0.1:{}/", http.port);
    let daemon = TestDaemon::start_strict(&["--allow-source", &prefix]);
    let mut client = daemon.client().await;
    client
        .fetch(fetch_req(&allowed, &digest_of(&body), ""))
        .await
        .expect("the prefix lifts the refusal for its own URLs");
    assert_status(
        fetch(&daemon, &hop).await,
        Code::PermissionDenied,
        &["127.0.0.1 is a loopback address, refused by default"],
    );
    assert_eq!(http.requests_to("/hop"), 1, "the first hop, once");
    assert_eq!(
        target.accepted(),
        0,
        "the redirect target is never connected to"
    );
    assert_eq!(daemon.blobs(), vec![digest_of(&body)[7..].to_owned()]);
    assert_eq!(daemon.ingest(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_source_beats_allow_source() {
    let http = HttpServer::start().await;
    let body = random_bytes(4096, 83);
    let url = http.route("/denied", Reply::Body(body.clone()));
    let prefix = format!("http://127.0.0.1:{}/denied", http.port);
    for deny in ["127.0.0.1/32", prefix.as_str()] {
        let daemon =
            TestDaemon::start_strict(&["--allow-source", "127.0.0.0/8", "--deny-source", deny]);
        let mut client = daemon.client().await;
        let result = client.fetch(fetch_req(&url, &digest_of(&body), "")).await;
        assert_status(
            result,
            Code::PermissionDenied,
            &[&format!("denied by --deny-source {deny}")],
        );
        daemon.assert_empty();
    }
    assert_eq!(http.requests(), 0, "no request is sent");
}

#[test]
fn bad_rule_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, rule) in [
        ("--allow-source", "10.0.0.0/33"),
        ("--deny-source", "ftp://mirror/"),
    ] {
        let log = dir.path().join(format!("{}.log", &flag[2..]));
        let status = daemon_command(
            &dir.path().join("root"),
            &dir.path().join("assetd.sock"),
            &[flag, rule],
            &log,
        )
        .stdin(Stdio::null())
        .status()
        .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!status.success(), "started with {flag} {rule}:\n{text}");
        assert!(text.contains(rule), "{text}");
        assert!(!dir.path().join("assetd.sock").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_prefix_cannot_be_left_by_an_encoded_separator() {
    let listener = AcceptCounter::start().await;
    let prefix = format!("http://127.0.0.1:{}/assets/", listener.port);
    let daemon = TestDaemon::start_strict(&["--allow-source", &prefix]);
    // A server that decodes %2f and resolves `..` would serve /secret.txt.
    for escape in [
        "..%2fsecret.txt",
        "x/..%2F..%2Fsecret.txt",
        "..%5csecret.txt",
    ] {
        assert_status(
            fetch(&daemon, &format!("{prefix}{escape}")).await,
            Code::PermissionDenied,
            &["127.0.0.1 is a loopback address, refused by default"],
        );
    }
    // Nor by a sibling path that merely starts with the same text.
    let sibling = format!("http://127.0.0.1:{}/assets-private/x", listener.port);
    let prefix_without_slash = &prefix[..prefix.len() - 1];
    let daemon2 = TestDaemon::start_strict(&["--allow-source", prefix_without_slash]);
    assert_status(
        fetch(&daemon2, &sibling).await,
        Code::PermissionDenied,
        &["loopback"],
    );
    assert_eq!(listener.accepted(), 0, "no connection is made");
    daemon.assert_empty();
}
