//! Running under systemd: a socket passed by socket activation
//! (`LISTEN_FDS`), and the notify protocol (`READY=1` once serving,
//! `STATUS=` lines, `WATCHDOG=1` when the unit sets `WatchdogSec=`,
//! `STOPPING=1` on shutdown). Without systemd every call here does nothing:
//! no `LISTEN_FDS`, no `NOTIFY_SOCKET`.

use std::os::unix::net::UnixListener;
use std::time::Duration;

use listenfd::ListenFd;
use nix::sys::socket::{getsockopt, sockopt};
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::fetch::{Fetcher, Stats};
use crate::server::ServerError;

/// Time between `STATUS=` lines.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// The socket systemd passed, if it passed one (`LISTEN_FDS`). More than
/// one, or one that is not a listening unix stream socket, is an error
/// naming what was passed. Call it once, before any thread starts: it
/// takes the descriptor over and clears the variables (so no child
/// inherits them).
pub fn take_listener() -> Result<Option<UnixListener>, ServerError> {
    let bad = |reason: String| ServerError::Activation { reason };
    let mut fds = ListenFd::from_env();
    match fds.len() {
        0 => return Ok(None),
        1 => {}
        n => {
            return Err(bad(format!(
                "{n} sockets passed; assetd serves exactly one (one ListenStream= in the .socket unit)"
            )));
        }
    }
    let listener = fds
        .take_unix_listener(0)
        .map_err(|e| bad(format!("the socket passed: {e}")))?
        .ok_or_else(|| bad("the socket passed is gone".to_owned()))?;
    if !getsockopt(&listener, sockopt::AcceptConn).unwrap_or(false) {
        return Err(bad(
            "the socket passed is not listening (Accept=no and a stream socket are wanted)"
                .to_owned(),
        ));
    }
    Ok(Some(listener))
}

/// Tells systemd the daemon is serving.
pub fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Until `stop`: `STATUS=` lines every [`STATUS_EVERY`], and `WATCHDOG=1` at
/// half the watchdog interval when systemd asks for it. A ping is only sent
/// from a runtime that still runs tasks; a wedged daemon misses it and
/// systemd restarts it.
pub async fn report(fetcher: Fetcher, stop: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog.map_or(STATUS_EVERY, |w| (w / 2).min(STATUS_EVERY));
    let mut tick = tokio::time::interval(every);
    let mut last_status = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if watchdog.is_some() {
            notify(&[NotifyState::Watchdog]);
        }
        let due = last_status.is_none_or(|at: tokio::time::Instant| at.elapsed() >= STATUS_EVERY);
        if due {
            last_status = Some(tokio::time::Instant::now());
            let status = status_line(fetcher.stats());
            notify(&[NotifyState::Status(&status)]);
        }
    }
}

/// What `systemctl status` shows under the unit.
fn status_line(stats: Stats) -> String {
    format!(
        "serving; {} assets cached ({:.1} GiB); {} transfers running, {} waiting",
        stats.assets,
        stats.bytes as f64 / (1u64 << 30) as f64,
        stats.running,
        stats.waiting
    )
}

/// Sends `state`; a failure (systemd gone, say) is only logged, at debug:
/// the daemon serves on regardless.
fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_has_real_numbers() {
        let line = status_line(Stats {
            assets: 3,
            bytes: 3 << 29,
            running: 2,
            waiting: 1,
        });
        assert_eq!(
            line,
            "serving; 3 assets cached (1.5 GiB); 2 transfers running, 1 waiting"
        );
    }
}
