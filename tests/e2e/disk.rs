//! Disk space: a small tmpfs as the store's file system fills up.

use std::path::{Path, PathBuf};
use std::process::Command;

use assetd::proto::FetchRequest;
use tonic::Code;

use crate::common::http::{HttpServer, Reply};
use crate::common::{TestDaemon, assert_status, digest_of, random_bytes};

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
