//! The in-memory index of what is cached: per asset its size, times, URLs
//! and pins. It mirrors `meta.redb` (loaded at start, after reconcile), so
//! that hits, `Stat` and `List` do no I/O at all. It is the daemon's truth
//! while it runs: when a `meta.redb` write fails (a full disk), the index
//! runs ahead and `meta.redb` is rewritten from it once it can be written
//! again (see `Store::heal_meta`).
//!
//! Lock discipline (the store's, documented here because the index is where
//! the decisions are made):
//!
//! - The index sits behind one std mutex, held only for memory work, never
//!   across I/O.
//! - Every change to the set of files in `blobs/` (commit's rename, delete,
//!   eviction, quarantine) happens with the store's `blobs` mutex held, on a
//!   blocking thread, and updates the index under that same mutex: an entry is
//!   in the index exactly while its file is in `blobs/`.
//! - A removal decides (unpinned, out of its grace) and takes the entry out
//!   of the index in one critical section, before the unlink. A pin or a hit
//!   finds the entry in its own critical section. So either the pin came
//!   first and the removal is refused, or the removal came first and the pin
//!   finds nothing (and the caller fetches again): a path returned with a
//!   lease exists while the lease holds.

use std::collections::{BTreeMap, HashSet};

/// Source URLs kept per asset, newest last: enough to show where an asset
/// comes from, bounded so callers naming ever new URLs for one digest
/// cannot grow the index without end.
const MAX_URLS: usize = 8;

use super::meta::{Pin, Record};
use crate::digest::Digest;

/// One cached asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// Size in bytes.
    pub size: u64,
    /// When it entered the cache, Unix seconds.
    pub added: i64,
    /// When a fetch last asked for it, Unix milliseconds.
    pub last_used: u64,
    /// When its path was last handed to a caller, Unix milliseconds (0:
    /// never, since start). Not persisted: the grace is for callers of this
    /// daemon's lifetime.
    pub handed_out: u64,
    /// The (redacted) URLs it was fetched from, oldest first.
    pub urls: Vec<String>,
    /// The leases that pin it.
    pub pins: Vec<Pin>,
    /// Last use or URLs changed since the last flush to `meta.redb`.
    pub dirty: bool,
}

impl Entry {
    /// An entry for a record read from `meta.redb`.
    pub fn from_record(record: Record, pins: Vec<Pin>) -> Entry {
        Entry {
            size: record.size,
            added: record.added,
            last_used: record.last_used,
            handed_out: 0,
            urls: record.urls,
            pins,
            dirty: false,
        }
    }

    /// The record to persist.
    pub fn record(&self) -> Record {
        Record {
            size: self.size,
            added: self.added,
            last_used: self.last_used,
            urls: self.urls.clone(),
        }
    }

    /// Whether a lease holds it at `now`.
    pub fn leased(&self, now: u64) -> bool {
        self.pins.iter().any(|p| p.holds(now))
    }

    /// Notes a use from `url` at `now`; the path is being handed out.
    fn touch(&mut self, url: &str, now: u64) {
        self.last_used = now;
        self.handed_out = now;
        if !url.is_empty() && !self.urls.iter().any(|u| u == url) {
            if self.urls.len() >= MAX_URLS {
                self.urls.remove(0);
            }
            self.urls.push(url.to_owned());
        }
        self.dirty = true;
    }
}

/// Every record and every pin (by digest) the index holds.
pub(super) type Snapshot = (Vec<(Digest, Record)>, Vec<(Digest, Pin)>);

/// Why an asset is to be removed, and so what may stop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Removal {
    /// An admin's delete: refused while leased, unless forced.
    Delete {
        /// Remove even if leased.
        force: bool,
    },
    /// Eviction: never a leased asset; not one handed out less than `grace_ms`
    /// ago unless `floor` (the free-space floor is at stake).
    Evict {
        /// The unleased grace, milliseconds.
        grace_ms: u64,
        /// Free space is below the floor: the grace gives way.
        floor: bool,
    },
}

/// Why a removal was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Not cached.
    Absent,
    /// Held by these leases.
    Leased(Vec<String>),
    /// Handed out without a lease within the grace.
    InGrace,
}

/// What is cached, by digest (ordered, so `List` pages are range reads).
#[derive(Debug, Default)]
pub(super) struct Index {
    entries: BTreeMap<Digest, Entry>,
}

impl Index {
    /// An index of `entries`.
    pub fn new(entries: BTreeMap<Digest, Entry>) -> Index {
        Index { entries }
    }

    pub fn get(&self, digest: &Digest) -> Option<&Entry> {
        self.entries.get(digest)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries after `after`, in digest order.
    pub fn range_after(
        &self,
        after: Option<&Digest>,
    ) -> impl Iterator<Item = (&Digest, &Entry)> + '_ {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.entries.range((start, Bound::Unbounded))
    }

    pub fn digests(&self) -> Vec<Digest> {
        self.entries.keys().copied().collect()
    }

    /// A hit: notes the use and returns the entry, or `None` when not cached.
    pub fn touch(&mut self, digest: &Digest, url: &str, now: u64) -> Option<&Entry> {
        let entry = self.entries.get_mut(digest)?;
        entry.touch(url, now);
        Some(entry)
    }

    /// Adds a committed asset (handed out now). An entry already there keeps
    /// its pins: a pin is never dropped but by its lease.
    pub fn insert(&mut self, digest: Digest, mut entry: Entry, url: &str, now: u64) {
        if let Some(old) = self.entries.remove(&digest) {
            entry.pins = old.pins;
        }
        entry.touch(url, now);
        self.entries.insert(digest, entry);
    }

    /// Puts back an entry [`Index::take`] took, when its file could not be
    /// removed after all.
    pub fn insert_back(&mut self, digest: Digest, entry: Entry) {
        self.entries.insert(digest, entry);
    }

    /// Pins `digest` for `owner`'s `lease` until `expires`, replacing that
    /// lease's earlier pin; false when it is not cached.
    pub fn pin(&mut self, digest: &Digest, lease: &str, owner: u32, expires: Option<u64>) -> bool {
        let Some(entry) = self.entries.get_mut(digest) else {
            return false;
        };
        entry.pins.retain(|p| !p.is(lease, owner));
        entry.pins.push(Pin {
            lease: lease.to_owned(),
            owner,
            expires,
        });
        true
    }

    /// Drops `owner`'s `lease` pin of `digest`, restoring `previous` (the
    /// pin it replaced, if any): undoes a [`Index::pin`] that could not be
    /// made durable.
    pub fn unpin(&mut self, digest: &Digest, lease: &str, owner: u32, previous: Option<Pin>) {
        if let Some(entry) = self.entries.get_mut(digest) {
            entry.pins.retain(|p| !p.is(lease, owner));
            entry.pins.extend(previous);
        }
    }

    /// Drops every pin of `lease` owned by `owner`, or by anyone when
    /// `owner` is `None`.
    pub fn release(&mut self, lease: &str, owner: Option<u32>) {
        for entry in self.entries.values_mut() {
            entry
                .pins
                .retain(|p| p.lease != lease || owner.is_some_and(|o| o != p.owner));
        }
    }

    /// Bytes of the assets `owner` holds a live pin on, and whether
    /// `digest` is among them.
    pub fn pinned_bytes_of(&self, owner: u32, now: u64, digest: &Digest) -> (u64, bool) {
        let mut bytes = 0;
        let mut has = false;
        for (d, entry) in &self.entries {
            if entry.pins.iter().any(|p| p.owner == owner && p.holds(now)) {
                bytes += entry.size;
                has |= d == digest;
            }
        }
        (bytes, has)
    }

    /// How many pins `owner` holds at `now` (lapsed ones hold nothing).
    pub fn pins_of(&self, owner: u32, now: u64) -> usize {
        self.entries
            .values()
            .flat_map(|e| &e.pins)
            .filter(|p| p.owner == owner && p.holds(now))
            .count()
    }

    /// Drops the pins that lapsed by `now`; returns how many.
    pub fn sweep_lapsed(&mut self, now: u64) -> usize {
        let mut swept = 0;
        for entry in self.entries.values_mut() {
            let before = entry.pins.len();
            entry.pins.retain(|p| p.holds(now));
            swept += before - entry.pins.len();
        }
        swept
    }

    /// Takes `digest` out if `why` allows it now; the caller then unlinks it.
    pub fn take(&mut self, digest: &Digest, why: Removal, now: u64) -> Result<Entry, Refusal> {
        let entry = self.entries.get(digest).ok_or(Refusal::Absent)?;
        self.check(entry, why, now)?;
        self.entries.remove(digest).ok_or(Refusal::Absent)
    }

    /// Whether `why` may remove `entry` now.
    fn check(&self, entry: &Entry, why: Removal, now: u64) -> Result<(), Refusal> {
        let leases = || -> Vec<String> {
            entry
                .pins
                .iter()
                .filter(|p| p.holds(now))
                .map(|p| p.lease.clone())
                .collect()
        };
        match why {
            Removal::Delete { force: true } => Ok(()),
            Removal::Delete { force: false } | Removal::Evict { .. } if entry.leased(now) => {
                Err(Refusal::Leased(leases()))
            }
            Removal::Evict { grace_ms, floor } => {
                let graced =
                    entry.handed_out != 0 && entry.handed_out.saturating_add(grace_ms) > now;
                if graced && !floor {
                    Err(Refusal::InGrace)
                } else {
                    Ok(())
                }
            }
            Removal::Delete { force: false } => Ok(()),
        }
    }

    /// Eviction candidates as (last use, digest, size): unleased, not in
    /// `keep`, unordered (sort them with [`eviction_order`] once the lock is
    /// released). Grace is judged per candidate at removal time, as it
    /// depends on whether the floor is at stake then.
    pub fn eviction_candidates(&self, keep: &HashSet<Digest>, now: u64) -> Vec<(u64, Digest, u64)> {
        self.entries
            .iter()
            .filter(|(d, e)| !keep.contains(d) && !e.leased(now))
            .map(|(d, e)| (e.last_used, *d, e.size))
            .collect()
    }

    /// Whether eviction would be allowed to take `digest` now (for dry runs).
    pub fn evictable(&self, digest: &Digest, why: Removal, now: u64) -> bool {
        self.entries
            .get(digest)
            .is_some_and(|e| self.check(e, why, now).is_ok())
    }

    /// Total bytes cached.
    pub fn bytes(&self) -> u64 {
        self.entries.values().map(|e| e.size).sum()
    }

    /// The records changed since the last flush, marked clean.
    pub fn take_dirty(&mut self) -> Vec<(Digest, Record)> {
        self.entries
            .iter_mut()
            .filter(|(_, e)| e.dirty)
            .map(|(d, e)| {
                e.dirty = false;
                (*d, e.record())
            })
            .collect()
    }

    /// Every record and every pin, for a rewrite of `meta.redb` from memory.
    pub fn snapshot(&self) -> Snapshot {
        let records = self.entries.iter().map(|(d, e)| (*d, e.record())).collect();
        let pins = self
            .entries
            .iter()
            .flat_map(|(d, e)| e.pins.iter().map(|p| (*d, p.clone())))
            .collect();
        (records, pins)
    }

    /// Marks `digests` dirty again after a failed flush.
    pub fn mark_dirty(&mut self, digests: impl IntoIterator<Item = Digest>) {
        for d in digests {
            if let Some(e) = self.entries.get_mut(&d) {
                e.dirty = true;
            }
        }
    }
}

/// `candidates` least recently used first, as (digest, size).
pub(super) fn eviction_order(mut candidates: Vec<(u64, Digest, u64)>) -> Vec<(Digest, u64)> {
    candidates.sort_unstable();
    candidates
        .into_iter()
        .map(|(_, d, size)| (d, size))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    fn entry(size: u64, last_used: u64) -> Entry {
        Entry {
            size,
            added: 0,
            last_used,
            handed_out: 0,
            urls: Vec::new(),
            pins: Vec::new(),
            dirty: false,
        }
    }

    fn index(entries: &[(u8, u64, u64)]) -> Index {
        Index::new(
            entries
                .iter()
                .map(|&(n, size, used)| (d(n), entry(size, used)))
                .collect(),
        )
    }

    const EVICT: Removal = Removal::Evict {
        grace_ms: 60_000,
        floor: false,
    };

    #[test]
    fn eviction_order_is_least_recently_used_without_leased_or_kept() {
        let mut idx = index(&[(1, 10, 300), (2, 20, 100), (3, 30, 200), (4, 40, 50)]);
        assert!(idx.pin(&d(4), "sandbox", 0, None));
        let keep = HashSet::from([d(3)]);
        let order = |idx: &Index| eviction_order(idx.eviction_candidates(&keep, 1000));
        assert_eq!(order(&idx), vec![(d(2), 20), (d(1), 10)]);
        // A lapsed pin no longer holds.
        assert!(idx.pin(&d(4), "sandbox", 0, Some(999)));
        assert_eq!(order(&idx)[0], (d(4), 40));
    }

    #[test]
    fn a_pin_and_a_removal_exclude_each_other() {
        let mut idx = index(&[(1, 10, 0)]);
        assert!(idx.pin(&d(1), "a", 0, None));
        assert_eq!(
            idx.take(&d(1), EVICT, 0),
            Err(Refusal::Leased(vec!["a".into()]))
        );
        assert_eq!(
            idx.take(&d(1), Removal::Delete { force: false }, 0),
            Err(Refusal::Leased(vec!["a".into()]))
        );
        idx.release("a", Some(0));
        assert!(idx.take(&d(1), EVICT, 0).is_ok());
        // Once taken, a pin finds nothing: the caller must fetch again.
        assert!(!idx.pin(&d(1), "a", 0, None));
        assert!(idx.touch(&d(1), "", 0).is_none());
    }

    #[test]
    fn a_forced_delete_takes_a_leased_asset() {
        let mut idx = index(&[(1, 10, 0)]);
        assert!(idx.pin(&d(1), "a", 0, None));
        assert!(idx.take(&d(1), Removal::Delete { force: true }, 0).is_ok());
    }

    #[test]
    fn grace_keeps_a_handed_out_path_unless_the_floor_is_at_stake() {
        let mut idx = index(&[(1, 10, 0)]);
        assert!(idx.touch(&d(1), "http://h/x", 1_000).is_some());
        assert_eq!(idx.take(&d(1), EVICT, 60_999), Err(Refusal::InGrace));
        let floor = Removal::Evict {
            grace_ms: 60_000,
            floor: true,
        };
        assert!(idx.evictable(&d(1), floor, 2_000));
        assert!(idx.take(&d(1), EVICT, 61_000).is_ok(), "grace over");
    }

    #[test]
    fn a_failed_durable_pin_is_undone_to_the_previous_one() {
        let mut idx = index(&[(1, 10, 0)]);
        assert!(idx.pin(&d(1), "a", 0, Some(5)));
        let previous = idx.get(&d(1)).unwrap().pins[0].clone();
        assert!(idx.pin(&d(1), "a", 0, None));
        idx.unpin(&d(1), "a", 0, Some(previous.clone()));
        assert_eq!(idx.get(&d(1)).unwrap().pins, vec![previous]);
    }

    #[test]
    fn a_release_takes_only_the_owners_pins_unless_by_an_admin() {
        let mut idx = index(&[(1, 10, 0), (2, 10, 0)]);
        assert!(idx.pin(&d(1), "x", 0, None));
        assert!(idx.pin(&d(2), "x", 1000, None));
        assert!(idx.pin(&d(2), "y", 1000, Some(5)));
        assert_eq!(idx.pins_of(1000, 0), 2);
        assert_eq!(idx.pins_of(1000, 5), 1, "a lapsed pin is not counted");
        idx.release("x", Some(1000));
        assert!(idx.get(&d(1)).unwrap().leased(0), "root's x stays");
        assert_eq!(idx.pins_of(1000, 0), 1);
        assert!(idx.pin(&d(2), "x", 1000, None));
        idx.release("x", None);
        assert_eq!(idx.pins_of(0, 0), 0);
        assert_eq!(idx.pins_of(1000, 0), 1, "only y is left");
    }

    #[test]
    fn touches_are_flushed_once() {
        let mut idx = index(&[(1, 10, 0), (2, 20, 0)]);
        idx.touch(&d(2), "http://h/b", 7);
        idx.touch(&d(2), "http://h/b", 8);
        let dirty = idx.take_dirty();
        assert_eq!(dirty.len(), 1);
        assert_eq!(dirty[0].0, d(2));
        assert_eq!(dirty[0].1.last_used, 8);
        assert_eq!(dirty[0].1.urls, vec!["http://h/b".to_owned()]);
        assert!(idx.take_dirty().is_empty());
    }

    #[test]
    fn urls_kept_per_asset_are_bounded() {
        let mut idx = index(&[(1, 10, 0)]);
        for i in 0..100 {
            idx.touch(&d(1), &format!("http://h/{i}"), i);
        }
        let urls = &idx.get(&d(1)).unwrap().urls;
        assert_eq!(urls.len(), MAX_URLS);
        assert_eq!(urls.last().unwrap(), "http://h/99");
    }
}
