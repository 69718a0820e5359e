//! Partial downloads that survive a restart.
//!
//! A single-stream ingest whose source named its version (a validator)
//! keeps a small sidecar next to its temp file, `<temp>.part`: the digest,
//! the redacted URL, the validator, the size and how many leading bytes are
//! durable. It is rewritten (after an fsync of the data) every
//! [`CHECKPOINT_BYTES`], and when the daemon stops in the middle of the
//! transfer. At start, a temp file with a valid sidecar younger than the
//! keep time is kept instead of swept; the next fetch of that digest
//! re-hashes the durable prefix and asks the source for the rest only
//! (`Range` with `If-Range`: a source that changed sends it whole).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::digest::Digest;

/// Bytes between checkpoints: a crash loses at most this much.
pub(super) const CHECKPOINT_BYTES: u64 = 16 << 20;
/// The sidecar's suffix.
const SUFFIX: &str = ".part";

/// What a sidecar says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Sidecar {
    pub digest: String,
    pub url: String,
    pub validator: String,
    pub size: Option<u64>,
    /// Leading bytes of the temp file that are durable.
    pub done: u64,
    /// For a ranged transfer's file: every durable range (the prefix
    /// included); empty for one stream.
    #[serde(default)]
    pub pieces: Vec<(u64, u64)>,
    /// Written by a ranged transfer (resumed as one).
    #[serde(default)]
    pub ranged: bool,
}

/// The source of an ingest, for its sidecar.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// The URL, redacted.
    pub url: String,
    /// The version it named.
    pub validator: String,
    /// The size it declared.
    pub size: Option<u64>,
}

/// A partial download kept from before a restart.
#[derive(Debug, Clone)]
pub struct Partial {
    pub(super) path: PathBuf,
    /// The version its bytes are of.
    pub validator: String,
    /// Its durable leading bytes.
    pub done: u64,
    /// The URL it came from, redacted.
    pub url: String,
    /// A ranged transfer's durable ranges beyond the prefix.
    pub pieces: Vec<std::ops::Range<u64>>,
    /// Written by a ranged transfer: resumed as one.
    pub ranged: bool,
    /// The size the source declared.
    pub size: Option<u64>,
}

impl Partial {
    /// Removes its files (it won't be resumed).
    pub(super) fn discard(&self) {
        remove(&self.path);
        let _ = fs::remove_file(&self.path);
    }
}

/// The sidecar of the temp file `temp`.
pub(super) fn sidecar_path(temp: &Path) -> PathBuf {
    let mut name = temp.as_os_str().to_owned();
    name.push(SUFFIX);
    PathBuf::from(name)
}

/// Writes `sidecar` for `temp` atomically (a new file renamed over the old).
pub(super) fn write(temp: &Path, sidecar: &Sidecar) -> io::Result<()> {
    let path = sidecar_path(temp);
    let mut staged = path.as_os_str().to_owned();
    staged.push(".new");
    let staged = PathBuf::from(staged);
    let text = serde_json::to_vec(sidecar).map_err(io::Error::other)?;
    let mut file = fs::File::create(&staged)?;
    file.write_all(&text)?;
    file.sync_all()?;
    fs::rename(&staged, &path)
}

/// What is durable of one temp file, for its sidecar.
pub(super) struct Durable {
    /// Leading bytes.
    pub done: u64,
    /// Further ranges (a ranged transfer's pieces).
    pub pieces: Vec<(u64, u64)>,
    /// Written by a ranged transfer.
    pub ranged: bool,
}

/// Makes `file` (the temp file at `temp`, of `digest`) durable and records
/// `durable` in its sidecar, when the source named its version (`info`).
/// Blocking; best effort: a failure only loses the chance to resume.
pub(super) fn save(
    file: &fs::File,
    temp: &Path,
    digest: &Digest,
    info: &std::sync::Mutex<Option<SourceInfo>>,
    durable: Durable,
) -> bool {
    let info = info
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let Some(info) = info else {
        return false;
    };
    let sidecar = Sidecar {
        digest: digest.hex(),
        url: info.url,
        validator: info.validator,
        size: info.size,
        done: durable.done,
        pieces: durable.pieces,
        ranged: durable.ranged,
    };
    let saved = file.sync_data().and_then(|()| write(temp, &sidecar));
    if let Err(e) = &saved {
        tracing::debug!(path = %temp.display(), error = %e, "saving a resume point failed");
    }
    saved.is_ok()
}

/// Removes `temp`'s sidecar, if any.
pub(super) fn remove(temp: &Path) {
    let _ = fs::remove_file(sidecar_path(temp));
}

/// Sweeps `ingest`: keeps each temp file whose sidecar is valid, younger
/// than `keep_for` and no longer than the file (the newest per digest), and
/// removes everything else. Returns what was kept.
pub(super) fn sweep_keeping(
    ingest: &Path,
    keep_for: Duration,
) -> Result<HashMap<Digest, Partial>, StoreError> {
    let mut kept: HashMap<Digest, Partial> = HashMap::new();
    if !keep_for.is_zero() {
        let entries = fs::read_dir(ingest).map_err(StoreError::io("read", ingest))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if !is_file || path.extension().is_some_and(|e| e == "part" || e == "new") {
                continue;
            }
            let Some(partial) = valid(&path, keep_for) else {
                continue;
            };
            let Ok(digest) = format!("sha256:{}", partial.0.digest).parse::<Digest>() else {
                continue;
            };
            let worth =
                |p: &Partial| p.done + p.pieces.iter().map(|r| r.end - r.start).sum::<u64>();
            let better = kept
                .get(&digest)
                .is_none_or(|k| worth(k) < worth(&partial.1));
            if better {
                kept.insert(digest, partial.1);
            }
        }
    }
    let keep: Vec<PathBuf> = kept
        .values()
        .flat_map(|p| [p.path.clone(), sidecar_path(&p.path)])
        .collect();
    super::layout::sweep_except(ingest, &keep)?;
    if !kept.is_empty() {
        let bytes: u64 = kept.values().map(|p| p.done).sum();
        tracing::info!(
            partials = kept.len(),
            bytes,
            "kept partial downloads to resume"
        );
    }
    Ok(kept)
}

/// `path`'s sidecar and the partial it describes, when usable.
fn valid(path: &Path, keep_for: Duration) -> Option<(Sidecar, Partial)> {
    let side = sidecar_path(path);
    let age = fs::metadata(&side)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())?;
    if age > keep_for {
        return None;
    }
    let sidecar: Sidecar = serde_json::from_slice(&fs::read(&side).ok()?).ok()?;
    let name = path.file_name()?.to_str()?;
    let len = fs::symlink_metadata(path).ok()?.len();
    let fits = sidecar.size.is_none_or(|s| sidecar.done <= s)
        && sidecar
            .pieces
            .iter()
            .all(|&(a, b)| a < b && sidecar.size.is_some_and(|s| b <= s) && b <= len);
    if !name.starts_with(&format!("{}.", sidecar.digest))
        || sidecar.validator.is_empty()
        || (sidecar.done == 0 && sidecar.pieces.is_empty())
        || sidecar.done > len
        || !fits
    {
        return None;
    }
    let partial = Partial {
        path: path.to_owned(),
        validator: sidecar.validator.clone(),
        done: sidecar.done,
        url: sidecar.url.clone(),
        pieces: sidecar.pieces.iter().map(|&(a, b)| a..b).collect(),
        ranged: sidecar.ranged,
        size: sidecar.size,
    };
    Some((sidecar, partial))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(digest: &str, done: u64) -> Sidecar {
        Sidecar {
            digest: digest.to_owned(),
            url: "http://h/x".to_owned(),
            validator: "\"v1\"".to_owned(),
            size: Some(1000),
            done,
            pieces: Vec::new(),
            ranged: false,
        }
    }

    #[test]
    fn only_valid_recent_partials_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "ab".repeat(32);
        let good = dir.path().join(format!("{hex}.good"));
        fs::write(&good, vec![1u8; 600]).unwrap();
        write(&good, &sidecar(&hex, 500)).unwrap();
        // Claims more than the file holds.
        let short = dir.path().join(format!("{hex}.short"));
        fs::write(&short, vec![1u8; 100]).unwrap();
        write(&short, &sidecar(&hex, 500)).unwrap();
        // No sidecar; a sidecar naming another digest; garbage.
        let bare = dir.path().join(format!("{hex}.bare"));
        fs::write(&bare, b"x").unwrap();
        let other = dir.path().join(format!("{hex}.other"));
        fs::write(&other, vec![1u8; 600]).unwrap();
        write(&other, &sidecar(&"cd".repeat(32), 500)).unwrap();
        let junk = dir.path().join(format!("{hex}.junk"));
        fs::write(&junk, vec![1u8; 600]).unwrap();
        fs::write(sidecar_path(&junk), b"{not json").unwrap();

        let kept = sweep_keeping(dir.path(), Duration::from_secs(3600)).unwrap();
        assert_eq!(kept.len(), 1);
        let partial = kept.values().next().unwrap();
        assert_eq!((partial.path.clone(), partial.done), (good.clone(), 500));
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![format!("{hex}.good"), format!("{hex}.good.part")]
        );

        // A keep time of 0 keeps nothing.
        assert!(
            sweep_keeping(dir.path(), Duration::ZERO)
                .unwrap()
                .is_empty()
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
