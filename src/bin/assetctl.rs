//! `assetctl`: the command-line client of assetd, for people and scripts.
//!
//! Output is readable by default and JSON with `--json`. The exit code tells
//! failure kinds apart (see `EXIT CODES` in `--help`).

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use assetd::proto::assets_client::AssetsClient;
use assetd::proto::fetch_event::Event;
use assetd::proto::{self, Asset};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const EXIT_CODES: &str = "EXIT CODES:
  0 ok            1 other error     2 usage         3 cannot reach assetd
  4 not found     5 bad argument    6 denied        7 too large / disk full
  8 digest or size mismatch         9 upstream unavailable
  10 in use       11 cancelled or timed out";

/// Talk to the local assetd daemon.
#[derive(Parser, Debug)]
#[command(version, about, after_help = EXIT_CODES)]
struct Cli {
    /// The daemon's socket [default: the daemon's default]
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
        /// Another URL for the same bytes, tried in order when one fails
        /// (repeatable)
        #[arg(long = "mirror", value_name = "URL")]
        mirrors: Vec<String>,
        /// Show no progress
        #[arg(long, short)]
        quiet: bool,
        /// Its digest: sha256:<64 hex>
        #[arg(long)]
        digest: String,
        /// Its exact size in bytes, if known
        #[arg(long, default_value_t = 0)]
        size: u64,
        /// Refuse it if larger than this many bytes
        #[arg(long, default_value_t = 0)]
        max_size: u64,
    },
    /// List cached assets
    Ls,
    /// Show one cached asset
    Stat {
        /// sha256:<64 hex>
        digest: String,
    },
    /// Remove a cached asset
    Rm {
        /// sha256:<64 hex>
        digest: String,
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
    let socket = cli
        .socket
        .unwrap_or_else(|| assetd::config::default_paths().1);
    let mut client = match connect(&socket).await {
        Ok(c) => c,
        Err(e) => {
            return fail(
                3,
                &format!(
                    "cannot reach assetd at {}: {e} (is it running? set --socket or ASSETD_SOCKET)",
                    socket.display()
                ),
            );
        }
    };
    let out = Output { json: cli.json };
    let result = match cli.command {
        Command::Fetch {
            url,
            mirrors,
            quiet,
            digest,
            size,
            max_size,
        } => {
            let req = proto::FetchRequest {
                url,
                mirrors,
                digest,
                size,
                max_size,
            };
            fetch(&mut client, req, &out, quiet).await
        }
        Command::Ls => list(&mut client, &out).await,
        Command::Stat { digest } => client
            .stat(proto::StatRequest { digest })
            .await
            .map(|r| out.asset(r.into_inner().asset.unwrap_or_default())),
        Command::Rm { digest } => client
            .delete(proto::DeleteRequest {
                digest: digest.clone(),
            })
            .await
            .map(|r| out.deleted(&digest, r.into_inner().size)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(status) => fail(exit_code(status.code()), status.message()),
    }
}

async fn connect(socket: &std::path::Path) -> Result<AssetsClient<Channel>, String> {
    let absolute = std::path::absolute(socket).map_err(|e| e.to_string())?;
    let endpoint = Endpoint::from_shared(format!("unix://{}", absolute.display()))
        .map_err(|e| e.to_string())?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| assetd::error_chain(&e))?;
    Ok(AssetsClient::new(channel))
}

async fn fetch(
    client: &mut AssetsClient<Channel>,
    req: proto::FetchRequest,
    out: &Output,
    quiet: bool,
) -> Result<(), Status> {
    let mut events = client.fetch_progress(req).await?.into_inner();
    let mut display = ProgressDisplay::new(quiet);
    while let Some(event) = events.message().await? {
        match event.event {
            Some(Event::Progress(p)) => display.update(&p),
            Some(Event::Done(done)) => {
                display.finish();
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

/// Progress on stderr: a bar on a terminal, a plain line every few seconds
/// otherwise (logs, CI), nothing with `--quiet`.
enum ProgressDisplay {
    Bar(ProgressBar),
    Lines(Option<Instant>),
    Quiet,
}

/// Time between plain progress lines.
const LINE_EVERY: Duration = Duration::from_secs(2);

impl ProgressDisplay {
    fn new(quiet: bool) -> ProgressDisplay {
        if quiet {
            return ProgressDisplay::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return ProgressDisplay::Lines(None);
        }
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        );
        if let Ok(style) = style {
            bar.set_style(style);
        }
        ProgressDisplay::Bar(bar)
    }

    fn update(&mut self, p: &proto::Progress) {
        match self {
            ProgressDisplay::Bar(bar) => {
                bar.set_length(p.bytes_total.max(p.bytes_done));
                bar.set_position(p.bytes_done);
                bar.set_message(p.source.clone());
            }
            ProgressDisplay::Lines(last) => {
                if last.is_some_and(|t| t.elapsed() < LINE_EVERY) {
                    return;
                }
                *last = Some(Instant::now());
                let of = match p.bytes_total {
                    0 => String::new(),
                    total => format!(" of {} ({}%)", human(total), p.bytes_done * 100 / total),
                };
                let from = if p.source.is_empty() {
                    "waiting for a slot".to_owned()
                } else {
                    p.source.clone()
                };
                eprintln!(
                    "assetctl: {}{of}, {:.1} MB/s, {from}",
                    human(p.bytes_done),
                    p.bytes_per_second / 1e6
                );
            }
            ProgressDisplay::Quiet => {}
        }
    }

    fn finish(&self) {
        if let ProgressDisplay::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

async fn list(client: &mut AssetsClient<Channel>, out: &Output) -> Result<(), Status> {
    let mut assets = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list(proto::ListRequest {
                page_size: 1000,
                page_token,
            })
            .await?
            .into_inner();
        assets.extend(page.assets);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    out.list(&assets);
    Ok(())
}

/// Prints results as text or JSON.
struct Output {
    json: bool,
}

impl Output {
    fn fetched(&self, r: proto::FetchResponse) {
        if self.json {
            println!(
                "{}",
                json!({"digest": r.digest, "path": r.path, "size": r.size, "cache_hit": r.cache_hit})
            );
        } else {
            println!("{}", r.path);
        }
    }

    fn asset(&self, a: Asset) {
        if self.json {
            println!("{}", asset_json(&a));
        } else {
            println!(
                "digest: {}\nsize:   {} ({})\npath:   {}\nadded:  {} (unix seconds)",
                a.digest,
                a.size,
                human(a.size),
                a.path,
                a.added_unix_seconds
            );
        }
    }

    fn list(&self, assets: &[Asset]) {
        if self.json {
            let all: Vec<_> = assets.iter().map(asset_json).collect();
            println!("{}", serde_json::Value::Array(all));
            return;
        }
        for a in assets {
            println!("{}  {:>10}  {}", a.digest, human(a.size), a.path);
        }
    }

    fn deleted(&self, digest: &str, size: u64) {
        if self.json {
            println!("{}", json!({"digest": digest, "size": size}));
        } else {
            println!("deleted {digest} ({})", human(size));
        }
    }
}

fn asset_json(a: &Asset) -> serde_json::Value {
    json!({"digest": a.digest, "path": a.path, "size": a.size, "added_unix_seconds": a.added_unix_seconds})
}

/// Bytes in binary units, one decimal: `1.5 GiB`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
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
