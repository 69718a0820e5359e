//! The node service: the units in `systemd/` as systemd's own tools judge
//! them, and the daemon behind socket activation with the notify protocol.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::http::{HttpServer, Reply};
use crate::common::{connect, digest_of, fetch_req, random_bytes};

/// `name` on the PATH, or `None` after saying the test is skipped
/// (`scripts/test` installs Debian's `systemd` package as root).
fn tool_or_skip(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.exists());
    if found.is_none() {
        eprintln!("SKIPPED: needs {name} (Debian package systemd)");
    }
    found
}

/// The units, with `ExecStart` pointing at the binary this build made, in
/// a temp folder.
fn units() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    for name in ["assetd.service", "assetd.socket"] {
        let text = std::fs::read_to_string(units.join(name)).unwrap();
        assert!(name != "assetd.service" || text.contains("ExecStart=/usr/local/bin/assetd "));
        let text = text.replace("/usr/local/bin/assetd", env!("CARGO_BIN_EXE_assetd"));
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn the_units_verify_and_the_service_is_hardened() {
    let Some(analyze) = tool_or_skip("systemd-analyze") else {
        return;
    };
    let dir = units();
    let verify = Command::new(&analyze)
        .arg("verify")
        .arg(dir.path().join("assetd.service"))
        .arg(dir.path().join("assetd.socket"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");

    let security = Command::new(&analyze)
        .args(["security", "--offline=yes"])
        .arg(dir.path().join("assetd.service"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for assetd.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    eprintln!("systemd-analyze security exposure: {exposure}");
    assert!(exposure <= 3.5, "exposure {exposure}:\n{report}");
}

/// Reads notify messages from `socket` until those read hold each of
/// `wanted`.
fn notified(socket: &UnixDatagram, wanted: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    let mut seen = String::new();
    let mut buf = vec![0; 4096];
    while !wanted.iter().all(|w| seen.contains(w)) {
        assert!(
            Instant::now() < deadline,
            "not all of {wanted:?} within {within:?}; got {seen:?}"
        );
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activated_it_serves_notifies_and_leaves_the_socket_to_systemd() {
    let Some(activate) = tool_or_skip("systemd-socket-activate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (socket, notify) = (dir.path().join("api.sock"), dir.path().join("notify.sock"));
    let notifications = UnixDatagram::bind(&notify).unwrap();
    notifications
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = Command::new(activate)
        .arg("--listen")
        .arg(&socket)
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify.display()))
        .arg("--setenv=WATCHDOG_USEC=400000")
        .arg("--setenv=RUST_LOG=info")
        .arg(env!("CARGO_BIN_EXE_assetd"))
        .arg("--root")
        .arg(dir.path().join("root"))
        .args(["--allow-source", "127.0.0.0/8"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !socket.exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "no socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The first connection starts the daemon, which serves it.
    let http = HttpServer::start().await;
    let body = random_bytes(100_000, 900);
    let digest = digest_of(&body);
    let url = http.route("/a", Reply::Body(body));
    let mut client = connect(&socket).await;
    let fetched = client.fetch(fetch_req(&url, &digest, "")).await;
    let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert_eq!(
        fetched
            .unwrap_or_else(|e| panic!("{e}\n{}", log()))
            .into_inner()
            .digest,
        digest
    );

    notified(
        &notifications,
        &["READY=1", "STATUS=serving", "assets cached", "WATCHDOG=1"],
        Duration::from_secs(15),
    );

    // systemd-socket-activate exec'd the daemon: same pid.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    notified(&notifications, &["STOPPING=1"], Duration::from_secs(10));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}\n{}", log());
    assert!(socket.exists(), "the socket is systemd's: left in place");
    assert!(log().contains("socket=\"inherited\""), "{}", log());
}

#[test]
fn two_passed_sockets_are_refused_naming_why() {
    let Some(activate) = tool_or_skip("systemd-socket-activate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let child = Command::new(activate)
        .arg("--listen")
        .arg(&a)
        .arg("--listen")
        .arg(&b)
        .arg(env!("CARGO_BIN_EXE_assetd"))
        .arg("--root")
        .arg(dir.path().join("root"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !a.exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::os::unix::net::UnixStream::connect(&a);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("2 sockets passed"), "{stderr}");
    assert!(!dir.path().join("root").exists(), "nothing was created");
}
