//! Where `aer` finds the node and its certificates: flags over a TOML config file.
//!
//! ```toml
//! address = "127.0.0.1:8443"
//! ca = "/path/ca.crt"
//! cert = "/path/client.crt"
//! key = "/path/client.key"
//! server_name = "auraed"     # name checked against the server certificate
//! server_id = "spiffe://aurae.local/node/aurae"   # optional: the exact ID it must carry
//! nodes = ["10.44.0.11", "10.44.0.12:8443"]   # optional: the fleet `aer --all-nodes` reaches
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub address: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
    pub server_id: Option<String>,
    /// A fleet's nodes (HOST[:PORT]), for `aer --all-nodes`.
    pub nodes: Option<Vec<String>>,
}

/// Why the config file cannot be used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {}: {source}", path.display())]
    Parse { path: PathBuf, source: toml::de::Error },
}

impl FileConfig {
    /// Reads a config file; relative certificate paths are taken relative to the file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut c: FileConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.ca, &mut c.cert, &mut c.key].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(c)
    }

    /// The config file to use: explicit, else `$AURAE_CONFIG`, else `~/.config/aurae/aer.toml`
    /// when it exists.
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_owned());
        }
        if let Some(p) = std::env::var_os("AURAE_CONFIG") {
            return Some(PathBuf::from(p));
        }
        let home = std::env::var_os("HOME")?;
        let p = PathBuf::from(home).join(".config/aurae/aer.toml");
        p.exists().then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_follow_the_file_and_unknown_keys_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("aer.toml");
        std::fs::write(&f, "address = \"127.0.0.1:1\"\nca = \"pki/ca.crt\"\n").unwrap();
        let c = FileConfig::load(&f).unwrap();
        assert_eq!(c.ca.unwrap(), d.path().join("pki/ca.crt"));
        std::fs::write(&f, "adress = \"x\"\n").unwrap();
        assert!(FileConfig::load(&f).unwrap_err().to_string().contains("adress"));
    }
}
