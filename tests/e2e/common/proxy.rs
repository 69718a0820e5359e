//! A TCP proxy on 127.0.0.1 that breaks one connection mid-response: for
//! cutting a real peer's transfer (fake-gcs-server's) at a chosen byte.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards to `127.0.0.1:target`; the first connection whose responses
/// pass `cut_after` bytes is closed there. Stops when dropped.
pub struct CutProxy {
    pub port: u16,
    forwarded: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(target: u16, cut_after: u64) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let forwarded = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let (f, c) = (forwarded.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, cut_after, f.clone(), c.clone()));
            }
        });
        CutProxy {
            port,
            forwarded,
            cut,
            task,
        }
    }

    /// Response bytes passed to clients, over all connections.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }

    /// Whether the cut happened.
    pub fn did_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    cut_after: u64,
    forwarded: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut take = n;
        let cutting = sent + n as u64 > cut_after && !cut.load(Ordering::SeqCst);
        if cutting {
            take = (cut_after - sent.min(cut_after)) as usize;
        }
        if client_write.write_all(&buf[..take]).await.is_err() {
            break;
        }
        sent += take as u64;
        forwarded.fetch_add(take as u64, Ordering::SeqCst);
        if cutting && !cut.swap(true, Ordering::SeqCst) {
            break;
        }
    }
    upstream.abort();
}
