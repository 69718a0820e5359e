//! `/metrics` as Prometheus reads it: parsed by the Python client's own
//! parser (installed by `scripts/test`), its counters moving with fetches,
//! hits and refusals; and JSON logs.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tonic::Code;

use crate::common::http::{HttpServer, Reply};
use crate::common::{TestDaemon, assert_status, digest_of, fetch_req, random_bytes};

/// The venv's python, which has `prometheus_client`.
fn venv_python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(python.exists(), "run scripts/test, which makes .venv");
    python
}

/// Every sample of `text`, parsed by `prometheus_client.parser`, as
/// `name{label="value",...}` → value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(venv_python())
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn scrape(port: u16) -> BTreeMap<String, f64> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert!(response.status().is_success());
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    parse(&response.text().await.unwrap())
}

fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_fetches_hits_and_refusals() {
    let http = HttpServer::start().await;
    let body = random_bytes(300_000, 1001);
    let digest = digest_of(&body);
    let url = http.route("/m", Reply::Body(body));
    let port = free_port();
    let daemon = TestDaemon::start_with(&["--metrics-listen", &format!("127.0.0.1:{port}")]);
    let before = scrape(port).await;
    assert_eq!(value(&before, "assetd_cache_assets{}"), 0.0);

    let mut client = daemon.client().await;
    client.fetch(fetch_req(&url, &digest, "")).await.unwrap();
    client.fetch(fetch_req(&url, &digest, "")).await.unwrap();
    // Refused by the source policy: metadata address.
    assert_status(
        client
            .fetch(fetch_req("http://169.254.169.254/x", &digest_of(b"x"), ""))
            .await,
        Code::PermissionDenied,
        &["link-local"],
    );

    let after = scrape(port).await;
    for (key, wanted) in [
        (
            r#"assetd_fetches_total{outcome="fetched",source="http"}"#,
            1.0,
        ),
        (r#"assetd_fetches_total{outcome="hit",source="http"}"#, 1.0),
        (
            r#"assetd_fetches_total{outcome="refused",source="http"}"#,
            1.0,
        ),
        (r#"assetd_refusals_total{reason="denied"}"#, 1.0),
        (
            r#"assetd_transferred_bytes_total{source="http"}"#,
            300_000.0,
        ),
        (
            r#"assetd_transfer_duration_seconds_count{source="http"}"#,
            1.0,
        ),
        (
            r#"assetd_time_to_first_byte_seconds_count{source="http"}"#,
            1.0,
        ),
        ("assetd_cache_assets{}", 1.0),
        ("assetd_cache_bytes{}", 300_000.0),
        ("assetd_transfers_running{}", 0.0),
    ] {
        assert_eq!(value(&after, key), wanted, "{key} in {after:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_loopback_only_and_logs_can_be_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_assetd"))
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--socket")
        .arg(dir.path().join("sock"))
        .args(["--metrics-listen", "0.0.0.0:9464"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("loopback or a unix socket only"),
        "{stderr}"
    );
    assert!(!dir.path().join("root").exists());

    let daemon = TestDaemon::start_with(&["--log-format", "json"]);
    let log = daemon.log();
    let serving = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "serving")
        .unwrap_or_else(|| panic!("no JSON 'serving' line in:\n{log}"));
    assert_eq!(serving["level"], "INFO");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_scrapers_costs_the_daemon_nothing() {
    let port = free_port();
    let daemon = TestDaemon::start_with(&["--metrics-listen", &format!("127.0.0.1:{port}")]);
    let before = daemon.open_fds();
    // 300 connections that never send a request.
    let mut silent = Vec::new();
    for _ in 0..300 {
        if let Ok(conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            silent.push(conn);
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let during = daemon.open_fds();
    assert!(
        during < before + 20,
        "{before} fds before, {during} with 300 silent scrapers"
    );
    // The API answers all the while.
    daemon
        .client()
        .await
        .list(assetd::proto::ListRequest::default())
        .await
        .unwrap();
    // A silent scraper holding a slot is let go after 5 s, and a real
    // scrape gets through again.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert!(!scrape(port).await.is_empty());
    drop(silent);
}
