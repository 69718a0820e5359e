//! The config file, `--print-config`, and the socket's mode and group.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{TestDaemon, root_or_skip};

/// `assetd ARGS` run to completion (a `--print-config`, or a start that
/// fails before serving).
fn assetd(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_assetd"))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--socket")
        .arg(dir.join("sock"))
        .args(args)
        .env_remove("ASSETD_CONFIG")
        .output()
        .expect("run assetd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn flags_override_the_file_which_overrides_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("assetd.toml");
    std::fs::write(
        &file,
        "[fetch]\nmax_transfers = 3\nattempts = 2\n\n[server]\nadmin_uids = [1000]\n",
    )
    .unwrap();
    let out = assetd(
        dir.path(),
        &[
            "--config",
            file.to_str().unwrap(),
            "--attempts",
            "7",
            "--print-config",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(
        printed.contains("max_transfers = 3\n"),
        "from the file: {printed}"
    );
    assert!(
        printed.contains("attempts = 7\n"),
        "the flag wins: {printed}"
    );
    assert!(
        printed.contains("stall_timeout = \"30s\"\n"),
        "a default: {printed}"
    );
    assert!(printed.contains("admin_uids = [1000]\n"), "{printed}");
    assert!(
        !dir.path().join("root").exists(),
        "--print-config touches nothing"
    );
    assert!(!dir.path().join("sock").exists());
}

#[test]
fn print_config_reads_back_as_the_same_config() {
    let dir = tempfile::tempdir().unwrap();
    let first = assetd(
        dir.path(),
        &[
            "--max-cache-bytes",
            "10GiB",
            "--min-free",
            "5%",
            "--allow-source",
            "10.0.0.0/8",
            "--print-config",
        ],
    );
    assert!(first.status.success(), "{}", text(&first.stderr));
    let file = dir.path().join("printed.toml");
    std::fs::write(&file, &first.stdout).unwrap();
    let second = assetd(
        dir.path(),
        &["--config", file.to_str().unwrap(), "--print-config"],
    );
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(text(&second.stdout), text(&first.stdout));
}

#[test]
fn a_typo_or_a_bad_value_in_the_file_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("assetd.toml");
    for (content, wanted) in [
        (
            "[fetch]\nmax_transfers = 3\nmax_per_hots = 2\n",
            &["max_per_hots", "line 3"][..],
        ),
        (
            "[cache]\nmin_free = \"lots\"\n",
            &["min_free", "line 2", "\"lots\""],
        ),
        (
            "[server]\nsocket_mode = \"0999\"\n",
            &["socket_mode", "\"0999\""],
        ),
        (
            "[sources]\nallow_source = [\"not a rule!\"]\n",
            &["allow_source", "line 2"],
        ),
        ("[nope]\n", &["nope", "line 1"]),
    ] {
        std::fs::write(&file, content).unwrap();
        let out = assetd(dir.path(), &["--config", file.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{content}: {stderr}");
        assert!(
            stderr.contains(file.to_str().unwrap()),
            "names the file: {stderr}"
        );
        for w in wanted {
            assert!(stderr.contains(w), "{content}: wanted {w:?} in {stderr}");
        }
        assert!(!dir.path().join("root").exists(), "nothing was created");
        assert!(!dir.path().join("sock").exists());
    }
    let missing = assetd(dir.path(), &["--config", "/nonexistent/assetd.toml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("/nonexistent/assetd.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_with_the_files_settings() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("assetd.toml");
    std::fs::write(&file, "[server]\nsocket_mode = \"0600\"\n").unwrap();
    let daemon = TestDaemon::start_with(&["--config", file.to_str().unwrap()]);
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    daemon
        .client()
        .await
        .list(assetd::proto::ListRequest::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_gets_the_group_it_is_given_across_restarts() {
    if !root_or_skip() {
        return;
    }
    // Debian's base-passwd has a `daemon` group.
    let gid = nix::unistd::Group::from_name("daemon")
        .unwrap()
        .expect("group daemon")
        .gid;
    let mut daemon = TestDaemon::start_with(&["--socket-group", "daemon"]);
    for _ in 0..2 {
        let meta = std::fs::metadata(&daemon.socket).unwrap();
        assert_eq!(meta.gid(), gid.as_raw());
        assert_eq!(meta.mode() & 0o777, 0o660);
        daemon.restart(&["--socket-group", "daemon"]);
    }
    let out = assetd(Path::new("/tmp"), &["--socket-group", "no-such-group-here"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("socket group \"no-such-group-here\""),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_uid_may_do_what_admins_do() {
    if !root_or_skip() {
        return;
    }
    for (args, code) in [(&[][..], 6), (&["--admin-uid", "65534"][..], 0)] {
        let daemon = TestDaemon::start_with(args);
        daemon.open_to_everyone();
        let out = daemon.assetctl_as_nobody().arg("gc").output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
    }
}

/// `(section, key)` of every `key = value` line in TOML `text`.
fn keys(text: &str) -> std::collections::BTreeSet<(String, String)> {
    let mut section = String::new();
    let mut keys = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, _)) = line.split_once(" = ") {
            keys.insert((section.clone(), key.to_owned()));
        }
    }
    keys
}

#[test]
fn the_example_config_shows_every_key_and_parses() {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/assetd.toml"))
            .unwrap();
    let uncommented: String = example
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    assetd::config::Config::parse(&uncommented).expect("the example parses");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, crate::common::TEST_CA_PEM).unwrap();
    let printed = assetd(
        dir.path(),
        &[
            "--admin-group",
            "root",
            "--socket-group",
            "root",
            "--gcs-emulator",
            "x:1",
            "--metrics-listen",
            "127.0.0.1:9464",
            "--ca-file",
            ca_file.to_str().unwrap(),
            "--print-config",
        ],
    );
    assert!(printed.status.success(), "{}", text(&printed.stderr));
    assert_eq!(keys(&uncommented), keys(&text(&printed.stdout)));
}
