//! The prewarm manifest: the assets a node agent wants on the node, as TOML
//! or JSON (by the file's extension: `.json` is JSON, anything else TOML).
//!
//! ```toml
//! concurrency = 4                      # optional
//!
//! [[assets]]
//! url = "https://images.example/vmlinux"
//! digest = "sha256:..."
//! size = 31457280                      # optional
//! mirrors = ["gs://images/vmlinux"]    # optional
//! lease = "node-baseline"              # optional
//! lease_ttl_seconds = 86400            # optional
//! ```

use std::path::Path;

use assetd::proto;

/// A manifest file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Fetches at once; 0 or absent for the daemon's default.
    #[serde(default)]
    pub concurrency: u32,
    /// The assets.
    pub assets: Vec<Entry>,
}

/// One asset of a manifest.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    url: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    mirrors: Vec<String>,
    #[serde(default)]
    lease: String,
    #[serde(default)]
    lease_ttl_seconds: u64,
}

impl Manifest {
    /// Reads and parses `path`; the error names the file and what is wrong.
    pub fn load(path: &Path) -> Result<Manifest, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let json = path.extension().is_some_and(|e| e == "json");
        Manifest::parse(&text, json).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a manifest's text: JSON when `json`, else TOML. (The fuzz
    /// target `manifest` includes this file.)
    pub fn parse(text: &str, json: bool) -> Result<Manifest, String> {
        if json {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            toml::from_str(text).map_err(|e| e.to_string())
        }
    }

    /// The request for the daemon.
    pub fn request(self) -> proto::PrewarmRequest {
        let assets = self
            .assets
            .into_iter()
            .map(|e| proto::FetchRequest {
                url: e.url,
                digest: e.digest,
                size: e.size,
                max_size: 0,
                mirrors: e.mirrors,
                lease: e.lease,
                lease_ttl_seconds: e.lease_ttl_seconds,
                connections: 0,
            })
            .collect();
        proto::PrewarmRequest {
            assets,
            concurrency: self.concurrency,
        }
    }
}
