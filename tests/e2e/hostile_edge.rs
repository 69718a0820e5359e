//! The edges a hostile or unlucky caller hits: a dead log reader, overlong
//! URLs, lease names that render deceptively, and what `assetctl` says when
//! the socket is closed to it or missing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::http::{HttpServer, Reply};
use crate::common::{connect, digest_of, fetch_req, random_bytes};

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
