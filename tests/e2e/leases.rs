//! Leases belong to the uid that made them: only it or an admin releases
//! them, a non-admin's TTL is capped, and a user's pins and queued prewarm
//! assets are capped (admins exempt). Callers other than root are uid 65534
//! (nobody) running `assetctl`.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use assetd::proto::{LeaseHold, ReleaseLeaseRequest, StatRequest};

use crate::common::http::{HttpServer, Reply};
use crate::common::{
    TestDaemon, digest_of, fetch_req, random_bytes, root_or_skip, serve_assets, wait_until,
};

const NOBODY: u32 = 65534;

/// `assetctl --json ARGS` as nobody against `daemon`.
fn nobody(daemon: &TestDaemon, args: &[&str]) -> Output {
    daemon
        .assetctl_as_nobody()
        .arg("--json")
        .args(args)
        .output()
        .expect("setpriv assetctl")
}

/// Like [`nobody`], but must succeed; returns its JSON.
fn nobody_ok(daemon: &TestDaemon, args: &[&str]) -> serde_json::Value {
    let out = nobody(daemon, args);
    assert!(
        out.status.success(),
        "assetctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("assetctl JSON")
}

/// Nobody releases `lease`; returns how many pins went.
fn nobody_releases(daemon: &TestDaemon, lease: &str) -> u64 {
    nobody_ok(daemon, &["lease", "release", lease])["released"]
        .as_u64()
        .expect("released")
}

/// The lease holds on `digest`, seen by root.
async fn holds(daemon: &TestDaemon, digest: &str) -> Vec<LeaseHold> {
    let req = StatRequest {
        digest: digest.to_owned(),
    };
    let asset = daemon.client().await.stat(req).await.unwrap().into_inner();
    asset.asset.unwrap().leases
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_belongs_to_its_uid_and_a_non_admins_ttl_is_capped() {
    if !root_or_skip() {
        return;
    }
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 3, 4096, 700);
    let args = ["--max-lease-ttl", "60s"];
    let mut daemon = TestDaemon::start_with(&args);
    daemon.open_to_everyone();
    let (root_asset, own_asset, long_asset) = (&assets[0], &assets[1], &assets[2]);

    // Root pins "x" for ever: root is exempt from the TTL cap.
    let mut client = daemon.client().await;
    client
        .fetch(fetch_req(&root_asset.0, &root_asset.2, "x"))
        .await
        .unwrap();
    // Nobody's release of the same name finds nothing of its own.
    assert_eq!(nobody_releases(&daemon, "x"), 0);
    let root_hold = LeaseHold {
        lease: "x".into(),
        expires_unix_ms: 0,
        owner_uid: 0,
    };
    assert_eq!(holds(&daemon, &root_asset.2).await, vec![root_hold.clone()]);

    // Nobody pins "x" without a TTL, and "y" for an hour: both get the cap.
    let before = now_ms();
    nobody_ok(
        &daemon,
        &[
            "fetch",
            &own_asset.0,
            "--digest",
            &own_asset.2,
            "--lease",
            "x",
        ],
    );
    let args = [
        "fetch",
        &long_asset.0,
        "--digest",
        &long_asset.2,
        "--lease",
        "y",
        "--lease-ttl",
        "3600",
    ];
    nobody_ok(&daemon, &args);
    let after = now_ms();
    for (digest, lease) in [(&own_asset.2, "x"), (&long_asset.2, "y")] {
        let held = holds(&daemon, digest).await;
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!((held[0].lease.as_str(), held[0].owner_uid), (lease, NOBODY));
        let expires = held[0].expires_unix_ms;
        assert!(
            expires >= before + 60_000 && expires <= after + 60_000,
            "{lease} expires at {expires}, not within the 60 s cap of [{before}, {after}]"
        );
    }

    // Owners survive a restart.
    daemon.restart(&["--max-lease-ttl", "60s"]);
    daemon.open_to_everyone();
    assert_eq!(holds(&daemon, &root_asset.2).await, vec![root_hold]);
    assert_eq!(holds(&daemon, &own_asset.2).await[0].owner_uid, NOBODY);

    // Nobody's release of "x" takes its own pin only.
    assert_eq!(nobody_releases(&daemon, "x"), 1);
    assert!(holds(&daemon, &own_asset.2).await.is_empty());
    assert_eq!(
        holds(&daemon, &root_asset.2).await.len(),
        1,
        "root's x stays"
    );

    // Root (an admin) releases every pin of a name, whoever made it.
    let mut client = daemon.client().await;
    let release = |lease: &str| ReleaseLeaseRequest {
        lease: lease.to_owned(),
    };
    let released = client.release_lease(release("y")).await.unwrap();
    assert_eq!(released.into_inner().released, 1);
    assert!(holds(&daemon, &long_asset.2).await.is_empty());
    let released = client.release_lease(release("x")).await.unwrap();
    assert_eq!(released.into_inner().released, 1);
    assert!(holds(&daemon, &root_asset.2).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_lease_pins_are_capped_and_root_is_exempt() {
    if !root_or_skip() {
        return;
    }
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 3, 4096, 710);
    let daemon = TestDaemon::start_with(&["--max-leases-per-uid", "2"]);
    daemon.open_to_everyone();
    let fetch = |i: usize, lease: &str| {
        let (url, _, digest) = &assets[i];
        nobody(
            &daemon,
            &["fetch", url, "--digest", digest, "--lease", lease],
        )
    };
    assert!(fetch(0, "a").status.success());
    assert!(fetch(1, "b").status.success());

    // The third pin is refused; the asset is cached all the same, unpinned.
    let third = fetch(2, "c");
    assert_eq!(third.status.code(), Some(7), "RESOURCE_EXHAUSTED");
    let stderr = String::from_utf8_lossy(&third.stderr);
    for part in ["uid 65534 holds 2 lease pins", "--max-leases-per-uid 2"] {
        assert!(stderr.contains(part), "{stderr}");
    }
    assert!(daemon.blob_path(&assets[2].2).exists());
    assert!(holds(&daemon, &assets[2].2).await.is_empty());

    // At the cap, renewing a pin it holds is not a new pin.
    assert!(fetch(0, "a").status.success());
    // Root pins as many as it likes.
    let mut client = daemon.client().await;
    for (i, (url, _, digest)) in assets.iter().enumerate() {
        client
            .fetch(fetch_req(url, digest, &format!("root-{i}")))
            .await
            .unwrap();
    }
    // Released pins make room again.
    assert_eq!(nobody_releases(&daemon, "b"), 1);
    assert!(fetch(2, "c").status.success());
    assert_eq!(holds(&daemon, &assets[2].2).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_a_users_leases_hold_are_capped_and_root_is_exempt() {
    if !root_or_skip() {
        return;
    }
    let http = HttpServer::start().await;
    let assets = serve_assets(&http, 3, 4096, 720);
    let daemon = TestDaemon::start_with(&["--max-leased-bytes-per-uid", "10KiB"]);
    daemon.open_to_everyone();
    let fetch = |i: usize, lease: &str| {
        let (url, _, digest) = &assets[i];
        nobody(
            &daemon,
            &["fetch", url, "--digest", digest, "--lease", lease],
        )
    };
    assert!(fetch(0, "a").status.success());
    assert!(fetch(1, "b").status.success());
    // A second lease on an asset it pins already adds no bytes.
    assert!(fetch(1, "b2").status.success());

    // A third 4 KiB asset would make 12 KiB: refused, cached unpinned.
    let third = fetch(2, "c");
    assert_eq!(third.status.code(), Some(7), "RESOURCE_EXHAUSTED");
    let stderr = String::from_utf8_lossy(&third.stderr);
    for part in [
        "uid 65534 holds 8192 bytes under lease",
        "--max-leased-bytes-per-uid: 10240",
    ] {
        assert!(stderr.contains(part), "{stderr}");
    }
    assert!(daemon.blob_path(&assets[2].2).exists());
    assert!(holds(&daemon, &assets[2].2).await.is_empty());

    // Root pins what it likes; released pins make room again.
    let (url, _, digest) = &assets[2];
    let mut client = daemon.client().await;
    client.fetch(fetch_req(url, digest, "root")).await.unwrap();
    assert_eq!(nobody_releases(&daemon, "a"), 1);
    assert!(fetch(2, "c").status.success());
}

/// `assetctl prewarm` of a manifest of `assets` as nobody, in the background.
fn prewarm_as_nobody(daemon: &TestDaemon, name: &str, assets: &[(String, String)]) -> Child {
    let path = daemon.root.parent().unwrap().join(name);
    let mut toml = String::new();
    for (url, digest) in assets {
        toml += &format!("[[assets]]\nurl = \"{url}\"\ndigest = \"{digest}\"\n\n");
    }
    std::fs::write(&path, toml).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    daemon
        .assetctl_as_nobody()
        .arg("prewarm")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv assetctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_queued_prewarm_assets_are_capped_and_root_is_exempt() {
    if !root_or_skip() {
        return;
    }
    let http = HttpServer::start().await;
    let daemon = TestDaemon::start_with(&["--max-prewarm-per-uid", "2", "--stall-timeout", "60s"]);
    daemon.open_to_everyone();
    // Two assets whose source never sends a byte: they stay running.
    let hung: Vec<(String, String)> = (0..2)
        .map(|i| {
            let body = random_bytes(4096, 720 + i);
            let reply = Reply::Stall {
                body: body.clone(),
                after: 0,
            };
            (http.route(&format!("/hang/{i}"), reply), digest_of(&body))
        })
        .collect();
    let mut running = prewarm_as_nobody(&daemon, "hung.toml", &hung);
    wait_until(Duration::from_secs(10), "both prewarms start", || {
        (0..2).all(|i| http.requests_to(&format!("/hang/{i}")) > 0)
    })
    .await;

    // One more asset would be three: refused up front, naming the numbers.
    let assets = serve_assets(&http, 1, 4096, 730);
    let more = [(assets[0].0.clone(), assets[0].2.clone())];
    let out = prewarm_as_nobody(&daemon, "more.toml", &more)
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "RESOURCE_EXHAUSTED");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in ["uid 65534 has 2 prewarm assets", "1 more", "cap of 2"] {
        assert!(stderr.contains(part), "{stderr}");
    }
    assert_eq!(http.requests_to("/asset/730/0"), 0, "nothing was fetched");

    // Root is exempt.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_assetctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("prewarm")
        .arg(daemon.root.parent().unwrap().join("more.toml"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(daemon.blob_path(&assets[0].2).exists());
    running.kill().ok();
    running.wait().ok();
}
