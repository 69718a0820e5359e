//! The daemon's configuration: one typed value, validated once at start.

use std::path::{Path, PathBuf};

/// The default size limit: 8 GiB, above any kernel or rootfs image we serve
/// and below what would fill an ordinary node's disk by mistake.
pub const DEFAULT_MAX_SIZE: u64 = 8 << 30;

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// What the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The store's folder (`blobs/`, `ingest/`).
    pub root: PathBuf,
    /// The unix socket the gRPC API is served on.
    pub socket: PathBuf,
    /// Folders `file://` URLs may read from; empty disables `file://`.
    pub file_roots: Vec<PathBuf>,
    /// The largest asset accepted, in bytes.
    pub max_size: u64,
    /// A GCS emulator (`host:port` or URL) to use instead of GCS, without
    /// credentials; from `STORAGE_EMULATOR_HOST` by default.
    pub gcs_emulator: Option<String>,
    /// Read `gs://` without credentials (public buckets only).
    pub gcs_anonymous: bool,
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `--file-root` folder does not exist or cannot be resolved.
    #[error("file root {path}: {source}")]
    FileRoot {
        /// The folder as given.
        path: PathBuf,
        /// Why it cannot be used.
        source: std::io::Error,
    },
    /// The socket path is longer than a unix socket address allows.
    #[error("socket path {path} is {len} bytes long; unix sockets allow at most {MAX_SOCKET_PATH}")]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// A size limit of zero would refuse everything.
    #[error("max size must be at least 1 byte")]
    ZeroMaxSize,
    /// A size that does not parse.
    #[error(
        "malformed size {value:?}: want bytes, optionally with a unit (KiB, MiB, GiB, TiB, K, M, G, T)"
    )]
    BadSize {
        /// The value as given.
        value: String,
    },
}

/// Where the daemon lives by default: the system paths for root, the
/// user's cache and runtime folders (XDG) for anyone else.
pub fn default_paths() -> (PathBuf, PathBuf) {
    let env = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if nix::unistd::geteuid().is_root() {
        return (
            PathBuf::from("/var/lib/assetd"),
            PathBuf::from("/run/assetd/assetd.sock"),
        );
    }
    let home = env("HOME").unwrap_or_else(|| PathBuf::from("/tmp"));
    let root = env("XDG_CACHE_HOME")
        .unwrap_or_else(|| home.join(".cache"))
        .join("assetd");
    let socket = match env("XDG_RUNTIME_DIR") {
        Some(run) => run.join("assetd").join("assetd.sock"),
        None => root.join("assetd.sock"),
    };
    (root, socket)
}

impl Config {
    /// Checks the values and resolves the file roots to canonical paths, so
    /// later containment checks compare like with like.
    pub fn validate(mut self) -> Result<Config, ConfigError> {
        if self.max_size == 0 {
            return Err(ConfigError::ZeroMaxSize);
        }
        let len = self.socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(ConfigError::SocketPathTooLong {
                path: self.socket,
                len,
            });
        }
        self.file_roots = self
            .file_roots
            .iter()
            .map(|p| canonical_dir(p))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }
}

fn canonical_dir(path: &Path) -> Result<PathBuf, ConfigError> {
    let fail = |source| ConfigError::FileRoot {
        path: path.to_owned(),
        source,
    };
    let real = std::fs::canonicalize(path).map_err(fail)?;
    if !real.is_dir() {
        return Err(fail(std::io::Error::other("not a folder")));
    }
    Ok(real)
}

/// Parses a byte count such as `8589934592`, `8GiB` or `512M` (binary units).
pub fn parse_size(value: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize {
        value: value.to_owned(),
    };
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_size_accepts_bytes_and_binary_units() {
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1 TiB").unwrap(), 1 << 40);
    }

    #[test]
    fn parse_size_refuses_garbage_naming_it() {
        for bad in [
            "",
            "GiB",
            "-1",
            "1.5G",
            "12XB",
            "99999999999999999999",
            "20000000T",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn validate_refuses_missing_file_root_and_long_socket() {
        let config = Config {
            root: "/tmp/x".into(),
            socket: "/tmp/x.sock".into(),
            file_roots: vec!["/nonexistent/assetd-root".into()],
            max_size: 1,
            gcs_emulator: None,
            gcs_anonymous: false,
        };
        let err = config.clone().validate().unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/assetd-root"),
            "{err}"
        );
        let long = Config {
            socket: PathBuf::from(format!("/tmp/{}", "s".repeat(120))),
            file_roots: vec![],
            ..config
        };
        assert!(matches!(
            long.validate(),
            Err(ConfigError::SocketPathTooLong { .. })
        ));
    }
}
