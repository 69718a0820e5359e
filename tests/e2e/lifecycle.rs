//! The cache's lifecycle through the real daemon: leases, eviction, admin
//! RPCs, verification, prewarm, restarts and crashes.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use assetd::proto::assets_client::AssetsClient;
use assetd::proto::{
    self, DeleteRequest, FetchRequest, GcRequest, ListRequest, ReleaseLeaseRequest, StatRequest,
    VerifyRequest,
};
use tonic::Code;
use tonic::transport::Channel;

use crate::common::http::{HttpServer, Reply};
use crate::common::{
    Rng, TestDaemon, assert_status, digest_of, fetch_req, listed, random_bytes, serve_assets,
};

/// Fetches one of [`serve_assets`]'s assets, pinned for `lease` unless empty.
async fn fetch_asset(
    client: &mut AssetsClient<Channel>,
    asset: &(String, Vec<u8>, String),
    lease: &str,
) {
    client
        .fetch(fetch_req(&asset.0, &asset.2, lease))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_pin_assets_until_released() {
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 2, 4096, 100);
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let (url, _, digest) = &assets[0];
    client
        .fetch(fetch_req(url, digest, "sandbox-1"))
        .await
        .unwrap();
    let stat = client
        .stat(StatRequest {
            digest: digest.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let asset = stat.asset.unwrap();
    assert_eq!(asset.leases.len(), 1);
    assert_eq!(asset.leases[0].lease, "sandbox-1");
    assert_eq!(asset.urls, vec![url.clone()]);
    // A hit names a URL nothing was read from: it is not recorded, so no
    // caller can push the real source out of the asset's list.
    for i in 0..10 {
        let planted = format!("https://evil.example/planted-{i}");
        assert!(
            client
                .fetch(fetch_req(&planted, digest, ""))
                .await
                .unwrap()
                .into_inner()
                .cache_hit
        );
    }
    let asset = client
        .stat(StatRequest {
            digest: digest.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .asset
        .unwrap();
    assert_eq!(asset.urls, vec![url.clone()]);

    let delete = DeleteRequest {
        digest: digest.clone(),
        force: false,
    };
    assert_status(
        client.delete(delete.clone()).await,
        Code::FailedPrecondition,
        &[digest, "sandbox-1"],
    );
    let released = client
        .release_lease(ReleaseLeaseRequest {
            lease: "sandbox-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(released.into_inner().released, 1);
    client.delete(delete).await.unwrap();

    // Force deletes a leased asset.
    let (url, _, digest) = &assets[1];
    client
        .fetch(fetch_req(url, digest, "sandbox-2"))
        .await
        .unwrap();
    client
        .delete(DeleteRequest {
            digest: digest.clone(),
            force: true,
        })
        .await
        .unwrap();
    daemon.assert_empty();

    let bad = fetch_req(url, digest, "bad\nname");
    assert_status(
        client.fetch(bad).await,
        Code::InvalidArgument,
        &["malformed lease"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_lease_url_prefix_and_unleased() {
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 3, 2048, 110);
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    fetch_asset(&mut client, &assets[0], "a").await;
    fetch_asset(&mut client, &assets[1], "").await;
    fetch_asset(&mut client, &assets[2], "").await;
    let by_lease = ListRequest {
        lease: "a".into(),
        ..Default::default()
    };
    assert_eq!(listed(&daemon, by_lease).await, vec![assets[0].2.clone()]);
    let by_url = ListRequest {
        url_prefix: assets[1].0.clone(),
        ..Default::default()
    };
    assert_eq!(listed(&daemon, by_url).await, vec![assets[1].2.clone()]);
    let mut unleased = listed(
        &daemon,
        ListRequest {
            unleased: true,
            ..Default::default()
        },
    )
    .await;
    unleased.sort();
    let mut want = vec![assets[1].2.clone(), assets[2].2.clone()];
    want.sort();
    assert_eq!(unleased, want);

    let ls = Command::new(env!("CARGO_BIN_EXE_assetctl"))
        .env("ASSETD_SOCKET", &daemon.socket)
        .args(["ls", "--lease", "a"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(
        text.contains(&assets[0].2) && !text.contains(&assets[1].2),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_leased_and_recent_assets_under_the_cap() {
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 4, 1 << 20, 120);
    // No grace: this is about the order of eviction (the grace has its own
    // tests in seams.rs).
    let daemon = TestDaemon::start_with(&["--max-cache-bytes", "3MiB", "--unleased-grace", "0s"]);
    let mut client = daemon.client().await;
    fetch_asset(&mut client, &assets[0], "pinned").await;
    for (url, _, digest) in &assets[1..3] {
        client.fetch(fetch_req(url, digest, "")).await.unwrap();
    }
    // A hit makes asset 1 recent; asset 2 is now the least recently used.
    tokio::time::sleep(Duration::from_millis(20)).await;
    fetch_asset(&mut client, &assets[1], "").await;
    fetch_asset(&mut client, &assets[3], "").await;
    let expected: BTreeSet<String> = [0, 1, 3].iter().map(|&i| assets[i].2.clone()).collect();
    assert_eq!(daemon.blob_digests(), expected);
    assert!(daemon.log().contains("evicted least recently used assets"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_dry_run_reports_and_gc_evicts_never_the_leased() {
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 2, 1 << 20, 130);
    // The cap is below even one asset: only eviction by Gc can act. No
    // grace, so the unleased asset may go as soon as its fetch is over.
    let daemon = TestDaemon::start_with(&["--max-cache-bytes", "1MiB", "--unleased-grace", "0s"]);
    let mut client = daemon.client().await;
    fetch_asset(&mut client, &assets[0], "keep").await;
    fetch_asset(&mut client, &assets[1], "").await;
    // The fresh asset was in flight when its own commit evicted: it stays.
    assert_eq!(daemon.blobs().len(), 2);
    let dry = client
        .gc(GcRequest { dry_run: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        dry.evicted
            .iter()
            .map(|a| a.digest.clone())
            .collect::<Vec<_>>(),
        vec![assets[1].2.clone()]
    );
    assert_eq!(dry.bytes, 1 << 20);
    assert_eq!(daemon.blobs().len(), 2, "a dry run changes nothing");
    let gc = client
        .gc(GcRequest { dry_run: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gc.evicted.len(), 1);
    let left: BTreeSet<String> = [assets[0].2.clone()].into();
    assert_eq!(daemon.blob_digests(), left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asset_that_can_never_fit_is_refused_up_front() {
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 1, 2 << 20, 140);
    let daemon = TestDaemon::start_with(&["--max-cache-bytes", "1MiB"]);
    let mut client = daemon.client().await;
    let (url, _, digest) = &assets[0];
    let sized = FetchRequest {
        size: 2 << 20,
        ..fetch_req(url, digest, "")
    };
    assert_status(
        client.fetch(sized).await,
        Code::ResourceExhausted,
        &["can never fit", "2097152"],
    );
    assert_eq!(http.requests(), 0);
    assert_status(
        client.fetch(fetch_req(url, digest, "")).await,
        Code::ResourceExhausted,
        &["can never fit"],
    );
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_with_a_ttl_lapses() {
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 1, 4096, 150);
    let daemon = TestDaemon::start_with(&["--gc-interval", "200ms"]);
    let mut client = daemon.client().await;
    let (url, _, digest) = &assets[0];
    let req = FetchRequest {
        lease_ttl_seconds: 1,
        ..fetch_req(url, digest, "short")
    };
    client.fetch(req).await.unwrap();
    let delete = DeleteRequest {
        digest: digest.clone(),
        force: false,
    };
    assert_status(
        client.delete(delete.clone()).await,
        Code::FailedPrecondition,
        &["short"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = client
            .stat(StatRequest {
                digest: digest.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if stat.asset.unwrap().leases.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the lease did not lapse");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.delete(delete).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_last_use_survive_a_restart() {
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 2, 4096, 160);
    let mut daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    fetch_asset(&mut client, &assets[0], "kept").await;
    fetch_asset(&mut client, &assets[1], "").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    fetch_asset(&mut client, &assets[0], "").await;
    drop(client);
    daemon.restart(&[]);
    let mut client = daemon.client().await;
    let stat = |d: &str| StatRequest {
        digest: d.to_owned(),
    };
    let first = client
        .stat(stat(&assets[0].2))
        .await
        .unwrap()
        .into_inner()
        .asset
        .unwrap();
    let second = client
        .stat(stat(&assets[1].2))
        .await
        .unwrap()
        .into_inner()
        .asset
        .unwrap();
    assert_eq!(
        first
            .leases
            .iter()
            .map(|l| l.lease.as_str())
            .collect::<Vec<_>>(),
        vec!["kept"]
    );
    assert!(
        first.last_used_unix_ms > second.last_used_unix_ms,
        "last-use order kept"
    );
    assert_eq!(second.urls, vec![assets[1].0.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_quarantines_a_corrupt_blob() {
    use std::os::unix::fs::PermissionsExt;
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 2, 8192, 170);
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    for (url, _, digest) in &assets {
        client.fetch(fetch_req(url, digest, "")).await.unwrap();
    }
    let bad = &assets[0].2;
    let path = daemon.blob_path(bad);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, b"bit rot").unwrap();

    let one = client
        .verify(VerifyRequest {
            digest: assets[1].2.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((one.checked, one.corrupt.len()), (1, 0));
    let all = client
        .verify(VerifyRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.checked, 2);
    assert_eq!(all.corrupt.len(), 1);
    assert_eq!(&all.corrupt[0].digest, bad);
    assert_eq!(all.corrupt[0].actual, digest_of(b"bit rot"));
    assert!(std::fs::read(&all.corrupt[0].quarantined_path).unwrap() == b"bit rot");
    assert!(!path.exists(), "out of blobs/");
    assert_status(
        client
            .stat(StatRequest {
                digest: bad.clone(),
            })
            .await,
        Code::NotFound,
        &[bad],
    );
    // Fetching it again brings back the right bytes.
    client
        .fetch(fetch_req(&assets[0].0, bad, ""))
        .await
        .unwrap();
    assert!(std::fs::read(&path).unwrap() == assets[0].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_reports_each_asset_and_goes_on_without_the_caller() {
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 2, 1 << 20, 180);
    let missing = http.route("/missing", Reply::status(404));
    let daemon = TestDaemon::start();
    let manifest = daemon_dir_file(&daemon, "manifest.toml");
    let toml = format!(
        "concurrency = 2\n\n[[assets]]\nurl = \"{}\"\ndigest = \"{}\"\nlease = \"node\"\n\n[[assets]]\nurl = \"{}\"\ndigest = \"{}\"\n\n[[assets]]\nurl = \"{missing}\"\ndigest = \"{}\"\n",
        assets[0].0,
        assets[0].2,
        assets[1].0,
        assets[1].2,
        digest_of(b"nothing")
    );
    std::fs::write(&manifest, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_assetctl"))
        .env("ASSETD_SOCKET", &daemon.socket)
        .args(["--json", "prewarm"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(12),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One JSON object per asset.
    let statuses: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let o: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {}", o["index"], o["status"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        statuses,
        ["0 fetched", "1 fetched", "2 failed"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        listed(
            &daemon,
            ListRequest {
                lease: "node".into(),
                ..Default::default()
            }
        )
        .await,
        vec![assets[0].2.clone()]
    );

    // The caller leaves after the first event; the batch goes on.
    let body = random_bytes(2 << 20, 189);
    let slow = Reply::slow(&body, 128 << 10, 20);
    let url = http.route("/slow", slow);
    let req = proto::PrewarmRequest {
        assets: vec![fetch_req(&url, &digest_of(&body), "")],
        concurrency: 0,
    };
    let mut events = daemon
        .client()
        .await
        .prewarm(req)
        .await
        .unwrap()
        .into_inner();
    events.message().await.unwrap().unwrap();
    drop(events);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.blob_path(&digest_of(&body)).exists() {
        assert!(Instant::now() < deadline, "the prewarm did not go on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let bad = daemon_dir_file(&daemon, "bad.json");
    std::fs::write(&bad, r#"{"assets": [{"url": "x", "digets": "y"}]}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_assetctl"))
        .env("ASSETD_SOCKET", &daemon.socket)
        .arg("prewarm")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("digets"));
}

fn daemon_dir_file(daemon: &TestDaemon, name: &str) -> std::path::PathBuf {
    daemon.root.parent().unwrap().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_metadata_store_is_rebuilt_from_blobs() {
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 3, 4096, 190);
    let mut daemon = TestDaemon::start();
    for (url, _, digest) in &assets {
        daemon
            .client()
            .await
            .fetch(fetch_req(url, digest, ""))
            .await
            .unwrap();
    }
    daemon.stop();
    std::fs::write(daemon.root.join("meta.redb"), vec![0x5a; 8192]).unwrap();
    daemon.start_again(&[]);
    assert!(
        daemon.log().contains("rebuilding it from blobs/"),
        "{}",
        daemon.log()
    );
    let listed: BTreeSet<String> = listed(&daemon, ListRequest::default())
        .await
        .into_iter()
        .collect();
    assert_eq!(listed, daemon.blob_digests());
    assert_eq!(listed.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_instants_never_corrupts_the_cache() {
    let http = HttpServer::start().await;
    let mut assets = serve_assets(&http, 6, 3 << 20, 200);
    for (i, (url, body, _)) in assets.iter_mut().enumerate().take(3) {
        let slow = Reply::slow(body, 256 << 10, 10);
        *url = http.route(&format!("/slow/{i}"), slow);
    }
    // No grace, so eviction keeps running between the kills.
    let args = [
        "--max-cache-bytes",
        "10MiB",
        "--gc-interval",
        "50ms",
        "--unleased-grace",
        "0s",
    ];
    let mut daemon = TestDaemon::start_with(&args);
    let mut rng = Rng::new(200);
    for round in 0..50 {
        let mut client = daemon.client().await;
        let pick = rng.below(assets.len() as u64) as usize;
        let (url, _, digest) = assets[pick].clone();
        let op = tokio::spawn(async move {
            match round % 3 {
                0 | 1 => drop(client.fetch(fetch_req(&url, &digest, "")).await),
                _ => drop(
                    client
                        .delete(DeleteRequest {
                            digest,
                            force: true,
                        })
                        .await,
                ),
            }
        });
        tokio::time::sleep(Duration::from_millis(rng.below(120))).await;
        daemon.kill9();
        op.abort();
        daemon.start_again(&args);
        // An answered call means the store is open and ingest/ swept (the
        // socket accepts connections a moment before).
        let served = listed(&daemon, ListRequest::default()).await;
        assert!(served.len() <= assets.len());
        assert!(
            daemon.ingest().is_empty(),
            "round {round}: ingest/ not swept"
        );
        daemon.assert_consistent(&format!("round {round}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_calls_refuse_bad_input_and_change_nothing() {
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 1, 4096, 210);
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let (url, _, digest) = &assets[0];
    let release = ReleaseLeaseRequest {
        lease: String::new(),
    };
    assert_status(
        client.release_lease(release).await,
        Code::InvalidArgument,
        &["malformed lease"],
    );
    let verify = VerifyRequest {
        digest: "sha256:nope".into(),
    };
    assert_status(
        client.verify(verify).await,
        Code::InvalidArgument,
        &["sha256:nope"],
    );
    let ttl_alone = FetchRequest {
        lease_ttl_seconds: 5,
        ..fetch_req(url, digest, "")
    };
    assert_status(
        client.fetch(ttl_alone).await,
        Code::InvalidArgument,
        &["lease_ttl_seconds without a lease"],
    );
    let batch = proto::PrewarmRequest {
        assets: vec![fetch_req(url, digest, ""), fetch_req(url, "sha256:bad", "")],
        concurrency: 0,
    };
    assert_status(
        client.prewarm(batch).await,
        Code::InvalidArgument,
        &["asset 1", "sha256:bad"],
    );
    let missing = DeleteRequest {
        digest: digest.clone(),
        force: true,
    };
    assert_status(client.delete(missing).await, Code::NotFound, &[digest]);
    assert_eq!(http.requests(), 0);
    daemon.assert_empty();
}
