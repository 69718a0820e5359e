//! Accepting connections: at most so many open connections per user (admins
//! exempt), a pause after an accept error (the file-descriptor limit, say)
//! instead of a spin at 100% CPU, and a deadline for the client's HTTP/2
//! preface. A connection with no call open and nothing but pings from the
//! client closes after the idle timeout (see [`super::idle`]). A connection
//! that has spoken is kept alive by HTTP/2 pings (see
//! [`super::serve`]): one whose peer stops answering them is closed.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::Stream;

use super::authority::FixAuthority;
use crate::config::ServerConfig;

/// Pause after a failed accept: long enough not to spin while descriptors
/// are exhausted, short enough to take connections again soon after.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Least time between two warnings about refused connections or accept
/// errors, so a hostile client can't flood the log.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Open connections by uid.
type Counts = Arc<Mutex<HashMap<u32, usize>>>;

/// One open connection of a user; the count goes down when it is dropped.
#[derive(Debug)]
pub(super) struct Slot {
    uid: u32,
    counts: Counts,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

/// The connections `listener` accepts, each holding its user's slot.
/// Connections of a user at `per_uid` open ones are closed at once; root
/// and the daemon's own user are exempt. Never yields an error.
pub(super) fn incoming(
    listener: UnixListener,
    config: &ServerConfig,
) -> impl Stream<Item = io::Result<FixAuthority>> {
    let per_uid = config.max_connections_per_uid;
    let (handshake_timeout, idle_timeout) = (config.handshake_timeout.0, config.idle_timeout.0);
    let exempt: Arc<[u32]> = config.admin_uids.iter().copied().collect();
    let counts: Counts = Arc::default();
    let warned = Arc::new(Warned::default());
    futures_util::stream::unfold(listener, move |listener| {
        let (counts, warned, exempt) = (counts.clone(), warned.clone(), exempt.clone());
        async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => match admit(&stream, &counts, per_uid, &exempt) {
                        Ok(slot) => {
                            let mut conn = FixAuthority::new(stream)
                                .with_slot(slot)
                                .with_handshake_timeout(handshake_timeout);
                            if !idle_timeout.is_zero() {
                                conn = conn.with_idle_timeout(idle_timeout);
                            }
                            return Some((Ok(conn), listener));
                        }
                        Err(uid) => warned.warn(|| {
                            tracing::warn!(
                                uid,
                                per_uid,
                                "connection refused: the user has the most open connections allowed"
                            )
                        }),
                    },
                    Err(e) => {
                        warned.warn(|| tracing::warn!(error = %e, "accept failed; pausing"));
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            }
        }
    })
}

/// A slot for `stream`'s user (`None` for root, the daemon's user and the
/// `exempt` admin uids), or its uid when it has `per_uid` open connections
/// already.
fn admit(
    stream: &UnixStream,
    counts: &Counts,
    per_uid: usize,
    exempt: &[u32],
) -> Result<Option<Slot>, u32> {
    let Ok(cred) = stream.peer_cred() else {
        // No credentials: the handlers refuse every call that needs them.
        return Ok(None);
    };
    let uid = cred.uid();
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() || exempt.contains(&uid) {
        return Ok(None);
    }
    let mut map = counts.lock().unwrap_or_else(PoisonError::into_inner);
    let open = map.entry(uid).or_insert(0);
    if *open >= per_uid {
        return Err(uid);
    }
    *open += 1;
    Ok(Some(Slot {
        uid,
        counts: counts.clone(),
    }))
}

/// When the last warning was logged, in ms since `start`.
#[derive(Debug)]
struct Warned {
    start: Instant,
    last_ms: AtomicU64,
}

impl Default for Warned {
    fn default() -> Warned {
        Warned {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Warned {
    /// Runs `log` unless a warning was logged within [`WARN_EVERY`].
    fn warn(&self, log: impl FnOnce()) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_ms.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= every)
            && self
                .last_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log();
        }
    }
}
