//! Real peers from Debian's packages (nginx, tinyproxy), run as child
//! processes with their own temp folder on a free loopback port.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// `name` (from Debian's `package`), found in the usual folders; `None`,
/// saying the test is skipped, when it is missing and we are not root.
/// As root it must be there: `scripts/test` installs it.
pub fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            !nix::unistd::geteuid().is_root(),
            "{name} is missing: run scripts/test, which installs the Debian package {package}"
        );
        eprintln!("SKIPPED: needs {name} (Debian package {package})");
    }
    found
}

/// A port free right now on 127.0.0.1, for peers that can't report theirs.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Waits until something accepts on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A peer process with its temp folder and log; killed on drop.
pub struct Peer {
    pub port: u16,
    pub dir: TempDir,
    pub child: Child,
    pub name: &'static str,
    pub log: PathBuf,
}

impl Peer {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log());
        }
    }
}
