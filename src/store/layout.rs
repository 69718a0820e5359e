//! The store's folders and what is found in them: made with explicit modes,
//! checked at every start, and trusted no further than that.
//!
//! Invariant: nothing in the store is reached through a symlink. Folders are
//! judged by `lstat` and refused when they are links, belong to another user
//! or can be written by group or others (whoever can write in them can plant
//! a file that does not hold what its name says). Entries are judged by their
//! own type, files are opened with `O_NOFOLLOW`, and anything in
//! `blobs/sha256/` that is not a regular file named by a digest is moved to
//! `quarantine/`, never served. This module removes or moves only the entry
//! itself: a link is unlinked or renamed, its target is never touched.

use std::ffi::OsString;
use std::fs::{self, File, FileType, Metadata, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use super::{StoreError, fsync_dir, meta::now_ms};
use crate::digest::Digest;

/// Mode of the root and of `blobs/`: every sandbox on the node reads blobs.
pub(super) const SHARED: u32 = 0o755;
/// Mode of `ingest/` and `quarantine/`: unverified bytes are no one else's.
pub(super) const PRIVATE: u32 = 0o700;
/// Longest file-name prefix kept when an entry is quarantined, in bytes: room
/// for the `.<ms>` suffix under the 255-byte `NAME_MAX`.
const QUARANTINE_NAME_MAX: usize = 200;

/// Why a store folder (or the root) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsafe {
    /// Another user owns it.
    Owner {
        /// Its owner's uid.
        owner: u32,
        /// The daemon's effective uid.
        me: u32,
    },
    /// Group or others may write in it.
    Writable {
        /// Its permission bits.
        mode: u32,
        /// The mode it should have.
        want: u32,
    },
    /// It is a symbolic link.
    Symlink {
        /// Where the link points.
        target: PathBuf,
    },
    /// It is not a folder.
    NotAFolder {
        /// What it is instead ("file", "fifo"...).
        kind: &'static str,
    },
    /// It is on another file system than `other`, so `rename(2)` between
    /// the two would fail.
    OtherDevice {
        /// The folder it must share a file system with.
        other: PathBuf,
    },
}

impl std::fmt::Display for Unsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsafe::Owner { owner, me } => {
                write!(
                    f,
                    "it is owned by uid {owner}, not by this daemon's uid {me}"
                )
            }
            Unsafe::Writable { mode, .. } => write!(
                f,
                "its mode {mode:04o} lets group or others write in it, so they could plant files"
            ),
            Unsafe::Symlink { target } => write!(
                f,
                "it is a symbolic link (to {}); the store follows no links",
                target.display()
            ),
            Unsafe::NotAFolder { kind } => write!(f, "it is a {kind}, not a folder"),
            Unsafe::OtherDevice { other } => write!(
                f,
                "it is on another file system than {}, so finished fetches could not be \
                 renamed between them",
                other.display()
            ),
        }
    }
}

impl Unsafe {
    /// What the operator should do about `path`.
    pub fn fix(&self, path: &Path) -> String {
        let path = path.display();
        match self {
            Unsafe::Owner { me, .. } => format!("chown {me} {path}, or choose another --root"),
            Unsafe::Writable { want, .. } => {
                format!("check what it holds, then chmod {want:o} {path}")
            }
            Unsafe::Symlink { .. } => format!(
                "rm {path} (removes only the link; assetd makes the folder), \
                 or point --root at a real folder"
            ),
            Unsafe::NotAFolder { .. } => {
                format!("move {path} away; assetd makes the folder")
            }
            Unsafe::OtherDevice { other } => format!(
                "keep {path} and {} on the root's file system (nothing mounted on either)",
                other.display()
            ),
        }
    }
}

fn refuse(path: &Path, problem: Unsafe) -> StoreError {
    StoreError::NotOwned {
        path: path.to_owned(),
        problem,
    }
}

/// Makes the root when it is missing (mode 0755 whatever the umask) and
/// checks it. Errors: [`StoreError::NotOwned`] naming the problem and the
/// fix; [`StoreError::Io`].
pub(super) fn prepare_root(root: &Path) -> Result<(), StoreError> {
    match fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(SHARED)
                .create(root)
                .map_err(StoreError::io("create", root))?;
            set_mode(root, SHARED)?;
        }
        Err(e) => return Err(StoreError::io("stat", root)(e)),
        Ok(_) => {}
    }
    check_folder(root, SHARED).map(drop)
}

/// Makes (mode `want`, whatever the umask) or checks the store folder `path`,
/// whose parent is already checked, and gives it mode `want`. Errors as
/// [`prepare_root`].
pub(super) fn prepare_folder(path: &Path, want: u32) -> Result<(), StoreError> {
    match fs::DirBuilder::new().mode(want).create(path) {
        Ok(()) => set_mode(path, want)?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(StoreError::io("create", path)(e)),
    }
    let meta = check_folder(path, want)?;
    // Ours and not writable by others: a stricter or looser read mode (blobs
    // made 0700 under umask 077 by older versions) is set right.
    if meta.mode() & 0o7777 != want {
        tracing::info!(path = %path.display(), from = format!("{:04o}", meta.mode() & 0o7777), to = format!("{want:04o}"), "setting folder mode");
        set_mode(path, want)?;
    }
    Ok(())
}

/// Refuses `path` unless it is a folder (not a link to one) of the daemon's
/// user that group and others cannot write in; its metadata otherwise.
fn check_folder(path: &Path, want: u32) -> Result<Metadata, StoreError> {
    let meta = fs::symlink_metadata(path).map_err(StoreError::io("stat", path))?;
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        let target = fs::read_link(path).unwrap_or_default();
        return Err(refuse(path, Unsafe::Symlink { target }));
    }
    if !file_type.is_dir() {
        let kind = kind(&file_type);
        return Err(refuse(path, Unsafe::NotAFolder { kind }));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        let owner = meta.uid();
        return Err(refuse(path, Unsafe::Owner { owner, me }));
    }
    if meta.mode() & 0o022 != 0 {
        let mode = meta.mode() & 0o7777;
        return Err(refuse(path, Unsafe::Writable { mode, want }));
    }
    Ok(meta)
}

/// Refuses `path` unless it is on the file system of `other` (both checked
/// folders, so `lstat` is what the daemon will use).
pub(super) fn same_device(path: &Path, other: &Path) -> Result<(), StoreError> {
    let dev = |p: &Path| fs::symlink_metadata(p).map_err(StoreError::io("stat", p));
    if dev(path)?.dev() != dev(other)?.dev() {
        let other = other.to_owned();
        return Err(refuse(path, Unsafe::OtherDevice { other }));
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(StoreError::io("chmod", path))
}

/// What a file type is, in a word, for logs and messages.
pub(super) fn kind(file_type: &FileType) -> &'static str {
    if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_dir() {
        "folder"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else {
        "file"
    }
}

/// Opens `path` for reading with `O_NOFOLLOW` and `O_NONBLOCK`, so that
/// neither a link nor a FIFO can redirect or stall the caller.
pub(super) fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
}

/// What is at a blob's path.
#[derive(Debug)]
pub(super) enum Found {
    /// A regular file, opened.
    Regular(File),
    /// Anything else: not to be read, served or followed.
    NotRegular {
        /// What it is.
        kind: &'static str,
        /// Its inode, to move exactly this entry away.
        ino: u64,
    },
}

/// Opens the blob at `path` without following or blocking on it. Errors:
/// the OS error (`NotFound` when nothing is there).
pub(super) fn open_blob(path: &Path) -> io::Result<Found> {
    match open_nofollow(path) {
        Ok(file) => {
            let meta = file.metadata()?;
            if meta.is_file() {
                Ok(Found::Regular(file))
            } else {
                let kind = kind(&meta.file_type());
                Ok(Found::NotRegular {
                    kind,
                    ino: meta.ino(),
                })
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
        // ELOOP for a link, ENXIO for a socket: judge the entry itself.
        Err(e) => match fs::symlink_metadata(path) {
            Ok(meta) if !meta.is_file() => Ok(Found::NotRegular {
                kind: kind(&meta.file_type()),
                ino: meta.ino(),
            }),
            _ => Err(e),
        },
    }
}

/// Removes everything in `ingest/` but the paths in `keep`: temp files of
/// interrupted fetches, and whatever else is there. A link is unlinked,
/// never followed.
pub(super) fn sweep_except(ingest: &Path, keep: &[PathBuf]) -> Result<(), StoreError> {
    let entries = fs::read_dir(ingest).map_err(StoreError::io("read", ingest))?;
    let mut swept = 0usize;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("read", ingest))?;
        let path = entry.path();
        if keep.contains(&path) {
            continue;
        }
        // The entry's own type (d_type or lstat), not its target's.
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
            Err(e) => Err(e),
        };
        match removed {
            // A stopped transfer's writer thread removed it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            other => other.map_err(StoreError::io("remove", &path))?,
        }
        swept += 1;
    }
    if swept > 0 {
        tracing::info!(swept, dir = %ingest.display(), "removed temp files of interrupted fetches");
    }
    Ok(())
}

/// Every blob's digest, size and mtime. Entries that are not regular files
/// named by a digest are moved to `quarantine` first, with a warning.
pub(super) fn scan_blobs(
    blobs: &Path,
    quarantine: &Path,
) -> Result<Vec<(Digest, u64, i64)>, StoreError> {
    let entries = fs::read_dir(blobs).map_err(StoreError::io("read", blobs))?;
    let mut found = Vec::new();
    let mut moved = 0usize;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("read", blobs))?;
        let name = entry.file_name();
        let digest = name.to_str().and_then(|n| Digest::from_hex(n).ok());
        // DirEntry::metadata is lstat: a link is judged as a link.
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Deleted since the listing: simply not there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io("stat", &entry.path())(e)),
        };
        match digest {
            Some(digest) if meta.is_file() => found.push((digest, meta.len(), meta.mtime())),
            _ => {
                let why = if meta.is_file() {
                    "not named by a digest"
                } else {
                    kind(&meta.file_type())
                };
                let to = quarantine_entry(&entry.path(), quarantine)?;
                tracing::warn!(entry = %entry.path().display(), what = why, moved_to = %to.display(), "not a blob: quarantined, never served");
                moved += 1;
            }
        }
    }
    if moved > 0 {
        fsync_dir(blobs)?;
        fsync_dir(quarantine)?;
    }
    Ok(found)
}

/// Moves the entry at `path` itself (a link, not its target) into
/// `quarantine`, under its name and the time; returns where.
pub(super) fn quarantine_entry(path: &Path, quarantine: &Path) -> Result<PathBuf, StoreError> {
    let name = path.file_name().map_or(&[][..], |n| n.as_bytes());
    let mut moved = name[..name.len().min(QUARANTINE_NAME_MAX)].to_vec();
    moved.extend_from_slice(format!(".{}", now_ms()).as_bytes());
    let to = quarantine.join(OsString::from_vec(moved));
    // rename(2) never follows its last component: the link itself moves.
    fs::rename(path, &to).map_err(StoreError::io("rename", path))?;
    Ok(to)
}
