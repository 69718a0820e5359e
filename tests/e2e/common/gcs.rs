//! fake-gcs-server, a real GCS JSON API emulator, on 127.0.0.1.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The emulator, serving the objects written under its data folder before
/// it started. Stopped on drop.
pub struct FakeGcs {
    pub port: u16,
    dir: TempDir,
    child: Child,
}

impl FakeGcs {
    /// Starts the emulator with `objects` as `(bucket, name, bytes)`.
    pub fn start(objects: &[(&str, &str, &[u8])]) -> FakeGcs {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        for (bucket, name, bytes) in objects {
            let path = data.join(bucket).join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, bytes).expect("write object");
        }
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("gcs.log")).expect("log");
        let child = Command::new(binary())
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-backend",
                "memory",
            ])
            .arg("-port")
            .arg(port.to_string())
            .arg("-data")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start fake-gcs-server");
        let gcs = FakeGcs { port, dir, child };
        gcs.wait_ready();
        gcs
    }

    /// `host:port`, as `STORAGE_EMULATOR_HOST` wants it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The emulator's request log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gcs.log")).unwrap_or_default()
    }

    /// Media downloads (`alt=media`) the emulator served, by log line.
    pub fn media_requests(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("alt=media"))
            .count()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "fake-gcs-server did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- fake-gcs-server log ----\n{}", self.log());
        }
    }
}

/// fake-gcs-server as found by `scripts/test`, which installs it and sets
/// `$FAKE_GCS_SERVER`.
fn binary() -> PathBuf {
    std::env::var_os("FAKE_GCS_SERVER")
        .map(PathBuf::from)
        .expect("FAKE_GCS_SERVER is not set: run the tests with scripts/test, which installs fake-gcs-server")
}

/// A port free right now on 127.0.0.1 (the emulator cannot bind port 0 and
/// report it).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
