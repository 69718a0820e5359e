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
