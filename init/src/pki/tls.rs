//! mTLS: material from files, the server's and a parent's rustls configurations (SPIFFE
//! checked at the handshake, a child pinned to its exact ID), the node's renewable
//! certificate, and the peer's verified identity.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

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
    /// Client side: verify the server against the CA under `server_name`.
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(server_name)
    }
}

/// The node's own certificate and key, replaceable while it serves: renewal swaps them and
/// the next handshake, as server or as client of a child, presents the new ones.
#[derive(Debug)]
pub struct LiveIdentity {
    current: std::sync::RwLock<Arc<CertifiedKey>>,
    state: std::sync::RwLock<IdentityState>,
}

/// What NodeInfo says about the node's certificate.
#[derive(Debug, Clone, Copy)]
pub struct IdentityState {
    pub not_after: SystemTime,
    pub not_before: SystemTime,
    /// When a parent last renewed it (None: as loaded at start).
    pub renewed: Option<SystemTime>,
}

/// Why TLS material is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{0}")]
    Pem(String),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("trust anchors: {0}")]
    Verifier(String),
}

/// ring's provider, its cipher suites ordered for this CPU (`by_cpu`).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    by_cpu(&mut p.cipher_suites, aes_in_hardware());
    Arc::new(p)
}

/// AES-GCM first only where the CPU has AES and carry-less multiplication instructions;
/// without them (an emulated CPU such as QEMU's qemu64, small cores) ChaCha20-Poly1305
/// is several times faster in software, and every byte of the API pays it. The server
/// follows its own order (`ignore_client_order`), so the node's CPU decides.
fn by_cpu(suites: &mut [rustls::SupportedCipherSuite], aes: bool) {
    use rustls::CipherSuite as C;
    if !aes {
        suites.sort_by_key(|s| {
            !matches!(
                s.suite(),
                C::TLS13_CHACHA20_POLY1305_SHA256
                    | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        });
    }
}

fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::Pem(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsSetupError::Pem("no certificate in the PEM".into()));
    }
    Ok(certs)
}

fn validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Some((
        at(c.validity().not_before.timestamp()),
        at(c.validity().not_after.timestamp()),
    ))
}

fn certified(cert_pem: &str, key_pem: &str) -> Result<(Arc<CertifiedKey>, IdentityState), TlsSetupError> {
    let chain = certs(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsSetupError::Pem(format!("private key PEM: {e}")))?;
    let (not_before, not_after) =
        validity(chain[0].as_ref()).ok_or_else(|| TlsSetupError::Pem("unparsable certificate".into()))?;
    let ck = CertifiedKey::from_der(chain, key, &provider())?;
    Ok((
        Arc::new(ck),
        IdentityState {
            not_after,
            not_before,
            renewed: None,
        },
    ))
}

/// Whether `key_pem` is the private key of the leaf in `cert_pem` (any certificate: an
/// SVID, a spawn CA): Err says why not.
pub fn key_matches(cert_pem: &str, key_pem: &str) -> Result<(), TlsSetupError> {
    certified(cert_pem, key_pem).map(|_| ())
}

impl LiveIdentity {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<LiveIdentity, TlsSetupError> {
        let (ck, state) = certified(cert_pem, key_pem)?;
        Ok(LiveIdentity {
            current: std::sync::RwLock::new(ck),
            state: std::sync::RwLock::new(state),
        })
    }

    /// Swaps in a renewed certificate and key (checked to match) for every later handshake.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsSetupError> {
        let (ck, mut state) = certified(cert_pem, key_pem)?;
        state.renewed = Some(SystemTime::now());
        if let Ok(mut c) = self.current.write() {
            *c = ck;
        }
        if let Ok(mut s) = self.state.write() {
            *s = state;
        }
        Ok(())
    }

    pub fn state(&self) -> Option<IdentityState> {
        self.state.read().ok().map(|s| *s)
    }

    fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

impl rustls::server::ResolvesServerCert for LiveIdentity {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key()
    }
}

impl rustls::client::ResolvesClientCert for LiveIdentity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn roots(root_pem: &str) -> Result<Arc<rustls::RootCertStore>, TlsSetupError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs(root_pem)? {
        store.add(c)?;
    }
    Ok(Arc::new(store))
}

/// The one SPIFFE ID (URI SAN) of a DER certificate, when it belongs to `domain_root`
/// (`spiffe://DOMAIN/`).
fn spiffe_in_domain(der: &[u8], domain_root: &str) -> Result<String, rustls::Error> {
    crate::pki::spiffe_id_of_der(der)
        .filter(|id| id.starts_with(domain_root) && crate::pki::policy::check_spiffe_id(id).is_ok())
        .ok_or_else(|| rustls::Error::General(format!("the certificate carries no SPIFFE ID of {domain_root}")))
}

/// The handshake-signature methods of a verifier that wraps webpki's (`self.inner`): they
/// are webpki's own; the wrappers only add checks on the certificate.
macro_rules! signatures_by_inner {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// Client certificates: chained to the root (webpki), and carrying a SPIFFE ID of this
/// trust domain; anything else ends at the handshake.
#[derive(Debug)]
struct SpiffeClients {
    inner: Arc<dyn ClientCertVerifier>,
    domain_root: String,
}

impl ClientCertVerifier for SpiffeClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        spiffe_in_domain(end_entity.as_ref(), &self.domain_root)?;
        Ok(ok)
    }

    signatures_by_inner!();
}

/// The server side: `identity` served, clients verified against `root_pem` and refused at
/// the handshake unless they carry a SPIFFE ID of `node_id`'s trust domain.
pub fn server_config(
    root_pem: &str,
    identity: Arc<LiveIdentity>,
    node_id: &str,
) -> Result<rustls::ServerConfig, TlsSetupError> {
    let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(root_pem)?, provider())
        .build()
        .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
    let verifier = SpiffeClients {
        inner,
        domain_root: crate::pki::domain_root(node_id),
    };
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(identity);
    // HTTP/1.1 too, for a Prometheus scrape of `/metrics` (the API itself is HTTP/2).
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The node's CPU picks the cipher (`by_cpu`).
    c.ignore_client_order = true;
    Ok(c)
}

/// Which server a client accepts, beyond a chain to the root and the name it dialled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerId {
    /// Exactly this SPIFFE ID: a parent's channel to its child, or `aer --server-id`.
    Exact(String),
    /// A node the root itself certified (`spiffe://DOMAIN/node/NAME`): what `aer` talks to
    /// unless told otherwise (descendants are reached through it by forwarding). No spawn
    /// CA can issue such an ID, so no compromised child can stand in for a node.
    TopNode,
}

impl ServerId {
    fn accepts(&self, id: &str) -> bool {
        match self {
            ServerId::Exact(e) => e == id,
            ServerId::TopNode => id
                .strip_prefix("spiffe://")
                .and_then(|r| r.split_once("/node/"))
                .is_some_and(|(_, name)| !name.is_empty() && !name.contains('/')),
        }
    }
}

impl std::fmt::Display for ServerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerId::Exact(e) => f.write_str(e),
            ServerId::TopNode => f.write_str("a node the root CA certified (spiffe://DOMAIN/node/NAME)"),
        }
    }
}

/// A server's certificate: chained to the root for the name dialled (webpki), the
/// expected SPIFFE ID, and issued by a CA entitled to (`pki::chain`).
#[derive(Debug)]
struct CheckedServer {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expect: ServerId,
    root_der: Vec<u8>,
}

impl ServerCertVerifier for CheckedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let id = crate::pki::spiffe_id_of_der(end_entity.as_ref());
        if !id.as_deref().is_some_and(|i| self.expect.accepts(i)) {
            return Err(rustls::Error::General(format!(
                "the server presented {}, not {}",
                id.unwrap_or_else(|| "no SPIFFE ID".into()),
                self.expect
            )));
        }
        let mut chain: Vec<&[u8]> = vec![end_entity.as_ref()];
        chain.extend(intermediates.iter().map(|c| c.as_ref()));
        crate::pki::chain::check(&chain, &self.root_der).map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(ok)
    }

    signatures_by_inner!();
}

fn checked_server(root_pem: &str, expect: ServerId) -> Result<Arc<CheckedServer>, TlsSetupError> {
    let root_der = crate::pki::first_der(root_pem).unwrap_or_default();
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(root_pem)?, provider())
        .build()
        .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
    Ok(Arc::new(CheckedServer {
        inner,
        expect,
        root_der,
    }))
}

/// The client side of a parent's channel to its child: presents `identity` (renewed in
/// place) and accepts only the child `expected`.
pub fn child_client_config(
    root_pem: &str,
    identity: Arc<LiveIdentity>,
    expected: &str,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(checked_server(root_pem, ServerId::Exact(expected.to_owned()))?)
        .with_client_cert_resolver(identity);
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(c)
}

impl TlsMaterial {
    /// A client's configuration (`aer`, tests, the bench): this material's certificate,
    /// and a server accepted only as `expect`.
    pub fn checked_client_config(&self, expect: ServerId) -> Result<rustls::ClientConfig, TlsSetupError> {
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| TlsSetupError::Pem(format!("private key PEM: {e}")))?;
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(checked_server(&self.ca_pem, expect)?)
            .with_client_auth_cert(certs(&self.cert_pem)?, key)?;
        c.alpn_protocols = vec![b"h2".to_vec()];
        Ok(c)
    }
}

/// Connects TCP (no Nagle) to one address and runs the TLS handshake with a checked
/// configuration; tonic gets the stream over plain "http" (its own TLS cannot check IDs).
#[derive(Clone)]
pub struct TlsConnector {
    address: String,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

impl TlsConnector {
    pub fn new(address: &str, server_name: &str, config: rustls::ClientConfig) -> Result<TlsConnector, TlsSetupError> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| TlsSetupError::Pem(format!("server name '{server_name}': {e}")))?;
        Ok(TlsConnector {
            address: address.to_owned(),
            server_name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }
}

pub type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
type Connecting = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<TlsIo>> + Send>>;

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Connecting {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(&this.address).await?;
            tcp.set_nodelay(true)?;
            let tls = this.tls.connect(this.server_name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn chacha_leads_without_aes_instructions_and_aes_leads_with_them() {
        use rustls::CipherSuite as C;
        let first = |aes| {
            let mut p = rustls::crypto::ring::default_provider();
            super::by_cpu(&mut p.cipher_suites, aes);
            p.cipher_suites[0].suite()
        };
        assert_eq!(first(false), C::TLS13_CHACHA20_POLY1305_SHA256);
        assert_ne!(first(true), C::TLS13_CHACHA20_POLY1305_SHA256);
    }

    use super::ServerId;

    /// A renewed spawn CA with someone else's key is refused before it is written.
    #[test]
    fn a_key_must_be_its_certificates() {
        let a = crate::pki::mint_ca("t.test").unwrap();
        let b = crate::pki::mint_ca("t.test").unwrap();
        super::key_matches(&a.cert_pem, &a.key_pem).unwrap();
        let e = super::key_matches(&a.cert_pem, &b.key_pem).unwrap_err();
        assert!(!e.to_string().is_empty());
        assert!(super::key_matches(&a.cert_pem, "not a key").is_err());
    }

    #[test]
    fn aer_accepts_only_nodes_the_root_certified_unless_pinned() {
        assert!(ServerId::TopNode.accepts("spiffe://aurae.local/node/aurae"));
        for no in [
            "spiffe://aurae.local/node/aurae/instance/c1",
            "spiffe://aurae.local/client/admin",
            "spiffe://aurae.local/node/",
            "spiffe://aurae.local/node/aurae/spawn-ca",
        ] {
            assert!(!ServerId::TopNode.accepts(no), "{no}");
        }
        let c1 = "spiffe://aurae.local/node/aurae/instance/c1";
        assert!(ServerId::Exact(c1.into()).accepts(c1));
        assert!(!ServerId::Exact(c1.into()).accepts("spiffe://aurae.local/node/aurae/instance/c2"));
    }
}
