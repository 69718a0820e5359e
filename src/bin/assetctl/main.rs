//! `assetctl`: the command-line client of assetd, for people and scripts.
//!
//! Output is readable by default and JSON with `--json`. The exit code tells
//! failure kinds apart (see `EXIT CODES` in `--help`).

mod display;
mod manifest;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use assetd::config::ByteSize;
use assetd::proto::assets_client::AssetsClient;
use assetd::proto::{self, fetch_event, prewarm_event};
use clap::{Parser, Subcommand};
use display::{Output, ProgressDisplay, human};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const EXIT_CODES: &str = "EXIT CODES:
  0 ok            1 other error     2 usage         3 cannot reach assetd
  4 not found     5 bad argument    6 denied        7 too large / disk full
  8 digest or size mismatch         9 upstream unavailable
  10 in use (fetching, leased)      11 cancelled or timed out
  12 prewarm: some assets failed";

/// What `--help` says first.
const ABOUT: &str = "assetctl: the command-line client of assetd, the node's asset cache";
/// What `--help` (not `-h`) says after it.
const LONG_ABOUT: &str = "assetctl: the command-line client of assetd, the node's asset cache.

It asks the assetd daemon on this node, over its unix socket, to fetch \
sha256-addressed assets into the cache (printing their paths), and lists, \
shows, pins and removes cached ones. The daemon itself is `assetd`.";

/// The daemon's socket when none is named: this user's own daemon's, if
/// one runs, else the node's system daemon's (as the systemd units make it).
/// The own path counts only when the socket there belongs to this user:
/// with `HOME` unset it lies under `/tmp`, where another user could have
/// made it first, and only the binder of a socket owns it.
fn default_socket() -> PathBuf {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let own = assetd::config::default_paths().1;
    let me = nix::unistd::geteuid().as_raw();
    let mine =
        std::fs::symlink_metadata(&own).is_ok_and(|m| m.file_type().is_socket() && m.uid() == me);
    let system = Path::new(SYSTEM_SOCKET);
    // Someone else's socket at the own path is never used.
    let planted = !mine && std::fs::symlink_metadata(&own).is_ok();
    if mine || !(system.exists() || planted) {
        own
    } else {
        system.to_owned()
    }
}

/// Where the node's daemon listens (root's default, and the unit's).
const SYSTEM_SOCKET: &str = "/run/assetd/assetd.sock";

/// The client of the local assetd daemon.
#[derive(Parser, Debug)]
#[command(
    name = "assetctl",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXIT_CODES
)]
struct Cli {
    /// The daemon's socket [default: this user's own daemon's if it runs, else
    /// /run/assetd/assetd.sock]
    #[arg(long, global = true, env = "ASSETD_SOCKET")]
    socket: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make sure an asset is cached; print its path (progress on stderr)
    Fetch {
        /// Where to get it: http://, https://, gs:// or file://
        url: String,
        /// Its digest: sha256:<64 hex>
        #[arg(long)]
        digest: String,
        /// Its exact size, in bytes or with a unit (1073741824, 1GiB, 512MiB): a
        /// source that declares another size, or brings another, is refused.
        /// Absent or 0: not known (the digest decides alone)
        #[arg(long, value_name = "SIZE")]
        size: Option<ByteSize>,
        /// Refuse it if larger than this, in bytes or with a unit (512MiB, 8GiB).
        /// Absent or 0: the daemon's own limit (its --max-size, 8GiB by
        /// default); a request can only lower that limit, never raise it
        #[arg(long, value_name = "SIZE")]
        max_size: Option<ByteSize>,
        /// Another URL for the same bytes, tried in order (repeatable)
        #[arg(long = "mirror", value_name = "URL")]
        mirrors: Vec<String>,
        /// Connections to read a large asset's pieces over; 1 for one
        /// stream. Absent or 0: the daemon's --connections, which is also
        /// the most a request may ask for
        #[arg(long, value_name = "N", default_value_t = 0)]
        connections: u32,
        /// Pin it for this lease (a sandbox id, say) until released
        #[arg(long)]
        lease: Option<String>,
        /// Let the lease's pin lapse after this many seconds
        #[arg(long, default_value_t = 0, requires = "lease")]
        lease_ttl: u64,
        /// Show no progress
        #[arg(long, short)]
        quiet: bool,
    },
    /// List cached assets
    Ls {
        /// Only those this lease holds
        #[arg(long)]
        lease: Option<String>,
        /// Only those fetched from a URL starting with this
        #[arg(long)]
        url_prefix: Option<String>,
        /// Only those no lease holds
        #[arg(long)]
        unleased: bool,
    },
    /// Show one cached asset
    Stat {
        /// sha256:<64 hex>
        digest: String,
    },
    /// Remove a cached asset
    Rm {
        /// sha256:<64 hex>
        digest: String,
        /// Remove it even while leases hold it
        #[arg(long)]
        force: bool,
    },
    /// Leases
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Evict least recently used, unleased assets past the daemon's limits
    /// (admins; a dry run: anyone)
    Gc {
        /// Only say what would go, changing nothing (anyone may)
        #[arg(long)]
        dry_run: bool,
    },
    /// List the transfers running or waiting for a slot (admins)
    Transfers,
    /// Cancel the transfer of an asset; its callers get CANCELLED (admins)
    Cancel {
        /// The asset (sha256:<64 hex>)
        digest: String,
    },
    /// Re-hash cached assets; corrupt ones go to quarantine
    Verify {
        /// One asset (sha256:<64 hex>); all when absent
        digest: Option<String>,
    },
    /// Fetch the assets of a manifest (TOML, or JSON for *.json)
    Prewarm {
        /// The manifest
        file: PathBuf,
        /// Show no progress
        #[arg(long, short)]
        quiet: bool,
    },
}

#[derive(Subcommand, Debug)]
enum LeaseCommand {
    /// Drop every pin of a lease
    Release {
        /// The lease's name
        lease: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(1, &format!("starting the runtime: {e}")),
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    // A bad manifest is a usage error, before any connection.
    let manifest = match &cli.command {
        Command::Prewarm { file, .. } => match manifest::Manifest::load(file) {
            Ok(m) => Some(m),
            Err(e) => return fail(2, &e),
        },
        _ => None,
    };
    let socket = cli.socket.unwrap_or_else(default_socket);
    let mut client = match connect(&socket).await {
        Ok(c) => c,
        Err(e) => return fail(e.exit_code(), &e.to_string()),
    };
    let out = Output { json: cli.json };
    let result = match (cli.command, manifest) {
        (Command::Prewarm { quiet, .. }, Some(manifest)) => {
            prewarm(&mut client, manifest.request(), &out, quiet).await
        }
        (command, _) => call(&mut client, command, &out)
            .await
            .map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|status| fail(exit_code(status.code()), status.message()))
}

/// Runs every command but prewarm.
async fn call(
    client: &mut AssetsClient<Channel>,
    command: Command,
    out: &Output,
) -> Result<(), Status> {
    match command {
        Command::Fetch {
            url,
            digest,
            size,
            max_size,
            mirrors,
            connections,
            lease,
            lease_ttl,
            quiet,
        } => {
            let req = proto::FetchRequest {
                url,
                digest,
                size: size.map_or(0, |s| s.0),
                max_size: max_size.map_or(0, |s| s.0),
                mirrors,
                lease: lease.unwrap_or_default(),
                lease_ttl_seconds: lease_ttl,
                connections,
            };
            fetch(client, req, out, quiet).await
        }
        Command::Ls {
            lease,
            url_prefix,
            unleased,
        } => {
            let req = proto::ListRequest {
                lease: lease.unwrap_or_default(),
                url_prefix: url_prefix.unwrap_or_default(),
                unleased,
                ..Default::default()
            };
            list(client, req, out).await
        }
        Command::Stat { digest } => {
            let asset = client
                .stat(proto::StatRequest { digest })
                .await?
                .into_inner()
                .asset;
            out.asset(asset.unwrap_or_default());
            Ok(())
        }
        Command::Rm { digest, force } => {
            let req = proto::DeleteRequest {
                digest: digest.clone(),
                force,
            };
            out.deleted(&digest, client.delete(req).await?.into_inner().size);
            Ok(())
        }
        Command::Lease(LeaseCommand::Release { lease }) => {
            let req = proto::ReleaseLeaseRequest {
                lease: lease.clone(),
            };
            let released = client.release_lease(req).await?.into_inner().released;
            let text = format!("released lease {lease} ({released} assets)");
            out.either(json!({"lease": lease, "released": released}), &text);
            Ok(())
        }
        Command::Gc { dry_run } => gc(client, dry_run, out).await,
        Command::Verify { digest } => verify(client, digest, out).await,
        Command::Transfers => transfers(client, out).await,
        Command::Cancel { digest } => cancel(client, digest, out).await,
        Command::Prewarm { .. } => Err(Status::internal("prewarm without a manifest")),
    }
}

async fn connect(socket: &Path) -> Result<AssetsClient<Channel>, ConnectError> {
    let unreachable = |cause| ConnectError::Unreachable {
        socket: socket.to_owned(),
        cause,
    };
    let absolute = std::path::absolute(socket).map_err(|e| unreachable(e.to_string()))?;
    let endpoint = Endpoint::from_shared(format!("unix://{}", absolute.display()))
        .map_err(|e| unreachable(causes(&e)))?;
    match endpoint.connect().await {
        Ok(channel) => Ok(AssetsClient::new(channel)),
        Err(e) if io_kind(&e) == Some(std::io::ErrorKind::PermissionDenied) => {
            Err(ConnectError::Denied {
                socket: socket.to_owned(),
                access: access(socket),
            })
        }
        Err(e) => Err(unreachable(causes(&e))),
    }
}

/// Why assetctl could not talk to the daemon.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// The socket (or a folder on the way) is closed to this user.
    #[error("permission denied on the socket {}: {access}", socket.display())]
    Denied {
        /// The socket.
        socket: PathBuf,
        /// Who may open it and how access is granted.
        access: String,
    },
    /// No daemon answers there.
    #[error(
        "cannot reach assetd at {}: {cause} (is it running? set --socket or ASSETD_SOCKET)",
        socket.display()
    )]
    Unreachable {
        /// The socket.
        socket: PathBuf,
        /// Why, each cause once.
        cause: String,
    },
}

impl ConnectError {
    fn exit_code(&self) -> u8 {
        match self {
            ConnectError::Denied { .. } => 6,
            ConnectError::Unreachable { .. } => 3,
        }
    }
}

/// Who may open `socket`, and how a user is given access: the daemon makes
/// it 0660, so by membership of its group.
fn access(socket: &Path) -> String {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let uid = nix::unistd::getuid();
    let Ok(meta) = std::fs::metadata(socket) else {
        return format!(
            "a folder on the way to it is closed to uid {uid}; access is granted by the \
             socket's group and its folders' modes"
        );
    };
    let group = nix::unistd::Group::from_gid(meta.gid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.gid().to_string(), |g| g.name);
    format!(
        "it is mode {:o} with group {group}, and uid {uid} is not in that group; access is \
         granted by the socket's group: ask an admin to add you to group {group}",
        meta.permissions().mode() & 0o7777,
    )
}

/// The kind of the first OS error among `err`'s causes.
fn io_kind(err: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cause = e.source();
    }
    None
}

/// `err` and its causes, outermost first, each said once: the transport's
/// layers often repeat their cause's text as their own.
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

async fn fetch(
    client: &mut AssetsClient<Channel>,
    req: proto::FetchRequest,
    out: &Output,
    quiet: bool,
) -> Result<(), Status> {
    let began = Instant::now();
    let mut events = client.fetch_progress(req).await?.into_inner();
    let mut display = ProgressDisplay::new(quiet);
    let mut last = None;
    while let Some(event) = events.message().await? {
        match event.event {
            Some(fetch_event::Event::Progress(p)) => {
                display.update(&p);
                last = Some(p);
            }
            Some(fetch_event::Event::Done(done)) => {
                let summary = display::fetch_summary(&done, last.as_ref(), began.elapsed());
                display.finish(Some(&summary));
                out.fetched(done);
                return Ok(());
            }
            None => {}
        }
    }
    Err(Status::unknown(
        "the daemon ended the stream without a result",
    ))
}

async fn list(
    client: &mut AssetsClient<Channel>,
    mut req: proto::ListRequest,
    out: &Output,
) -> Result<(), Status> {
    let mut assets = Vec::new();
    req.page_size = 1000;
    loop {
        let page = client.list(req.clone()).await?.into_inner();
        assets.extend(page.assets);
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    out.list(&assets);
    Ok(())
}

async fn gc(client: &mut AssetsClient<Channel>, dry_run: bool, out: &Output) -> Result<(), Status> {
    let report = client.gc(proto::GcRequest { dry_run }).await?.into_inner();
    let verb = if dry_run { "would evict" } else { "evicted" };
    let mut text = format!(
        "{verb} {} assets, {}",
        report.evicted.len(),
        human(report.bytes)
    );
    for asset in &report.evicted {
        text.push_str(&format!("\n  {}  {}", asset.digest, human(asset.size)));
    }
    let evicted: Vec<&str> = report.evicted.iter().map(|a| a.digest.as_str()).collect();
    let value = json!({"dry_run": dry_run, "evicted": evicted, "bytes": report.bytes, "lapsed_pins": report.lapsed_pins});
    out.either(value, &text);
    Ok(())
}

async fn transfers(client: &mut AssetsClient<Channel>, out: &Output) -> Result<(), Status> {
    let listed = client
        .list_transfers(proto::ListTransfersRequest {})
        .await?
        .into_inner();
    let mut text = format!("{} transfers", listed.transfers.len());
    let mut rows = Vec::new();
    for t in &listed.transfers {
        let p = t.progress.clone().unwrap_or_default();
        text.push_str(&format!(
            "\n  {}  {} of {}  {} callers  uid {}  {}",
            t.digest,
            human(p.bytes_done),
            human(p.bytes_total),
            t.callers,
            t.started_by_uid,
            t.urls.join(" ")
        ));
        rows.push(json!({"digest": t.digest, "urls": t.urls, "bytes_done": p.bytes_done,
            "bytes_total": p.bytes_total, "callers": t.callers, "started_by_uid": t.started_by_uid}));
    }
    out.either(json!(rows), &text);
    Ok(())
}

async fn cancel(
    client: &mut AssetsClient<Channel>,
    digest: String,
    out: &Output,
) -> Result<(), Status> {
    let req = proto::CancelTransferRequest {
        digest: digest.clone(),
    };
    let callers = client.cancel_transfer(req).await?.into_inner().callers;
    let text = format!("cancelled the transfer of {digest} ({callers} callers)");
    out.either(json!({"digest": digest, "callers": callers}), &text);
    Ok(())
}

async fn verify(
    client: &mut AssetsClient<Channel>,
    digest: Option<String>,
    out: &Output,
) -> Result<(), Status> {
    let req = proto::VerifyRequest {
        digest: digest.unwrap_or_default(),
    };
    let report = client.verify(req).await?.into_inner();
    let mut text = format!(
        "checked {}, corrupt {}",
        report.checked,
        report.corrupt.len()
    );
    for c in &report.corrupt {
        text.push_str(&format!(
            "\n  {} holds {}; moved to {}",
            c.digest, c.actual, c.quarantined_path
        ));
    }
    let corrupt: Vec<_> = report
        .corrupt
        .iter()
        .map(|c| json!({"digest": c.digest, "actual": c.actual, "quarantined_path": c.quarantined_path}))
        .collect();
    out.either(
        json!({"checked": report.checked, "corrupt": corrupt}),
        &text,
    );
    if report.corrupt.is_empty() {
        Ok(())
    } else {
        Err(Status::data_loss(format!(
            "{} corrupt assets quarantined",
            report.corrupt.len()
        )))
    }
}

/// Streams a prewarm batch: a line per finished asset (and progress on a
/// terminal), then a summary; with `--json`, one JSON object per asset of
/// the manifest, in the order they finish, and no summary. Exit 12 when any
/// asset failed.
async fn prewarm(
    client: &mut AssetsClient<Channel>,
    req: proto::PrewarmRequest,
    out: &Output,
    quiet: bool,
) -> Result<ExitCode, Status> {
    let total = req.assets.len();
    let digests: Vec<String> = req.assets.iter().map(|a| a.digest.clone()).collect();
    let mut events = client.prewarm(req).await?.into_inner();
    let mut display = ProgressDisplay::new(quiet);
    let mut answered = vec![false; total];
    let (mut done, mut failed, mut bytes) = (0usize, 0usize, 0u64);
    let broken = loop {
        if done + failed == total {
            break None;
        }
        let event = match events.message().await {
            Ok(Some(event)) => event,
            Ok(None) => break None,
            Err(status) => break Some(status),
        };
        let index = event.index as usize;
        let (value, text) = match event.event {
            Some(prewarm_event::Event::Progress(p)) => {
                display.update(&p);
                continue;
            }
            Some(prewarm_event::Event::Done(r)) if answered.get(index) == Some(&false) => {
                done += 1;
                bytes += r.size;
                let hit = if r.cache_hit { "cached" } else { "fetched" };
                let text = format!("{hit} {} {}", r.digest, r.path);
                let value = json!({"index": index, "digest": r.digest, "status": hit,
                    "path": r.path, "size": r.size, "cache_hit": r.cache_hit});
                (value, text)
            }
            Some(prewarm_event::Event::Failed(f)) if answered.get(index) == Some(&false) => {
                failed += 1;
                let text = format!("FAILED {} {}: {}", event.digest, f.code, f.message);
                let value = json!({"index": index, "digest": event.digest, "status": "failed",
                    "code": f.code, "message": f.message});
                (value, text)
            }
            _ => continue,
        };
        answered[index] = true;
        if out.json {
            println!("{value}");
        } else {
            display.line(&format!("[{}/{total}] {text}", done + failed));
        }
    };
    display.finish(None);
    // A stream that ended early leaves assets without a result: failed.
    let why = broken.as_ref().map_or_else(
        || "the daemon ended the stream without a result for it".to_owned(),
        |status| format!("no result: {}", status.message()),
    );
    for (index, digest) in digests.iter().enumerate() {
        if answered[index] {
            continue;
        }
        failed += 1;
        if out.json {
            let code = broken.as_ref().map_or(Code::Unknown, Status::code);
            println!(
                "{}",
                json!({"index": index, "digest": digest, "status": "failed",
                    "code": format!("{code:?}"), "message": why})
            );
        } else {
            display.line(&format!(
                "[{}/{total}] FAILED {digest}: {why}",
                done + failed
            ));
        }
    }
    if let Some(status) = broken {
        return Err(status);
    }
    if !out.json {
        println!(
            "{done} of {total} assets on the node ({}), {failed} failed",
            human(bytes)
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(12)
    })
}

fn exit_code(code: Code) -> u8 {
    match code {
        Code::NotFound => 4,
        Code::InvalidArgument | Code::OutOfRange => 5,
        Code::PermissionDenied | Code::Unauthenticated => 6,
        Code::ResourceExhausted => 7,
        Code::DataLoss => 8,
        Code::Unavailable => 9,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => 10,
        Code::Cancelled | Code::DeadlineExceeded => 11,
        _ => 1,
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("assetctl: {message}");
    ExitCode::from(code)
}
