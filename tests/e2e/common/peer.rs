//! Real peers from Debian's packages (nginx, tinyproxy), run as child
//! processes with their own temp folder on a free loopback port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

/// nginx from Debian serving `files` on 127.0.0.1 from a temp folder: the
/// `listen` line gets `listen_extra` (" ssl"), the server block
/// `server_extra` (certificates); the access log (`access.log` in the
/// peer's folder) has each request's status, `Range` header and body bytes.
pub fn nginx(files: &[(&str, &[u8])], listen_extra: &str, server_extra: &str) -> Option<Peer> {
    let binary = tool("nginx", "nginx")?;
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let www = d.join("www");
    std::fs::create_dir_all(d.join("tmp")).expect("mkdir");
    std::fs::create_dir_all(&www).expect("mkdir");
    for (name, bytes) in files {
        std::fs::write(www.join(name), bytes).expect("write file");
    }
    let port = free_port();
    let log = d.join("error.log");
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\n\
         error_log {log} info;\nevents {{ worker_connections 256; }}\nhttp {{\n\
         log_format ranges '$status \"$http_range\" $body_bytes_sent';\n\
         access_log {access} ranges;\nclient_body_temp_path {tmp};\nproxy_temp_path {tmp};\n\
         fastcgi_temp_path {tmp};\nuwsgi_temp_path {tmp};\nscgi_temp_path {tmp};\n\
         server {{\nlisten 127.0.0.1:{port}{listen_extra};\n{server_extra}\nroot {www};\n}}\n}}\n",
        pid = d.join("nginx.pid").display(),
        log = log.display(),
        access = d.join("access.log").display(),
        tmp = d.join("tmp").display(),
        www = www.display(),
    );
    std::fs::write(d.join("nginx.conf"), conf).expect("write config");
    let child = Command::new(binary)
        .arg("-p")
        .arg(d)
        .arg("-c")
        .arg(d.join("nginx.conf"))
        .arg("-e")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let peer = Peer {
        port,
        dir,
        child,
        name: "nginx",
        log,
    };
    wait_listening(port, "nginx", || peer.log());
    Some(peer)
}

impl Peer {
    /// The lines of the peer's `access.log`.
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}
