//! The admin's view: the real grpcurl, through server reflection.

use std::path::PathBuf;
use std::process::Command;

use crate::common::http::{HttpServer, Reply};
use crate::common::{TestDaemon, digest_of, random_bytes};

/// grpcurl as installed by `scripts/test` (into `.venv/`), or `$GRPCURL`.
fn grpcurl() -> PathBuf {
    if let Some(path) = std::env::var_os("GRPCURL") {
        return path.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/grpcurl");
    assert!(
        venv.exists(),
        "grpcurl not found at {}: run scripts/test, which installs it",
        venv.display()
    );
    venv
}

/// Runs `grpcurl -plaintext -unix FLAGS SOCKET TARGET...` against the
/// daemon, as the README does (the socket path is absolute); returns stdout.
fn run(daemon: &TestDaemon, flags: &[&str], target: &[&str]) -> String {
    let out = Command::new(grpcurl())
        .args(["-plaintext", "-unix"])
        .args(flags)
        .arg(&daemon.socket)
        .args(target)
        .output()
        .expect("run grpcurl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "grpcurl {target:?} failed: {stderr}{stdout}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_fetches_via_reflection() {
    let http = HttpServer::start().await;
    let body = random_bytes(1 << 20, 11);
    let digest = digest_of(&body);
    let url = http.route("/initrd", Reply::Body(body.clone()));
    let daemon = TestDaemon::start();

    let services = run(&daemon, &[], &["list"]);
    for name in [
        "assetd.v1.Assets",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(name), "{services}");
    }
    // The alternative the README mentions, and what grpcurl 1.9 sends.
    let services = run(&daemon, &["-authority", "localhost"], &["list"]);
    assert!(services.contains("assetd.v1.Assets"), "{services}");
    let described = run(&daemon, &[], &["describe", "assetd.v1.Assets"]);
    assert!(
        described.contains("rpc Fetch") && described.contains("makes sure the asset"),
        "{described}"
    );
    let health = run(&daemon, &[], &["grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");

    let request = format!(r#"{{"url":"{url}","digest":"{digest}"}}"#);
    let fetched = run(&daemon, &["-d", &request], &["assetd.v1.Assets/Fetch"]);
    let reply: serde_json::Value = serde_json::from_str(&fetched).unwrap();
    let path = reply["path"].as_str().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(
        reply["size"], "1048576",
        "grpcurl prints uint64 as a string"
    );

    let listed = run(&daemon, &[], &["assetd.v1.Assets/List"]);
    assert!(listed.contains(&digest), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_reports_errors_with_their_codes() {
    let daemon = TestDaemon::start();
    let out = Command::new(grpcurl())
        .args([
            "-plaintext",
            "-unix",
            "-d",
            r#"{"url":"https://x/y","digest":"sha256:nope"}"#,
        ])
        .arg(&daemon.socket)
        .arg("assetd.v1.Assets/Fetch")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("sha256:nope"),
        "{stderr}"
    );
    daemon.assert_empty();
}
