//! Fetch: the happy paths and every failure path of the issue, each checking
//! the status the client sees and what is left on disk.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use assetd::proto::{DeleteRequest, FetchRequest};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_http_stores_read_only_blob_then_hits_cache() {
    let http = HttpServer::start().await;
    let body = random_bytes(5 << 20, 1);
    let digest = digest_of(&body);
    let url = http.route("/vmlinux", Reply::Body(body.clone()));
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;

    let first = client
        .fetch(request(&url, &digest))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.cache_hit);
    assert_eq!(first.digest, digest);
    assert_eq!(first.size, body.len() as u64);
    let path = daemon
        .root
        .join("blobs/sha256")
        .join(&digest["sha256:".len()..]);
    assert_eq!(first.path, path.display().to_string());
    assert_eq!(std::fs::read(&path).unwrap(), body);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444);

    let again = client
        .fetch(FetchRequest {
            size: body.len() as u64,
            ..request(&url, &digest)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.cache_hit);
    assert_eq!(again.path, first.path);
    assert_eq!(http.requests(), 1, "a hit must not touch the source");
    assert!(daemon.ingest().is_empty());
    let log = daemon.log();
    assert!(
        log.contains(&digest) && log.contains("outcome=\"fetched\""),
        "{log}"
    );
    assert!(
        log.contains("bytes=5242880") && log.contains("mib_per_s="),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_from_a_real_http_server() {
    let www = tempfile::tempdir().unwrap();
    let body = random_bytes(20 << 20, 2);
    std::fs::write(www.path().join("rootfs.img"), &body).unwrap();
    let python = PythonHttp::start(www.path());
    let daemon = TestDaemon::start();
    let url = format!("http://127.0.0.1:{}/rootfs.img", python.port);
    let reply = daemon
        .client()
        .await
        .fetch(request(&url, &digest_of(&body)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(std::fs::read(reply.path).unwrap(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_rejects_digest_mismatch_and_leaves_nothing() {
    let http = HttpServer::start().await;
    let body = random_bytes(3 << 20, 3);
    let url = http.route("/a", Reply::Body(body.clone()));
    let daemon = TestDaemon::start();
    let result = daemon
        .client()
        .await
        .fetch(request(&url, WRONG_DIGEST))
        .await;
    assert_status(result, Code::DataLoss, &[WRONG_DIGEST, &digest_of(&body)]);
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_rejects_size_mismatch_declared_or_counted() {
    let http = HttpServer::start().await;
    let body = random_bytes(1 << 20, 4);
    let digest = digest_of(&body);
    let declared = http.route("/declared", Reply::Body(body.clone()));
    let counted = http.route("/counted", Reply::NoLength(body.clone()));
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;

    let wrong = FetchRequest {
        size: 1000,
        ..request(&declared, &digest)
    };
    assert_status(
        client.fetch(wrong).await,
        Code::DataLoss,
        &["expected 1000 bytes", "1048576"],
    );
    // Without Content-Length the count decides: too many and too few.
    let expects_less = FetchRequest {
        size: 1000,
        ..request(&counted, &digest)
    };
    assert_status(
        client.fetch(expects_less).await,
        Code::DataLoss,
        &["expected 1000 bytes", "more than 1000"],
    );
    let expects_more = FetchRequest {
        size: 2 << 20,
        ..request(&counted, &digest)
    };
    assert_status(
        client.fetch(expects_more).await,
        Code::DataLoss,
        &["expected 2097152 bytes", "got 1048576"],
    );
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_refuses_declared_size_over_limit_before_reading() {
    let http = HttpServer::start().await;
    let body = random_bytes(2 << 20, 5);
    // Slow, so the server would still be sending if the body were read.
    let slow = Reply::slow(&body, 64 << 10, 20);
    let url = http.route("/big", slow);
    let daemon = TestDaemon::start_with(&["--max-size", "1MiB"]);
    let mut client = daemon.client().await;
    let result = client.fetch(request(&url, &digest_of(&body))).await;
    assert_status(
        result,
        Code::ResourceExhausted,
        &["declares 2097152 bytes", "limit of 1048576 bytes"],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while http.hangups() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        http.body_bytes() < 256 << 10,
        "{} body bytes sent",
        http.body_bytes()
    );
    // A caller's own max_size lowers the limit further.
    let capped = FetchRequest {
        max_size: 1000,
        ..request(&url, &digest_of(&body))
    };
    assert_status(
        client.fetch(capped).await,
        Code::ResourceExhausted,
        &["limit of 1000 bytes"],
    );
    // A request whose own size is over the limit never reaches the source.
    let requests = http.requests();
    let oversized = FetchRequest {
        size: 2 << 20,
        ..request(&url, &digest_of(&body))
    };
    assert_status(
        client.fetch(oversized).await,
        Code::ResourceExhausted,
        &["2097152", "1048576"],
    );
    assert_eq!(http.requests(), requests);
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_cuts_off_stream_over_limit() {
    let http = HttpServer::start().await;
    let body = random_bytes(3 << 20, 6);
    let no_length = http.route("/nolength", Reply::NoLength(body.clone()));
    let lying = http.route(
        "/lying",
        Reply::Claims {
            claimed: 1000,
            body: body.clone(),
        },
    );
    let endless = http.route("/endless", Reply::Endless);
    let daemon = TestDaemon::start_with(&["--max-size", "1MiB"]);
    let mut client = daemon.client().await;
    for url in [&no_length, &endless] {
        let result = client.fetch(request(url, &digest_of(&body))).await;
        assert_status(
            result,
            Code::ResourceExhausted,
            &["more than 1048576 bytes"],
        );
    }
    // A server that sends more than its Content-Length never gets past it.
    let result = client.fetch(request(&lying, &digest_of(&body))).await;
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{}", status.message());
    daemon.wait_ingest_empty(Duration::from_secs(2)).await;
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_refuses_malformed_digest_url_and_scheme() {
    let http = HttpServer::start().await;
    let url = http.route("/a", Reply::Body(b"abc".to_vec()));
    let good = digest_of(b"abc");
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    for bad in [
        "",
        "sha256:abc",
        "SHA256:00",
        &good.to_uppercase(),
        "md5:d41d8cd98f00b204e9800998ecf8427e",
    ] {
        let result = client.fetch(request(&url, bad)).await;
        assert_status(
            result,
            Code::InvalidArgument,
            &["malformed digest", &format!("{bad:?}")],
        );
    }
    for bad in ["", "not a url", "http//127.0.0.1/a", "http://"] {
        let result = client.fetch(request(bad, &good)).await;
        assert_status(result, Code::InvalidArgument, &["malformed URL"]);
    }
    let result = client.fetch(request("ftp://127.0.0.1/a", &good)).await;
    assert_status(
        result,
        Code::InvalidArgument,
        &["unsupported URL scheme \"ftp\"", "http, https"],
    );
    assert_eq!(http.requests(), 0);
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_maps_upstream_404_and_500() {
    let http = HttpServer::start().await;
    let missing = http.route("/missing", Reply::status(404));
    let broken = http.route("/broken", Reply::status(500));
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    assert_status(
        client.fetch(request(&missing, WRONG_DIGEST)).await,
        Code::NotFound,
        &[&missing, "404"],
    );
    assert_status(
        client.fetch(request(&broken, WRONG_DIGEST)).await,
        Code::Unavailable,
        &[&broken, "500"],
    );
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_file_only_inside_roots() {
    let files = tempfile::tempdir().unwrap();
    let inside = files.path().join("allowed");
    std::fs::create_dir(&inside).unwrap();
    let body = random_bytes(4 << 20, 7);
    std::fs::write(inside.join("kernel"), &body).unwrap();
    let secret = files.path().join("secret");
    std::fs::write(&secret, b"secret").unwrap();
    std::os::unix::fs::symlink(&secret, inside.join("escape")).unwrap();
    std::os::unix::fs::symlink(inside.join("kernel"), inside.join("alias")).unwrap();

    let daemon = TestDaemon::start_with(&["--file-root", inside.to_str().unwrap()]);
    let mut client = daemon.client().await;
    let url = |p: &std::path::Path| format!("file://{}", p.display());
    let secret_digest = digest_of(b"secret");
    let outside = client.fetch(request(&url(&secret), &secret_digest)).await;
    assert_status(
        outside,
        Code::PermissionDenied,
        &["outside the file roots", secret.to_str().unwrap()],
    );
    // A symlink is refused without following it: the message names neither
    // its target nor whether that exists.
    let escape = client
        .fetch(request(&url(&inside.join("escape")), &secret_digest))
        .await;
    let status = escape.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("symbolic link"), "{status:?}");
    assert!(
        !status.message().contains(secret.to_str().unwrap()),
        "{status:?}"
    );
    // Outside the roots, a missing file is denied too: no existence oracle.
    let nowhere = client
        .fetch(request("file:///nonexistent/assetd/x", &secret_digest))
        .await;
    assert_status(nowhere, Code::PermissionDenied, &["outside the file roots"]);
    let dotdot = format!("file://{}/../secret", inside.display());
    assert_status(
        client.fetch(request(&dotdot, &secret_digest)).await,
        Code::PermissionDenied,
        &["outside the file roots", secret.to_str().unwrap()],
    );
    let missing = client
        .fetch(request(&url(&inside.join("nope")), WRONG_DIGEST))
        .await;
    assert_status(missing, Code::NotFound, &["no such file"]);
    daemon.assert_empty();

    // Even one that stays inside: file:// follows no symlink.
    let alias = client
        .fetch(request(&url(&inside.join("alias")), &digest_of(&body)))
        .await;
    assert_status(alias, Code::PermissionDenied, &["symbolic link"]);
    let reply = client
        .fetch(request(&url(&inside.join("kernel")), &digest_of(&body)))
        .await
        .unwrap();
    assert_eq!(std::fs::read(reply.into_inner().path).unwrap(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_file_is_denied_without_file_roots() {
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("x");
    std::fs::write(&path, b"x").unwrap();
    let daemon = TestDaemon::start();
    let result = daemon
        .client()
        .await
        .fetch(request(
            &format!("file://{}", path.display()),
            &digest_of(b"x"),
        ))
        .await;
    assert_status(result, Code::PermissionDenied, &["--file-root"]);
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cancelling_mid_stream_stops_transfer_and_cleans_up() {
    let http = HttpServer::start().await;
    let body = random_bytes(16 << 20, 8);
    let slow = Reply::slow(&body, 64 << 10, 20);
    let url = http.route("/slow", slow);
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let digest = digest_of(&body);
    let call = tokio::spawn(async move { client.fetch(request(&url, &digest)).await });
    while http.body_bytes() < 1 << 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        daemon.ingest().len(),
        1,
        "a temp file while the transfer runs"
    );
    call.abort();
    daemon.wait_ingest_empty(Duration::from_secs(2)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while http.hangups() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "upstream connection still open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(http.body_bytes() < body.len() as u64);
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_racing_fetch_is_refused_until_fetch_ends() {
    let http = HttpServer::start().await;
    let body = random_bytes(4 << 20, 9);
    let digest = digest_of(&body);
    let slow = Reply::slow(&body, 256 << 10, 30);
    let url = http.route("/slow", slow);
    let daemon = TestDaemon::start();
    let mut fetcher = daemon.client().await;
    let mut admin = daemon.client().await;
    let fetch = {
        let digest = digest.clone();
        tokio::spawn(async move { fetcher.fetch(request(&url, &digest)).await })
    };
    while http.body_bytes() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delete = admin
        .delete(DeleteRequest {
            digest: digest.clone(),
            ..Default::default()
        })
        .await;
    assert_status(
        delete,
        Code::FailedPrecondition,
        &[&digest, "being fetched"],
    );
    let fetched = fetch.await.unwrap().unwrap().into_inner();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), body);

    let deleted = admin
        .delete(DeleteRequest {
            digest: digest.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(deleted.into_inner().size, body.len() as u64);
    daemon.assert_empty();
    let again = admin
        .delete(DeleteRequest {
            digest: digest.clone(),
            ..Default::default()
        })
        .await;
    assert_status(again, Code::NotFound, &[&digest]);
}

/// `python3 -m http.server` on 127.0.0.1, a real HTTP server.
struct PythonHttp {
    child: std::process::Child,
    port: u16,
}

impl PythonHttp {
    fn start(dir: &std::path::Path) -> PythonHttp {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 43521 (http://127.0.0.1:43521/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        PythonHttp { child, port }
    }
}

impl Drop for PythonHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_url_secrets_stay_out_of_errors_and_logs() {
    let http = HttpServer::start().await;
    let missing = format!(
        "{}?X-Goog-Signature=SECRET1&X-Goog-Expires=60",
        http.url("/signed")
    );
    let refused = "http://user:SECRET2@127.0.0.1:9/x?sig=SECRET3".to_owned();
    let daemon = TestDaemon::start_with(&["--attempts", "1"]);
    let mut client = daemon.client().await;
    let result = client.fetch(request(&missing, WRONG_DIGEST)).await;
    assert_status(result, Code::NotFound, &["X-Goog-Signature=…"]);
    let status = client
        .fetch(request(&refused, WRONG_DIGEST))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    for secret in ["SECRET1", "SECRET2", "SECRET3"] {
        assert!(!status.message().contains(secret), "{}", status.message());
        assert!(
            !daemon.log().contains(secret),
            "{secret} in the log:\n{}",
            daemon.log()
        );
    }
}
