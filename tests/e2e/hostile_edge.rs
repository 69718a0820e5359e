//! The edges a hostile or unlucky caller hits: a dead log reader, overlong
//! URLs, lease names that render deceptively, and what `assetctl` says when
//! the socket is closed to it or missing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic::Code;

use crate::common::http::{HttpServer, Reply};
use crate::common::{
    TestDaemon, WRONG_DIGEST, assert_status, connect, digest_of, fetch_req, random_bytes,
};

/// The longest URL a request may carry, in bytes (as the daemon documents).
const MAX_URL_LEN: usize = 8192;

/// Waits until `socket` accepts connections; fails if `child` exits first.
fn wait_ready(child: &mut std::process::Child, socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("assetd exited early ({status})");
        }
        assert!(Instant::now() < deadline, "assetd did not start in 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` ignores SIGPIPE (bit 13 of `SigIgn`).
fn ignores_sigpipe(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    mask & (1 << (13 - 1)) != 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_log_reader_breaks_no_request_and_no_shutdown() {
    let http = HttpServer::start().await;
    let body = random_bytes(256 << 10, 61);
    let digest = digest_of(&body);
    let url = http.route("/logged", Reply::Body(body));
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("assetd.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_assetd"))
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--socket")
        .arg(&socket)
        .args(crate::common::ALLOW_LOOPBACK)
        // Debug logs a line for hits too: every request writes to stderr.
        .env("RUST_LOG", "debug")
        .env_remove("STORAGE_EMULATOR_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader dies at once: every later write to stderr is EPIPE.
    drop(child.stderr.take());
    wait_ready(&mut child, &socket);
    assert!(ignores_sigpipe(child.id()), "SIGPIPE would kill assetd");
    let mut client = connect(&socket).await;

    // A miss through the progress stream (what assetctl uses), then hits.
    let mut events = client
        .fetch_progress(fetch_req(&url, &digest, ""))
        .await
        .expect("FetchProgress starts")
        .into_inner();
    let mut done = None;
    while let Some(event) = events.message().await.expect("the stream goes on") {
        if let Some(assetd::proto::fetch_event::Event::Done(d)) = event.event {
            done = Some(d);
        }
    }
    let miss = done.expect("the miss ends with a result");
    assert!(!miss.cache_hit);
    for _ in 0..3 {
        let hit = client
            .fetch(fetch_req(&url, &digest, ""))
            .await
            .expect("a hit succeeds")
            .into_inner();
        assert!(hit.cache_hit);
        assert_eq!(hit.path, miss.path);
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "assetd ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "assetd exited with {status}");
    assert!(!socket.exists(), "the socket was left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_urls_are_invalid_naming_length_and_bound() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    // 100 KB fits a request (256 KiB) and reaches the handler: it must be
    // refused by the URL bound, not by HTTP/2 or reqwest.
    for len in [100_000, 200_000] {
        let url = format!("https://example.com/{}", "a".repeat(len - 20));
        assert_eq!(url.len(), len);
        let status = client
            .fetch(fetch_req(&url, WRONG_DIGEST, ""))
            .await
            .expect_err("an overlong URL is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        let message = status.message();
        assert!(message.contains(&len.to_string()), "{message}");
        assert!(message.contains(&MAX_URL_LEN.to_string()), "{message}");
        assert!(message.len() < 1024, "{} bytes quoted", message.len());
        // A mirror is held to the same bound.
        let mut req = fetch_req("https://example.com/x", WRONG_DIGEST, "");
        req.mirrors = vec![url];
        assert_status(client.fetch(req).await, Code::InvalidArgument, &["mirror"]);
    }
    // 1 MB is past the request bound: refused before the daemon holds it,
    // naming the size and the bound.
    let url = format!("https://example.com/{}", "a".repeat(1_000_000));
    assert_status(
        client.fetch(fetch_req(&url, WRONG_DIGEST, "")).await,
        Code::OutOfRange,
        &["message length too large", "262144"],
    );
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_of_long_urls_quote_a_bounded_prefix() {
    let http = HttpServer::start().await;
    let daemon = TestDaemon::start();
    // Just within the bound; nothing is served there.
    let base = http.url("/missing/");
    let url = format!("{base}{}", "b".repeat(MAX_URL_LEN - base.len()));
    assert_eq!(url.len(), MAX_URL_LEN);
    let status = daemon
        .client()
        .await
        .fetch(fetch_req(&url, WRONG_DIGEST, ""))
        .await
        .expect_err("nothing is there");
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    assert!(
        status.message().contains("/missing/bbb"),
        "{}",
        status.message()
    );
    assert!(status.message().contains('…'), "{}", status.message());
    assert!(
        status.message().len() < 1024,
        "{} bytes quoted",
        status.message().len()
    );
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_names_that_could_render_as_another_are_refused() {
    let http = HttpServer::start().await;
    let body = random_bytes(4096, 62);
    let digest = digest_of(&body);
    let url = http.route("/leased", Reply::Body(body));
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    for (name, code_point) in [
        ("sandbox\u{202E}gpj.exe", "U+202E"),
        ("a\u{200B}b", "U+200B"),
        ("\u{2066}x", "U+2066"),
        ("a\u{115F}b", "U+115F"),
        ("a\u{034F}b", "U+034F"),
        ("sandbox 1", "U+0020"),
        ("sandbox-é", "U+00E9"),
    ] {
        assert_status(
            client.fetch(fetch_req(&url, &digest, name)).await,
            Code::InvalidArgument,
            &[code_point],
        );
    }
    daemon.assert_empty();
    let printable = "sandbox-42/job:7";
    client
        .fetch(fetch_req(&url, &digest, printable))
        .await
        .expect("a printable ASCII lease name is fine");
    let listed = daemon
        .client()
        .await
        .list(assetd::proto::ListRequest {
            lease: printable.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .assets;
    assert_eq!(listed.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assetctl_denied_by_socket_mode_exits_6_naming_the_group() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let daemon = TestDaemon::start();
    // Nobody may reach the folder, but not open the socket (0660, root's group).
    let run_dir = daemon.socket.parent().unwrap();
    std::fs::set_permissions(
        run_dir.parent().unwrap(),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    let out = daemon.assetctl_as_nobody().arg("ls").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(
        stderr.contains(&daemon.socket.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("group"), "{stderr}");
    assert!(!stderr.contains("cannot reach"), "{stderr}");
}

#[test]
fn assetctl_names_a_missing_sockets_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_assetctl"))
        .arg("--socket")
        .arg(&socket)
        .arg("ls")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("cannot reach assetd"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}
