//! A store that others could plant things in (issue 10, finding 3): the
//! daemon refuses such folders at start, never follows a link in its store,
//! quarantines what is not a blob, and sets its modes whatever the umask.
//!
//! These are conditions of the daemon's start, set up by its operator's
//! peers, so they run as the daemon's own user; the few that need root
//! (another owner, a mount) say SKIPPED otherwise.

use std::fs;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use assetd::proto::{FetchRequest, ListRequest, StatRequest, VerifyRequest};
use tonic::Code;

use crate::common::http::{HttpServer, Reply};
use crate::common::{TestDaemon, assert_status, connect, daemon_command, digest_of, listed};

const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const ONES: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const TWOS: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const THREES: &str = "3333333333333333333333333333333333333333333333333333333333333333";

fn needs_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED: needs root");
    }
    root
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A root with the store's folders made by hand, as an operator (or an
/// attacker) might have left them.
fn layout(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for sub in ["", "blobs", "blobs/sha256", "ingest", "quarantine"] {
        let path = root.join(sub);
        fs::create_dir_all(&path).unwrap();
        set_mode(&path, 0o755);
    }
    set_mode(&root.join("ingest"), 0o700);
    set_mode(&root.join("quarantine"), 0o700);
    root
}

/// Starts the daemon on `root` expecting it to refuse: its exit status and
/// log. Fails if it is still running after 20 s.
fn start_refused(root: &Path) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("assetd.log");
    let socket = dir.path().join("assetd.sock");
    let mut child = daemon_command(root, &socket, &[], &log).spawn().unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20));
    let log = fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("assetd started on an unsafe root:\n{log}"));
    (status, log)
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[track_caller]
fn assert_refused(root: &Path, parts: &[&str]) {
    let (status, log) = start_refused(root);
    assert!(!status.success(), "should exit nonzero:\n{log}");
    for part in parts {
        assert!(log.contains(part), "log should contain {part:?}:\n{log}");
    }
}

/// Returns once the daemon has opened its store: the socket answers from
/// bind on, calls only after the store is open.
async fn opened(daemon: &TestDaemon) {
    listed(daemon, ListRequest::default()).await;
}

/// Names of the entries in `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The one entry in `quarantine/` whose name starts with `hex`.
fn quarantined(root: &Path, hex: &str) -> PathBuf {
    let found: Vec<String> = names(&root.join("quarantine"))
        .into_iter()
        .filter(|n| n.starts_with(hex))
        .collect();
    assert_eq!(found.len(), 1, "one quarantined {hex}: {found:?}");
    root.join("quarantine").join(&found[0])
}

#[test]
fn a_root_writable_by_others_is_refused_naming_the_path_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    set_mode(&root, 0o777);
    let shown = root.display().to_string();
    assert_refused(&root, &[&shown, "0777", &format!("chmod 755 {shown}")]);
    assert_eq!(names(&root), Vec::<String>::new(), "nothing made in it");

    // The same for a store folder that group may write in.
    let root = layout(&dir.path().join("second"));
    let blobs = root.join("blobs/sha256");
    set_mode(&blobs, 0o775);
    let shown = blobs.display().to_string();
    assert_refused(&root, &[&shown, "0775", &format!("chmod 755 {shown}")]);
    let ingest = root.join("ingest");
    set_mode(&blobs, 0o755);
    set_mode(&ingest, 0o733);
    let shown = ingest.display().to_string();
    assert_refused(&root, &[&shown, "0733", &format!("chmod 700 {shown}")]);
}

#[test]
fn a_root_owned_by_another_user_is_refused() {
    if !needs_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = layout(dir.path());
    let nobody = Some(nix::unistd::Uid::from_raw(65534));
    nix::unistd::chown(&root.join("quarantine"), nobody, None).unwrap();
    let shown = root.join("quarantine").display().to_string();
    assert_refused(
        &root,
        &[&shown, "owned by uid 65534", &format!("chown 0 {shown}")],
    );
}

#[test]
fn a_symlinked_ingest_is_refused_and_its_target_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = layout(dir.path());
    let victim = dir.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("precious.txt"), b"keep me").unwrap();
    fs::create_dir(victim.join("sub")).unwrap();
    fs::remove_dir(root.join("ingest")).unwrap();
    std::os::unix::fs::symlink(&victim, root.join("ingest")).unwrap();

    let shown = root.join("ingest").display().to_string();
    assert_refused(&root, &[&shown, "symbolic link", "rm "]);
    assert_eq!(names(&victim), vec!["precious.txt", "sub"]);
    assert!(fs::read(victim.join("precious.txt")).unwrap() == b"keep me");
    assert!(
        fs::symlink_metadata(root.join("ingest"))
            .unwrap()
            .is_symlink()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_folders_and_strays_in_blobs_are_quarantined_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let root = layout(dir.path());
    let secret = dir.path().join("secret.txt");
    fs::write(&secret, b"the node's secret").unwrap();
    set_mode(&secret, 0o600);
    let blobs = root.join("blobs/sha256");
    // Named by the secret's own digest, and by another: neither is served.
    let secret_digest = digest_of(b"the node's secret");
    let secret_hex = secret_digest.strip_prefix("sha256:").unwrap();
    std::os::unix::fs::symlink(&secret, blobs.join(secret_hex)).unwrap();
    std::os::unix::fs::symlink(&secret, blobs.join(ZEROS)).unwrap();
    fs::create_dir(blobs.join(ONES)).unwrap();
    fs::write(blobs.join("stray.txt"), b"not a digest").unwrap();

    let daemon = TestDaemon::start_at(&root, &[]);
    let mut client = daemon.client().await;
    for hex in [secret_hex, ZEROS, ONES] {
        let digest = format!("sha256:{hex}");
        assert_status(
            client.stat(StatRequest { digest }).await,
            Code::NotFound,
            &[hex],
        );
    }
    // A fetch is a miss, not a hit with the secret's path.
    let http = HttpServer::start().await;
    let url = http.route("/other", Reply::Body(b"other bytes".to_vec()));
    let fetched = client
        .fetch(FetchRequest {
            url,
            digest: secret_digest.clone(),
            ..Default::default()
        })
        .await;
    assert_status(fetched, Code::DataLoss, &[&secret_digest]);

    assert_eq!(names(&blobs), Vec::<String>::new(), "blobs/ holds nothing");
    let link = quarantined(&root, secret_hex);
    assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(
        fs::symlink_metadata(quarantined(&root, ZEROS))
            .unwrap()
            .is_symlink()
    );
    assert!(
        fs::symlink_metadata(quarantined(&root, ONES))
            .unwrap()
            .is_dir()
    );
    quarantined(&root, "stray.txt");
    assert!(fs::read(&secret).unwrap() == b"the node's secret");
    assert_eq!(mode(&secret), 0o600, "the secret untouched");
    assert!(daemon.log().contains("quarantined"), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_named_as_a_digest_stalls_neither_start_nor_verify() {
    let dir = tempfile::tempdir().unwrap();
    let root = layout(dir.path());
    let blobs = root.join("blobs/sha256");
    let fifo = nix::sys::stat::Mode::from_bits_truncate(0o644);
    nix::unistd::mkfifo(&blobs.join(TWOS), fifo).unwrap();

    // Start would hang reading it; it is quarantined instead.
    let daemon = TestDaemon::start_at(&root, &[]);
    opened(&daemon).await;
    assert!(
        fs::symlink_metadata(quarantined(&root, TWOS))
            .unwrap()
            .file_type()
            .is_fifo()
    );

    // Planted while the daemon runs: Verify refuses it, promptly.
    nix::unistd::mkfifo(&blobs.join(THREES), fifo).unwrap();
    let mut client = daemon.client().await;
    let verify = client.verify(VerifyRequest {
        digest: format!("sha256:{THREES}"),
    });
    let report = tokio::time::timeout(Duration::from_secs(10), verify)
        .await
        .expect("Verify returns promptly")
        .unwrap()
        .into_inner();
    assert_eq!(report.corrupt.len(), 1, "{report:?}");
    assert!(report.corrupt[0].actual.contains("fifo"), "{report:?}");
    let moved = quarantined(&root, THREES);
    assert_eq!(
        report.corrupt[0].quarantined_path,
        moved.display().to_string()
    );
    assert!(fs::symlink_metadata(&moved).unwrap().file_type().is_fifo());
    assert_eq!(names(&blobs), Vec::<String>::new());
}

/// The daemon started by a shell under `umask 077`; killed on drop.
struct Umasked {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Umasked {
    fn start(root: &Path) -> Umasked {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("assetd.sock");
        let log = fs::File::create(dir.path().join("assetd.log")).unwrap();
        let child = Command::new("sh")
            .args(["-c", "umask 077 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_assetd"))
            .arg("--root")
            .arg(root)
            .arg("--socket")
            .arg(&socket)
            .args(crate::common::ALLOW_LOOPBACK)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let started = Umasked {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&started.socket).is_err() {
            assert!(Instant::now() < deadline, "assetd did not start in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        started
    }
}

impl Drop for Umasked {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_umask_077_blobs_stay_readable_and_metadata_private() {
    let http = HttpServer::start().await;
    let body = b"an asset every sandbox reads".to_vec();
    let url = http.route("/a", Reply::Body(body.clone()));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let daemon = Umasked::start(&root);
    let reply = connect(&daemon.socket)
        .await
        .fetch(FetchRequest {
            url,
            digest: digest_of(&body),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mode(Path::new(&reply.path)), 0o444, "the blob");
    for (path, want) in [
        ("", 0o755),
        ("blobs", 0o755),
        ("blobs/sha256", 0o755),
        ("ingest", 0o700),
        ("quarantine", 0o700),
        ("meta.redb", 0o600),
        ("lock", 0o600),
    ] {
        assert_eq!(
            mode(&root.join(path)),
            want,
            "{path}: {:o}",
            mode(&root.join(path))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_made_private_at_start_and_so_is_a_damaged_copy() {
    let mut daemon = TestDaemon::start();
    let meta = daemon.root.join("meta.redb");
    daemon.stop();
    set_mode(&meta, 0o644);
    daemon.start_again(&[]);
    opened(&daemon).await;
    assert_eq!(mode(&meta), 0o600);

    daemon.stop();
    fs::write(&meta, vec![0x5a; 8192]).unwrap();
    set_mode(&meta, 0o644);
    daemon.start_again(&[]);
    opened(&daemon).await;
    assert_eq!(mode(&meta), 0o600);
    let damaged: Vec<String> = names(&daemon.root)
        .into_iter()
        .filter(|n| n.starts_with("meta.redb.damaged-"))
        .collect();
    assert_eq!(damaged.len(), 1, "{:?}", names(&daemon.root));
    assert_eq!(mode(&daemon.root.join(&damaged[0])), 0o600);
}

/// A tmpfs mounted on `path`, unmounted on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn an_ingest_on_another_file_system_is_refused_at_start() {
    if !needs_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = layout(dir.path());
    let ingest = root.join("ingest");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(&ingest)
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs failed");
    let _mount = Mount(ingest.clone());
    let shown = ingest.display().to_string();
    assert_refused(&root, &[&shown, "another file system"]);
}
