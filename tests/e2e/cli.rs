//! assetctl: readable output, JSON for scripts, exit codes by failure kind.

use std::process::{Command, Output};

use crate::common::http::{HttpServer, Reply};
use crate::common::{TestDaemon, WRONG_DIGEST, digest_of, random_bytes};

fn assetctl(daemon: &TestDaemon, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_assetctl"))
        .env("ASSETD_SOCKET", &daemon.socket)
        .args(args)
        .output()
        .expect("run assetctl")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "assetctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assetctl_fetch_ls_stat_rm() {
    let http = HttpServer::start().await;
    let body = random_bytes(2 << 20, 21);
    let digest = digest_of(&body);
    let url = http.route("/rootfs", Reply::Body(body.clone()));
    let daemon = TestDaemon::start();

    let size = body.len().to_string();
    let path = stdout(&assetctl(
        &daemon,
        &["fetch", &url, "--digest", &digest, "--size", &size],
    ));
    assert_eq!(std::fs::read(path.trim()).unwrap(), body);

    let json: serde_json::Value = serde_json::from_str(&stdout(&assetctl(
        &daemon,
        &["--json", "fetch", &url, "--digest", &digest],
    )))
    .unwrap();
    assert_eq!(json["cache_hit"], true);
    assert_eq!(json["path"], path.trim());

    let listed = stdout(&assetctl(&daemon, &["ls"]));
    assert!(
        listed.contains(&digest) && listed.contains("2.0 MiB"),
        "{listed}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&assetctl(&daemon, &["ls", "--json"]))).unwrap();
    assert_eq!(listed[0]["digest"], digest.as_str());
    assert_eq!(listed[0]["size"], body.len());

    let stat = stdout(&assetctl(&daemon, &["stat", &digest]));
    assert!(
        stat.contains(path.trim()) && stat.contains("2097152"),
        "{stat}"
    );
    let removed = stdout(&assetctl(&daemon, &["rm", &digest]));
    assert!(
        removed.contains("deleted") && removed.contains(&digest),
        "{removed}"
    );
    daemon.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assetctl_exit_codes_tell_failures_apart() {
    let http = HttpServer::start().await;
    let url = http.route("/a", Reply::Body(b"abc".to_vec()));
    let missing = http.route("/missing", Reply::status(404));
    let daemon = TestDaemon::start();
    let cases: [(&[&str], i32, &str); 5] = [
        (
            &["fetch", &url, "--digest", WRONG_DIGEST],
            8,
            "digest mismatch",
        ),
        (
            &["fetch", &missing, "--digest", WRONG_DIGEST],
            4,
            "not found",
        ),
        (&["fetch", &url, "--digest", "sha256:bad"], 5, "sha256:bad"),
        (&["stat", WRONG_DIGEST], 4, "not cached"),
        (
            &[
                "fetch",
                &url,
                "--digest",
                &digest_of(b"abc"),
                "--max-size",
                "2",
            ],
            7,
            "limit of 2 bytes",
        ),
    ];
    for (args, code, message) in cases {
        let out = assetctl(&daemon, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    daemon.assert_empty();
}

#[test]
fn assetctl_says_when_the_daemon_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_assetctl"))
        .args(["--socket", socket.to_str().unwrap(), "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach assetd") && stderr.contains(socket.to_str().unwrap()),
        "{stderr}"
    );
}

/// `assetctl` run as it is here: stderr a pipe, not a terminal.
fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `date -u` formatting `unix_seconds` (a real oracle for the client's own
/// calendar arithmetic).
fn date(unix_seconds: &str, format: &str) -> String {
    let out = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{unix_seconds}"),
            &format!("+{format}"),
        ])
        .output()
        .expect("run date");
    assert!(out.status.success(), "date -d @{unix_seconds}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `unix_ms` as `date -d` takes it: `1796022586.435`.
fn ms_to_secs(unix_ms: u64) -> String {
    format!("{}.{:03}", unix_ms / 1000, unix_ms % 1000)
}

#[test]
fn assetctl_version_and_help_describe_the_client() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_assetctl"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        run(&["--version"]),
        format!("assetctl {}\n", env!("CARGO_PKG_VERSION"))
    );
    for flag in ["-h", "--help"] {
        let help = run(&[flag]);
        assert!(
            help.starts_with("assetctl: the command-line client of assetd"),
            "{help}"
        );
        // Not the daemon's description (the crate's).
        assert!(!help.contains(env!("CARGO_PKG_DESCRIPTION")), "{help}");
        assert!(help.contains("Usage: assetctl"), "{help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assetctl_sizes_take_units_like_the_daemons_flags() {
    let http = HttpServer::start().await;
    let body = random_bytes(2 << 20, 1101);
    let digest = digest_of(&body);
    let url = http.route("/two", Reply::Body(body.clone()));
    let daemon = TestDaemon::start();
    let run = |extra: &[&str]| {
        let mut args = vec!["fetch", "-q", url.as_str(), "--digest", digest.as_str()];
        args.extend_from_slice(extra);
        assetctl(&daemon, &args)
    };
    // Refused by a limit given with a unit, before anything is cached.
    let out = run(&["--max-size", "1MiB"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("1048576 bytes"), "{stderr}");
    // A wrong size with a unit is a size mismatch.
    let out = run(&["--size", "1M"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(stderr.contains("1048576"), "{stderr}");
    daemon.assert_empty();
    // The right size and a roomy limit, with units.
    let path = stdout(&run(&["--size", "2MiB", "--max-size", "1GiB"]));
    assert_eq!(std::fs::read(path.trim()).unwrap(), body);
    // 0 is "not given", as the help says.
    assert!(run(&["--size", "0", "--max-size", "0"]).status.success());
    // Garbage is a usage error naming it.
    let out = run(&["--size", "2XB"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2XB"));

    let help = stdout(&assetctl(&daemon, &["fetch", "--help"]));
    for flag in ["--size <SIZE>", "--max-size <SIZE>"] {
        let line = help
            .lines()
            .skip_while(|l| !l.contains(flag))
            .take_while(|l| !l.trim().is_empty() || l.contains(flag))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            line.contains("GiB") && line.contains("Absent or 0"),
            "{flag}: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assetctl_stat_shows_times_for_people_and_rfc3339_in_json() {
    let http = HttpServer::start().await;
    let body = random_bytes(4096, 1102);
    let digest = digest_of(&body);
    let url = http.route("/s", Reply::Body(body));
    let daemon = TestDaemon::start();
    stdout(&assetctl(
        &daemon,
        &[
            "fetch",
            "-q",
            &url,
            "--digest",
            &digest,
            "--lease",
            "box-1",
            "--lease-ttl",
            "7200",
        ],
    ));

    let json: serde_json::Value =
        serde_json::from_str(&stdout(&assetctl(&daemon, &["--json", "stat", &digest]))).unwrap();
    let added = json["added_unix_seconds"].as_i64().unwrap().to_string();
    assert_eq!(json["added"], date(&added, "%Y-%m-%dT%H:%M:%SZ"));
    let used = ms_to_secs(json["last_used_unix_ms"].as_u64().unwrap());
    assert_eq!(json["last_used"], date(&used, "%Y-%m-%dT%H:%M:%S.%3NZ"));
    let lease = &json["leases"][0];
    assert_eq!(lease["lease"], "box-1");
    let expires = ms_to_secs(lease["expires_unix_ms"].as_u64().unwrap());
    assert_eq!(lease["expires"], date(&expires, "%Y-%m-%dT%H:%M:%S.%3NZ"));

    let text = stdout(&assetctl(&daemon, &["stat", &digest]));
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .to_owned()
    };
    let added_line = line("added:");
    assert!(
        added_line.contains(&date(&added, "%Y-%m-%d %H:%M:%S UTC")),
        "{added_line}"
    );
    // Relative to now; the test may be slow, so any recent past will do.
    assert!(
        added_line.contains("just now") || added_line.contains(" ago)"),
        "{added_line}"
    );
    assert!(line("last used:").contains(&date(&used, "%Y-%m-%d %H:%M:%S UTC")));
    let lease_line = line("leases:");
    assert!(
        lease_line.contains("box-1")
            && lease_line.contains(&date(&expires, "%Y-%m-%d %H:%M:%S UTC"))
            && lease_line.contains("(in "),
        "{lease_line}"
    );
    assert!(!text.contains("unix"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assetctl_ls_has_a_header() {
    let http = HttpServer::start().await;
    let body = random_bytes(4096, 1103);
    let digest = digest_of(&body);
    let url = http.route("/l", Reply::Body(body));
    let daemon = TestDaemon::start();
    let empty = stdout(&assetctl(&daemon, &["ls"]));
    assert_eq!(empty.lines().count(), 1, "the header alone: {empty}");
    stdout(&assetctl(
        &daemon,
        &["fetch", "-q", &url, "--digest", &digest],
    ));
    let listed = stdout(&assetctl(&daemon, &["ls"]));
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["DIGEST", "SIZE", "LAST", "USED", "LEASES", "PATH"],
        "{listed}"
    );
    assert!(lines[1].starts_with(&digest), "{listed}");
    // Columns line up: each heading starts where its column does.
    let at = |heading: &str| lines[0].find(heading).unwrap();
    assert!(lines[1][at("PATH")..].starts_with(&daemon.root.display().to_string()));
    assert!(lines[1][at("LEASES")..].starts_with('-'), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assetctl_fetch_without_a_terminal_ends_with_one_summary_line() {
    let http = HttpServer::start().await;
    let body = random_bytes(2 << 20, 1104);
    let digest = digest_of(&body);
    let url = http.route("/sum", Reply::Body(body));
    let daemon = TestDaemon::start();

    let out = assetctl(&daemon, &["fetch", &url, "--digest", &digest]);
    stdout(&out);
    let lines = stderr_lines(&out);
    // Progress lines come only every few seconds after the start; a quick
    // fetch prints its summary alone. Whatever came first, it ends there.
    let summary = lines.last().expect("a summary line");
    assert!(
        summary.starts_with("assetctl: fetched 2.0 MiB in ") && summary.ends_with(&url),
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("fetched")).count(),
        1,
        "{lines:?}"
    );
    // A real rate, in binary units like every size.
    let rate = summary
        .split(" at ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no rate in {summary}"));
    assert!(rate > 0.0, "{summary}");
    assert!(summary.contains("iB/s from"), "{summary}");
    for line in &lines {
        assert!(
            !line.contains("MB/s") && !line.contains(" 0 B,"),
            "{lines:?}"
        );
    }

    // A hit says so, with its size.
    let out = assetctl(&daemon, &["fetch", &url, "--digest", &digest]);
    stdout(&out);
    assert_eq!(
        stderr_lines(&out),
        ["assetctl: 2.0 MiB already cached"],
        "{out:?}"
    );
    // --quiet: nothing.
    let out = assetctl(&daemon, &["fetch", "-q", &url, "--digest", &digest]);
    stdout(&out);
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_progress_ends_with_the_transfers_last_bytes_before_the_result() {
    use assetd::proto::fetch_event::Event;
    let http = HttpServer::start().await;
    let body = random_bytes(1 << 20, 1105);
    let digest = digest_of(&body);
    let url = http.route("/last", Reply::Body(body.clone()));
    let daemon = TestDaemon::start();
    let mut events = daemon
        .client()
        .await
        .fetch_progress(crate::common::fetch_req(&url, &digest, ""))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(event) = events.message().await.unwrap() {
        seen.push(event.event.unwrap());
    }
    let [.., Event::Progress(last), Event::Done(done)] = seen.as_slice() else {
        panic!("progress, then the result: {seen:?}");
    };
    assert!(!done.cache_hit);
    assert_eq!(last.bytes_done, body.len() as u64, "{seen:?}");
    assert!(last.bytes_per_second > 0.0, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assetctl_prewarm_json_prints_one_object_per_asset() {
    let http = HttpServer::start().await;
    let assets = crate::common::serve_assets(&http, 2, 4096, 1106);
    let missing = http.route("/missing", Reply::status(404));
    let daemon = TestDaemon::start();
    let manifest = daemon.root.parent().unwrap().join("m.toml");
    let mut toml = String::new();
    for (url, digest) in [
        (assets[0].0.as_str(), assets[0].2.as_str()),
        (missing.as_str(), WRONG_DIGEST),
        (assets[1].0.as_str(), assets[1].2.as_str()),
    ] {
        toml += &format!("[[assets]]\nurl = \"{url}\"\ndigest = \"{digest}\"\n\n");
    }
    std::fs::write(&manifest, toml).unwrap();
    let manifest = manifest.to_str().unwrap();
    for round in ["fetched", "cached"] {
        let out = assetctl(&daemon, &["--json", "prewarm", manifest]);
        assert_eq!(out.status.code(), Some(12), "{out:?}");
        let mut objects: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        objects.sort_by_key(|o| o["index"].as_u64());
        assert_eq!(objects.len(), 3, "{objects:?}");
        for (i, asset) in [(0, &assets[0]), (2, &assets[1])] {
            let o = &objects[i];
            assert_eq!(o["index"], i, "{o}");
            assert_eq!(
                (&o["digest"], &o["status"]),
                (&asset.2.as_str().into(), &round.into())
            );
            assert_eq!(o["size"], 4096);
            assert_eq!(std::fs::read(o["path"].as_str().unwrap()).unwrap(), asset.1);
        }
        let failed = &objects[1];
        assert_eq!(failed["digest"], WRONG_DIGEST);
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["code"], "NOT_FOUND", "the canonical name: {failed}");
        assert!(
            failed["message"].as_str().unwrap().contains("404"),
            "{failed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gc_dry_run_is_open_to_anyone_and_names_no_lease() {
    if !crate::common::root_or_skip() {
        return;
    }
    let http = HttpServer::start().await;
    let assets = crate::common::serve_assets(&http, 2, 1 << 20, 1107);
    // A cap below one asset: only gc evicts (not the commit of the asset
    // in flight); no grace; the daemon's own gc not during the test.
    let daemon = TestDaemon::start_with(&[
        "--max-cache-bytes",
        "1MiB",
        "--unleased-grace",
        "0s",
        "--gc-interval",
        "600m",
    ]);
    daemon.open_to_everyone();
    let lease = "roots-secret-lease";
    for (asset, lease) in [(&assets[0], lease), (&assets[1], "")] {
        let mut args = vec![
            "fetch",
            "-q",
            asset.0.as_str(),
            "--digest",
            asset.2.as_str(),
        ];
        if !lease.is_empty() {
            args.extend(["--lease", lease]);
        }
        stdout(&assetctl(&daemon, &args));
    }
    let nobody = |args: &[&str]| daemon.assetctl_as_nobody().args(args).output().unwrap();

    let out = nobody(&["--json", "gc", "--dry-run"]);
    let text = stdout(&out);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["evicted"], serde_json::json!([assets[1].2]));
    assert_eq!(report["bytes"], 1 << 20);
    assert_eq!(report["lapsed_pins"], 0);
    // Nothing of root's lease: not its name, not its owner.
    assert!(!text.contains(lease) && !text.contains("owner"), "{text}");
    let out = nobody(&["gc", "--dry-run"]);
    let text = stdout(&out);
    assert!(
        text.starts_with("would evict 1 assets, 1.0 MiB") && text.contains(&assets[1].2),
        "{text}"
    );
    assert!(!text.contains(lease), "{text}");
    assert_eq!(daemon.blobs().len(), 2, "a dry run changes nothing");
    // Nobody still sees no one else's pins in ls.
    let listed = stdout(&nobody(&["--json", "ls"]));
    assert!(!listed.contains(lease), "{listed}");

    // A real gc stays for admins.
    let out = nobody(&["gc"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("may run gc (a dry run is open to anyone)"),
        "{stderr}"
    );
    assert_eq!(daemon.blobs().len(), 2);
    // Root's gc evicts what the dry run said.
    let out = stdout(&assetctl(&daemon, &["--json", "gc"]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["evicted"], serde_json::json!([assets[1].2]));
    assert_eq!(daemon.blob_digests(), [assets[0].2.clone()].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assetctl_never_uses_a_socket_another_user_planted_at_its_default_path() {
    if !crate::common::root_or_skip() {
        return;
    }
    // Without HOME, uid 43210's own default socket lies under /tmp, where
    // uid 65534 makes it first and listens.
    let folder = std::path::PathBuf::from("/tmp/assetd-43210");
    let _ = std::fs::remove_dir_all(&folder);
    let socket = folder.join(".cache/assetd/assetd.sock");
    let script = r#"
import os, socket, sys
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
s.listen(1)
s.settimeout(3)
print("listening", flush=True)
try:
    s.accept()
    print("connected")
except socket.timeout:
    print("untouched")
"#;
    let mut planter = crate::common::as_nobody(crate::common::python())
        .arg("-c")
        .arg(script)
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(planter.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    let victim = std::process::Command::new("setpriv")
        .args(["--reuid=43210", "--regid=43210", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_assetctl"))
        .arg("ls")
        .env_remove("HOME")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("ASSETD_SOCKET")
        .output()
        .unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let _ = planter.wait();
    let _ = std::fs::remove_dir_all(&folder);
    assert_eq!(line.trim(), "untouched", "{victim:?}");
    assert!(!victim.status.success());
}
