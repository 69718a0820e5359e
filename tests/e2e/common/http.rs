//! An HTTP/1.1 server on 127.0.0.1 for fault injection: each path has a
//! scripted reply, and the server counts requests and records whether the
//! client hung up before the body was sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server answers on one path.
#[derive(Clone)]
pub enum Reply {
    /// 200 with an honest `Content-Length`.
    Body(Vec<u8>),
    /// 200 without `Content-Length`; the end of the body is the close.
    NoLength(Vec<u8>),
    /// 200 declaring `claimed` bytes in `Content-Length`, then `body`.
    Claims { claimed: u64, body: Vec<u8> },
    /// A status with an empty body.
    Status(u16),
    /// 200 with `Content-Length`, `chunk` bytes every `every`.
    Slow {
        body: Vec<u8>,
        chunk: usize,
        every: Duration,
    },
    /// 200 without length, zeros forever (until the client leaves).
    Endless,
}

#[derive(Default)]
struct Stats {
    requests: AtomicUsize,
    body_bytes: AtomicU64,
    hangups: AtomicUsize,
}

/// The running server; stops when dropped.
pub struct HttpServer {
    pub port: u16,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub async fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let routes = Arc::new(Mutex::new(HashMap::new()));
        let stats = Arc::new(Stats::default());
        let (r, s) = (routes.clone(), stats.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, r.clone(), s.clone()));
            }
        });
        HttpServer {
            port,
            routes,
            stats,
            task,
        }
    }

    /// Scripts `path` and returns its URL.
    pub fn route(&self, path: &str, reply: Reply) -> String {
        self.routes
            .lock()
            .expect("routes")
            .insert(path.to_owned(), reply);
        self.url(path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// Body bytes written to clients so far.
    pub fn body_bytes(&self) -> u64 {
        self.stats.body_bytes.load(Ordering::SeqCst)
    }

    /// Replies cut short because the client closed the connection.
    pub fn hangups(&self) -> usize {
        self.stats.hangups.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut conn: TcpStream, routes: Arc<Mutex<HashMap<String, Reply>>>, stats: Arc<Stats>) {
    let Some(path) = read_request_path(&mut conn).await else {
        return;
    };
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let reply = routes.lock().expect("routes").get(&path).cloned();
    let reply = reply.unwrap_or(Reply::Status(404));
    if send(&mut conn, reply, &stats).await.is_err() {
        stats.hangups.fetch_add(1, Ordering::SeqCst);
    }
}

async fn read_request_path(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head).lines().next()?.to_owned();
    line.split_whitespace().nth(1).map(str::to_owned)
}

async fn send(conn: &mut TcpStream, reply: Reply, stats: &Stats) -> std::io::Result<()> {
    let head = |status: u16, length: Option<u64>| {
        let length = length
            .map(|l| format!("Content-Length: {l}\r\n"))
            .unwrap_or_default();
        format!("HTTP/1.1 {status} X\r\n{length}Connection: close\r\n\r\n")
    };
    match reply {
        Reply::Body(body) => {
            conn.write_all(head(200, Some(body.len() as u64)).as_bytes())
                .await?;
            write_body(conn, &body, stats).await?;
        }
        Reply::NoLength(body) => {
            conn.write_all(head(200, None).as_bytes()).await?;
            write_body(conn, &body, stats).await?;
        }
        Reply::Claims { claimed, body } => {
            conn.write_all(head(200, Some(claimed)).as_bytes()).await?;
            write_body(conn, &body, stats).await?;
        }
        Reply::Status(status) => {
            conn.write_all(head(status, Some(0)).as_bytes()).await?;
        }
        Reply::Slow { body, chunk, every } => {
            conn.write_all(head(200, Some(body.len() as u64)).as_bytes())
                .await?;
            for piece in body.chunks(chunk) {
                write_body(conn, piece, stats).await?;
                tokio::time::sleep(every).await;
            }
        }
        Reply::Endless => {
            conn.write_all(head(200, None).as_bytes()).await?;
            let zeros = vec![0u8; 64 * 1024];
            loop {
                write_body(conn, &zeros, stats).await?;
            }
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
