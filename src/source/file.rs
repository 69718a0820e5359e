//! `file://`: local files, only inside the configured roots.
//!
//! The check is made twice: on the path with symlinks resolved, before
//! opening (so nothing outside the roots is even opened), and on the opened
//! file's real path (so a symlink swapped in between cannot escape).

use std::fs::{self, File};
use std::io::{self, Seek as _, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use tokio_stream::StreamExt as _;
use tokio_util::io::ReaderStream;
use url::Url;

use super::{OpenFuture, Opened, Resume, Source, SourceError};

/// Bytes per read: large reads keep the per-chunk costs small.
const READ_BYTES: usize = 1 << 20;

/// Reads local files under a fixed set of folders.
pub struct FileSource {
    /// Canonical (symlink-free, absolute) folders; empty disables `file://`.
    roots: Vec<PathBuf>,
}

impl FileSource {
    /// A source serving files under `roots`, which must be canonical paths.
    pub fn new(roots: Vec<PathBuf>) -> FileSource {
        FileSource { roots }
    }

    async fn read(&self, url: &Url, resume: Option<&Resume>) -> Result<Opened, SourceError> {
        let path = url.to_file_path().map_err(|()| SourceError::InvalidUrl {
            url: url.to_string(),
            reason: "want file:///absolute/path (no host)".to_owned(),
        })?;
        if self.roots.is_empty() {
            return Err(SourceError::Denied {
                url: url.to_string(),
                reason: "file:// is disabled: start assetd with --file-root DIR".to_owned(),
            });
        }
        let roots = self.roots.clone();
        let url_text = url.to_string();
        let (mut file, path) =
            tokio::task::spawn_blocking(move || open_inside(&url_text, &path, &roots))
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
            body: Box::pin(body),
        })
    }
}

impl Source for FileSource {
    fn open<'a>(&'a self, url: &'a Url, resume: Option<&'a Resume>) -> OpenFuture<'a> {
        Box::pin(self.read(url, resume))
    }
}

/// Opens `path` if it is a regular file inside one of `roots`, and returns it
/// with its real path.
fn open_inside(url: &str, path: &Path, roots: &[PathBuf]) -> Result<(File, PathBuf), SourceError> {
    let io_error = |op, source: io::Error| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => SourceError::NotFound {
            url: url.to_owned(),
            detail: format!("{}: no such file", path.display()),
        },
        io::ErrorKind::PermissionDenied => SourceError::Denied {
            url: url.to_owned(),
            reason: format!("{}: {source}", path.display()),
        },
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidFilename => SourceError::InvalidUrl {
            url: url.to_owned(),
            reason: source.to_string(),
        },
        _ => SourceError::Io {
            op,
            path: path.to_owned(),
            source,
        },
    };
    let denied = |real: &Path| SourceError::Denied {
        url: url.to_owned(),
        reason: format!(
            "{} is outside the file roots ({})",
            real.display(),
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let inside = |p: &Path| roots.iter().any(|root| p.starts_with(root));
    let real = match fs::canonicalize(path) {
        Ok(real) => real,
        // Outside the roots, "no such file" would tell what exists there.
        Err(_) if !inside(path) => return Err(denied(path)),
        Err(e) => return Err(io_error("resolve", e)),
    };
    if !inside(&real) {
        return Err(denied(&real));
    }
    // O_NONBLOCK: opening a FIFO must not hang the daemon; no effect on files.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW).bits())
        .open(&real)
        .map_err(|e| io_error("open", e))?;
    let opened = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| io_error("resolve", e))?;
    if !inside(&opened) {
        return Err(denied(&opened));
    }
    let meta = file.metadata().map_err(|e| io_error("stat", e))?;
    if !meta.is_file() {
        return Err(SourceError::InvalidUrl {
            url: url.to_owned(),
            reason: format!("{} is not a regular file", opened.display()),
        });
    }
    Ok((file, opened))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root with `inside.bin`, a folder beside it with `secret.bin`, and
    /// a symlink in the root pointing at the secret.
    fn layout() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(dir.path().join("outside")).unwrap();
        fs::write(root.join("sub/inside.bin"), b"in").unwrap();
        fs::write(dir.path().join("outside/secret.bin"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside/secret.bin"), root.join("link"))
            .unwrap();
        let root = fs::canonicalize(root).unwrap();
        (dir, root)
    }

    fn open(path: &Path, roots: &[PathBuf]) -> Result<(File, PathBuf), SourceError> {
        open_inside("file:///test", path, roots)
    }

    #[test]
    fn a_file_inside_a_root_opens() {
        let (_dir, root) = layout();
        let (_, real) = open(&root.join("sub/inside.bin"), std::slice::from_ref(&root)).unwrap();
        assert_eq!(real, root.join("sub/inside.bin"));
    }

    #[test]
    fn paths_leading_out_of_the_roots_are_denied() {
        let (dir, root) = layout();
        let roots = [root.clone()];
        for path in [
            dir.path().join("outside/secret.bin"),
            root.join("link"),
            root.join("sub/../../outside/secret.bin"),
            PathBuf::from("/etc/passwd"),
        ] {
            let err = open(&path, &roots).err().unwrap();
            assert!(matches!(err, SourceError::Denied { .. }), "{path:?}: {err}");
        }
    }

    #[test]
    fn a_missing_file_is_not_found_only_inside_the_roots() {
        let (dir, root) = layout();
        let roots = [root.clone()];
        let err = open(&root.join("nope.bin"), &roots).err().unwrap();
        assert!(matches!(err, SourceError::NotFound { .. }), "{err}");
        // Outside, "not found" would tell what exists there: the same
        // answer as for a file that exists.
        let err = open(&dir.path().join("outside/nope.bin"), &roots)
            .err()
            .unwrap();
        assert!(matches!(err, SourceError::Denied { .. }), "{err}");
    }

    #[test]
    fn only_regular_files_are_read() {
        let (_dir, root) = layout();
        let err = open(&root.join("sub"), std::slice::from_ref(&root))
            .err()
            .unwrap();
        assert!(matches!(err, SourceError::InvalidUrl { .. }), "{err}");
    }
}
