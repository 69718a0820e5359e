//! gs:// against fake-gcs-server, a real GCS emulator.

use assetd::proto::FetchRequest;
use assetd::source::{GcsSource, Resume};
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::common::gcs::FakeGcs;
use crate::common::proxy::CutProxy;
use crate::common::{TestDaemon, WRONG_DIGEST, assert_status, digest_of, random_bytes};

fn request(url: &str, digest: &str) -> FetchRequest {
    FetchRequest {
        url: url.to_owned(),
        digest: digest.to_owned(),
        ..Default::default()
    }
}

fn daemon_for(gcs: &FakeGcs, args: &[&str]) -> TestDaemon {
    TestDaemon::start_with_env(args, &[("STORAGE_EMULATOR_HOST", &gcs.host())])
}

/// The object's current generation, from the JSON API.
async fn generation(gcs: &FakeGcs, bucket: &str, object: &str) -> u64 {
    let url = format!("http://{}/storage/v1/b/{bucket}/o/{object}", gcs.host());
    let meta: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    meta["generation"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_fetch_of_300_mib_keeps_memory_flat() {
    let body = random_bytes(300 << 20, 31);
    let digest = digest_of(&body);
    let gcs = FakeGcs::start(&[("images", "vm/rootfs.img", &body)]);
    let daemon = daemon_for(&gcs, &[]);
    let reply = daemon
        .client()
        .await
        .fetch(FetchRequest {
            size: body.len() as u64,
            ..request("gs://images/vm/rootfs.img", &digest)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.size, body.len() as u64);
    assert_eq!(digest_of(&std::fs::read(&reply.path).unwrap()), digest);
    let peak = daemon.peak_rss();
    assert!(
        peak < 64 << 20,
        "peak RSS {} MiB for a 300 MiB object",
        peak >> 20
    );
    assert!(daemon.ingest().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_generation_pins_read_that_generation() {
    let body = random_bytes(1 << 20, 32);
    let digest = digest_of(&body);
    let gcs = FakeGcs::start(&[("bkt", "kernel", &body)]);
    let generation = generation(&gcs, "bkt", "kernel").await;
    let daemon = daemon_for(&gcs, &[]);
    let mut client = daemon.client().await;
    let pinned = format!("gs://bkt/kernel#{generation}");
    client.fetch(request(&pinned, &digest)).await.unwrap();
    client
        .delete(assetd::proto::DeleteRequest {
            digest: digest.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let query = format!("gs://bkt/kernel?generation={generation}");
    client.fetch(request(&query, &digest)).await.unwrap();

    // Another digest, so the cache can't answer.
    let missing = format!("gs://bkt/kernel#{}", generation + 1);
    let result = client.fetch(request(&missing, WRONG_DIGEST)).await;
    assert_status(
        result,
        Code::NotFound,
        &[
            &format!("no generation {}", generation + 1),
            "\"kernel\"",
            "\"bkt\"",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_missing_object_and_bucket_are_not_found() {
    let gcs = FakeGcs::start(&[("bkt", "present", b"x")]);
    let daemon = daemon_for(&gcs, &[]);
    let mut client = daemon.client().await;
    let result = client
        .fetch(request("gs://bkt/absent/file", WRONG_DIGEST))
        .await;
    assert_status(
        result,
        Code::NotFound,
        &["no object \"absent/file\" in bucket \"bkt\""],
    );
    let result = client
        .fetch(request("gs://nobucket/file", WRONG_DIGEST))
        .await;
    assert_status(
        result,
        Code::NotFound,
        &["bucket \"nobucket\" does not exist"],
    );
    let result = client
        .fetch(request("gs://Bad_Bucket!/file", WRONG_DIGEST))
        .await;
    assert_status(result, Code::InvalidArgument, &["bucket"]);
    assert_eq!(gcs.media_requests(), 0);
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_size_over_limit_or_mismatched_is_refused_before_download() {
    let body = random_bytes(2 << 20, 33);
    let digest = digest_of(&body);
    let gcs = FakeGcs::start(&[("bkt", "big.img", &body)]);
    let daemon = daemon_for(&gcs, &["--max-size", "1MiB"]);
    let mut client = daemon.client().await;
    let result = client.fetch(request("gs://bkt/big.img", &digest)).await;
    assert_status(
        result,
        Code::ResourceExhausted,
        &["gs://bkt/big.img", "declares 2097152 bytes", "1048576"],
    );
    let wrong_size = FetchRequest {
        size: 1000,
        ..request("gs://bkt/big.img", &digest)
    };
    assert_status(
        client.fetch(wrong_size).await,
        Code::DataLoss,
        &["expected 1000 bytes", "declares 2097152"],
    );
    assert_eq!(
        gcs.media_requests(),
        0,
        "no media may be read:\n{}",
        gcs.log()
    );
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_digest_mismatch_leaves_nothing() {
    let gcs = FakeGcs::start(&[("bkt", "obj", b"not what you asked for")]);
    let daemon = daemon_for(&gcs, &[]);
    let result = daemon
        .client()
        .await
        .fetch(request("gs://bkt/obj", WRONG_DIGEST))
        .await;
    assert_status(result, Code::DataLoss, &[WRONG_DIGEST]);
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_reads_from_an_offset() {
    let body = random_bytes(3 << 20, 34);
    let gcs = FakeGcs::start(&[("bkt", "dir/obj", &body)]);
    let source = GcsSource::new(Some(&gcs.host()), false).unwrap();
    let url = url::Url::parse("gs://bkt/dir/obj").unwrap();
    let caller = assetd::source::Access {
        admin: false,
        uid: 4242,
        gid: 4242,
    };
    let first = source.read(&url, None, caller).await.unwrap();
    let validator = first.validator.clone().unwrap();
    assert_eq!(
        validator,
        generation(&gcs, "bkt", "dir%2Fobj").await.to_string()
    );
    let resume = Resume {
        offset: 1_000_000,
        validator,
    };
    let opened = source.read(&url, Some(&resume), caller).await.unwrap();
    assert_eq!(opened.offset, 1_000_000);
    assert_eq!(opened.size, Some(body.len() as u64));
    let mut read = Vec::new();
    let mut stream = opened.body;
    while let Some(chunk) = stream.next().await {
        read.extend_from_slice(&chunk.unwrap());
    }
    assert!(
        read == body[1_000_000..],
        "offset read returned other bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_without_credentials_is_denied_with_advice() {
    let daemon = TestDaemon::start_with_env(
        &[],
        &[("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")],
    );
    let result = daemon
        .client()
        .await
        .fetch(request("gs://bkt/obj", WRONG_DIGEST))
        .await;
    assert_status(
        result,
        Code::PermissionDenied,
        &[
            "gs://bkt/obj",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "--gcs-anonymous",
        ],
    );
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_transfer_cut_midway_resumes_on_the_same_generation() {
    let body = random_bytes(8 << 20, 35);
    let digest = digest_of(&body);
    let gcs = FakeGcs::start(&[("bkt", "rootfs.img", &body)]);
    let proxy = CutProxy::start(gcs.port, 4 << 20).await;
    let host = format!("127.0.0.1:{}", proxy.port);
    let daemon = TestDaemon::start_with_env(&[], &[("STORAGE_EMULATOR_HOST", &host)]);
    let reply = daemon
        .client()
        .await
        .fetch(request("gs://bkt/rootfs.img", &digest))
        .await
        .unwrap()
        .into_inner();
    assert!(proxy.did_cut(), "the transfer was cut");
    assert_eq!(digest_of(&std::fs::read(&reply.path).unwrap()), digest);
    assert!(daemon.log().contains("retrying"), "{}", daemon.log());
    // Resumed, not started over: about the object once, plus metadata.
    let forwarded = proxy.forwarded();
    assert!(
        forwarded < body.len() as u64 + (256 << 10),
        "{forwarded} bytes for {}",
        body.len()
    );
    assert_eq!(gcs.media_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_daemon_looks_for_no_credentials() {
    // Without GOOGLE_APPLICATION_CREDENTIALS, Application Default
    // Credentials would ask the metadata server; they are made on the first
    // gs:// fetch, not at start.
    if std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").is_some() {
        eprintln!("SKIPPED: GOOGLE_APPLICATION_CREDENTIALS is set");
        return;
    }
    let daemon = TestDaemon::start_with_env(&[], &[("RUST_LOG", "debug")]);
    daemon
        .client()
        .await
        .list(assetd::proto::ListRequest::default())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let log = daemon.log();
    assert!(log.contains("serving"), "{log}");
    assert!(!log.contains("metadata.google.internal"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_gcs_object_comes_in_pieces_of_its_generation() {
    let body = random_bytes(40 << 20, 39);
    let digest = digest_of(&body);
    let gcs = FakeGcs::start(&[("images", "vm/kernel.img", &body)]);
    let daemon = daemon_for(&gcs, &["--ranged-min-size", "16MiB"]);
    let reply = daemon
        .client()
        .await
        .fetch(request("gs://images/vm/kernel.img", &digest))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(std::fs::read(&reply.path).unwrap(), body);
    let log = daemon.log();
    assert!(
        log.contains("reading in pieces") && log.contains("pieces=5"),
        "{log}"
    );
    assert!(daemon.ingest().is_empty());
}
