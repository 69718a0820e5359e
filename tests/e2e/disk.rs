//! Disk space: a small tmpfs as the store's file system fills up.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use assetd::proto::{
    DeleteRequest, FetchRequest, GcRequest, ListRequest, ReleaseLeaseRequest, StatRequest,
};
use tonic::Code;

use crate::common::http::{Gate, HttpServer, Reply};
use crate::common::{
    TestDaemon, assert_status, digest_of, fetch_req, listed, random_bytes, wait_until,
};

/// A tmpfs of a few MiB, unmounted on drop. Mounting needs root (CI runs as
/// root); elsewhere the tests say they were skipped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u32) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs failed");
        Some(Tmpfs { dir })
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn request(url: &str, body: &[u8]) -> FetchRequest {
    FetchRequest {
        url: url.to_owned(),
        digest: digest_of(body),
        ..Default::default()
    }
}

async fn assert_still_serving(daemon: &TestDaemon, http: &HttpServer) {
    let small = random_bytes(1 << 20, 69);
    let url = http.route("/small", Reply::Body(small.clone()));
    let reply = daemon
        .client()
        .await
        .fetch(request(&url, &small))
        .await
        .unwrap();
    assert!(std::fs::read(reply.into_inner().path).unwrap() == small);
}

fn ingest_is_empty(root: &Path) -> bool {
    std::fs::read_dir(root.join("ingest"))
        .unwrap()
        .next()
        .is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_mid_transfer_is_resource_exhausted_and_leaves_nothing() {
    let Some(fs) = Tmpfs::mount(16) else { return };
    let http = HttpServer::start().await;
    let big = random_bytes(32 << 20, 61);
    let url = http.route("/big", Reply::NoLength(big.clone()));
    let daemon = TestDaemon::start_at(&fs.root(), &["--reserve-free", "0"]);
    let result = daemon.client().await.fetch(request(&url, &big)).await;
    assert_status(
        result,
        Code::ResourceExhausted,
        &["No space left on device"],
    );
    assert!(ingest_is_empty(&fs.root()));
    assert!(daemon.blobs().is_empty());
    assert_still_serving(&daemon, &http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_refuses_a_known_size_before_downloading() {
    let Some(fs) = Tmpfs::mount(32) else { return };
    let http = HttpServer::start().await;
    let body = random_bytes(24 << 20, 62);
    let url = http.route("/known", Reply::Body(body.clone()));
    let daemon = TestDaemon::start_at(&fs.root(), &["--reserve-free", "16MiB"]);
    let req = FetchRequest {
        size: body.len() as u64,
        ..request(&url, &body)
    };
    let result = daemon.client().await.fetch(req).await;
    assert_status(
        result,
        Code::ResourceExhausted,
        &[
            "not enough disk space",
            "25165824 bytes wanted",
            "16777216 kept free",
        ],
    );
    assert_eq!(http.requests(), 0, "refused before any request");
    assert!(ingest_is_empty(&fs.root()));
    assert_still_serving(&daemon, &http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_stops_a_growing_transfer_of_unknown_size() {
    let Some(fs) = Tmpfs::mount(32) else { return };
    let http = HttpServer::start().await;
    let body = random_bytes(24 << 20, 63);
    let url = http.route("/growing", Reply::NoLength(body.clone()));
    let daemon = TestDaemon::start_at(&fs.root(), &["--reserve-free", "16MiB"]);
    let result = daemon.client().await.fetch(request(&url, &body)).await;
    assert_status(
        result,
        Code::ResourceExhausted,
        &["not enough disk space", "16777216 kept free"],
    );
    assert!(ingest_is_empty(&fs.root()));
    assert!(daemon.blobs().is_empty());
    assert_still_serving(&daemon, &http).await;
}

/// Writes `path` (on the tmpfs, outside the store) until `leave` bytes
/// stay free, rounded up to whole pages: tmpfs counts data pages only.
fn fill_leaving(path: &Path, leave: u64) {
    let stat = nix::sys::statvfs::statvfs(path.parent().expect("parent")).expect("statvfs");
    let page = stat.fragment_size() as u64;
    let free = stat.blocks_available() as u64 * page;
    let leave = leave.div_ceil(page) * page;
    let mut left = free.checked_sub(leave).expect("room to leave");
    let mut file = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0xa5u8; 1 << 20];
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).expect("write filler");
        left -= n as u64;
    }
    file.sync_all().expect("fsync filler");
}

fn leases(asset: &assetd::proto::Asset) -> Vec<String> {
    asset.leases.iter().map(|l| l.lease.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_metadata_calls_until_space_is_freed_then_all_work_without_restart() {
    let Some(fs) = Tmpfs::mount(16) else { return };
    let http = HttpServer::start().await;
    let gate = Gate::default();
    let first = random_bytes(256 << 10, 64);
    let first_url = http.route("/first", Reply::held(&gate, Reply::Body(first.clone())));
    let second = random_bytes(512 << 10, 65);
    let second_url = http.route("/second", Reply::Body(second.clone()));
    let (first_digest, second_digest) = (digest_of(&first), digest_of(&second));
    let mut daemon = TestDaemon::start_at(&fs.root(), &["--reserve-free", "0"]);
    let mut client = daemon.client().await;

    // The disk fills while a leased fetch waits for its bytes: they still
    // fit, so the blob commits, but its record and its pin find no room.
    let fetch = tokio::spawn({
        let mut client = client.clone();
        let req = fetch_req(&first_url, &first_digest, "sandbox-1");
        async move { client.fetch(req).await }
    });
    wait_until(
        Duration::from_secs(10),
        "the fetch reached the server",
        || http.requests_to("/first") == 1,
    )
    .await;
    let filler = fs.dir.path().join("filler");
    fill_leaving(&filler, first.len() as u64);
    gate.open();
    let result = fetch.await.expect("fetch task");
    assert_status(
        result,
        Code::ResourceExhausted,
        &["metadata store", "No space left on device"],
    );
    assert!(ingest_is_empty(&fs.root()), "ingest/ holds temp files");

    // While full: metadata-dependent calls say the disk is full (never
    // INTERNAL); a hit without a lease, stat and list answer from memory.
    let release = client
        .release_lease(ReleaseLeaseRequest {
            lease: "sandbox-1".into(),
        })
        .await;
    assert_status(
        release,
        Code::ResourceExhausted,
        &["No space left on device"],
    );
    let hit = client
        .fetch(fetch_req(&first_url, &first_digest, ""))
        .await
        .expect("a hit without a lease works on a full disk")
        .into_inner();
    assert!(hit.cache_hit);
    assert_eq!(std::fs::read(&hit.path).expect("read blob"), first);
    // Health says so, for the service whose calls fail.
    let health = |want: ServingStatus| {
        let socket = daemon.socket.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                let status = HealthClient::new(crate::common::channel(&socket).await)
                    .check(HealthCheckRequest {
                        service: "assetd.v1.Assets".into(),
                    })
                    .await
                    .expect("health check")
                    .into_inner()
                    .status;
                if status == want as i32 {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "health is not {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    health(ServingStatus::NotServing).await;

    // Space comes back: without a restart every call works again.
    std::fs::remove_file(&filler).expect("remove filler");
    let fetched = client
        .fetch(fetch_req(&second_url, &second_digest, "sandbox-2"))
        .await
        .expect("a leased fetch after space was freed")
        .into_inner();
    assert_eq!(std::fs::read(&fetched.path).expect("read blob"), second);
    let stat = client
        .stat(StatRequest {
            digest: second_digest.clone(),
        })
        .await
        .expect("stat")
        .into_inner()
        .asset
        .expect("an asset");
    assert_eq!(leases(&stat), vec!["sandbox-2"]);
    health(ServingStatus::Serving).await;
    let all = listed(&daemon, ListRequest::default()).await;
    assert!(
        all.contains(&first_digest) && all.contains(&second_digest),
        "list shows both assets: {all:?}"
    );
    let deleted = client
        .delete(DeleteRequest {
            digest: first_digest.clone(),
            force: false,
        })
        .await
        .expect("rm")
        .into_inner();
    assert_eq!(deleted.size, first.len() as u64);
    assert!(
        !daemon.blob_path(&first_digest).exists(),
        "rm removed the blob"
    );
    client.gc(GcRequest { dry_run: false }).await.expect("gc");
    let released = client
        .release_lease(ReleaseLeaseRequest {
            lease: "sandbox-2".into(),
        })
        .await
        .expect("release")
        .into_inner();
    assert_eq!(released.released, 1);
    client
        .fetch(fetch_req(&second_url, &second_digest, "kept"))
        .await
        .expect("pin again");
    assert!(ingest_is_empty(&fs.root()), "ingest/ holds temp files");

    // What memory held reached meta.redb: a restart sees the same.
    daemon.restart(&["--reserve-free", "0"]);
    client = daemon.client().await;
    let all = listed(&daemon, ListRequest::default()).await;
    assert_eq!(all, vec![second_digest.clone()]);
    let stat = client
        .stat(StatRequest {
            digest: second_digest,
        })
        .await
        .expect("stat after restart")
        .into_inner()
        .asset
        .expect("an asset");
    assert_eq!(leases(&stat), vec!["kept"]);
}
