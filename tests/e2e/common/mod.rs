//! Test harness: the real daemon in a temp dir, a fault-injecting HTTP
//! server, and small helpers.

pub mod gcs;
pub mod http;
pub mod peer;
pub mod proxy;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assetd::proto::assets_client::AssetsClient;
use assetd::proto::{FetchRequest, ListRequest};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};

use crate::common::http::{HttpServer, Reply};

/// The real `assetd` binary on its own root and socket in a temp dir.
/// Stopped on drop; its log is printed when the test failed.
pub struct TestDaemon {
    /// Holds the root, socket and log; removed on drop.
    _dir: TempDir,
    pub root: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    env: Vec<(String, String)>,
    /// Flags every start gets before the test's own: [`ALLOW_LOOPBACK`]
    /// unless started with [`TestDaemon::start_strict`].
    base_args: Vec<String>,
}

/// What every [`TestDaemon`] gets unless strict: the tests' peers all
/// listen on 127.0.0.1, which the source policy refuses by default.
pub const ALLOW_LOOPBACK: [&str; 2] = ["--allow-source", "127.0.0.0/8"];

impl TestDaemon {
    pub fn start() -> TestDaemon {
        TestDaemon::start_with(&[])
    }

    /// Starts with extra flags; waits until the socket answers.
    pub fn start_with(args: &[&str]) -> TestDaemon {
        TestDaemon::start_with_env(args, &[])
    }

    /// Starts with extra flags and environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> TestDaemon {
        TestDaemon::start_full(None, args, env)
    }

    /// Starts with its store at `root` (say, a small file system).
    pub fn start_at(root: &Path, args: &[&str]) -> TestDaemon {
        TestDaemon::start_full(Some(root), args, &[])
    }

    /// Starts without [`ALLOW_LOOPBACK`]: the source policy's defaults and
    /// `args` only.
    pub fn start_strict(args: &[&str]) -> TestDaemon {
        TestDaemon::start_base(None, &[], args, &[])
    }

    /// [`TestDaemon::start_strict`] with environment variables.
    pub fn start_strict_with_env(args: &[&str], env: &[(&str, &str)]) -> TestDaemon {
        TestDaemon::start_base(None, &[], args, env)
    }

    fn start_full(root: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> TestDaemon {
        TestDaemon::start_base(root, &ALLOW_LOOPBACK, args, env)
    }

    fn start_base(
        root: Option<&Path>,
        base_args: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> TestDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = root.map_or_else(|| dir.path().join("root"), Path::to_owned);
        let socket = dir.path().join("run").join("assetd.sock");
        let mut daemon = TestDaemon {
            root,
            socket,
            log: dir.path().join("assetd.log"),
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            base_args: base_args.iter().map(|a| a.to_string()).collect(),
            _dir: dir,
        };
        daemon.spawn(args);
        daemon
    }

    /// Starts the daemon again on the same root and socket.
    pub fn restart(&mut self, args: &[&str]) {
        self.stop();
        self.spawn(args);
    }

    fn spawn(&mut self, args: &[&str]) {
        let logged = fs::metadata(&self.log).map_or(0, |m| m.len());
        let mut all: Vec<&str> = self.base_args.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        let child = daemon_command(&self.root, &self.socket, &all, &self.log)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .expect("spawn assetd");
        self.child = Some(child);
        self.wait_ready(logged);
    }

    /// Waits until this start's log (from byte `logged`) says it serves:
    /// the socket is bound before the store opens, so a connect alone
    /// would return while the store is still being opened.
    fn wait_ready(&mut self, logged: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("assetd exited early ({status}):\n{}", self.log());
            }
            let log = fs::read(&self.log).unwrap_or_default();
            let since = log.get(logged as usize..).unwrap_or_default();
            let serving = String::from_utf8_lossy(since).contains("serving");
            if serving && std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("assetd did not start in 20 s:\n{}", self.log());
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    /// Lets every user reach the socket (mode 0666, its folders searchable),
    /// for tests that call as another uid.
    pub fn open_to_everyone(&self) {
        use std::os::unix::fs::PermissionsExt as _;
        let run_dir = self.socket.parent().expect("socket folder");
        let dir = run_dir.parent().expect("temp dir");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o711)).expect("chmod dir");
        fs::set_permissions(&self.socket, fs::Permissions::from_mode(0o666)).expect("chmod socket");
    }

    /// `assetctl --socket <this daemon's socket>`, to be run as uid 65534
    /// (see [`as_nobody`]); add the rest of the arguments.
    pub fn assetctl_as_nobody(&self) -> Command {
        let mut cmd = as_nobody(env!("CARGO_BIN_EXE_assetctl"));
        cmd.arg("--socket").arg(&self.socket);
        cmd
    }

    /// Sends SIGTERM without waiting for the daemon to exit.
    pub fn sigterm(&self) {
        let child = self.child.as_ref().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
    }

    /// Waits up to `within` for the daemon to exit by itself; its status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "assetd still running after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL, as a crash would, and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again after [`TestDaemon::kill9`] or [`TestDaemon::stop`].
    pub fn start_again(&mut self, args: &[&str]) {
        self.spawn(args);
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The daemon's peak resident memory so far, in bytes (VmHWM).
    /// Starts a fetch of `url` in the background (the task ends with it);
    /// its result is not looked at.
    pub async fn fetch_in_background(
        &self,
        url: &str,
        digest: &str,
    ) -> tokio::task::JoinHandle<()> {
        let mut client = self.client().await;
        let request = fetch_req(url, digest, "");
        tokio::spawn(async move {
            let _ = client.fetch(request).await;
        })
    }

    /// The most bytes a partial download's sidecar in `ingest/` says are
    /// durable (its prefix and pieces), or 0.
    pub fn durable_partial_bytes(&self) -> u64 {
        let Ok(entries) = fs::read_dir(self.root.join("ingest")) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
            .map(|v| {
                let pieces: u64 = v["pieces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| Some(p[1].as_u64()? - p[0].as_u64()?))
                    .sum();
                v["done"].as_u64().unwrap_or(0) + pieces
            })
            .max()
            .unwrap_or(0)
    }

    /// How many file descriptors the daemon has open now.
    pub fn open_fds(&self) -> usize {
        let pid = self.child.as_ref().expect("running").id();
        fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("proc fd")
            .count()
    }

    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("VmHWM kB");
        kib * 1024
    }

    pub async fn client(&self) -> AssetsClient<Channel> {
        connect(&self.socket).await
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// File names in `blobs/sha256/`, sorted.
    pub fn blobs(&self) -> Vec<String> {
        names(&self.root.join("blobs").join("sha256"))
    }

    /// Where the store keeps `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.root.join("blobs").join("sha256").join(hex)
    }

    /// The digests of the files in `blobs/sha256/`.
    pub fn blob_digests(&self) -> BTreeSet<String> {
        self.blobs()
            .into_iter()
            .map(|hex| format!("sha256:{hex}"))
            .collect()
    }

    /// Asserts that every file in `blobs/` holds the bytes its name says and
    /// that `List` shows exactly those files; `context` prefixes failures.
    pub async fn assert_consistent(&self, context: &str) {
        for hex in self.blobs() {
            let bytes = fs::read(self.root.join("blobs/sha256").join(&hex)).expect("read blob");
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                hex,
                "{context}: a blob does not match its name"
            );
        }
        let all = ListRequest {
            page_size: 1000,
            ..Default::default()
        };
        let listed: BTreeSet<String> = listed(self, all).await.into_iter().collect();
        assert_eq!(
            listed,
            self.blob_digests(),
            "{context}: List differs from disk"
        );
    }

    /// File names in `ingest/`, sorted.
    pub fn ingest(&self) -> Vec<String> {
        names(&self.root.join("ingest"))
    }

    /// Asserts that nothing is cached and no temp file is left.
    pub fn assert_empty(&self) {
        assert_eq!(self.blobs(), Vec::<String>::new(), "blobs/ should be empty");
        assert_eq!(
            self.ingest(),
            Vec::<String>::new(),
            "ingest/ should be empty"
        );
    }

    /// Polls until `ingest/` is empty, for up to `within`.
    pub async fn wait_ingest_empty(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.ingest().is_empty() {
            assert!(
                Instant::now() < deadline,
                "ingest/ not empty after {within:?}: {:?}",
                self.ingest()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- assetd log ----\n{}", self.log());
        }
    }
}

/// The `assetd` command for a root and socket, logging to `log`.
pub fn daemon_command(root: &Path, socket: &Path, args: &[&str], log: &Path) -> Command {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_assetd"));
    cmd.arg("--root")
        .arg(root)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("STORAGE_EMULATOR_HOST")
        .env_remove("ASSETD_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log);
    cmd
}

pub async fn connect(socket: &Path) -> AssetsClient<Channel> {
    AssetsClient::new(channel(socket).await)
}

/// A gRPC channel to the daemon's socket, for any of its services.
pub async fn channel(socket: &Path) -> Channel {
    Endpoint::from_shared(format!("unix://{}", socket.display()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to assetd")
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// A small pseudo-random generator (xorshift), the same sequence for the
/// same seed: for test data and for random choices and pauses.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// `program` to be run as uid and gid 65534 (nobody), with no other groups.
pub fn as_nobody(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program);
    cmd
}

/// A python3 that uid 65534 may run (a pyenv shim under /root is not).
pub fn python() -> &'static str {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("python3")
}

/// True when the tests run as root (needed to run callers as another uid);
/// otherwise says the test is skipped.
pub fn root_or_skip() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED: needs root (runs callers as another uid)");
    }
    root
}

/// `len` pseudo-random bytes, different for each `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Serves `n` assets of `size` bytes at `/asset/SEED/I`; returns (url, bytes, digest).
pub fn serve_assets(
    http: &HttpServer,
    n: usize,
    size: usize,
    seed: u64,
) -> Vec<(String, Vec<u8>, String)> {
    (0..n)
        .map(|i| {
            let body = random_bytes(size, seed + i as u64);
            let url = http.route(&format!("/asset/{seed}/{i}"), Reply::Body(body.clone()));
            let digest = digest_of(&body);
            (url, body, digest)
        })
        .collect()
}

/// A fetch of `digest` from `url`, pinned for `lease` unless it is empty.
pub fn fetch_req(url: &str, digest: &str, lease: &str) -> FetchRequest {
    FetchRequest {
        url: url.to_owned(),
        digest: digest.to_owned(),
        lease: lease.to_owned(),
        ..Default::default()
    }
}

/// The digests `List` answers `req` with.
pub async fn listed(daemon: &TestDaemon, req: ListRequest) -> Vec<String> {
    let assets = daemon
        .client()
        .await
        .list(req)
        .await
        .expect("List")
        .into_inner()
        .assets;
    assets.into_iter().map(|a| a.digest).collect()
}

/// Polls `done` every 10 ms until it holds; fails naming `what` after `within`.
pub async fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP listener on 127.0.0.1 that counts the connections made to it
/// (and closes them): for asserting that nothing was connected to.
pub struct AcceptCounter {
    pub port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AcceptCounter {
    pub async fn start() -> AcceptCounter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        AcceptCounter {
            port,
            accepted,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for AcceptCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A CA certificate that parses (for `--ca-file`), whose key was thrown
/// away: it vouches for nothing.
pub const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIB2jCCAX+gAwIBAgIUGcHEoTSjdgVVJeFdPj4tHECtECYwCgYIKoZIzj0EAwIw
OTE3MDUGA1UEAwwuYXNzZXRkIHRlc3QgQ0EgKGZpeHR1cmU7IGl0cyBrZXkgaXMg
ZGlzY2FyZGVkKTAgFw0yNjExMzAwNzI1NDBaGA8yMTI2MTEwNjA3MjU0MFowOTE3
MDUGA1UEAwwuYXNzZXRkIHRlc3QgQ0EgKGZpeHR1cmU7IGl0cyBrZXkgaXMgZGlz
Y2FyZGVkKTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABE543MaPA6EdXk0wnPBe
K6HWRZN8I9Y3BxcFOF2Bsm1kbNdJYO6MWAx6a6Ewx2lGdFKREblBevYmJ77IUpzf
+aSjYzBhMB0GA1UdDgQWBBTPoWw3K9kJFHXlSgD+Qe7VvI9xvjAfBgNVHSMEGDAW
gBTPoWw3K9kJFHXlSgD+Qe7VvI9xvjAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB
/wQEAwIBBjAKBggqhkjOPQQDAgNJADBGAiEAi4cTToSPYnaXAqsBAiB8MWmf7VRx
5AOMLtiqjMFmQl8CIQC0w7XHxPddKNYP3YjWud0vMfxzV9UsLMx6yqS0rV/nEA==
-----END CERTIFICATE-----
";

/// A digest that matches nothing the tests serve.
pub const WRONG_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Asserts a gRPC error's code and that its message contains each of `parts`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    parts: &[&str],
) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "message: {}", status.message());
    for part in parts {
        assert!(
            status.message().contains(part),
            "message {:?} should contain {part:?}",
            status.message()
        );
    }
}
