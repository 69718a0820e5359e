//! The daemon's configuration: one typed value, validated once at start.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default size limit: 8 GiB, above any kernel or rootfs image we serve
/// and below what would fill an ordinary node's disk by mistake.
pub const DEFAULT_MAX_SIZE: u64 = 8 << 30;

/// Transfers at once: enough to keep a node's link busy, few enough that
/// each gets a useful share of it.
pub const DEFAULT_MAX_TRANSFERS: usize = 8;
/// Transfers at once against one host, so one slow server cannot take
/// every slot.
pub const DEFAULT_MAX_PER_HOST: usize = 4;
/// Tries per URL (the count starts over whenever a try made progress).
pub const DEFAULT_ATTEMPTS: u32 = 5;

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
    /// Transfers running at once; the rest wait in order.
    pub max_transfers: usize,
    /// Transfers running at once against one host.
    pub max_per_host: usize,
    /// Tries per URL before moving to the next mirror.
    pub attempts: u32,
    /// No bytes for this long counts as a failure.
    pub stall_timeout: Duration,
    /// Free space to keep on the store's file system, in bytes.
    pub reserve_free: u64,
    /// Most bytes of cached assets; `None` for no cap.
    pub max_cache_bytes: Option<u64>,
    /// Free space eviction keeps on the file system.
    pub min_free: MinFree,
    /// Time between the daemon's own garbage collections.
    pub gc_interval: Duration,
}

/// Free space to keep: bytes, or a share of the file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinFree {
    /// No floor.
    #[default]
    None,
    /// This many bytes.
    Bytes(u64),
    /// This percentage of the file system.
    Percent(u8),
}

/// Parses `--min-free`: bytes as for [`parse_size`], or a percentage (`10%`).
pub fn parse_min_free(value: &str) -> Result<MinFree, ConfigError> {
    match value.trim().strip_suffix('%') {
        Some(pct) => match pct.trim().parse::<u8>() {
            Ok(p) if p <= 100 => Ok(MinFree::Percent(p)),
            _ => Err(ConfigError::BadSize {
                value: value.to_owned(),
            }),
        },
        None => Ok(match parse_size(value)? {
            0 => MinFree::None,
            n => MinFree::Bytes(n),
        }),
    }
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
    /// A path that cannot be made absolute.
    #[error("{path}: {source}")]
    Path {
        /// The path as given.
        path: PathBuf,
        /// Why.
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
    /// A count that must be at least 1.
    #[error("{what} must be more than 0")]
    Zero {
        /// The setting.
        what: &'static str,
    },
    /// A duration that does not parse.
    #[error("malformed duration {value:?}: want a number with ms, s or m (500ms, 30s, 2m)")]
    BadDuration {
        /// The value as given.
        value: String,
    },
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
    // Without a home, a folder of this user's own: never one another user
    // could have made first (the store refuses a root it does not own).
    let uid = nix::unistd::geteuid();
    let home = env("HOME").unwrap_or_else(|| PathBuf::from(format!("/tmp/assetd-{uid}")));
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
        // Paths handed to clients must be absolute, whatever the working folder.
        self.root = absolute(&self.root)?;
        self.socket = absolute(&self.socket)?;
        if self.max_size == 0 {
            return Err(ConfigError::ZeroMaxSize);
        }
        for (what, d) in [
            ("gc interval", self.gc_interval),
            ("stall timeout", self.stall_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero { what });
            }
        }
        for (what, n) in [
            ("max transfers", self.max_transfers),
            ("max per host", self.max_per_host),
            ("attempts", self.attempts as usize),
        ] {
            if n == 0 {
                return Err(ConfigError::Zero { what });
            }
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

fn absolute(path: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path).map_err(|source| ConfigError::Path {
        path: path.to_owned(),
        source,
    })
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

/// Parses a duration such as `30s`, `500ms` or `2m` (a bare number is seconds).
pub fn parse_duration(value: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::BadDuration {
        value: value.to_owned(),
    };
    let text = value.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
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
    fn parse_min_free_takes_bytes_or_percent() {
        assert_eq!(parse_min_free("10%").unwrap(), MinFree::Percent(10));
        assert_eq!(parse_min_free("2GiB").unwrap(), MinFree::Bytes(2 << 30));
        assert_eq!(parse_min_free("0").unwrap(), MinFree::None);
        for bad in ["101%", "x%", "-1%", "lots"] {
            let err = parse_min_free(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
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
    fn parse_duration_accepts_units_and_refuses_garbage() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "-1s", "3h", "1e400", "x"] {
            let err = parse_duration(bad).unwrap_err();
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
            max_transfers: 1,
            max_per_host: 1,
            attempts: 1,
            stall_timeout: Duration::from_secs(30),
            reserve_free: 0,
            max_cache_bytes: None,
            min_free: MinFree::None,
            gc_interval: Duration::from_secs(60),
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
