//! `assetd`: the daemon. Parses flags, sets up logging, runs until SIGINT or
//! SIGTERM.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use assetd::config::{
    ByteSize, Config, ConfigError, DEFAULT_CONFIG_FILE, LogFormat, MinFree, Seconds, SocketMode,
};
use assetd::server::Listener;
use assetd::source::SourceRule;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// Node-local fetcher of verified assets into a content-addressed cache.
///
/// Settings come from the config file (TOML; every flag has a key, see
/// --print-config), then the flags, which override it.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The config file [default: /etc/assetd/assetd.toml when it exists]
    #[arg(long, env = "ASSETD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the settings in effect (file, then flags, over the defaults)
    /// as TOML, and exit
    #[arg(long)]
    print_config: bool,
    /// Store folder [default: /var/lib/assetd for root, else ~/.cache/assetd]
    #[arg(long, env = "ASSETD_ROOT")]
    root: Option<PathBuf>,
    /// gRPC unix socket [default: /run/assetd/assetd.sock for root, else
    /// $XDG_RUNTIME_DIR/assetd/assetd.sock]
    #[arg(long, env = "ASSETD_SOCKET")]
    socket: Option<PathBuf>,
    /// Permissions of the socket the daemon creates, in octal [default: 0660]
    #[arg(long, value_name = "MODE")]
    socket_mode: Option<SocketMode>,
    /// Group of the socket the daemon creates: its members may connect
    /// [default: the daemon's group]
    #[arg(long, value_name = "NAME")]
    socket_group: Option<String>,
    /// A folder file:// URLs may read from (repeatable); none disables file://
    #[arg(long = "file-root", value_name = "DIR")]
    file_roots: Vec<PathBuf>,
    /// A file root whose whole content any caller may bring into the
    /// world-readable cache (repeatable); under a --file-root, callers other
    /// than admins get only files others may read
    #[arg(long = "public-file-root", value_name = "DIR")]
    public_file_roots: Vec<PathBuf>,
    /// A group whose members are admins too, besides root and the daemon's
    /// user (by primary gid or group membership); must exist
    #[arg(long, value_name = "NAME")]
    admin_group: Option<String>,
    /// A user who is an admin too, by uid (repeatable)
    #[arg(long = "admin-uid", value_name = "UID")]
    admin_uids: Vec<u32>,
    /// Serve Prometheus metrics at /metrics on a loopback ADDRESS:PORT
    /// (127.0.0.1:9464) or a unix socket path [default: off]
    #[arg(long, value_name = "LISTEN")]
    metrics_listen: Option<String>,
    /// Log lines as text or JSON objects [default: text]
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Largest asset accepted, in bytes or with a unit (512MiB, 8GiB) [default: 8GiB]
    #[arg(long)]
    max_size: Option<ByteSize>,
    /// Read gs:// without credentials (public buckets); otherwise Application
    /// Default Credentials
    #[arg(long)]
    gcs_anonymous: bool,
    /// A GCS emulator (host:port or URL) to read gs:// from, without credentials
    #[arg(long, value_name = "HOST", env = "STORAGE_EMULATOR_HOST")]
    gcs_emulator: Option<String>,
    /// Allow a source despite the default refusal of loopback, link-local,
    /// unspecified and multicast addresses (repeatable): a CIDR (127.0.0.0/8),
    /// host name (mirror.example.com, *.example.com), URL prefix
    /// (http://127.0.0.1:8080/assets/) or bucket (gs://bucket: then only the
    /// buckets listed)
    #[arg(long = "allow-source", value_name = "RULE")]
    allow_source: Vec<SourceRule>,
    /// Refuse a source, whatever --allow-source says (repeatable): a CIDR,
    /// host name, URL prefix or bucket
    #[arg(long = "deny-source", value_name = "RULE")]
    deny_source: Vec<SourceRule>,
    /// A PEM bundle of private CAs to trust for https:// (and gs://) on top
    /// of the system's roots
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Transfers running at once; the rest wait in order [default: 8]
    #[arg(long)]
    max_transfers: Option<usize>,
    /// Transfers running at once against one host [default: 4]
    #[arg(long)]
    max_per_host: Option<usize>,
    /// Transfers running at once that one user started (root and the
    /// daemon's user exempt) [default: 4]
    #[arg(long)]
    max_per_uid: Option<usize>,
    /// Open connections one user may have (root and the daemon's user
    /// exempt); more are closed at once [default: 64]
    #[arg(long)]
    max_connections_per_uid: Option<usize>,
    /// A connection that has not sent the HTTP/2 preface in this long is
    /// closed [default: 10s]
    #[arg(long)]
    handshake_timeout: Option<Seconds>,
    /// A connection with no call open and nothing but pings for this long
    /// is closed; 0s for never [default: 5m]
    #[arg(long)]
    idle_timeout: Option<Seconds>,
    /// Tries per URL before the next mirror (starts over after progress) [default: 5]
    #[arg(long)]
    attempts: Option<u32>,
    /// No bytes for this long is a failure, retried (500ms, 30s, 2m) [default: 30s]
    #[arg(long)]
    stall_timeout: Option<Seconds>,
    /// Slowest rate accepted, bytes a second over a --stall-timeout window
    /// (slower is a stall, retried); 0 for none [default: 1KiB]
    #[arg(long)]
    min_rate: Option<ByteSize>,
    /// Longest one try at a URL may take (it resumes on the next try, but
    /// counts as a failed try); 0s for no limit [default: 60m]
    #[arg(long)]
    attempt_timeout: Option<Seconds>,
    /// Connections a transfer of a large asset reads pieces over, when the
    /// source serves byte ranges; 1 for one stream always [default: 8]
    #[arg(long)]
    connections: Option<usize>,
    /// Assets smaller than this are read in one stream [default: 64MiB]
    #[arg(long)]
    ranged_min_size: Option<ByteSize>,
    /// Most bytes of cached assets; least recently used unleased ones are
    /// evicted past it (0: no cap) [default: 0]
    #[arg(long)]
    max_cache_bytes: Option<ByteSize>,
    /// Free space eviction keeps on the file system: bytes or a percentage
    /// (10%); 0 for none [default: 0]
    #[arg(long)]
    min_free: Option<MinFree>,
    /// Time between garbage collections (lapsed leases, eviction) [default: 60s]
    #[arg(long)]
    gc_interval: Option<Seconds>,
    /// How long a path handed out without a lease is kept from eviction,
    /// unless the free-space floor is at stake (0 for none) [default: 60s]
    #[arg(long)]
    unleased_grace: Option<Seconds>,
    /// The longest a lease of a non-admin caller holds: a longer TTL, or
    /// none, is cut to this (0: no cap) [default: 1440m, a day]
    #[arg(long)]
    max_lease_ttl: Option<Seconds>,
    /// Lease pins one user may hold (root and the daemon's user exempt)
    /// [default: 1024]
    #[arg(long)]
    max_leases_per_uid: Option<usize>,
    /// Bytes of assets one user's leases may hold (root and the daemon's
    /// user exempt): a size or a share of the file system (25%); 0 for no
    /// cap [default: 25%]
    #[arg(long)]
    max_leased_bytes_per_uid: Option<MinFree>,
    /// Prewarm assets one user may have queued or running (root and the
    /// daemon's user exempt) [default: 256]
    #[arg(long)]
    max_prewarm_per_uid: Option<usize>,
    /// Free space to keep on the store's file system, for logs and the node's
    /// other work [default: 512MiB]
    #[arg(long)]
    reserve_free: Option<ByteSize>,
}

impl Args {
    /// The config file's settings over the defaults: `--config`, else the
    /// default file if it exists, else the defaults alone.
    fn config(&self) -> Result<Config, ConfigError> {
        let default = Path::new(DEFAULT_CONFIG_FILE);
        match &self.config {
            Some(path) => Config::load(path),
            None if default.exists() => Config::load(default),
            None => Ok(Config::default()),
        }
    }

    /// `config` with every flag given put over it.
    fn apply(self, mut config: Config) -> Config {
        fn set<T>(slot: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *slot = v;
            }
        }
        let args = self;
        set(&mut config.store.root, args.root);
        set(&mut config.server.socket, args.socket);
        set(&mut config.server.socket_mode, args.socket_mode);
        set(&mut config.server.socket_group, args.socket_group.map(Some));
        if !args.admin_uids.is_empty() {
            config.server.admin_uids = args.admin_uids;
        }
        set(
            &mut config.server.metrics_listen,
            args.metrics_listen.map(Some),
        );
        set(&mut config.server.log_format, args.log_format);
        set(
            &mut config.server.max_connections_per_uid,
            args.max_connections_per_uid,
        );
        set(&mut config.server.handshake_timeout, args.handshake_timeout);
        set(&mut config.server.idle_timeout, args.idle_timeout);
        if !args.file_roots.is_empty() {
            config.sources.file_roots = args.file_roots;
        }
        if !args.public_file_roots.is_empty() {
            config.sources.public_file_roots = args.public_file_roots;
        }
        set(&mut config.server.admin_group, args.admin_group.map(Some));
        set(
            &mut config.sources.gcs_emulator,
            args.gcs_emulator.map(Some),
        );
        config.sources.gcs_anonymous |= args.gcs_anonymous;
        if !args.allow_source.is_empty() {
            config.sources.allow_source = args.allow_source;
        }
        if !args.deny_source.is_empty() {
            config.sources.deny_source = args.deny_source;
        }
        set(&mut config.sources.ca_file, args.ca_file.map(Some));
        let fetch = &mut config.fetch;
        set(&mut fetch.max_size, args.max_size);
        set(&mut fetch.max_transfers, args.max_transfers);
        set(&mut fetch.max_per_host, args.max_per_host);
        set(&mut fetch.max_per_uid, args.max_per_uid);
        set(&mut fetch.attempts, args.attempts);
        set(&mut fetch.stall_timeout, args.stall_timeout);
        set(&mut fetch.min_rate, args.min_rate);
        set(&mut fetch.attempt_timeout, args.attempt_timeout);
        set(&mut fetch.connections, args.connections);
        set(&mut fetch.ranged_min_size, args.ranged_min_size);
        set(&mut fetch.reserve_free, args.reserve_free);
        let cache = &mut config.cache;
        set(&mut cache.max_cache_bytes, args.max_cache_bytes);
        set(&mut cache.min_free, args.min_free);
        set(&mut cache.gc_interval, args.gc_interval);
        set(&mut cache.unleased_grace, args.unleased_grace);
        set(&mut cache.max_lease_ttl, args.max_lease_ttl);
        set(&mut cache.max_leases_per_uid, args.max_leases_per_uid);
        set(
            &mut cache.max_leased_bytes_per_uid,
            args.max_leased_bytes_per_uid,
        );
        set(&mut fetch.max_prewarm_per_uid, args.max_prewarm_per_uid);
        config
    }
}

/// Logs to stderr at `RUST_LOG` (default `info`), in `format`.
fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(LossyStderr)
        .with_ansi(std::io::stderr().is_terminal())
        // Its own report of a failed write is an `eprintln!`, which panics
        // on a broken stderr.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

fn main() -> ExitCode {
    // First, before any thread or log: it may replace this process.
    if let Err(e) = keep_metadata_off_proxies() {
        report(&e);
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    let print_config = args.print_config;
    let config = args.config().map(|file| args.apply(file));
    let config = match config.and_then(Config::validate) {
        Ok(c) => c,
        Err(e) => {
            report(&e.to_string());
            return ExitCode::from(2);
        }
    };
    if print_config {
        let _ = write!(std::io::stdout(), "{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(config.server.log_format);
    // Before any thread starts: it clears LISTEN_FDS from the environment.
    let activated = match assetd::systemd::take_listener() {
        Ok(listener) => listener,
        Err(e) => {
            report(&e.to_string());
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            report(&format!("starting the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal().map_err(|e| format!("installing signal handlers: {e}"))?;
        // The socket first: a second daemon is refused before it touches a
        // root. One systemd passed is served as it is (its unit sets the
        // path, mode and group).
        let listener = match activated {
            Some(passed) => Listener::inherited_std(passed),
            None => Listener::bind(&config.server),
        }
        .map_err(|e| e.to_string())?;
        assetd::daemon::run(listener, config, shutdown)
            .await
            .map_err(|e| e.to_string())
    });
    // Blocking work still running (a Verify of every blob, say) must not keep
    // the process, and the root's lock, alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// Makes sure no request to a cloud metadata server goes through a proxy,
/// whatever client sends it: with `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`
/// set and `NO_PROXY` not covering the metadata endpoints, the daemon
/// starts itself again (same pid, arguments and inherited descriptors, so
/// systemd's socket and notify socket carry over) with them added to
/// `NO_PROXY` and `no_proxy`. Google's credentials library builds its own
/// HTTP clients, which read those variables; the process's environment is
/// the one setting they all share, and it can only be set safely before
/// any thread starts, which an `exec` guarantees. Errors: the restart
/// failed (then the daemon does not start).
fn keep_metadata_off_proxies() -> Result<(), String> {
    use std::os::unix::process::CommandExt as _;
    let Some(no_proxy) = assetd::source::proxy::metadata_no_proxy(|name| std::env::var(name).ok())
    else {
        return Ok(());
    };
    let mut args = std::env::args_os();
    let arg0 = args.next();
    let exe = std::env::current_exe().map_err(|e| format!("finding its own binary: {e}"))?;
    let mut command = std::process::Command::new(&exe);
    if let Some(arg0) = arg0 {
        command.arg0(arg0);
    }
    let err = command
        .args(args)
        .env("NO_PROXY", &no_proxy)
        .env("no_proxy", &no_proxy)
        .exec();
    Err(format!(
        "a proxy is set, and restarting {} with NO_PROXY={no_proxy} (so cloud metadata is never proxied) failed: {err}; add those entries to NO_PROXY",
        exe.display()
    ))
}

/// Installs the SIGINT and SIGTERM handlers now, before the socket is
/// bound: a signal sent as soon as clients can connect must stop the daemon
/// cleanly, not kill it. The returned future completes on either signal.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    })
}

/// Prints `message` on stderr if it can: `eprintln!` would panic on a
/// broken stderr and turn a clean exit code into 101.
fn report(message: &str) {
    let _ = writeln!(std::io::stderr(), "assetd: {message}");
}

/// Log lines that could not be written and are not yet reported.
static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

/// Stderr for the log, where a failed write never fails anything: with
/// stderr a pipe whose reader died, every write is EPIPE (SIGPIPE is
/// ignored, as Rust's runtime sets it up), and a log line must not cost a
/// request or a clean shutdown. The line is dropped and counted; the count
/// is written before the next line that gets through.
#[derive(Debug, Clone, Copy)]
struct LossyStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LossyStderr {
    type Writer = LossyStderr;

    fn make_writer(&'a self) -> LossyStderr {
        LossyStderr
    }
}

impl std::io::Write for LossyStderr {
    /// Writes all of `line` (one event) or drops it; always `Ok`.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        let dropped = DROPPED_LINES.swap(0, Ordering::Relaxed);
        let notice = if dropped == 0 {
            Ok(())
        } else {
            writeln!(
                err,
                "assetd: {dropped} log lines dropped: stderr was not writable"
            )
        };
        if notice.is_err() {
            DROPPED_LINES.fetch_add(dropped, Ordering::Relaxed);
        }
        if notice.is_err() || err.write_all(line).is_err() {
            DROPPED_LINES.fetch_add(1, Ordering::Relaxed);
            assetd::metrics::DROPPED_LOG_LINES.fetch_add(1, Ordering::Relaxed);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Stderr is unbuffered; a failed flush has nothing left to lose.
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
