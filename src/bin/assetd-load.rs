//! `assetd-load`: a gRPC load generator for assetd's benchmarks.
//!
//! Opens `--connections` HTTP/2 channels to the daemon's unix socket and runs
//! `--callers` tasks spread over them; each issues one call (Health `Check`,
//! `Fetch` or `Stat`) back to back until `--warmup` plus `--seconds` have
//! passed. Only calls started after the warmup are measured. Prints one line
//! of JSON: the number of calls, the rate, and latency percentiles.
//!
//! Every failed call is counted (warmup included) and the first one is
//! printed on stderr; any failure makes the exit code 1. A call that takes
//! longer than [`CALL_TIMEOUT`] fails, so a run always ends by itself.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use assetd::proto::assets_client::AssetsClient;
use assetd::proto::{FetchRequest, StatRequest, assets_server};
use clap::{Parser, ValueEnum};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A single call slower than this fails: it bounds the run's length.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `--seconds` or `--warmup`: a day is more than any benchmark needs.
const MAX_SECONDS: f64 = 86_400.0;
/// Time allowed to open each channel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type BoxError = Box<dyn Error + Send + Sync>;

/// Load assetd with one kind of call from many concurrent callers.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The daemon's socket
    #[arg(long)]
    socket: PathBuf,
    /// The call to issue
    #[arg(long, value_enum)]
    call: Call,
    /// The asset: sha256:<64 hex> (fetch, stat)
    #[arg(long, required_if_eq_any = [("call", "fetch"), ("call", "stat")])]
    digest: Option<String>,
    /// Where to get the asset (fetch)
    #[arg(long, required_if_eq("call", "fetch"))]
    url: Option<String>,
    /// Concurrent callers
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    callers: u32,
    /// HTTP/2 channels the callers are spread over
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    connections: u32,
    /// Seconds to measure
    #[arg(long, default_value = "5", value_parser = seconds)]
    seconds: Duration,
    /// Seconds of calls before measuring, not counted in the figures
    #[arg(long, default_value = "0", value_parser = seconds)]
    warmup: Duration,
}

/// The gRPC call each caller repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Call {
    /// `grpc.health.v1.Health/Check` of the `assetd.v1.Assets` service
    Health,
    /// `assetd.v1.Assets/Fetch`
    Fetch,
    /// `assetd.v1.Assets/Stat`
    Stat,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Health => "health",
            Call::Fetch => "fetch",
            Call::Stat => "stat",
        }
    }
}

/// One caller's request and the clients to send it with.
#[derive(Clone, Debug)]
enum Caller {
    Health(HealthClient<Channel>),
    Fetch(AssetsClient<Channel>, FetchRequest),
    Stat(AssetsClient<Channel>, StatRequest),
}

/// What one caller saw.
#[derive(Debug, Default)]
struct Tally {
    /// Latencies of the measured, successful calls, in nanoseconds.
    latencies: Vec<u64>,
    /// Failed calls, warmup included.
    errors: u64,
    /// Measured fetches answered without `cache_hit`.
    misses: u64,
    /// The first failure, for the report on stderr.
    first_error: Option<String>,
}

/// Parses a number of seconds, from 0 to [`MAX_SECONDS`].
fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(0.0..=MAX_SECONDS).contains(&secs) {
        return Err(format!("'{text}' is not from 0 to {MAX_SECONDS} seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("assetd-load: error: {}", chain(&*e));
            ExitCode::FAILURE
        }
    }
}

/// Runs the load and prints its report; false when any call failed.
async fn run(cli: &Cli) -> Result<bool, BoxError> {
    if cli.seconds.is_zero() {
        return Err("--seconds must be more than 0".into());
    }
    let channels = connect(cli).await?;
    let start = Instant::now();
    let measure_from = start + cli.warmup;
    let until = measure_from + cli.seconds;
    let tasks: Vec<_> = (0..cli.callers as usize)
        .map(|i| {
            let caller = caller(cli, channels[i % channels.len()].clone());
            tokio::spawn(call_until(caller, measure_from, until))
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await?;
        total.latencies.extend(tally.latencies);
        total.errors += tally.errors;
        total.misses += tally.misses;
        total.first_error = total.first_error.or(tally.first_error);
    }
    let elapsed = measure_from.elapsed().as_secs_f64();
    if let Some(e) = &total.first_error {
        eprintln!("assetd-load: {} calls failed; the first: {e}", total.errors);
    }
    println!("{}", report(cli.call, &mut total, elapsed));
    Ok(total.errors == 0)
}

/// Opens the channels, each its own HTTP/2 connection.
async fn connect(cli: &Cli) -> Result<Vec<Channel>, BoxError> {
    let uri = format!("unix://{}", cli.socket.display());
    let endpoint = Endpoint::from_shared(uri)?.connect_timeout(CONNECT_TIMEOUT);
    let mut channels = Vec::new();
    for _ in 0..cli.connections {
        let channel = endpoint.connect().await.map_err(|e| {
            format!(
                "cannot reach assetd at {}: {}",
                cli.socket.display(),
                chain(&e)
            )
        })?;
        channels.push(channel);
    }
    Ok(channels)
}

/// `err` and its causes, outermost first, each said once (tonic's transport
/// errors repeat their cause in their own text).
fn chain(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.ends_with(&said) {
            text = format!("{text}: {said}");
        }
        cause = c.source();
    }
    text
}

/// A caller of the chosen call on `channel`.
fn caller(cli: &Cli, channel: Channel) -> Caller {
    let digest = cli.digest.clone().unwrap_or_default();
    match cli.call {
        Call::Health => Caller::Health(HealthClient::new(channel)),
        Call::Fetch => Caller::Fetch(
            AssetsClient::new(channel),
            FetchRequest {
                url: cli.url.clone().unwrap_or_default(),
                digest,
                ..FetchRequest::default()
            },
        ),
        Call::Stat => Caller::Stat(AssetsClient::new(channel), StatRequest { digest }),
    }
}

/// Issues calls back to back until `until`, measuring those started at or
/// after `measure_from`.
async fn call_until(mut caller: Caller, measure_from: Instant, until: Instant) -> Tally {
    let mut tally = Tally::default();
    loop {
        let began = Instant::now();
        if began >= until {
            return tally;
        }
        let result = tokio::time::timeout(CALL_TIMEOUT, caller.call())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {CALL_TIMEOUT:?}")));
        let took = began.elapsed();
        match result {
            Ok(hit) if began >= measure_from => {
                tally
                    .latencies
                    .push(took.as_nanos().try_into().unwrap_or(u64::MAX));
                tally.misses += u64::from(!hit);
            }
            Ok(_) => {}
            Err(e) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(e);
            }
        }
    }
}

impl Caller {
    /// Issues one call; true unless it was a fetch that missed the cache.
    async fn call(&mut self) -> Result<bool, String> {
        match self {
            Caller::Health(client) => {
                let request = HealthCheckRequest {
                    service: assets_server::SERVICE_NAME.to_string(),
                };
                let status = client.check(request).await.map_err(describe)?;
                match status.into_inner().status() {
                    ServingStatus::Serving => Ok(true),
                    other => Err(format!("health: {}", other.as_str_name())),
                }
            }
            Caller::Fetch(client, request) => {
                let response = client.fetch(request.clone()).await.map_err(describe)?;
                Ok(response.into_inner().cache_hit)
            }
            Caller::Stat(client, request) => {
                client.stat(request.clone()).await.map_err(describe)?;
                Ok(true)
            }
        }
    }
}

fn describe(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// The report line: counts, rate and latency percentiles in milliseconds.
fn report(call: Call, tally: &mut Tally, elapsed: f64) -> serde_json::Value {
    tally.latencies.sort_unstable();
    let ms = |q: f64| percentile(&tally.latencies, q) as f64 / 1e6;
    let calls = tally.latencies.len();
    serde_json::json!({
        "call": call.name(),
        "calls": calls,
        "errors": tally.errors,
        "misses": tally.misses,
        "seconds": round(elapsed, 3),
        "calls_per_s": round(calls as f64 / elapsed.max(1e-9), 1),
        "p50_ms": round(ms(0.50), 3),
        "p99_ms": round(ms(0.99), 3),
        "max_ms": round(ms(1.0), 3),
    })
}

/// The nearest-rank `q` quantile of sorted `values`; 0 when empty.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len().max(1)) - 1)
        .copied()
        .unwrap_or(0)
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}
