//! `assetctl`: the command-line client of assetd, for people and scripts.
//!
//! Output is readable by default and JSON with `--json`. The exit code tells
//! failure kinds apart (see `EXIT CODES` in `--help`).

use std::path::PathBuf;
use std::process::ExitCode;

use assetd::proto::assets_client::AssetsClient;
use assetd::proto::{self, Asset};
use clap::{Parser, Subcommand};
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
    /// Make sure an asset is cached; print its path
    Fetch {
        /// Where to get it: http://, https:// or file://
        url: String,
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
            digest,
            size,
            max_size,
        } => {
            let req = proto::FetchRequest {
                url,
                digest,
                size,
                max_size,
            };
            client.fetch(req).await.map(|r| out.fetched(r.into_inner()))
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
    let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
    Ok(AssetsClient::new(channel))
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

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
