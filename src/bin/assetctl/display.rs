//! What assetctl shows: results as text or JSON, and progress on stderr.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use assetd::proto::{self, Asset};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

/// Progress on stderr: a bar on a terminal, a plain line every few seconds
/// otherwise (logs, CI; none in the first few seconds, so a quick fetch
/// prints only its summary), nothing with `--quiet`.
pub enum ProgressDisplay {
    Bar(ProgressBar),
    Lines {
        /// The last line printed, or when the display began.
        last: Instant,
    },
    Quiet,
}

/// Time between plain progress lines, and before the first.
const LINE_EVERY: Duration = Duration::from_secs(2);

impl ProgressDisplay {
    pub fn new(quiet: bool) -> ProgressDisplay {
        if quiet {
            return ProgressDisplay::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return ProgressDisplay::Lines {
                last: Instant::now(),
            };
        }
        let bar = ProgressBar::new(0);
        // Binary units, as everywhere in assetctl: MiB and MiB/s.
        let style = ProgressStyle::with_template(
            "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
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
            ProgressDisplay::Lines { last } => {
                if last.elapsed() < LINE_EVERY {
                    return;
                }
                *last = Instant::now();
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
                    "assetctl: {}{of}, {}, {from}",
                    human(p.bytes_done),
                    rate(p.bytes_per_second)
                );
            }
            ProgressDisplay::Quiet => {}
        }
    }

    /// A line of its own: above the bar, or plain on stderr.
    pub fn line(&self, text: &str) {
        match self {
            ProgressDisplay::Bar(bar) => bar.println(text),
            ProgressDisplay::Lines { .. } => eprintln!("assetctl: {text}"),
            ProgressDisplay::Quiet => {}
        }
    }

    /// Clears the bar; then `summary`, if any, on stderr (not with `--quiet`).
    pub fn finish(&self, summary: Option<&str>) {
        if let ProgressDisplay::Bar(bar) = self {
            bar.finish_and_clear();
        }
        if let Some(text) = summary
            && !matches!(self, ProgressDisplay::Quiet)
        {
            eprintln!("assetctl: {text}");
        }
    }
}

/// The line a fetch ends with: what came, how long it took and how fast
/// the transfer went (`last`: its last progress, if it had any), or that
/// it was cached already.
pub fn fetch_summary(
    done: &proto::FetchResponse,
    last: Option<&proto::Progress>,
    took: Duration,
) -> String {
    if done.cache_hit {
        return format!("{} already cached", human(done.size));
    }
    let secs = took.as_secs_f64();
    // The daemon's rate covers the transfer only (not a wait for a slot);
    // without one, this call's own.
    let per_second = last
        .map(|p| p.bytes_per_second)
        .filter(|r| *r > 0.0)
        .unwrap_or(done.size as f64 / secs.max(1e-3));
    let from = match last.map(|p| p.source.as_str()) {
        Some("") | None => String::new(),
        Some(url) => format!(" from {url}"),
    };
    format!(
        "fetched {} in {secs:.1} s at {}{from}",
        human(done.size),
        rate(per_second)
    )
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
            return;
        }
        let now = now_ms();
        let leases = if a.leases.is_empty() {
            "none".to_owned()
        } else {
            let held: Vec<String> = a.leases.iter().map(|l| lease_text(l, now)).collect();
            held.join("\n           ")
        };
        println!(
            "digest:    {}\nsize:      {} bytes ({})\npath:      {}\nadded:     {}\nlast used: {}\nurls:      {}\nleases:    {leases}",
            a.digest,
            a.size,
            human(a.size),
            a.path,
            when(a.added_unix_seconds.saturating_mul(1000), now),
            match a.last_used_unix_ms {
                0 => "never".to_owned(),
                t => when(ms(t), now),
            },
            a.urls.join(" "),
        );
    }

    pub fn list(&self, assets: &[Asset]) {
        if self.json {
            let all: Vec<_> = assets.iter().map(asset_json).collect();
            println!("{}", serde_json::Value::Array(all));
            return;
        }
        let now = now_ms();
        println!(
            "{:<71}  {:>10}  {:<13}  {:<12}  PATH",
            "DIGEST", "SIZE", "LAST USED", "LEASES"
        );
        for a in assets {
            println!(
                "{:<71}  {:>10}  {:<13}  {:<12}  {}",
                a.digest,
                human(a.size),
                match a.last_used_unix_ms {
                    0 => "never".to_owned(),
                    t => relative(ms(t), now),
                },
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
        .map(|l| {
            json!({
                "lease": l.lease,
                "owner_uid": l.owner_uid,
                "expires_unix_ms": l.expires_unix_ms,
                // RFC 3339; null for a pin that holds until released.
                "expires": (l.expires_unix_ms > 0).then(|| rfc3339(ms(l.expires_unix_ms), true)),
            })
        })
        .collect();
    json!({
        "digest": a.digest,
        "path": a.path,
        "size": a.size,
        "added": rfc3339(a.added_unix_seconds.saturating_mul(1000), false),
        "added_unix_seconds": a.added_unix_seconds,
        "last_used": (a.last_used_unix_ms > 0).then(|| rfc3339(ms(a.last_used_unix_ms), true)),
        "last_used_unix_ms": a.last_used_unix_ms,
        "urls": a.urls,
        "leases": leases,
    })
}

/// A pin as `stat` shows it: name, owner, and when it lapses.
fn lease_text(l: &proto::LeaseHold, now: i64) -> String {
    let until = match l.expires_unix_ms {
        0 => "until released".to_owned(),
        t => format!("lapses {}", when(ms(t), now)),
    };
    format!("{} (uid {}), {until}", l.lease, l.owner_uid)
}

fn lease_names(a: &Asset) -> String {
    let names: Vec<&str> = a.leases.iter().map(|l| l.lease.as_str()).collect();
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(",")
    }
}

/// A rate in binary units, as sizes are: `21.9 MiB/s`.
pub fn rate(bytes_per_second: f64) -> String {
    format!("{}/s", human(bytes_per_second as u64))
}

/// Milliseconds since the Unix epoch, as a signed number.
fn ms(unix_ms: u64) -> i64 {
    i64::try_from(unix_ms).unwrap_or(i64::MAX)
}

/// Now, in milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A time for people: `2026-11-30 07:06:07 UTC (3 min ago)`.
fn when(unix_ms: i64, now: i64) -> String {
    let text = rfc3339(unix_ms, false);
    format!(
        "{} {} UTC ({})",
        &text[..10],
        &text[11..19],
        relative(unix_ms, now)
    )
}

/// How far `unix_ms` is from `now`: `12 s ago`, `3 min ago`, `in 5 h`.
fn relative(unix_ms: i64, now: i64) -> String {
    let secs = (now.saturating_sub(unix_ms) / 1000).unsigned_abs();
    let span = match secs {
        0 => return "just now".to_owned(),
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 48 * 3600 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86400),
    };
    if unix_ms > now {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// `unix_ms` in RFC 3339, UTC: `2026-11-30T07:06:07Z`, or with
/// `millis` `2026-11-30T07:06:07.619Z`.
pub fn rfc3339(unix_ms: i64, millis: bool) -> String {
    let secs = unix_ms.div_euclid(1000);
    let (days, of_day) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
    let fraction = if millis {
        format!(".{:03}", unix_ms.rem_euclid(1000))
    } else {
        String::new()
    };
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}{fraction}Z")
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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
