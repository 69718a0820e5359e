//! The listening socket: one daemon per socket path, removed when the
//! daemon is done with it.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use super::ServerError;
use crate::config::ServerConfig;

/// A listening unix socket. One the daemon bound itself has its file removed
/// when this is dropped, whatever path the daemon takes out.
#[derive(Debug)]
pub struct Listener {
    listener: Option<UnixListener>,
    /// The socket file to remove; `None` for a socket someone else owns.
    path: Option<PathBuf>,
}

impl Listener {
    /// Binds `config.socket` with its mode and group, creating its folder.
    /// A stale socket file (nobody answers) is replaced; a live one means
    /// another daemon ([`ServerError::AlreadyServing`]). Needs a tokio
    /// runtime.
    pub fn bind(config: &ServerConfig) -> Result<Listener, ServerError> {
        let path = &config.socket;
        Ok(Listener {
            listener: Some(bind(path, config.socket_mode.0, config.socket_gid)?),
            path: Some(path.to_owned()),
        })
    }

    /// A socket bound by someone else (a test, systemd), left in place on
    /// drop.
    pub fn inherited(listener: UnixListener) -> Listener {
        Listener {
            listener: Some(listener),
            path: None,
        }
    }

    /// The same for a std listener (as systemd passes it), registered with
    /// the runtime. Needs a tokio runtime.
    pub fn inherited_std(
        listener: std::os::unix::net::UnixListener,
    ) -> Result<Listener, ServerError> {
        let io = |op, source| ServerError::Io {
            op,
            path: PathBuf::from("(the socket passed)"),
            source,
        };
        listener
            .set_nonblocking(true)
            .map_err(|e| io("set non-blocking", e))?;
        let listener = UnixListener::from_std(listener).map_err(|e| io("register", e))?;
        Ok(Listener::inherited(listener))
    }

    /// Where the socket is, for logs.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The listener, to serve on; the file stays until `self` is dropped.
    pub(super) fn take(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            remove(path);
        }
    }
}

/// Binds `path` with permissions `mode` and group `gid`, creating its
/// folder. A stale socket file (nobody answers) is replaced; a live one
/// means another daemon, and is refused.
fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<UnixListener, ServerError> {
    let io = |op, source| ServerError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| io("create folder of", e))?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServerError::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(ServerError::AlreadyServing {
                    path: path.to_owned(),
                });
            }
            Err(_) => {
                tracing::info!(socket = %path.display(), "replacing stale socket");
                fs::remove_file(path).map_err(|e| io("remove stale socket", e))?;
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("stat", e)),
    }
    // The umask keeps the socket as closed as `mode` from the moment it
    // exists, and closed to the group until it is the right group: a chmod
    // after bind would leave a window where anyone could connect.
    let umask_bits = if gid.is_some() { 0o077 } else { !mode & 0o777 };
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask_bits));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(umask);
    let listener = bound.map_err(|e| io("bind", e))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| io("chgrp", e))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| io("chmod", e))?;
    Ok(listener)
}

/// Removes the socket file after serving; a failure is only logged.
fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        tracing::warn!(socket = %path.display(), error = %e, "could not remove socket");
    }
}
