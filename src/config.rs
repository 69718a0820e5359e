//! The daemon's configuration: one typed tree, validated once at start.
//!
//! Each component takes its own section: [`ServerConfig`] the socket,
//! [`StoreConfig`] the root, [`CacheConfig`] eviction and leases,
//! [`FetchConfig`] transfers and limits, [`SourcesConfig`] what sources may
//! read. The tree is serde-derived with `deny_unknown_fields`, so a file
//! can be loaded into it; command-line flags are overrides on top of it.
//! Sizes are written as bytes or with a binary unit (`"8GiB"`), durations
//! with a unit (`"30s"`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::source::{CaBundle, FileRoot, SourcePolicy, SourceRule};

/// The default size limit: 8 GiB, above any kernel or rootfs image we serve
/// and below what would fill an ordinary node's disk by mistake.
pub const DEFAULT_MAX_SIZE: u64 = 8 << 30;
/// Transfers at once: enough to keep a node's link busy, few enough that
/// each gets a useful share of it.
pub const DEFAULT_MAX_TRANSFERS: usize = 8;
/// Transfers at once against one host, so one slow server cannot take
/// every slot.
pub const DEFAULT_MAX_PER_HOST: usize = 4;
/// Transfers at once that one user started: half the overall slots, so
/// others always find some.
pub const DEFAULT_MAX_PER_UID: usize = 4;
/// Open connections one user may have: more than a runtime needs (one
/// channel multiplexes every call), few enough that one user can't take the
/// daemon's file descriptors, nor make it buffer much (each connection
/// carries at most 64 calls of at most 256 KiB requests).
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 16;
/// Time a client has to send the HTTP/2 preface: ample for any client on
/// the same node, short enough that silent connections don't pile up.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a connection may stay open with no call and nothing but pings:
/// a runtime that keeps a channel between sandbox starts reconnects
/// transparently, and an abandoned connection frees its user's slot.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Tries per URL (the count starts over whenever a try made progress).
pub const DEFAULT_ATTEMPTS: u32 = 5;
/// No bytes for this long is a failure: long enough for a slow CDN's first
/// byte, short enough to notice a dead link.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest transfer rate accepted, bytes a second, over a stall-timeout
/// window: 1 KiB/s is far below any working link and far above a trickle.
pub const DEFAULT_MIN_RATE: u64 = 1 << 10;
/// Longest one try at a URL may take, however fast bytes arrive: with
/// `attempts` tries (each resuming where the last stopped) a transfer can
/// hold its slot at most this times `attempts`. An hour moves 8 GiB at
/// 2.4 MB/s.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Connections a large transfer reads pieces over (as aria2c -x8, Dragonfly
/// and the Azure SDK do).
pub const DEFAULT_CONNECTIONS: usize = 8;
/// Below this, one stream: the extra requests cost more than they bring.
pub const DEFAULT_RANGED_MIN_SIZE: u64 = 64 << 20;
/// Free space kept on the store's file system for logs and the node's other
/// work: 512 MiB.
pub const DEFAULT_RESERVE_FREE: u64 = 512 << 20;
/// Time between garbage collections.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(60);
/// How long a path handed out without a lease is safe from eviction (unless
/// the free-space floor is at stake): long enough for a runtime to open the
/// file it was given, short enough not to pin a full cache.
pub const DEFAULT_UNLEASED_GRACE: Duration = Duration::from_secs(60);

/// The longest a lease of a caller that is not an admin pins an asset: a
/// day outlives any sandbox, and a pin its holder forgot lapses by itself.
pub const DEFAULT_MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lease pins one user (not an admin) may hold at once: far more than a
/// node's sandboxes use, few enough that one user can't pin the cache.
pub const DEFAULT_MAX_LEASES_PER_UID: usize = 1024;
/// Share of the store's file system one user's (not an admin's) leases may
/// hold: leased assets can't be evicted, so without it one user could pin
/// the cache full.
pub const DEFAULT_MAX_LEASED_PERCENT_PER_UID: u8 = 25;
/// Prewarm assets one user (not an admin) may have queued or running at
/// once: a node baseline fits, a flood of batches doesn't.
pub const DEFAULT_MAX_PREWARM_PER_UID: usize = 256;

/// The config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/assetd/assetd.toml";
/// Owner and group may connect to the socket; others may not. Group
/// membership is how an operator grants a runtime access without root.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// What the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The gRPC edge.
    pub server: ServerConfig,
    /// The on-disk store.
    pub store: StoreConfig,
    /// Eviction, leases and garbage collection.
    pub cache: CacheConfig,
    /// Transfers: limits, retries, slots.
    pub fetch: FetchConfig,
    /// What the sources may read and how they authenticate.
    pub sources: SourcesConfig,
}

/// The gRPC edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The unix socket the API is served on (unless systemd passes one).
    pub socket: PathBuf,
    /// The permissions of a socket the daemon creates.
    pub socket_mode: SocketMode,
    /// The group of a socket the daemon creates (its members may connect
    /// under the default mode); none keeps the daemon's group.
    pub socket_group: Option<String>,
    /// `socket_group`'s gid, resolved once by [`Config::validate`].
    #[serde(skip)]
    pub socket_gid: Option<u32>,
    /// Open connections one user may have (root and the daemon's user
    /// exempt); more are closed at once.
    pub max_connections_per_uid: usize,
    /// A connection whose HTTP/2 preface has not arrived in this long is
    /// closed.
    pub handshake_timeout: Seconds,
    /// A connection with no call open and nothing but pings from the
    /// client for this long is closed; 0 for never.
    pub idle_timeout: Seconds,
    /// A group whose members are admins too (besides root and the daemon's
    /// user): by primary gid, or listed as members in the group database.
    pub admin_group: Option<String>,
    /// `admin_group`'s gid, resolved once by [`Config::validate`].
    #[serde(skip)]
    pub admin_gid: Option<u32>,
    /// Users who are admins too (besides root and the daemon's user), by
    /// uid.
    pub admin_uids: Vec<u32>,
    /// Where Prometheus metrics are served: a loopback `address:port`, or
    /// a unix socket path (`/run/assetd/metrics.sock`); none for no metrics.
    pub metrics_listen: Option<String>,
    /// The log's format.
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// Where metrics are served, checked: never a network address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    /// A loopback address and port.
    Tcp(std::net::SocketAddr),
    /// A unix socket.
    Unix(PathBuf),
}

impl std::str::FromStr for MetricsListen {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<MetricsListen, ConfigError> {
        let bad = |reason: &str| ConfigError::MetricsListen {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.starts_with('/') {
            return Ok(MetricsListen::Unix(PathBuf::from(s)));
        }
        let addr: std::net::SocketAddr = s.parse().map_err(|_| {
            bad("want a loopback ADDRESS:PORT (127.0.0.1:9464) or an absolute socket path")
        })?;
        if !addr.ip().is_loopback() {
            return Err(bad(
                "metrics are served on loopback or a unix socket only (a scraper on the node, or a proxy in front)",
            ));
        }
        Ok(MetricsListen::Tcp(addr))
    }
}

/// The on-disk store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The store's folder (`blobs/`, `ingest/`, `meta.redb`).
    pub root: PathBuf,
}

/// Eviction, leases and garbage collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most bytes of cached assets; 0 for no cap.
    pub max_cache_bytes: ByteSize,
    /// Free space eviction keeps on the file system.
    pub min_free: MinFree,
    /// Time between the daemon's own garbage collections.
    pub gc_interval: Seconds,
    /// How long a path handed out without a lease is kept from eviction,
    /// unless the free-space floor is at stake.
    pub unleased_grace: Seconds,
    /// The longest a lease of a caller that is not an admin holds: a longer
    /// TTL, or none, is cut to this; 0 for no cap.
    pub max_lease_ttl: Seconds,
    /// Lease pins one user may hold (admins exempt); more are refused.
    pub max_leases_per_uid: usize,
    /// Bytes of assets one user's leases may hold (admins exempt): a size,
    /// or a share of the store's file system; 0 for no cap.
    pub max_leased_bytes_per_uid: MinFree,
}

/// Transfers: limits, retries, slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// The largest asset accepted; requests may only lower it.
    pub max_size: ByteSize,
    /// Transfers running at once; the rest wait in arrival order.
    pub max_transfers: usize,
    /// Transfers running at once against one host (or bucket).
    pub max_per_host: usize,
    /// Transfers running at once that one user started (admins exempt), so
    /// one user can't take every slot.
    pub max_per_uid: usize,
    /// Tries per URL before moving to the next mirror.
    pub attempts: u32,
    /// No bytes for this long counts as a failure (and is retried).
    pub stall_timeout: Seconds,
    /// Fewer bytes a second than this, over a `stall_timeout` window, is a
    /// stall too: a source trickling a byte now and then can't hold a slot.
    pub min_rate: ByteSize,
    /// Longest one try may take; past it the try fails (and counts against
    /// the URL's tries even when it brought bytes); 0 for no limit.
    pub attempt_timeout: Seconds,
    /// Free space to keep on the store's file system.
    pub reserve_free: ByteSize,
    /// Prewarm assets one user may have queued or running (admins exempt);
    /// a batch that would pass it is refused whole.
    pub max_prewarm_per_uid: usize,
    /// Connections one transfer reads pieces over, for a source that
    /// serves byte ranges; 1 for one stream always.
    pub connections: usize,
    /// Assets smaller than this are read in one stream.
    pub ranged_min_size: ByteSize,
}

/// What the sources may read and how they authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// Folders `file://` URLs may read from; empty (with no public ones)
    /// disables `file://`. A caller who is not an admin may bring only what
    /// others may read from them into the cache.
    pub file_roots: Vec<PathBuf>,
    /// File roots whose whole content any caller may bring into the
    /// world-readable cache.
    pub public_file_roots: Vec<PathBuf>,
    /// A GCS emulator (`host:port` or URL) to use instead of GCS, without
    /// credentials.
    pub gcs_emulator: Option<String>,
    /// Read `gs://` without credentials (public buckets only).
    pub gcs_anonymous: bool,
    /// Sources allowed despite the default refusal of loopback, link-local,
    /// unspecified and multicast addresses (CIDRs, host names, URL
    /// prefixes); when any names a `gs://` bucket, only those buckets.
    pub allow_source: Vec<SourceRule>,
    /// Sources refused whatever `allow_source` says.
    pub deny_source: Vec<SourceRule>,
    /// A PEM bundle of private CAs (internal artifact servers, a private
    /// GCS endpoint) trusted on top of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `ca_file`'s certificates, read and checked once by
    /// [`Config::validate`].
    #[serde(skip)]
    pub ca: CaBundle,
}

impl ServerConfig {
    /// Where metrics are served, if anywhere; checked by
    /// [`Config::validate`].
    pub fn metrics_listen(&self) -> Option<MetricsListen> {
        self.metrics_listen.as_deref().and_then(|l| l.parse().ok())
    }
}

impl SourcesConfig {
    /// The source policy these rules make.
    pub fn policy(&self) -> SourcePolicy {
        SourcePolicy::new(self.allow_source.clone(), self.deny_source.clone())
    }

    /// Every file root, public ones marked.
    pub fn file_roots(&self) -> Vec<FileRoot> {
        let root = |public| {
            move |path: &PathBuf| FileRoot {
                path: path.clone(),
                public,
            }
        };
        let private = self.file_roots.iter().map(root(false));
        private
            .chain(self.public_file_roots.iter().map(root(true)))
            .collect()
    }
}

impl Default for Config {
    fn default() -> Config {
        let (root, socket) = default_paths();
        Config {
            server: ServerConfig {
                socket,
                ..ServerConfig::default()
            },
            store: StoreConfig { root },
            cache: CacheConfig::default(),
            fetch: FetchConfig::default(),
            sources: SourcesConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            socket: default_paths().1,
            socket_mode: SocketMode(DEFAULT_SOCKET_MODE),
            socket_group: None,
            socket_gid: None,
            max_connections_per_uid: DEFAULT_MAX_CONNECTIONS_PER_UID,
            handshake_timeout: Seconds(DEFAULT_HANDSHAKE_TIMEOUT),
            idle_timeout: Seconds(DEFAULT_IDLE_TIMEOUT),
            admin_group: None,
            admin_gid: None,
            admin_uids: Vec::new(),
            metrics_listen: None,
            log_format: LogFormat::Text,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            root: default_paths().0,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig {
            max_cache_bytes: ByteSize(0),
            min_free: MinFree::None,
            gc_interval: Seconds(DEFAULT_GC_INTERVAL),
            unleased_grace: Seconds(DEFAULT_UNLEASED_GRACE),
            max_lease_ttl: Seconds(DEFAULT_MAX_LEASE_TTL),
            max_leases_per_uid: DEFAULT_MAX_LEASES_PER_UID,
            max_leased_bytes_per_uid: MinFree::Percent(DEFAULT_MAX_LEASED_PERCENT_PER_UID),
        }
    }
}

impl Default for FetchConfig {
    fn default() -> FetchConfig {
        FetchConfig {
            max_size: ByteSize(DEFAULT_MAX_SIZE),
            max_transfers: DEFAULT_MAX_TRANSFERS,
            max_per_host: DEFAULT_MAX_PER_HOST,
            max_per_uid: DEFAULT_MAX_PER_UID,
            attempts: DEFAULT_ATTEMPTS,
            stall_timeout: Seconds(DEFAULT_STALL_TIMEOUT),
            min_rate: ByteSize(DEFAULT_MIN_RATE),
            attempt_timeout: Seconds(DEFAULT_ATTEMPT_TIMEOUT),
            reserve_free: ByteSize(DEFAULT_RESERVE_FREE),
            max_prewarm_per_uid: DEFAULT_MAX_PREWARM_PER_UID,
            connections: DEFAULT_CONNECTIONS,
            ranged_min_size: ByteSize(DEFAULT_RANGED_MIN_SIZE),
        }
    }
}

impl CacheConfig {
    /// The cache's cap in bytes, if any.
    pub fn max_bytes(&self) -> Option<u64> {
        (self.max_cache_bytes.0 > 0).then_some(self.max_cache_bytes.0)
    }

    /// Whether eviction has anything to enforce.
    pub fn evicts(&self) -> bool {
        self.max_bytes().is_some() || self.min_free != MinFree::None
    }
}

/// A byte count: bytes, or a string with a binary unit (`"8GiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

/// A duration: a string with a unit (`"30s"`, `"500ms"`, `"2m"`) or a
/// number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Seconds(pub Duration);

/// Permission bits of a unix socket, written in octal (`"0660"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl std::str::FromStr for SocketMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<SocketMode, ConfigError> {
        let bad = || ConfigError::BadMode {
            value: s.to_owned(),
        };
        let digits = s.strip_prefix("0o").unwrap_or(s);
        let mode = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
        if mode > 0o777 || digits.is_empty() {
            return Err(bad());
        }
        Ok(SocketMode(mode))
    }
}

impl fmt::Display for SocketMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for SocketMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SocketMode, D::Error> {
        // Octal text only: a TOML integer 660 would silently mean 0o1224.
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
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

impl std::str::FromStr for ByteSize {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<ByteSize, ConfigError> {
        parse_size(s).map(ByteSize)
    }
}

impl std::str::FromStr for Seconds {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Seconds, ConfigError> {
        parse_duration(s).map(Seconds)
    }
}

impl std::str::FromStr for MinFree {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<MinFree, ConfigError> {
        parse_min_free(s)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n != 0 && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

impl fmt::Display for Seconds {
    /// Exact, so that it parses back to the same duration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ms, nanos) = (self.0.as_millis(), self.0.subsec_nanos());
        if !nanos.is_multiple_of(1_000_000) {
            let fraction = format!("{nanos:09}");
            return write!(
                f,
                "{}.{}s",
                self.0.as_secs(),
                fraction.trim_end_matches('0')
            );
        }
        for (per, unit) in [(3_600_000, "h"), (60_000, "m"), (1000, "s")] {
            if ms != 0 && ms.is_multiple_of(per) {
                return write!(f, "{}{unit}", ms / per);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl fmt::Display for MinFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MinFree::None => write!(f, "0"),
            MinFree::Bytes(n) => ByteSize(*n).fmt(f),
            MinFree::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Serializes as its display text; deserializes from that text or, for
/// bytes and seconds, a plain number.
macro_rules! text_serde {
    ($ty:ty, $expecting:literal, $from_u64:expr) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                struct Visit;
                impl serde::de::Visitor<'_> for Visit {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        Ok($from_u64(v))
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        u64::try_from(v)
                            .map($from_u64)
                            .map_err(|_| E::custom(format!("{v} is negative")))
                    }
                }
                d.deserialize_any(Visit)
            }
        }
    };
}

text_serde!(ByteSize, "bytes, or a size such as \"8GiB\"", ByteSize);
text_serde!(Seconds, "seconds, or a duration such as \"30s\"", |v| {
    Seconds(Duration::from_secs(v))
});
text_serde!(
    MinFree,
    "bytes, a size such as \"2GiB\" or a share such as \"10%\"",
    |v| if v == 0 {
        MinFree::None
    } else {
        MinFree::Bytes(v)
    }
);

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
    /// The `--ca-file` bundle cannot be read or holds no usable
    /// certificate.
    #[error("CA file {path} (--ca-file, sources.ca_file): {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A group setting names no group of this node.
    #[error("{key} {name:?}: {reason}")]
    Group {
        /// The setting.
        key: &'static str,
        /// The group as given.
        name: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The config file cannot be read.
    #[error("config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file does not parse, or holds an unknown key or a bad
    /// value: toml's message names the key and shows the line.
    #[error("config file {path}: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A metrics address that is not loopback or a socket path.
    #[error("metrics listen {value:?}: {reason}")]
    MetricsListen {
        /// The value as given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// Socket permissions that are not octal mode bits.
    #[error("malformed socket mode {value:?}: want octal permission bits such as 0660")]
    BadMode {
        /// The value as given.
        value: String,
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
    #[error("malformed duration {value:?}: want a number with ms, s, m or h (500ms, 30s, 2m, 1h)")]
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
    /// Checks the values and resolves paths: the root and socket made
    /// absolute (paths handed to clients must be, whatever the working
    /// folder), the file roots canonical (so containment checks compare like
    /// with like).
    pub fn validate(mut self) -> Result<Config, ConfigError> {
        self.store.root = absolute(&self.store.root)?;
        self.server.socket = absolute(&self.server.socket)?;
        if self.fetch.max_size.0 == 0 {
            return Err(ConfigError::ZeroMaxSize);
        }
        for (what, d) in [
            ("server.handshake_timeout", self.server.handshake_timeout),
            ("cache.gc_interval", self.cache.gc_interval),
            ("fetch.stall_timeout", self.fetch.stall_timeout),
        ] {
            if d.0.is_zero() {
                return Err(ConfigError::Zero { what });
            }
        }
        for (what, n) in [
            ("fetch.max_transfers", self.fetch.max_transfers),
            ("fetch.max_per_host", self.fetch.max_per_host),
            ("fetch.max_per_uid", self.fetch.max_per_uid),
            ("fetch.max_prewarm_per_uid", self.fetch.max_prewarm_per_uid),
            ("cache.max_leases_per_uid", self.cache.max_leases_per_uid),
            (
                "server.max_connections_per_uid",
                self.server.max_connections_per_uid,
            ),
            ("fetch.attempts", self.fetch.attempts as usize),
            ("fetch.connections", self.fetch.connections),
        ] {
            if n == 0 {
                return Err(ConfigError::Zero { what });
            }
        }
        let socket = &self.server.socket;
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(ConfigError::SocketPathTooLong {
                path: socket.clone(),
                len,
            });
        }
        self.sources.gcs_emulator = self.sources.gcs_emulator.filter(|h| !h.is_empty());
        for roots in [
            &mut self.sources.file_roots,
            &mut self.sources.public_file_roots,
        ] {
            *roots = roots
                .iter()
                .map(|p| canonical_dir(p))
                .collect::<Result<_, _>>()?;
        }
        self.sources.ca = match &self.sources.ca_file {
            Some(path) => CaBundle::load(path).map_err(|reason| ConfigError::CaFile {
                path: path.clone(),
                reason,
            })?,
            None => CaBundle::default(),
        };
        self.server.admin_gid = match &self.server.admin_group {
            Some(name) => Some(group_gid("admin group", name)?),
            None => None,
        };
        if let Some(listen) = &self.server.metrics_listen {
            listen.parse::<MetricsListen>()?;
        }
        self.server.socket_gid = match &self.server.socket_group {
            Some(name) => Some(group_gid("socket group", name)?),
            None => None,
        };
        Ok(self)
    }

    /// The configuration in the TOML file at `path`, over the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::ParseFile {
            path: path.to_owned(),
            message,
        })
    }

    /// The configuration in TOML `text`, over the defaults; a failure's
    /// message names the key and shows its line.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// The configuration as TOML, every key given (what `--print-config`
    /// prints, and [`Config::parse`] reads back).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}

fn absolute(path: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path).map_err(|source| ConfigError::Path {
        path: path.to_owned(),
        source,
    })
}

/// The gid of the group `name` (for the setting `key`), which must exist.
fn group_gid(key: &'static str, name: &str) -> Result<u32, ConfigError> {
    let fail = |reason: String| ConfigError::Group {
        key,
        name: name.to_owned(),
        reason,
    };
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(fail("no such group on this node".to_owned())),
        Err(e) => Err(fail(format!("looking it up: {e}"))),
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

/// Parses a duration such as `30s`, `500ms`, `1.5s`, `2m` or `1h` (a bare
/// number is seconds), exactly to the nanosecond: a float would round (and
/// [`Seconds`] could not print back what was read).
pub fn parse_duration(value: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::BadDuration {
        value: value.to_owned(),
    };
    let text = value.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit: u128 = match unit {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(bad()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(bad());
    }
    // Digits past the 18th after the point are far below a nanosecond.
    let fraction = &fraction[..fraction.len().min(18)];
    let digits = |s: &str| match s {
        "" => Some(0),
        s => s.parse::<u128>().ok(),
    };
    let (whole, part) = (
        digits(whole).ok_or_else(bad)?,
        digits(fraction).ok_or_else(bad)?,
    );
    let nanos = whole
        .checked_mul(unit)
        .and_then(|n| n.checked_add(part * unit / 10u128.pow(fraction.len() as u32)))
        .ok_or_else(bad)?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| bad())?;
    let subsec = u32::try_from(nanos % 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, subsec))
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
    fn durations_print_in_the_largest_whole_unit_and_read_back() {
        for (secs, text) in [
            (0.0, "0ms"),
            (0.5, "500ms"),
            (30.0, "30s"),
            (300.0, "5m"),
            (86400.0, "24h"),
        ] {
            let d = Seconds(Duration::from_secs_f64(secs));
            assert_eq!(d.to_string(), text);
            assert_eq!(text.parse::<Seconds>().unwrap(), d);
        }
    }

    #[test]
    fn a_config_file_round_trips_and_names_what_is_wrong() {
        let mut config = Config::default();
        config.server.admin_uids = vec![1000];
        config.server.socket_mode = SocketMode(0o600);
        config.fetch.attempt_timeout = Seconds(Duration::from_secs(7200));
        config.sources.allow_source = vec!["127.0.0.0/8".parse().unwrap()];
        assert_eq!(Config::parse(&config.to_toml()).unwrap(), config);
        // Keys left out keep their defaults.
        assert_eq!(Config::parse("").unwrap(), Config::default());

        let typo = Config::parse("[fetch]\nmax_transfer = 3\n").unwrap_err();
        assert!(
            typo.contains("line 2") && typo.contains("max_transfer"),
            "{typo}"
        );
        let bad = Config::parse("[cache]\n\nmin_free = \"lots\"\n").unwrap_err();
        assert!(bad.contains("line 3") && bad.contains("\"lots\""), "{bad}");
        let octal = Config::parse("[server]\nsocket_mode = 660\n").unwrap_err();
        assert!(octal.contains("socket_mode"), "{octal}");
    }

    #[test]
    fn parse_duration_accepts_units_and_refuses_garbage() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3h").unwrap(), Duration::from_secs(3 * 3600));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0.1m").unwrap(), Duration::from_secs(6));
        assert_eq!(parse_duration(".5").unwrap(), Duration::from_millis(500));
        for bad in ["", "s", "-1s", "3d", "1e400", "x", ".", "1.2.3s", "1..2s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn validate_resolves_the_admin_group_or_names_an_unknown_one() {
        let mut config = Config::default();
        config.server.admin_group = Some("root".into());
        assert_eq!(config.clone().validate().unwrap().server.admin_gid, Some(0));
        config.server.admin_group = Some("assetd-no-such-group".into());
        let err = config.validate().unwrap_err();
        assert!(
            err.to_string().contains("\"assetd-no-such-group\""),
            "{err}"
        );
    }

    #[test]
    fn validate_refuses_missing_file_root_and_long_socket() {
        let mut config = Config::default();
        config.sources.file_roots = vec!["/nonexistent/assetd-root".into()];
        let err = config.clone().validate().unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/assetd-root"),
            "{err}"
        );
        let mut long = config;
        long.sources.file_roots.clear();
        long.server.socket = PathBuf::from(format!("/tmp/{}", "s".repeat(120)));
        assert!(matches!(
            long.validate(),
            Err(ConfigError::SocketPathTooLong { .. })
        ));
    }

    #[test]
    fn tree_loads_sections_with_units_and_refuses_unknown_keys() {
        let text = r#"
            [cache]
            max_cache_bytes = "10GiB"
            min_free = "5%"
            unleased_grace = "90s"
            [fetch]
            max_size = 1048576
            stall_timeout = "500ms"
        "#;
        let config: Config = toml::from_str(text).unwrap();
        assert_eq!(config.cache.max_bytes(), Some(10 << 30));
        assert_eq!(config.cache.min_free, MinFree::Percent(5));
        assert_eq!(config.cache.unleased_grace.0, Duration::from_secs(90));
        assert_eq!(config.fetch.max_size.0, 1 << 20);
        assert_eq!(config.fetch.stall_timeout.0, Duration::from_millis(500));
        assert_eq!(
            config.fetch.attempts, DEFAULT_ATTEMPTS,
            "defaults fill the rest"
        );
        let err = toml::from_str::<Config>(
            "[fetch]
max_sise = 1
",
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_sise"), "{err}");
        let err = toml::from_str::<Config>(
            "[fetch]
max_size = \"lots\"
",
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"lots\""), "{err}");
    }

    #[test]
    fn source_rules_load_typed_and_a_bad_one_is_named() {
        let text = r#"
            [sources]
            allow_source = ["127.0.0.0/8", "http://127.0.0.1:8080/assets/"]
            deny_source = ["gs://secret"]
        "#;
        let config: Config = toml::from_str(text).unwrap();
        assert_eq!(config.sources.allow_source.len(), 2);
        assert_eq!(config.sources.deny_source[0].to_string(), "gs://secret");
        assert!(config.sources.policy().check_bucket("secret").is_err());
        let err =
            toml::from_str::<Config>("[sources]\nallow_source = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(err.to_string().contains("\"10.0.0.0/33\""), "{err}");
    }

    #[test]
    fn lease_and_prewarm_caps_load_and_a_zero_count_is_refused() {
        let text = "[cache]\nmax_lease_ttl = \"0s\"\nmax_leases_per_uid = 3\n\
                    [fetch]\nmax_prewarm_per_uid = 5\n";
        let config: Config = toml::from_str(text).unwrap();
        assert!(config.cache.max_lease_ttl.0.is_zero(), "0: no TTL cap");
        assert_eq!(config.cache.max_leases_per_uid, 3);
        assert_eq!(config.fetch.max_prewarm_per_uid, 5);
        let defaults = Config::default();
        assert_eq!(defaults.cache.max_lease_ttl.0, DEFAULT_MAX_LEASE_TTL);
        let mut zero = Config::default();
        zero.cache.max_leases_per_uid = 0;
        let err = zero.validate().unwrap_err();
        assert!(err.to_string().contains("max_leases_per_uid"), "{err}");
    }

    #[test]
    fn durations_print_back_exactly() {
        // Found by the fuzz target `config`: "1.8888888885s" printed as
        // "1888ms", and a float parse lost whole seconds past 2^53.
        for text in [
            "1.8888888888888888888888885s",
            "0.000000001s",
            "1.5ms",
            "0.1m",
            "1.5h",
            "18446744073709551615s",
            "18446744073709551615.999999999s",
        ] {
            let read = parse_duration(text).unwrap();
            let printed = Seconds(read).to_string();
            assert_eq!(
                parse_duration(&printed).unwrap(),
                read,
                "{text} as {printed}"
            );
        }
        assert_eq!(
            Seconds(Duration::new(1, 888_888_888)).to_string(),
            "1.888888888s"
        );
        assert_eq!(Seconds(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(Seconds(Duration::from_secs(90)).to_string(), "90s");
        assert!(parse_duration("18446744073709551616s").is_err());
    }

    #[test]
    fn tree_round_trips_through_toml() {
        let mut config = Config::default();
        config.cache.max_cache_bytes = ByteSize(3 << 30);
        config.cache.min_free = MinFree::Bytes(12345);
        config.fetch.stall_timeout = Seconds(Duration::from_millis(1500));
        let text = toml::to_string(&config).unwrap();
        assert!(text.contains("max_cache_bytes = \"3GiB\""), "{text}");
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
    }
}
