//! `file://`: local files, only inside the configured roots, and only what
//! the caller who gave the URL may bring into the world-readable cache.
//!
//! A path is resolved once, from the root folder's descriptor: each folder
//! is opened with `O_NOFOLLOW | O_DIRECTORY` relative to the one before, and
//! the file with `O_NOFOLLOW`. No symlink is followed anywhere below a root
//! and no `..` leads out, so nothing outside the roots is ever opened, and
//! the answer for a symlink does not depend on its target.
//!
//! For a caller who is not an admin, each folder below the root must be
//! searchable by others and the file readable by others (unless the root is
//! public): the cache is world-readable, so content may enter it only if it
//! was already that public. Such a caller learns nothing past a folder it
//! could not search: not whether something exists there.

use std::fs::File;
use std::io::{Seek as _, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::Mode;
use tokio_stream::StreamExt as _;
use tokio_util::io::ReaderStream;
use url::Url;

use super::{Access, OpenFuture, Opened, Resume, Source, SourceError};

/// Bytes per read: large reads keep the per-chunk costs small.
const READ_BYTES: usize = 1 << 20;

/// Why a non-admin caller may not read a file; the same words whether or not
/// the file exists, so the refusal is no oracle.
const NOT_PUBLIC: &str =
    "not readable by others; only an admin may bring it into the world-readable cache";

/// A folder `file://` URLs may read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRoot {
    /// Canonical (symlink-free, absolute) path.
    pub path: PathBuf,
    /// Any caller may bring anything under it into the cache
    /// (`--public-file-root`); otherwise only what others may read.
    pub public: bool,
}

/// Reads local files under a fixed set of folders.
pub struct FileSource {
    /// Empty disables `file://`.
    roots: Vec<FileRoot>,
}

impl FileSource {
    /// A source serving files under `roots`, whose paths must be canonical.
    pub fn new(roots: Vec<FileRoot>) -> FileSource {
        FileSource { roots }
    }

    async fn read(
        &self,
        url: &Url,
        resume: Option<&Resume>,
        access: Access,
    ) -> Result<Opened, SourceError> {
        if self.roots.is_empty() {
            return Err(SourceError::Denied {
                url: url.to_string(),
                reason: "file:// is disabled: start assetd with --file-root DIR".to_owned(),
            });
        }
        let roots = self.roots.clone();
        let url_owned = url.clone();
        let (mut file, path) =
            tokio::task::spawn_blocking(move || open_inside(&url_owned, &roots, access))
                .await
                .map_err(|e| SourceError::transport(url, &e, false))??;
        let meta = file.metadata().map_err(|source| SourceError::Io {
            op: "stat",
            path: path.clone(),
            source,
        })?;
        // A file is the same version while its inode, size and mtime are.
        let validator = format!(
            "{}-{}-{}",
            meta.ino(),
            meta.len(),
            meta.mtime_nsec() + meta.mtime() * 1_000_000_000
        );
        let offset = match resume {
            Some(r) if r.validator == validator && r.offset <= meta.len() => r.offset,
            _ => 0,
        };
        file.seek(SeekFrom::Start(offset))
            .map_err(|source| SourceError::Io {
                op: "seek",
                path: path.clone(),
                source,
            })?;
        let body = ReaderStream::with_capacity(tokio::fs::File::from_std(file), READ_BYTES).map(
            move |chunk| {
                chunk.map_err(|source| SourceError::Io {
                    op: "read",
                    path: path.clone(),
                    source,
                })
            },
        );
        Ok(Opened {
            size: Some(meta.len()),
            offset,
            validator: Some(validator),
            ranges: false,
            body: Box::pin(body),
        })
    }
}

impl Source for FileSource {
    fn open<'a>(
        &'a self,
        url: &'a Url,
        resume: Option<&'a Resume>,
        access: Access,
    ) -> OpenFuture<'a> {
        Box::pin(self.read(url, resume, access))
    }
}

/// The path of a `file://` URL as its components, each percent-decoded.
/// A component that decodes to contain `/` or NUL, or is `.` or `..`, is
/// refused as malformed: it could only be an attempt to walk elsewhere.
pub(crate) fn components(url: &Url) -> Result<Vec<String>, SourceError> {
    let malformed = |reason: &str| SourceError::InvalidUrl {
        url: super::redacted(url),
        reason: reason.to_owned(),
    };
    if url
        .host_str()
        .is_some_and(|h| !h.is_empty() && h != "localhost")
    {
        return Err(malformed("want file:///absolute/path (no host)"));
    }
    let mut parts = Vec::new();
    for raw in url.path().split('/').filter(|s| !s.is_empty()) {
        let part = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| malformed("a path component is not UTF-8"))?;
        if part.contains('/') || part.contains('\0') || part == "." || part == ".." {
            return Err(malformed(
                "a path component decodes to \"/\", NUL, \".\" or \"..\"",
            ));
        }
        parts.push(part.into_owned());
    }
    Ok(parts)
}

/// The most specific root holding `parts`, and the parts below it.
pub(crate) fn root_of<'r>(
    roots: &'r [FileRoot],
    parts: &[String],
) -> Option<(&'r FileRoot, usize)> {
    roots
        .iter()
        .filter_map(|root| {
            // A root whose path is not UTF-8 cannot be named by a URL's
            // decoded components: it matches nothing rather than skipping
            // the odd component and matching some other path.
            let names: Vec<String> = root
                .path
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_str().map(str::to_owned)),
                    _ => None,
                })
                .collect::<Option<_>>()?;
            let inside = names.len() < parts.len() && parts.starts_with(&names);
            inside.then_some((root, names.len()))
        })
        .max_by_key(|&(_, depth)| depth)
}

/// Opens the regular file `url` names if it lies inside one of `roots` and
/// `access` may bring it into the cache; returns it with its path.
fn open_inside(
    url: &Url,
    roots: &[FileRoot],
    access: Access,
) -> Result<(File, PathBuf), SourceError> {
    let parts = components(url)?;
    let shown = super::redacted(url);
    let denied = |reason: String| SourceError::Denied {
        url: shown.clone(),
        reason,
    };
    let Some((root, depth)) = root_of(roots, &parts) else {
        let listed: Vec<_> = roots.iter().map(|r| r.path.display().to_string()).collect();
        return Err(denied(format!(
            "outside the file roots ({})",
            listed.join(", ")
        )));
    };
    // Admins may read anything under a root; others what others may read.
    let checked = !access.admin && !root.public;
    let path: PathBuf = std::iter::once("/".to_owned())
        .chain(parts.iter().cloned())
        .collect();
    let not_regular = || SourceError::InvalidUrl {
        url: shown.clone(),
        reason: "not a regular file".to_owned(),
    };
    let fail = |op: &'static str, errno: Errno| match errno {
        Errno::ENOENT | Errno::ENOTDIR => SourceError::NotFound {
            url: shown.clone(),
            detail: "no such file".to_owned(),
        },
        // O_NOFOLLOW met a symlink: refused whatever it points at.
        Errno::ELOOP => denied("a symbolic link; file:// follows none".to_owned()),
        Errno::EACCES | Errno::EPERM => denied(errno.desc().to_owned()),
        _ => SourceError::Io {
            op,
            path: path.clone(),
            source: std::io::Error::from(errno),
        },
    };
    let mut dir: OwnedFd = nix::fcntl::open(
        &root.path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("open", e))?;
    // INVARIANT: others may reach the root itself, through every folder
    // above it, or a caller learns nothing of what it holds: a root in a
    // folder closed to others is as closed as any folder below it.
    if checked && !others_may_reach(&dir, &root.path).map_err(|e| fail("stat", e))? {
        return Err(denied(NOT_PUBLIC.to_owned()));
    }
    let (last, folders) = parts[depth..]
        .split_last()
        .ok_or_else(|| denied("not a file".to_owned()))?;
    for name in folders {
        dir = openat(
            &dir,
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            // A symlink to a folder fails O_DIRECTORY | O_NOFOLLOW as "not a
            // folder": tell it from a file by the link itself, never its target.
            Errno::ENOTDIR if is_symlink(&dir, name) => fail("open", Errno::ELOOP),
            e => fail("open", e),
        })?;
        // INVARIANT: checked before looking inside, so a caller learns
        // nothing of what a folder it could not search holds.
        if checked && !others_may(&dir, 0o001).map_err(|e| fail("stat", e))? {
            return Err(denied(NOT_PUBLIC.to_owned()));
        }
    }
    // Looked at before it is opened: opening a device or FIFO may have
    // effects of its own, and a caller may not open what it may not read.
    let seen = nix::sys::stat::fstatat(&dir, last.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| fail("stat", e))?;
    if seen.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK {
        return Err(fail("open", Errno::ELOOP));
    }
    if checked && seen.st_mode & 0o004 == 0 {
        return Err(denied(NOT_PUBLIC.to_owned()));
    }
    if seen.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
        return Err(not_regular());
    }
    // O_NONBLOCK: should a FIFO be put in its place, the open must not
    // hang the daemon; no effect on files.
    let fd = openat(
        &dir,
        last.as_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("open", e))?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|source| SourceError::Io {
        op: "stat",
        path: path.clone(),
        source,
    })?;
    // The same file as looked at, and still one the caller may read.
    if (meta.dev(), meta.ino()) != (seen.st_dev, seen.st_ino) {
        return Err(denied("replaced while being opened".to_owned()));
    }
    if checked && meta.mode() & 0o004 == 0 {
        return Err(denied(NOT_PUBLIC.to_owned()));
    }
    if !meta.is_file() {
        return Err(not_regular());
    }
    Ok((file, path))
}

/// Whether `name` in `dir` is a symlink (not following it).
fn is_symlink(dir: &OwnedFd, name: &str) -> bool {
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK)
}

/// Whether others may search the open root folder `dir` and every folder
/// above it (`path` is canonical: no links on the way).
fn others_may_reach(dir: &OwnedFd, path: &std::path::Path) -> Result<bool, Errno> {
    if !others_may(dir, 0o001)? {
        return Ok(false);
    }
    for folder in path.ancestors().skip(1) {
        let stat = nix::sys::stat::stat(folder)?;
        if stat.st_mode & 0o001 == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether others have `bits` (of `0o007`) on the open file `fd`.
fn others_may(fd: &OwnedFd, bits: nix::libc::mode_t) -> Result<bool, Errno> {
    let stat = nix::sys::stat::fstat(fd)?;
    Ok(stat.st_mode & bits == bits)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;

    use super::*;

    const ADMIN: Access = Access {
        admin: true,
        uid: 0,
        gid: 0,
    };
    const OTHER: Access = Access {
        admin: false,
        uid: 4242,
        gid: 4242,
    };

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A root with `pub/open.bin` (0644 in 0755), `shut/open.bin` (0644 in
    /// 0700), `secret.bin` (0600), a folder beside it with `secret.bin`, and
    /// symlinks in the root to the outside secret and to nothing.
    fn layout() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for sub in ["pub", "shut"] {
            fs::create_dir_all(root.join(sub)).unwrap();
            fs::write(root.join(sub).join("open.bin"), b"in").unwrap();
            chmod(&root.join(sub).join("open.bin"), 0o644);
        }
        chmod(&root.join("pub"), 0o755);
        chmod(&root.join("shut"), 0o700);
        fs::write(root.join("secret.bin"), b"secret").unwrap();
        chmod(&root.join("secret.bin"), 0o600);
        fs::create_dir_all(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/secret.bin"), b"secret").unwrap();
        let target = dir.path().join("outside/secret.bin");
        std::os::unix::fs::symlink(&target, root.join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", root.join("dangling")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("dirlink")).unwrap();
        // Others may reach the root (a temp folder is made 0700).
        chmod(dir.path(), 0o755);
        chmod(&root, 0o755);
        let root = fs::canonicalize(root).unwrap();
        (dir, root)
    }

    fn roots(root: &Path, public: bool) -> Vec<FileRoot> {
        vec![FileRoot {
            path: root.to_owned(),
            public,
        }]
    }

    fn open(text: &str, roots: &[FileRoot], access: Access) -> Result<PathBuf, SourceError> {
        let url = Url::parse(text).unwrap();
        open_inside(&url, roots, access).map(|(_, path)| path)
    }

    fn url(root: &Path, rest: &str) -> String {
        format!("file://{}/{rest}", root.display())
    }

    #[test]
    fn admins_open_any_regular_file_under_a_root() {
        let (_dir, root) = layout();
        let roots = roots(&root, false);
        for rest in ["pub/open.bin", "shut/open.bin", "secret.bin"] {
            assert_eq!(
                open(&url(&root, rest), &roots, ADMIN).unwrap(),
                root.join(rest)
            );
        }
    }

    #[test]
    fn others_open_only_what_others_may_read() {
        let (_dir, root) = layout();
        let roots = roots(&root, false);
        assert!(open(&url(&root, "pub/open.bin"), &roots, OTHER).is_ok());
        for rest in ["shut/open.bin", "secret.bin", "shut/nope.bin"] {
            let err = open(&url(&root, rest), &roots, OTHER).unwrap_err();
            assert!(matches!(err, SourceError::Denied { .. }), "{rest}: {err}");
            assert!(err.to_string().contains(NOT_PUBLIC), "{err}");
        }
    }

    #[test]
    fn a_public_root_lets_anyone_read_anything_in_it() {
        let (_dir, root) = layout();
        let roots = roots(&root, true);
        for rest in ["shut/open.bin", "secret.bin"] {
            assert!(open(&url(&root, rest), &roots, OTHER).is_ok(), "{rest}");
        }
    }

    #[test]
    fn symlinks_are_refused_alike_whatever_their_target() {
        let (dir, root) = layout();
        let roots = roots(&root, false);
        let outside = dir.path().display().to_string();
        let mut seen = Vec::new();
        for rest in ["link", "dangling", "dirlink/secret.bin"] {
            let err = open(&url(&root, rest), &roots, ADMIN).unwrap_err();
            assert!(matches!(err, SourceError::Denied { .. }), "{rest}: {err}");
            let text = err.to_string();
            assert!(
                !text.contains("outside") && !text.contains("nonexistent"),
                "{text}"
            );
            assert!(!text.contains(&format!("{outside}/outside")), "{text}");
            seen.push(text.replacen(&url(&root, rest), "URL", 1));
        }
        assert_eq!(seen[0], seen[1]);
        assert_eq!(seen[0], seen[2]);
    }

    #[test]
    fn walking_out_of_a_root_is_refused() {
        let (dir, root) = layout();
        let roots = roots(&root, false);
        let err = open(&url(&root, "..%2f..%2fetc/passwd"), &roots, ADMIN).unwrap_err();
        assert!(matches!(err, SourceError::InvalidUrl { .. }), "{err}");
        for text in [
            url(&root, "../outside/secret.bin"),
            url(&root, "%2e%2e/outside/secret.bin"),
            format!("file://{}/outside/secret.bin", dir.path().display()),
            "file:///etc/passwd".to_owned(),
        ] {
            let err = open(&text, &roots, ADMIN).unwrap_err();
            assert!(matches!(err, SourceError::Denied { .. }), "{text}: {err}");
        }
    }

    #[test]
    fn a_missing_file_is_not_found_only_where_the_caller_could_look() {
        let (_dir, root) = layout();
        let roots = roots(&root, false);
        let err = open(&url(&root, "pub/nope.bin"), &roots, OTHER).unwrap_err();
        assert!(matches!(err, SourceError::NotFound { .. }), "{err}");
        let err = open(&url(&root, "shut/nope.bin"), &roots, ADMIN).unwrap_err();
        assert!(matches!(err, SourceError::NotFound { .. }), "{err}");
    }

    #[test]
    fn a_root_is_matched_by_whole_components_and_the_deepest_wins() {
        let root = |path: &str, public| FileRoot {
            path: path.into(),
            public,
        };
        let roots = [root("/srv/files", false), root("/srv/files/pub", true)];
        let parts = |p: &str| p.split('/').map(str::to_owned).collect::<Vec<_>>();
        let found = root_of(&roots, &parts("srv/files/pub/x")).unwrap();
        assert_eq!((found.0.public, found.1), (true, 3));
        let found = root_of(&roots, &parts("srv/files/a/x")).unwrap();
        assert_eq!((found.0.public, found.1), (false, 2));
        assert!(root_of(&roots, &parts("srv/filesx/a")).is_none());
        assert!(root_of(&roots, &parts("srv/files")).is_none());
    }

    #[test]
    fn only_regular_files_are_read() {
        let (_dir, root) = layout();
        let err = open(&url(&root, "pub"), &roots(&root, false), ADMIN).unwrap_err();
        assert!(matches!(err, SourceError::InvalidUrl { .. }), "{err}");
    }

    #[test]
    fn a_root_others_cannot_reach_is_closed_to_them() {
        let (dir, root) = layout();
        let url = url(&root, "pub/open.bin");
        assert!(open(&url, &roots(&root, false), OTHER).is_ok());
        for closed in [root.as_path(), dir.path()] {
            chmod(closed, 0o700);
            for name in ["pub/open.bin", "pub/absent.bin", "secret.bin"] {
                let err = open(&self::url(&root, name), &roots(&root, false), OTHER).unwrap_err();
                assert!(err.to_string().contains(NOT_PUBLIC), "{name}: {err}");
            }
            assert!(open(&url, &roots(&root, false), ADMIN).is_ok());
            assert!(
                open(&url, &roots(&root, true), OTHER).is_ok(),
                "a public root"
            );
            chmod(closed, 0o755);
        }
    }

    #[test]
    fn a_fifo_is_refused_without_being_opened() {
        let (_dir, root) = layout();
        let fifo = root.join("pub/fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
        // A writer's open returns once a reader opens the FIFO.
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || drop(fs::File::create(fifo)))
        };
        // Time for the writer to be waiting in its open.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let err = open(&url(&root, "pub/fifo"), &roots(&root, false), ADMIN).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!writer.is_finished(), "the daemon opened the FIFO");
        // Let the writer go.
        drop(fs::File::open(&fifo).unwrap());
        writer.join().unwrap();
    }
}
