//! `file://` for callers who are not admins: only what others may read
//! enters the world-readable cache, refusals name no symlink's target and
//! tell nothing of what exists where the caller could not look; and the
//! admin group's members are admins.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{TestDaemon, WRONG_DIGEST, digest_of, random_bytes, root_or_skip};

/// What a non-admin is told for a file it could not read, whether or not
/// the file exists.
const NOT_PUBLIC: &str =
    "not readable by others; only an admin may bring it into the world-readable cache";

/// The admin group the tests create (and remove again).
const GROUP: &str = "assetd-test-admins";

/// `assetctl --socket S <args>` as uid and gid 65534 with no other groups.
fn nobody(daemon: &TestDaemon, args: &[&str]) -> Output {
    daemon.assetctl_as_nobody().args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A file root (its own mode 0755) in a temp dir, and that dir.
fn file_root() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(dir.path()).unwrap().join("files");
    fs::create_dir(&root).unwrap();
    chmod(&root, 0o755);
    (dir, root)
}

/// Writes `bytes` to `path` with `mode`.
fn put(path: &Path, bytes: &[u8], mode: u32) {
    fs::write(path, bytes).unwrap();
    chmod(path, mode);
}

fn url(path: &Path) -> String {
    format!("file://{}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_file_is_refused_to_others_and_never_cached() {
    if !root_or_skip() {
        return;
    }
    let (_dir, root) = file_root();
    let secret = random_bytes(12345, 900);
    let path = root.join("secret.bin");
    put(&path, &secret, 0o600);
    let daemon = TestDaemon::start_with(&["--file-root", root.to_str().unwrap()]);
    daemon.open_to_everyone();
    let actual = digest_of(&secret);
    let hex = actual.trim_start_matches("sha256:");

    for digest in [actual.as_str(), WRONG_DIGEST] {
        let out = nobody(
            &daemon,
            &["fetch", "--quiet", &url(&path), "--digest", digest],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(6), "{err}");
        assert!(err.contains(NOT_PUBLIC), "{err}");
        if digest == WRONG_DIGEST {
            assert!(!err.contains(hex), "the digest leaked: {err}");
        }
        assert!(!err.contains("12345"), "the size leaked: {err}");
    }
    daemon.assert_empty();

    // Root is an admin: it may bring the file in.
    let reply = daemon
        .client()
        .await
        .fetch(crate::common::fetch_req(&url(&path), &actual, ""))
        .await
        .unwrap();
    assert_eq!(fs::read(reply.into_inner().path).unwrap(), secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn others_get_only_files_others_may_read_in_folders_others_may_search() {
    if !root_or_skip() {
        return;
    }
    let (_dir, root) = file_root();
    for (folder, mode) in [("open", 0o755), ("shut", 0o700)] {
        fs::create_dir(root.join(folder)).unwrap();
        chmod(&root.join(folder), mode);
    }
    let body = random_bytes(4096, 901);
    put(&root.join("open/pub.bin"), &body, 0o644);
    let hidden = random_bytes(4096, 902);
    put(&root.join("shut/pub.bin"), &hidden, 0o644);
    let daemon = TestDaemon::start_with(&["--file-root", root.to_str().unwrap()]);
    daemon.open_to_everyone();

    let fetched = nobody(
        &daemon,
        &[
            "fetch",
            "--quiet",
            &url(&root.join("open/pub.bin")),
            "--digest",
            &digest_of(&body),
        ],
    );
    assert!(fetched.status.success(), "{}", stderr(&fetched));
    assert_eq!(daemon.blobs().len(), 1);

    // Inside a folder others may not search, a file that exists and one
    // that does not get the same answer.
    let mut answers = Vec::new();
    for name in ["pub.bin", "missing.bin"] {
        let path = root.join("shut").join(name);
        let out = nobody(
            &daemon,
            &[
                "fetch",
                "--quiet",
                &url(&path),
                "--digest",
                &digest_of(&hidden),
            ],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(6), "{err}");
        assert!(err.contains(NOT_PUBLIC), "{err}");
        answers.push(err.replace(name, "NAME"));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(daemon.blobs().len(), 1, "nothing from the shut folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_file_root_lets_anyone_bring_in_anything_under_it() {
    if !root_or_skip() {
        return;
    }
    let (_dir, root) = file_root();
    let body = random_bytes(2048, 903);
    put(&root.join("private.bin"), &body, 0o600);
    let daemon = TestDaemon::start_with(&["--public-file-root", root.to_str().unwrap()]);
    daemon.open_to_everyone();
    let out = nobody(
        &daemon,
        &[
            "fetch",
            "--quiet",
            &url(&root.join("private.bin")),
            "--digest",
            &digest_of(&body),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(daemon.blobs().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_and_walk_outs_answer_alike_whether_or_not_the_target_exists() {
    if !root_or_skip() {
        return;
    }
    let (_dir, root) = file_root();
    std::os::unix::fs::symlink("/etc/passwd", root.join("to-passwd")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/assetd", root.join("to-nowhere")).unwrap();
    let daemon = TestDaemon::start_with(&["--file-root", root.to_str().unwrap()]);
    daemon.open_to_everyone();
    let passwd = fs::read(Path::new("/etc/passwd")).unwrap();

    let answer = |url: &str| {
        let out = nobody(
            &daemon,
            &["fetch", "--quiet", url, "--digest", &digest_of(&passwd)],
        );
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        // Past the URL it was given, the message names no target.
        let err = err.replace(url, "URL");
        assert!(
            !err.contains("/etc/passwd") && !err.contains("nonexistent") && !err.contains("root:"),
            "{err}"
        );
        (out.status.code(), err)
    };
    let link = answer(&url(&root.join("to-passwd")));
    let dangling = answer(&url(&root.join("to-nowhere")));
    assert_eq!(link, dangling);
    assert_eq!(link.0, Some(6), "{}", link.1);
    assert!(link.1.contains("symbolic link"), "{}", link.1);

    // Percent-encoded slashes cannot walk out; the answer is the same for
    // a target that exists and one that does not.
    let base = url(&root);
    let out_exists = answer(&format!("{base}/..%2f..%2f..%2fetc%2fpasswd"));
    let out_missing = answer(&format!("{base}/..%2f..%2f..%2fnonexistent"));
    assert_eq!(out_exists, out_missing);
    assert!(out_exists.1.contains("malformed"), "{}", out_exists.1);
    daemon.assert_empty();
}

/// Creates the test's admin group (again, if a run before left it) and
/// returns its gid; `None` (SKIPPED) when groupadd is missing.
fn admin_group() -> Option<u32> {
    match Command::new("groupadd").args(["-f", GROUP]).status() {
        Ok(status) if status.success() => {}
        _ => {
            eprintln!("SKIPPED: groupadd is unavailable");
            return None;
        }
    }
    let group = nix::unistd::Group::from_name(GROUP).unwrap()?;
    Some(group.gid.as_raw())
}

/// Removes the test's admin group on drop, pass or fail.
struct GroupGuard;

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(GROUP).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_groups_members_may_delete() {
    if !root_or_skip() {
        return;
    }
    let Some(gid) = admin_group() else { return };
    let _guard = GroupGuard;
    let (_dir, root) = file_root();
    let daemon = TestDaemon::start_with(&[
        "--file-root",
        root.to_str().unwrap(),
        "--admin-group",
        GROUP,
    ]);
    daemon.open_to_everyone();
    let mut client = daemon.client().await;
    let mut digests = Vec::new();
    for seed in [910, 911] {
        let body = random_bytes(1024, seed);
        let path = root.join(format!("{seed}.bin"));
        put(&path, &body, 0o644);
        let digest = digest_of(&body);
        client
            .fetch(crate::common::fetch_req(&url(&path), &digest, ""))
            .await
            .unwrap();
        digests.push(digest);
    }
    let rm = |ids: &[String], digest: &str| {
        Command::new("setpriv")
            .args(ids)
            .arg(env!("CARGO_BIN_EXE_assetctl"))
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["rm", digest])
            .output()
            .unwrap()
    };
    // The daemon remembers a uid's membership in the group database for a
    // while: each case below is a uid it has not seen before.
    let ids = |uid: u32, gid: u32, groups: &str| {
        [
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            groups.to_owned(),
        ]
    };
    let refused = rm(&ids(65534, 65534, "--clear-groups"), &digests[0]);
    let err = stderr(&refused);
    assert_eq!(refused.status.code(), Some(6), "{err}");
    assert!(err.contains(&format!("admin group (gid {gid})")), "{err}");
    assert_eq!(daemon.blobs().len(), 2);

    // A member by primary group, as the peer credentials carry it.
    let removed = rm(&ids(65532, gid, &format!("--groups={gid}")), &digests[0]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert_eq!(daemon.blobs().len(), 1);

    // A member as the group database lists it: user `daemon` (uid 1), its
    // own gid on the socket and no extra groups in the process.
    let Ok(Some(user)) = nix::unistd::User::from_name("daemon") else {
        eprintln!("SKIPPED: membership by the group database (no user `daemon`)");
        return;
    };
    let added = Command::new("gpasswd")
        .args(["-a", "daemon", GROUP])
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", stderr(&added));
    let member = ids(user.uid.as_raw(), user.gid.as_raw(), "--clear-groups");
    let removed = rm(&member, &digests[1]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert_eq!(daemon.blobs().len(), 0);
}

#[test]
fn an_unknown_admin_group_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let out = Command::new(env!("CARGO_BIN_EXE_assetd"))
        .arg("--root")
        .arg(&root)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .args(["--admin-group", "assetd-no-such-group"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("assetd-no-such-group"), "{err}");
    assert!(!root.exists(), "a refused start must not create the root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_root_in_a_folder_others_cannot_search_is_closed_to_them() {
    if !root_or_skip() {
        return;
    }
    let (dir, root) = file_root();
    let body = random_bytes(4096, 903);
    put(&root.join("img.bin"), &body, 0o644);
    chmod(dir.path(), 0o700);
    let daemon = TestDaemon::start_with(&["--file-root", root.to_str().unwrap()]);
    daemon.open_to_everyone();
    // The file others may read, and one that does not exist, get the same
    // answer: the caller could not have looked in there.
    for name in ["img.bin", "absent.bin"] {
        let out = nobody(
            &daemon,
            &[
                "fetch",
                "--quiet",
                &url(&root.join(name)),
                "--digest",
                &digest_of(&body),
            ],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(6), "{name}: {err}");
        assert!(err.contains(NOT_PUBLIC), "{err}");
    }
    daemon.assert_empty();
    // An admin may.
    let mut client = daemon.client().await;
    let url = url(&root.join("img.bin"));
    client
        .fetch(crate::common::fetch_req(&url, &digest_of(&body), ""))
        .await
        .unwrap();
}
