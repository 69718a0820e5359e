//! What assetctl shows: results as text or JSON, and progress on stderr.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use assetd::proto::{self, Asset};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

/// Progress on stderr: a bar on a terminal, a plain line every few seconds
/// otherwise (logs, CI), nothing with `--quiet`.
pub enum ProgressDisplay {
    Bar(ProgressBar),
    Lines(Option<Instant>),
    Quiet,
}

/// Time between plain progress lines.
const LINE_EVERY: Duration = Duration::from_secs(2);

impl ProgressDisplay {
    pub fn new(quiet: bool) -> ProgressDisplay {
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

    pub fn update(&mut self, p: &proto::Progress) {
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

    /// A line of its own: above the bar, or plain on stderr.
    pub fn line(&self, text: &str) {
        match self {
            ProgressDisplay::Bar(bar) => bar.println(text),
            ProgressDisplay::Lines(_) => eprintln!("assetctl: {text}"),
            ProgressDisplay::Quiet => {}
        }
    }

    pub fn finish(&self) {
        if let ProgressDisplay::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Prints results as text or JSON.
pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn fetched(&self, r: proto::FetchResponse) {
        if self.json {
            println!(
                "{}",
                json!({"digest": r.digest, "path": r.path, "size": r.size, "cache_hit": r.cache_hit})
            );
        } else {
            println!("{}", r.path);
        }
    }

    pub fn asset(&self, a: Asset) {
        if self.json {
            println!("{}", asset_json(&a));
        } else {
            println!(
                "digest: {}\nsize:   {} ({})\npath:   {}\nadded:  {} (unix seconds)\nused:   {} (unix ms)\nurls:   {}\nleases: {}",
                a.digest,
                a.size,
                human(a.size),
                a.path,
                a.added_unix_seconds,
                a.last_used_unix_ms,
                a.urls.join(" "),
                lease_names(&a),
            );
        }
    }

    pub fn list(&self, assets: &[Asset]) {
        if self.json {
            let all: Vec<_> = assets.iter().map(asset_json).collect();
            println!("{}", serde_json::Value::Array(all));
            return;
        }
        for a in assets {
            println!(
                "{}  {:>10}  {:<12}  {}",
                a.digest,
                human(a.size),
                lease_names(a),
                a.path
            );
        }
    }

    /// Prints anything as JSON, or its text form.
    pub fn either(&self, value: serde_json::Value, text: &str) {
        if self.json {
            println!("{value}");
        } else {
            println!("{text}");
        }
    }

    pub fn deleted(&self, digest: &str, size: u64) {
        if self.json {
            println!("{}", json!({"digest": digest, "size": size}));
        } else {
            println!("deleted {digest} ({})", human(size));
        }
    }
}

fn asset_json(a: &Asset) -> serde_json::Value {
    let leases: Vec<_> = a
        .leases
        .iter()
        .map(|l| json!({"lease": l.lease, "expires_unix_ms": l.expires_unix_ms}))
        .collect();
    json!({
        "digest": a.digest,
        "path": a.path,
        "size": a.size,
        "added_unix_seconds": a.added_unix_seconds,
        "last_used_unix_ms": a.last_used_unix_ms,
        "urls": a.urls,
        "leases": leases,
    })
}

fn lease_names(a: &Asset) -> String {
    let names: Vec<&str> = a.leases.iter().map(|l| l.lease.as_str()).collect();
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(",")
    }
}

/// Bytes in binary units, one decimal: `1.5 GiB`.
pub fn human(bytes: u64) -> String {
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
