//! Fair shares between users, with callers run as another uid.

use std::process::{Child, Stdio};
use std::time::Duration;

use crate::common::http::{HttpServer, Reply};
use crate::common::{
    TestDaemon, as_nobody, digest_of, fetch_req, python, random_bytes, root_or_skip, wait_until,
};

/// `assetctl fetch` as uid/gid 65534 (nobody), in the background.
fn fetch_as_nobody(daemon: &TestDaemon, url: &str, digest: &str) -> Child {
    daemon
        .assetctl_as_nobody()
        .args(["fetch", "--quiet", url, "--digest", digest])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("setpriv assetctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_take_every_transfer_slot() {
    if !root_or_skip() {
        return;
    }
    let http = HttpServer::start().await;
    let daemon = TestDaemon::start_with(&[
        "--max-transfers",
        "3",
        "--max-per-uid",
        "2",
        "--stall-timeout",
        "60s",
    ]);
    daemon.open_to_everyone();

    // Three transfers by one user whose source never sends a byte.
    let mut hung = Vec::new();
    for i in 0..3 {
        let body = random_bytes(4096, 600 + i);
        let url = http.route(
            &format!("/hang/{i}"),
            Reply::Stall {
                body: body.clone(),
                after: 0,
            },
        );
        hung.push(fetch_as_nobody(&daemon, &url, &digest_of(&body)));
    }
    wait_until(
        Duration::from_secs(10),
        "two of nobody's transfers start",
        || {
            (0..3)
                .filter(|i| http.requests_to(&format!("/hang/{i}")) > 0)
                .count()
                == 2
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        (0..3)
            .filter(|i| http.requests_to(&format!("/hang/{i}")) > 0)
            .count(),
        2,
        "the third waits for one of its user's slots, not an overall one"
    );

    // Another caller still finds a slot at once.
    let body = random_bytes(64 << 10, 610);
    let url = http.route("/good", Reply::Body(body.clone()));
    let mut client = daemon.client().await;
    let fetched = tokio::time::timeout(
        Duration::from_secs(10),
        client.fetch(fetch_req(&url, &digest_of(&body), "")),
    )
    .await
    .expect("a slot is free for others")
    .unwrap()
    .into_inner();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), body);

    for mut child in hung {
        let _ = child.kill();
        let _ = child.wait();
    }
    daemon.wait_ingest_empty(Duration::from_secs(5)).await;
}

/// Opens `n` connections to `socket` as uid 65534 and holds them all; prints
/// how many the daemon admitted (it speaks first, with its HTTP/2 settings)
/// and how many it closed at once.
fn connections_as_nobody(socket: &std::path::Path, n: usize) -> (usize, usize) {
    let script = r#"
import socket, sys
path, n = sys.argv[1], int(sys.argv[2])
conns = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    conns.append(s)
admitted = closed = 0
for s in conns:
    s.settimeout(5)
    try:
        data = s.recv(64)
    except (ConnectionResetError, socket.timeout):
        data = b""
    if data:
        admitted += 1
    else:
        closed += 1
print(admitted, closed)
"#;
    let out = as_nobody(python())
        .arg("-c")
        .arg(script)
        .arg(socket)
        .arg(n.to_string())
        .output()
        .expect("setpriv python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<usize> = text
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(
        counts.len(),
        2,
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (counts[0], counts[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_hold_every_connection() {
    if !root_or_skip() {
        return;
    }
    let daemon = TestDaemon::start_with(&["--max-connections-per-uid", "3"]);
    daemon.open_to_everyone();

    assert_eq!(connections_as_nobody(&daemon.socket, 5), (3, 2));
    // Its connections closed, the user is admitted again.
    assert_eq!(connections_as_nobody(&daemon.socket, 3), (3, 0));
    // Root is exempt, and still served.
    let mut client = daemon.client().await;
    let listed = client
        .list(assetd::proto::ListRequest::default())
        .await
        .unwrap();
    assert!(listed.into_inner().assets.is_empty());
    assert!(daemon.log().contains("connection refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_speaks_is_closed() {
    if !root_or_skip() {
        return;
    }
    let daemon = TestDaemon::start_with(&[
        "--handshake-timeout",
        "1s",
        "--max-connections-per-uid",
        "1",
    ]);
    daemon.open_to_everyone();
    // Connects, sends nothing, and reads until the daemon closes; prints
    // the seconds that took.
    let script = r#"
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(15)
start = time.monotonic()
try:
    while s.recv(4096):
        pass
except socket.timeout:
    print("open")
    sys.exit(0)
print(time.monotonic() - start)
"#;
    let out = as_nobody(python())
        .arg("-c")
        .arg(script)
        .arg(&daemon.socket)
        .output()
        .expect("setpriv python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let secs: f64 = text
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{text} {}", String::from_utf8_lossy(&out.stderr)));
    assert!((0.8..8.0).contains(&secs), "closed after {secs} s");
    // Its slot was given back: the user (capped at one connection) is
    // admitted again.
    assert_eq!(connections_as_nobody(&daemon.socket, 1), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_see_and_cancel_any_users_transfer() {
    if !root_or_skip() {
        return;
    }
    let http = HttpServer::start().await;
    let body = random_bytes(64 << 10, 620);
    let digest = digest_of(&body);
    let gate = crate::common::http::Gate::default();
    let url = http.route("/held", Reply::held(&gate, Reply::Body(body.clone())));
    let daemon = TestDaemon::start();
    daemon.open_to_everyone();
    let mut fetching = fetch_as_nobody(&daemon, &url, &digest);
    wait_until(Duration::from_secs(10), "nobody's transfer asks", || {
        http.requests_to("/held") == 1
    })
    .await;

    // Others may not look, nor cancel.
    let denied = daemon
        .assetctl_as_nobody()
        .arg("transfers")
        .output()
        .unwrap();
    assert_eq!(denied.status.code(), Some(6), "{denied:?}");

    let mut client = daemon.client().await;
    let listed = client
        .list_transfers(assetd::proto::ListTransfersRequest {})
        .await
        .unwrap()
        .into_inner()
        .transfers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, digest);
    assert_eq!(listed[0].callers, 1);
    assert_eq!(listed[0].started_by_uid, 65534);
    assert!(listed[0].urls[0].ends_with("/held"), "{:?}", listed[0].urls);

    let cancelled = client
        .cancel_transfer(assetd::proto::CancelTransferRequest {
            digest: digest.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.callers, 1);
    let status = fetching.wait().unwrap();
    assert_eq!(status.code(), Some(11), "the caller hears CANCELLED");
    gate.open();
    daemon.wait_ingest_empty(Duration::from_secs(5)).await;
    daemon.assert_empty();
    let again = client
        .cancel_transfer(assetd::proto::CancelTransferRequest { digest })
        .await;
    assert_eq!(again.unwrap_err().code(), tonic::Code::NotFound);
}

const PING: &[u8] = b"\0\0\x08\x06\0\0\0\0\0pingpong";
const SETTINGS: &[u8] = b"\0\0\0\x04\0\0\0\0\0";
const UNKNOWN: &[u8] = b"\0\0\x01\x42\0\0\0\0\0x";

/// Speaks just enough HTTP/2 to open a connection, then sends `frame`
/// every 200 ms and returns how long the daemon kept it open.
async fn send_until_closed(socket: &std::path::Path, frame: &'static [u8]) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let pinger = tokio::spawn(async move {
        while write.write_all(frame).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut buf = vec![0; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    pinger.abort();
    assert!(
        closed.is_ok(),
        "a connection sending only pings stayed open"
    );
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_even_if_it_pings() {
    let daemon = TestDaemon::start_with(&["--idle-timeout", "1s"]);
    // Pings, empty SETTINGS, an unknown frame type: none is a request.
    for frame in [PING, SETTINGS, UNKNOWN] {
        let open = send_until_closed(&daemon.socket, frame).await;
        assert!(
            (Duration::from_millis(900)..Duration::from_secs(8)).contains(&open),
            "closed after {open:?}"
        );
    }

    // With the timeout off, the same connection stays.
    let daemon = TestDaemon::start_with(&["--idle-timeout", "0s"]);
    let socket = daemon.socket.clone();
    let kept = tokio::time::timeout(Duration::from_secs(3), send_until_closed(&socket, PING)).await;
    assert!(kept.is_err(), "closed though --idle-timeout is 0s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_call_longer_than_the_idle_timeout_is_not_cut() {
    let http = HttpServer::start().await;
    let body = random_bytes(64 << 10, 621);
    let digest = digest_of(&body);
    let gate = crate::common::http::Gate::default();
    let url = http.route("/held", Reply::held(&gate, Reply::Body(body.clone())));
    let daemon = TestDaemon::start_with(&["--idle-timeout", "1s"]);
    let mut client = daemon.client().await;
    let opener = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        gate.open();
    });
    let fetched = client.fetch(fetch_req(&url, &digest, "")).await;
    opener.await.unwrap();
    let done = fetched
        .expect("a call quiet for 3 s is not cut")
        .into_inner();
    assert_eq!(done.digest, digest);
    assert!(!done.cache_hit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_stuck_source_does_not_hold_up_my_fetch() {
    if !root_or_skip() {
        return;
    }
    let http = HttpServer::start().await;
    let body = random_bytes(64 << 10, 622);
    let digest = digest_of(&body);
    let gate = crate::common::http::Gate::default();
    let stuck = http.route("/stuck", Reply::held(&gate, Reply::Body(body.clone())));
    let good = http.route("/good", Reply::Body(body.clone()));
    let daemon = TestDaemon::start_with(&["--stall-timeout", "60s"]);
    daemon.open_to_everyone();
    let mut theirs = fetch_as_nobody(&daemon, &stuck, &digest);
    wait_until(Duration::from_secs(10), "their transfer asks", || {
        http.requests_to("/stuck") == 1
    })
    .await;

    // Root's fetch of the same digest, from a source that works, is not
    // queued behind the other user's URL.
    let mut client = daemon.client().await;
    let mine = tokio::time::timeout(
        Duration::from_secs(20),
        client.fetch(fetch_req(&good, &digest, "")),
    )
    .await
    .expect("held up by another user's transfer")
    .unwrap()
    .into_inner();
    assert!(!mine.cache_hit);
    assert_eq!(http.requests_to("/good"), 1);

    // Theirs still runs on its own, then finds the asset in place.
    gate.open();
    assert!(theirs.wait().unwrap().success());
    daemon.wait_ingest_empty(Duration::from_secs(5)).await;
    assert_eq!(daemon.blobs().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_carries_at_most_64_calls_and_requests_of_256_kib() {
    let http = HttpServer::start().await;
    let body = random_bytes(64 << 10, 623);
    let digest = digest_of(&body);
    let gate = crate::common::http::Gate::default();
    let url = http.route("/held", Reply::held(&gate, Reply::Body(body)));
    let daemon = TestDaemon::start();
    // 70 calls on one connection that has the daemon's settings: 64 reach
    // the daemon, the rest wait in the client for a stream.
    let channel = crate::common::channel(&daemon.socket).await;
    assetd::proto::assets_client::AssetsClient::new(channel.clone())
        .list(assetd::proto::ListRequest::default())
        .await
        .unwrap();
    let calls: Vec<_> = (0..70)
        .map(|_| {
            let mut client = assetd::proto::assets_client::AssetsClient::new(channel.clone());
            let request = fetch_req(&url, &digest, "");
            tokio::spawn(async move { client.fetch(request).await })
        })
        .collect();
    let mut admin = daemon.client().await;
    let mut callers = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while callers < 64 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let transfers = admin
            .list_transfers(assetd::proto::ListTransfersRequest {})
            .await
            .unwrap()
            .into_inner()
            .transfers;
        callers = transfers.first().map_or(0, |t| t.callers);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let transfers = admin
        .list_transfers(assetd::proto::ListTransfersRequest {})
        .await
        .unwrap()
        .into_inner()
        .transfers;
    assert_eq!(transfers[0].callers, 64, "{transfers:?}");
    gate.open();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().into_inner().digest, digest);
    }

    // A request over 256 KiB is refused before the daemon holds it.
    let huge = fetch_req(
        &format!("http://127.0.0.1/{}", "a".repeat(256 << 10)),
        &digest,
        "",
    );
    let err = admin.fetch(huge).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    assert!(err.message().contains("too large"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_take_every_slot_of_a_host() {
    if !root_or_skip() {
        return;
    }
    let http = HttpServer::start().await;
    let daemon = TestDaemon::start_with(&[
        "--max-per-host",
        "4",
        "--max-per-uid",
        "8",
        "--stall-timeout",
        "60s",
    ]);
    daemon.open_to_everyone();
    // Four transfers by one user from one host whose replies never come.
    let mut hung = Vec::new();
    for i in 0..4 {
        let body = random_bytes(4096, 630 + i);
        let url = http.route(
            &format!("/hang/{i}"),
            Reply::Stall {
                body: body.clone(),
                after: 0,
            },
        );
        hung.push(fetch_as_nobody(&daemon, &url, &digest_of(&body)));
    }
    let asked = || {
        (0..4)
            .filter(|i| http.requests_to(&format!("/hang/{i}")) > 0)
            .count()
    };
    wait_until(Duration::from_secs(10), "three of them start", || {
        asked() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(asked(), 3, "a user holds at most 3 of the host's 4 slots");

    // Root's fetch from the same host gets the fourth at once.
    let body = random_bytes(64 << 10, 640);
    let url = http.route("/good", Reply::Body(body.clone()));
    let mut client = daemon.client().await;
    tokio::time::timeout(
        Duration::from_secs(10),
        client.fetch(fetch_req(&url, &digest_of(&body), "")),
    )
    .await
    .expect("a slot of the host is free for others")
    .unwrap();
    for mut child in hung {
        let _ = child.kill();
        let _ = child.wait();
    }
    daemon.wait_ingest_empty(Duration::from_secs(5)).await;
}
