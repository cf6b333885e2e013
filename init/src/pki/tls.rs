//! mTLS material for the server and the client, and the peer's verified identity.

use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Paths of a CA bundle, a certificate and its key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct TlsFileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn read(path: &Path) -> Result<String, TlsFileError> {
    std::fs::read_to_string(path).map_err(|source| TlsFileError {
        path: path.to_owned(),
        source,
    })
}

/// The loaded PEM material.
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TlsFiles {
    pub fn in_dir(dir: &Path, stem: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        }
    }

    pub fn load(&self) -> Result<TlsMaterial, TlsFileError> {
        Ok(TlsMaterial {
            ca_pem: read(&self.ca)?,
            cert_pem: read(&self.cert)?,
            key_pem: read(&self.key)?,
        })
    }
}

impl TlsMaterial {
    /// Server side: a client certificate chained to the CA is required.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
    }

    /// Client side: verify the server against the CA under `server_name`.
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(server_name)
    }
}

/// The verified SPIFFE ID of the caller, or "" when the certificate carries none.
pub fn peer_spiffe_id<T>(req: &tonic::Request<T>) -> String {
    req.peer_certs()
        .and_then(|certs| certs.first().and_then(|c| crate::pki::spiffe_id_of_der(c.as_ref())))
        .unwrap_or_default()
}
