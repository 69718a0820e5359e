//! Stat, List, Delete, startup sweep, and the socket's one-daemon rule.

use std::process::Command;

use assetd::proto::{DeleteRequest, FetchRequest, ListRequest, StatRequest};
use tonic::Code;

use crate::common::http::{HttpServer, Reply};
use crate::common::{TestDaemon, WRONG_DIGEST, assert_status, daemon_command, digest_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_list_and_delete_work_from_disk() {
    let http = HttpServer::start().await;
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let mut digests = Vec::new();
    for i in 0..3u8 {
        let body = vec![i; 1000 + usize::from(i)];
        let url = http.route(&format!("/{i}"), Reply::Body(body.clone()));
        let digest = digest_of(&body);
        let req = FetchRequest {
            url,
            digest: digest.clone(),
            ..Default::default()
        };
        client.fetch(req).await.unwrap();
        digests.push(digest);
    }
    digests.sort();

    let stat = client
        .stat(StatRequest {
            digest: digests[1].clone(),
        })
        .await
        .unwrap();
    let asset = stat.into_inner().asset.unwrap();
    assert_eq!(asset.digest, digests[1]);
    assert!(asset.path.ends_with(&digests[1]["sha256:".len()..]));
    assert!(asset.added_unix_seconds > 1_700_000_000);

    let page = client
        .list(ListRequest {
            page_size: 2,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = page.assets.iter().map(|a| a.digest.clone()).collect();
    assert_eq!(names, digests[..2]);
    assert!(!page.next_page_token.is_empty());
    let last = client
        .list(ListRequest {
            page_size: 2,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(last.assets.len(), 1);
    assert_eq!(last.assets[0].digest, digests[2]);
    assert_eq!(last.next_page_token, "");

    let deleted = client
        .delete(DeleteRequest {
            digest: digests[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(deleted.into_inner().size >= 1000);
    let stat = client
        .stat(StatRequest {
            digest: digests[0].clone(),
        })
        .await;
    assert_status(stat, Code::NotFound, &[&digests[0], "not cached"]);
    assert_eq!(daemon.blobs().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_refuse_malformed_input() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    assert_status(
        client
            .stat(StatRequest {
                digest: "sha256:xyz".into(),
            })
            .await,
        Code::InvalidArgument,
        &["sha256:xyz"],
    );
    assert_status(
        client
            .delete(DeleteRequest {
                digest: "nope".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["\"nope\""],
    );
    let bad_token = ListRequest {
        page_size: 1,
        page_token: "../etc".into(),
        ..Default::default()
    };
    assert_status(
        client.list(bad_token).await,
        Code::InvalidArgument,
        &["page_token", "../etc"],
    );
    assert_status(
        client
            .stat(StatRequest {
                digest: WRONG_DIGEST.into(),
            })
            .await,
        Code::NotFound,
        &[WRONG_DIGEST],
    );
    let empty = client
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(empty.assets.is_empty() && empty.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_sweeps_ingest_and_ignores_stray_files() {
    let mut daemon = TestDaemon::start();
    daemon.stop();
    std::fs::write(daemon.root.join("ingest").join("deadbeef.partial"), b"half").unwrap();
    std::fs::create_dir(daemon.root.join("ingest").join("odd-dir")).unwrap();
    std::fs::write(daemon.root.join("blobs/sha256/not-a-digest"), b"x").unwrap();
    daemon.restart(&[]);
    assert!(daemon.ingest().is_empty());
    let list = daemon
        .client()
        .await
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.assets.is_empty());
    assert!(
        daemon
            .log()
            .contains("removed temp files of interrupted fetches")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced() {
    let mut daemon = TestDaemon::start();
    daemon.stop();
    // A socket file nobody listens on, as a killed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&daemon.socket).unwrap());
    assert!(daemon.socket.exists());
    daemon.restart(&[]);
    daemon
        .client()
        .await
        .list(ListRequest::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_daemon_on_same_socket_or_root_is_refused() {
    let daemon = TestDaemon::start();
    let other = tempfile::tempdir().unwrap();
    let log = other.path().join("log");

    let same_socket = daemon_command(&other.path().join("root"), &daemon.socket, &[], &log)
        .output()
        .unwrap();
    assert!(!same_socket.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("already serving") && text.contains(daemon.socket.to_str().unwrap()),
        "{text}"
    );

    let log = other.path().join("log2");
    let same_root = daemon_command(&daemon.root, &other.path().join("s.sock"), &[], &log)
        .output()
        .unwrap();
    assert!(!same_root.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("in use by another assetd"), "{text}");
    assert!(
        !other.path().join("s.sock").exists(),
        "a refused daemon removes its socket"
    );

    // The first daemon is unharmed.
    daemon
        .client()
        .await
        .list(ListRequest::default())
        .await
        .unwrap();
}

#[test]
fn bad_flags_are_refused_with_the_value_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_assetd"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let root = dir.path().join("root");
    let socket = dir.path().join("s.sock");
    let base = [
        "--root",
        root.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ];
    let err = run(&[&base[..], &["--max-size", "12XB"]].concat());
    assert!(err.contains("12XB"), "{err}");
    let err = run(&[&base[..], &["--file-root", "/nonexistent/files"]].concat());
    assert!(err.contains("/nonexistent/files"), "{err}");
    assert!(!root.exists(), "a refused start must not create the root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_refused_to_other_users() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: running a client as another user needs root");
        return;
    }
    let http = HttpServer::start().await;
    let body = vec![7u8; 4096];
    let url = http.route("/x", Reply::Body(body.clone()));
    let digest = digest_of(&body);
    let daemon = TestDaemon::start();
    let req = FetchRequest {
        url,
        digest: digest.clone(),
        ..Default::default()
    };
    daemon.client().await.fetch(req).await.unwrap();
    // Let user nobody reach the socket.
    let run_dir = daemon.socket.parent().unwrap();
    std::fs::set_permissions(
        run_dir.parent().unwrap(),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                env!("CARGO_BIN_EXE_assetctl"),
            ])
            .arg("--socket")
            .arg(&daemon.socket)
            .args(args)
            .output()
            .unwrap()
    };
    let listed = as_nobody(&["ls"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let removed = as_nobody(&["rm", &digest]);
    let stderr = String::from_utf8_lossy(&removed.stderr);
    assert_eq!(removed.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("the caller is uid 65534"), "{stderr}");
    assert_eq!(daemon.blobs().len(), 1, "the asset is still there");
    let gc = as_nobody(&["gc"]);
    assert_eq!(
        gc.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_root_still_gives_absolute_paths() {
    let dir = tempfile::tempdir().unwrap();
    let http = HttpServer::start().await;
    let body = vec![9u8; 1000];
    let url = http.route("/y", Reply::Body(body.clone()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_assetd"))
        .current_dir(dir.path())
        .args(["--root", "relroot", "--socket", "rel.sock"])
        .args(crate::common::ALLOW_LOOPBACK)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = dir.path().join("rel.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "assetd did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let req = FetchRequest {
        url,
        digest: digest_of(&body),
        ..Default::default()
    };
    let path = crate::common::connect(&socket)
        .await
        .fetch(req)
        .await
        .unwrap()
        .into_inner()
        .path;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        path.starts_with(dir.path().join("relroot").to_str().unwrap()),
        "{path}"
    );
}
