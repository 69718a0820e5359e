//! Proxies and private CAs against real peers from Debian, on 127.0.0.1:
//! tinyproxy as the forward proxy (its log tells what went through it) and
//! nginx serving TLS with a certificate from a CA the test makes with
//! openssl. Without the tools, the tests say "SKIPPED" (as root they fail:
//! `scripts/test` installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tonic::Code;

use crate::common::gcs::FakeGcs;
use crate::common::http::{HttpServer, Reply};
use crate::common::peer::{Peer, free_port, tool, wait_listening};
use crate::common::{
    TEST_CA_PEM, TestDaemon, WRONG_DIGEST, assert_status, daemon_command, digest_of, fetch_req,
    random_bytes,
};

/// tinyproxy, a real forward proxy (HTTP and CONNECT), on 127.0.0.1.
struct Tinyproxy(Peer);

impl Tinyproxy {
    fn start() -> Option<Tinyproxy> {
        let binary = tool("tinyproxy", "tinyproxy")?;
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = dir.path().join("tinyproxy.log");
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 32\nAllow 127.0.0.1\n\
                 LogLevel Info\nLogFile \"{}\"\n",
                log.display()
            ),
        )
        .expect("write config");
        let child = Command::new(binary)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy");
        let peer = Peer {
            port,
            dir,
            child,
            name: "tinyproxy",
            log,
        };
        wait_listening(port, "tinyproxy", || peer.log());
        Some(Tinyproxy(peer))
    }

    /// The proxy as `HTTP_PROXY` names it by address.
    fn by_ip(&self) -> String {
        format!("http://127.0.0.1:{}", self.0.port)
    }

    /// The proxy as `HTTP_PROXY` names it by name.
    fn by_name(&self) -> String {
        format!("http://localhost:{}", self.0.port)
    }

    /// The requests the proxy took: `GET http://…` or `CONNECT host:port`.
    fn requests(&self) -> Vec<String> {
        self.0
            .log()
            .lines()
            .filter_map(|l| l.split_once("]: Request (file descriptor "))
            .filter_map(|(_, rest)| rest.split_once("): "))
            .map(|(_, request)| request.to_owned())
            .collect()
    }
}

/// The environment a daemon gets for `proxy` (both schemes) and `no_proxy`,
/// overriding the test runner's own.
fn proxy_env<'a>(proxy: &'a str, no_proxy: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("HTTP_PROXY", proxy),
        ("HTTPS_PROXY", proxy),
        ("NO_PROXY", no_proxy),
    ]
}

async fn fetch_ok(daemon: &TestDaemon, url: &str, body: &[u8]) {
    let reply = daemon
        .client()
        .await
        .fetch(fetch_req(url, &digest_of(body), ""))
        .await
        .unwrap_or_else(|e| panic!("fetch {url}: {e:?}"))
        .into_inner();
    assert_eq!(reply.size, body.len() as u64);
    assert_eq!(std::fs::read(&reply.path).expect("read blob"), body);
}

async fn fetch_err(daemon: &TestDaemon, url: &str) -> Result<(), tonic::Status> {
    daemon
        .client()
        .await
        .fetch(fetch_req(url, WRONG_DIGEST, ""))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_goes_through_a_proxy_given_by_address() {
    let Some(proxy) = Tinyproxy::start() else {
        return;
    };
    let http = HttpServer::start().await;
    let body = random_bytes(256 << 10, 501);
    let url = http.route("/via-proxy", Reply::Body(body.clone()));
    let daemon = TestDaemon::start_with_env(&[], &proxy_env(&proxy.by_ip(), ""));
    fetch_ok(&daemon, &url, &body).await;
    assert_eq!(
        proxy.requests(),
        [format!("GET {url} HTTP/1.1")],
        "the request went through the proxy"
    );
    assert!(
        daemon.log().contains(&format!("http: {}/", proxy.by_ip())),
        "the start-up log names the proxy:\n{}",
        daemon.log()
    );
}

/// The proxy's name resolves to loopback, which the source policy refuses
/// for callers: the proxy is the operator's, so that does not apply to it,
/// while the caller's URL is still held to the policy at the URL level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_given_by_name_works_though_loopback_is_refused() {
    let Some(proxy) = Tinyproxy::start() else {
        return;
    };
    let http = HttpServer::start().await;
    let body = random_bytes(256 << 10, 502);
    let url = http.route("/named-proxy", Reply::Body(body.clone()));
    let prefix = format!("http://127.0.0.1:{}/named-proxy", http.port);
    let daemon = TestDaemon::start_strict_with_env(
        &["--allow-source", &prefix],
        &proxy_env(&proxy.by_name(), ""),
    );
    fetch_ok(&daemon, &url, &body).await;
    assert_eq!(proxy.requests(), [format!("GET {url} HTTP/1.1")]);

    // Not allowed: refused before the proxy is asked, by address or by a
    // name the proxy would resolve to its own loopback.
    let other = http.route("/other", Reply::Body(body.clone()));
    let by_name = format!("http://localhost:{}/other", http.port);
    assert_status(
        fetch_err(&daemon, &other).await,
        Code::PermissionDenied,
        &["127.0.0.1 is a loopback address, refused by default"],
    );
    assert_status(
        fetch_err(&daemon, &by_name).await,
        Code::PermissionDenied,
        &[
            "localhost is a loopback address, refused by default; allow it with --allow-source 127.0.0.0/8",
        ],
    );
    assert_eq!(proxy.requests().len(), 1, "the proxy saw neither");
    assert_eq!(http.requests_to("/other"), 0);
    assert_eq!(daemon.blobs().len(), 1);
}

/// `NO_PROXY` sends what it names direct, where the resolver checks every
/// address again: a caller's name for loopback is refused even when it is
/// also the proxy's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_goes_direct_and_direct_names_are_checked() {
    let Some(proxy) = Tinyproxy::start() else {
        return;
    };
    let http = HttpServer::start().await;
    let body = random_bytes(64 << 10, 503);
    let url = http.route("/direct", Reply::Body(body.clone()));
    let prefix = format!("http://127.0.0.1:{}/direct", http.port);
    let daemon = TestDaemon::start_strict_with_env(
        &["--allow-source", &prefix],
        &proxy_env(&proxy.by_name(), "localhost, 127.0.0.1"),
    );
    fetch_ok(&daemon, &url, &body).await;
    assert_eq!(http.requests_to("/direct"), 1);
    let by_name = format!("http://localhost:{}/direct", http.port);
    assert_status(
        fetch_err(&daemon, &by_name).await,
        Code::PermissionDenied,
        &["localhost resolves to", "refused by default"],
    );
    assert_eq!(
        http.requests_to("/direct"),
        1,
        "the name is never connected to"
    );
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gs_goes_through_the_proxy() {
    let Some(proxy) = Tinyproxy::start() else {
        return;
    };
    let body = random_bytes(128 << 10, 504);
    let gcs = FakeGcs::start(&[("proxied", "obj.bin", &body)]);
    let proxy_url = proxy.by_ip();
    let mut env = proxy_env(&proxy_url, "");
    let host = gcs.host();
    env.push(("STORAGE_EMULATOR_HOST", &host));
    let daemon = TestDaemon::start_with_env(&[], &env);
    fetch_ok(&daemon, "gs://proxied/obj.bin", &body).await;
    let requests = proxy.requests();
    let base = format!("GET http://{host}/storage/v1/b/proxied/o/obj.bin");
    assert!(
        requests.iter().any(|r| r.starts_with(&base))
            && requests.iter().any(|r| r.contains("alt=media")),
        "metadata and media through the proxy: {requests:?}"
    );
}

/// Google's credentials library builds its own HTTP clients, which read the
/// proxy variables: the daemon makes `NO_PROXY` cover the metadata server
/// for the whole process, so its token requests never reach the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_requests_never_go_through_the_proxy() {
    let Some(proxy) = Tinyproxy::start() else {
        return;
    };
    if std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").is_some() {
        eprintln!(
            "SKIPPED: needs GOOGLE_APPLICATION_CREDENTIALS unset (the metadata server must be the credentials)"
        );
        return;
    }
    // No gcloud credentials file either: Application Default Credentials
    // fall back to the metadata server.
    let home = tempfile::tempdir().expect("temp dir");
    let home = home.path().to_str().expect("utf-8");
    let proxy_url = proxy.by_ip();
    let mut env = proxy_env(&proxy_url, "localhost");
    env.extend([("HOME", home), ("CLOUDSDK_CONFIG", home)]);
    let daemon = TestDaemon::start_with_env(&[], &env);

    // Started again in place (same pid), with NO_PROXY extended.
    let environ = std::fs::read(format!("/proc/{}/environ", daemon.pid())).expect("environ");
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let want = format!("localhost,{}", assetd::source::proxy::METADATA_NO_PROXY);
    for name in ["NO_PROXY", "no_proxy"] {
        assert!(
            vars.contains(&format!("{name}={want}")),
            "{name} in {vars:?}"
        );
    }

    // Off GCP there is no metadata server: the credentials fail, but the
    // request for them went direct, not to the proxy.
    let started = Instant::now();
    let result = fetch_err(&daemon, "gs://some-bucket/object").await;
    let status = result.expect_err("no credentials off GCP");
    assert!(
        matches!(status.code(), Code::PermissionDenied | Code::Unavailable),
        "{status:?}"
    );
    let requests = proxy.requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.contains("metadata") || r.contains("169.254.")),
        "a metadata request went through the proxy: {requests:?}"
    );
    assert!(requests.is_empty(), "{requests:?}");
    eprintln!(
        "credentials failed in {:?}: {}",
        started.elapsed(),
        status.message()
    );
    daemon.assert_empty();
}

/// A CA made here, and certificates it signs, with the openssl CLI.
struct TestCa {
    dir: TempDir,
}

impl TestCa {
    fn make(openssl: &Path) -> TestCa {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = |args: &[&str]| {
            let out = Command::new(openssl)
                .args(args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=assetd test private CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat());
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat());
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write extensions");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        TestCa { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// nginx serving `files` over TLS on 127.0.0.1 with `ca`'s server
/// certificate (for `localhost` and `127.0.0.1`).
struct Nginx(Peer);

impl Nginx {
    fn start(ca: &TestCa, files: &[(&str, &[u8])]) -> Option<Nginx> {
        let certs = format!(
            "ssl_certificate {};\nssl_certificate_key {};",
            ca.path("server.pem").display(),
            ca.path("server.key").display()
        );
        crate::common::peer::nginx(files, " ssl", &certs).map(Nginx)
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.0.port)
    }

    /// Requests nginx answered (its access log).
    fn served(&self) -> usize {
        self.0.access_log().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_works_only_with_ca_file() {
    let Some(openssl) = tool("openssl", "openssl") else {
        return;
    };
    let ca = TestCa::make(&openssl);
    let body = random_bytes(512 << 10, 505);
    let Some(nginx) = Nginx::start(&ca, &[("kernel.img", &body)]) else {
        return;
    };
    let url = nginx.url("/kernel.img");

    let mut daemon = TestDaemon::start();
    let started = Instant::now();
    let refused = daemon
        .client()
        .await
        .fetch(fetch_req(&url, &digest_of(&body), ""))
        .await;
    assert_status(
        refused,
        Code::Unavailable,
        &["invalid peer certificate", "UnknownIssuer"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a certificate error is not retried: {:?}",
        started.elapsed()
    );
    assert_eq!(nginx.served(), 0, "no request got past the handshake");
    daemon.assert_empty();

    let ca_file = ca.path("ca.pem");
    daemon.restart(&["--ca-file", ca_file.to_str().expect("utf-8")]);
    fetch_ok(&daemon, &url, &body).await;
    assert_eq!(nginx.served(), 1);
    assert!(
        daemon.log().contains("(1 certificates)"),
        "the start-up log names the CA file:\n{}",
        daemon.log()
    );
}

/// HTTPS through the proxy is a CONNECT tunnel: the proxy resolves the
/// name, and the certificate is still checked end to end (with --ca-file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_through_the_proxy_is_a_tunnel_checked_end_to_end() {
    let Some(openssl) = tool("openssl", "openssl") else {
        return;
    };
    let Some(proxy) = Tinyproxy::start() else {
        return;
    };
    let ca = TestCa::make(&openssl);
    let body = random_bytes(256 << 10, 506);
    let Some(nginx) = Nginx::start(&ca, &[("rootfs.img", &body)]) else {
        return;
    };
    let url = nginx.url("/rootfs.img");
    let ca_file = ca.path("ca.pem");
    let daemon = TestDaemon::start_with_env(
        &["--ca-file", ca_file.to_str().expect("utf-8")],
        &proxy_env(&proxy.by_name(), ""),
    );
    fetch_ok(&daemon, &url, &body).await;
    assert_eq!(
        proxy.requests(),
        [format!("CONNECT localhost:{} HTTP/1.1", nginx.0.port)]
    );
    assert_eq!(nginx.served(), 1);
}

#[test]
fn a_bad_ca_file_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let key_only = "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n";
    let cases = [
        (dir.path().join("missing.pem"), "No such file"),
        (write("empty.pem", ""), "holds no PEM certificate"),
        (
            write("garbage.pem", "not a certificate\n"),
            "holds no PEM certificate",
        ),
        (write("key.pem", key_only), "holds no PEM certificate"),
        (
            write(
                "bad.pem",
                "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
            ),
            "not usable as CA certificates",
        ),
        (dir.path().to_owned(), "directory"),
    ];
    for (path, reason) in cases {
        let log = dir.path().join("assetd.log");
        let _ = std::fs::remove_file(&log);
        let path = path.to_str().expect("utf-8");
        let status = daemon_command(
            &dir.path().join("root"),
            &dir.path().join("assetd.sock"),
            &["--ca-file", path],
            &log,
        )
        .status()
        .expect("run assetd");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(status.code(), Some(2), "{path}: {text}");
        assert!(
            text.contains(&format!("CA file {path}")) && text.contains(reason),
            "{path}: {text}"
        );
        assert!(!text.contains("panicked"), "{text}");
        assert!(!dir.path().join("root").exists(), "nothing is created");
    }
    let good = write("good.pem", TEST_CA_PEM);
    let printed = daemon_command(
        &dir.path().join("root"),
        &dir.path().join("assetd.sock"),
        &["--ca-file", good.to_str().expect("utf-8"), "--print-config"],
        &dir.path().join("print.log"),
    )
    .stdout(Stdio::piped())
    .output()
    .expect("run assetd");
    assert!(printed.status.success());
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(
        text.contains(&format!("ca_file = \"{}\"", good.display())),
        "{text}"
    );
}
