//! An HTTP/1.1 server on 127.0.0.1 for fault injection: each path has a
//! scripted sequence of replies (request N gets reply N, the last one
//! repeats), and the server counts requests (in all and per path), body
//! bytes and hang-ups, and records each request's `Range` header. A reply
//! can be held behind a [`Gate`] the test opens, to order events without
//! sleeping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The strong ETag the server gives ranged objects.
pub const ETAG: &str = "\"v1\"";

/// A fault a [`Reply::Pieces`] injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// The connection closes after this many body bytes.
    CutAfter(usize),
    /// A 206's `Content-Range` names other bytes than asked.
    WrongRange,
    /// The head, then silence for a minute.
    Hang,
}

/// What the server answers to one request.
#[derive(Clone)]
pub enum Reply {
    /// 200 with an honest `Content-Length`; `Range` is ignored.
    Body(Vec<u8>),
    /// 200 with `ETag`, or 206 when asked for a `Range` whose `If-Range`
    /// matches.
    Ranged(Vec<u8>),
    /// Like `Ranged` (or like `Body` when not `ranged`), but the connection
    /// ends after `after` body bytes: closed, or reset when `reset`.
    Cut {
        body: Vec<u8>,
        after: usize,
        reset: bool,
        ranged: bool,
    },
    /// Byte ranges as big artifact servers serve them: 200 with
    /// `Accept-Ranges: bytes` (and `ETag` when `etag` is given), 206 for
    /// `Range: bytes=A-B` with `Content-Range`, 412 when `If-Match` names
    /// another ETag. `fault`: the body stops after that many bytes
    /// (connection closed), or with `Fault::WrongRange` the 206 names bytes
    /// one further on than asked.
    Pieces {
        body: Arc<Vec<u8>>,
        etag: Option<&'static str>,
        fault: Fault,
    },
    /// Like `Ranged`, but after `after` body bytes it goes silent for a minute.
    Stall { body: Vec<u8>, after: usize },
    /// 200 without `Content-Length`; the end of the body is the close.
    NoLength(Vec<u8>),
    /// 200 declaring `claimed` bytes in `Content-Length`, then `body`.
    Claims { claimed: u64, body: Vec<u8> },
    /// A status with an empty body and extra headers.
    Status(u16, Vec<(&'static str, String)>),
    /// 200 with `Content-Length`, `chunk` bytes every `every`.
    Slow {
        body: Vec<u8>,
        chunk: usize,
        every: Duration,
    },
    /// 200 without length, zeros forever (until the client leaves).
    Endless,
    /// 302 to `location`.
    Redirect(String),
    /// `reply`, once `gate` is open (the request is counted on arrival).
    Held { gate: Gate, reply: Box<Reply> },
    /// 200 without length: `after` bytes of `body`, then nothing until
    /// `gate` opens, then the rest.
    Paused {
        body: Vec<u8>,
        after: usize,
        gate: Gate,
    },
}

/// Holds [`Reply::Held`] and [`Reply::Paused`] replies until the test opens
/// it; open for good after that.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Gate {
        Gate(Arc::new(watch::channel(false).0))
    }
}

impl Gate {
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn opened(&self) {
        // The sender lives as long as `self`: this only returns once open.
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
}

impl Reply {
    /// A status with no extra headers.
    pub fn status(code: u16) -> Reply {
        Reply::Status(code, Vec::new())
    }

    /// `reply` once `gate` is open.
    pub fn held(gate: &Gate, reply: Reply) -> Reply {
        Reply::Held {
            gate: gate.clone(),
            reply: Box::new(reply),
        }
    }

    /// `body` at `chunk` bytes every `every_ms` milliseconds.
    pub fn slow(body: &[u8], chunk: usize, every_ms: u64) -> Reply {
        Reply::Slow {
            body: body.to_vec(),
            chunk,
            every: Duration::from_millis(every_ms),
        }
    }
}

#[derive(Default)]
struct Stats {
    requests: AtomicUsize,
    body_bytes: AtomicU64,
    hangups: AtomicUsize,
    ranges: Mutex<Vec<Option<String>>>,
}

type Routes = Arc<Mutex<HashMap<String, Vec<Reply>>>>;
/// Requests so far, by path.
type Served = Arc<Mutex<HashMap<String, usize>>>;

/// The running server; stops when dropped.
pub struct HttpServer {
    pub port: u16,
    routes: Routes,
    served: Served,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub async fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let routes: Routes = Arc::default();
        let served: Served = Arc::default();
        let stats = Arc::new(Stats::default());
        let (r, n, s) = (routes.clone(), served.clone(), stats.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, r.clone(), n.clone(), s.clone()));
            }
        });
        HttpServer {
            port,
            routes,
            served,
            stats,
            task,
        }
    }

    /// Scripts `path` with one reply for every request; returns its URL.
    pub fn route(&self, path: &str, reply: Reply) -> String {
        self.sequence(path, vec![reply])
    }

    /// Scripts `path` with a reply per request, the last one repeating.
    pub fn sequence(&self, path: &str, replies: Vec<Reply>) -> String {
        self.routes
            .lock()
            .expect("routes")
            .insert(path.to_owned(), replies);
        self.url(path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// Requests for `path` so far.
    pub fn requests_to(&self, path: &str) -> usize {
        let served = self.served.lock().expect("served");
        served.get(path).copied().unwrap_or(0)
    }

    /// Body bytes written to clients so far.
    pub fn body_bytes(&self) -> u64 {
        self.stats.body_bytes.load(Ordering::SeqCst)
    }

    /// Replies cut short because the client closed the connection.
    pub fn hangups(&self) -> usize {
        self.stats.hangups.load(Ordering::SeqCst)
    }

    /// The `Range` header of every request so far, in order.
    pub fn ranges(&self) -> Vec<Option<String>> {
        self.stats.ranges.lock().expect("ranges").clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A parsed request: path, `Range` start (and end), whether `If-Range`
/// matches, and `If-Match`.
struct Request {
    path: String,
    range_start: Option<u64>,
    /// `Range: bytes=A-B`: (A, B).
    range: Option<(u64, u64)>,
    if_range_ok: bool,
    if_match: Option<String>,
}

async fn serve(mut conn: TcpStream, routes: Routes, served: Served, stats: Arc<Stats>) {
    let Some((request, range)) = read_request(&mut conn).await else {
        return;
    };
    stats.requests.fetch_add(1, Ordering::SeqCst);
    stats.ranges.lock().expect("ranges").push(range);
    let index = {
        let mut served = served.lock().expect("served");
        let n = served.entry(request.path.clone()).or_default();
        *n += 1;
        *n - 1
    };
    let reply = routes
        .lock()
        .expect("routes")
        .get(&request.path)
        .and_then(|replies| replies.get(index.min(replies.len() - 1)).cloned())
        .unwrap_or(Reply::status(404));
    if send(&mut conn, &request, reply, &stats).await.is_err() {
        stats.hangups.fetch_add(1, Ordering::SeqCst);
    }
}

async fn read_request(conn: &mut TcpStream) -> Option<(Request, Option<String>)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.lines();
    let path = lines.next()?.split_whitespace().nth(1)?.to_owned();
    let header = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            })
            .map(|(_, v)| v.trim().to_owned())
    };
    let range = header("range");
    let range_start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok());
    let if_range_ok = header("if-range").is_none_or(|v| v == ETAG);
    let bounded = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    Some((
        Request {
            path,
            range_start,
            range: bounded,
            if_range_ok,
            if_match: header("if-match"),
        },
        range,
    ))
}

fn head(status: u16, length: Option<u64>, extra: &[(&str, String)]) -> String {
    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    if let Some(length) = length {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head + "\r\n"
}

/// Writes the head of a ranged reply and returns the part of `body` to send.
async fn ranged_head<'a>(
    conn: &mut TcpStream,
    request: &Request,
    body: &'a [u8],
) -> std::io::Result<&'a [u8]> {
    let etag = ("ETag", ETAG.to_owned());
    match request.range_start {
        Some(start) if request.if_range_ok && (start as usize) < body.len() => {
            let start = start as usize;
            let range = format!("bytes {start}-{}/{}", body.len() - 1, body.len());
            let h = head(
                206,
                Some((body.len() - start) as u64),
                &[etag, ("Content-Range", range)],
            );
            conn.write_all(h.as_bytes()).await?;
            Ok(&body[start..])
        }
        _ => {
            conn.write_all(head(200, Some(body.len() as u64), &[etag]).as_bytes())
                .await?;
            Ok(body)
        }
    }
}

async fn send(
    conn: &mut TcpStream,
    request: &Request,
    reply: Reply,
    stats: &Stats,
) -> std::io::Result<()> {
    match reply {
        Reply::Body(body) => {
            conn.write_all(head(200, Some(body.len() as u64), &[]).as_bytes())
                .await?;
            write_body(conn, &body, stats).await?;
        }
        Reply::Ranged(body) => {
            let part = ranged_head(conn, request, &body).await?;
            write_body(conn, part, stats).await?;
        }
        Reply::Cut {
            body,
            after,
            reset,
            ranged,
        } => {
            let part = if ranged {
                ranged_head(conn, request, &body).await?
            } else {
                conn.write_all(head(200, Some(body.len() as u64), &[]).as_bytes())
                    .await?;
                &body[..]
            };
            write_body(conn, &part[..after.min(part.len())], stats).await?;
            conn.flush().await?;
            if reset {
                // Let the client read what was sent, so the point it resumes
                // from does not depend on timing; then reset.
                tokio::time::sleep(Duration::from_millis(200)).await;
                // SO_LINGER 0: the close sends RST instead of FIN (and
                // does not block, which is what the deprecation is about).
                #[allow(deprecated)]
                conn.set_linger(Some(Duration::ZERO))?;
            }
            return Ok(());
        }
        Reply::Pieces { body, etag, fault } => {
            let mut extra = vec![("Accept-Ranges", "bytes".to_owned())];
            if let Some(etag) = etag {
                extra.push(("ETag", etag.to_owned()));
            }
            let part: &[u8] = match request.range {
                Some(_) if request.if_match.is_some() && request.if_match.as_deref() != etag => {
                    conn.write_all(head(412, Some(0), &extra).as_bytes())
                        .await?;
                    return Ok(());
                }
                Some((a, b)) if a <= b && (b as usize) < body.len() => {
                    let shift = u64::from(fault == Fault::WrongRange);
                    let range = format!("bytes {}-{}/{}", a + shift, b + shift, body.len());
                    extra.push(("Content-Range", range));
                    let h = head(206, Some(b - a + 1), &extra);
                    conn.write_all(h.as_bytes()).await?;
                    &body[a as usize..=b as usize]
                }
                _ => {
                    let h = head(200, Some(body.len() as u64), &extra);
                    conn.write_all(h.as_bytes()).await?;
                    &body[..]
                }
            };
            match fault {
                Fault::CutAfter(n) => write_body(conn, &part[..n.min(part.len())], stats).await?,
                Fault::Hang => tokio::time::sleep(Duration::from_secs(60)).await,
                _ => write_body(conn, part, stats).await?,
            }
        }
        Reply::Stall { body, after } => {
            let part = ranged_head(conn, request, &body).await?;
            write_body(conn, &part[..after.min(part.len())], stats).await?;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Reply::NoLength(body) => {
            conn.write_all(head(200, None, &[]).as_bytes()).await?;
            write_body(conn, &body, stats).await?;
        }
        Reply::Claims { claimed, body } => {
            conn.write_all(head(200, Some(claimed), &[]).as_bytes())
                .await?;
            write_body(conn, &body, stats).await?;
        }
        Reply::Status(status, extra) => {
            conn.write_all(head(status, Some(0), &extra).as_bytes())
                .await?;
        }
        Reply::Slow { body, chunk, every } => {
            conn.write_all(head(200, Some(body.len() as u64), &[]).as_bytes())
                .await?;
            for piece in body.chunks(chunk) {
                write_body(conn, piece, stats).await?;
                tokio::time::sleep(every).await;
            }
        }
        Reply::Endless => {
            conn.write_all(head(200, None, &[]).as_bytes()).await?;
            let zeros = vec![0u8; 64 * 1024];
            loop {
                write_body(conn, &zeros, stats).await?;
            }
        }
        Reply::Redirect(location) => {
            conn.write_all(head(302, Some(0), &[("Location", location)]).as_bytes())
                .await?;
        }
        Reply::Held { gate, reply } => {
            gate.opened().await;
            return Box::pin(send(conn, request, *reply, stats)).await;
        }
        Reply::Paused { body, after, gate } => {
            conn.write_all(head(200, None, &[]).as_bytes()).await?;
            let (first, rest) = body.split_at(after.min(body.len()));
            write_body(conn, first, stats).await?;
            conn.flush().await?;
            gate.opened().await;
            write_body(conn, rest, stats).await?;
        }
    }
    conn.shutdown().await
}

async fn write_body(conn: &mut TcpStream, bytes: &[u8], stats: &Stats) -> std::io::Result<()> {
    conn.write_all(bytes).await?;
    stats
        .body_bytes
        .fetch_add(bytes.len() as u64, Ordering::SeqCst);
    Ok(())
}
