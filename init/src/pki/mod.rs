//! Certificate minting with rcgen: a CA, node (server) certificates and client certificates,
//! each carrying a SPIFFE ID as a URI SAN. Files are PEM; keys are written 0600.

pub mod chain;
pub mod policy;
pub mod revoked;
pub mod tls;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::{
    fs,
    io::Write,
    net::IpAddr,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

pub const DEFAULT_TRUST_DOMAIN: &str = "aurae.local";

/// How deep spawned instances nest below a node (the runtime refuses deeper names, see
/// `runtime::names::MAX_DEPTH`); spawn CAs' path lengths and chain lengths follow from it.
pub const MAX_NESTING: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A certificate and its private key, PEM encoded.
pub struct Minted {
    pub cert_pem: String,
    pub key_pem: String,
}

/// `spiffe://<trust domain>/<path>`.
pub fn spiffe_id(trust_domain: &str, path: &str) -> String {
    format!("spiffe://{trust_domain}/{}", path.trim_start_matches('/'))
}

/// `spiffe://DOMAIN/`, the root of the trust domain of the SPIFFE ID `id`.
pub fn domain_root(id: &str) -> String {
    let domain = id.trim_start_matches("spiffe://").split('/').next().unwrap_or_default();
    format!("spiffe://{domain}/")
}

fn validate_path_segment(what: &str, s: &str) -> Result<(), PkiError> {
    if s.is_empty() || s.len() > 63 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
        return Err(PkiError::Invalid(format!(
            "{what} '{s}' must be 1-63 characters of [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

/// Mints a self-signed CA for `trust_domain`.
pub fn mint_ca(trust_domain: &str) -> Result<Minted, PkiError> {
    validate_path_segment("trust domain", trust_domain)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, format!("Aurae CA ({trust_domain})"));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.subject_alt_names = vec![SanType::URI(spiffe_id(trust_domain, "").try_into()?)];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2044, 1, 1);
    let cert = p.self_signed(&key)?;
    Ok(Minted {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What a leaf certificate is for.
pub enum LeafKind<'a> {
    /// A node's serving certificate: DNS names and IPs it is reached by.
    Server {
        dns: &'a [String],
        ips: &'a [IpAddr],
    },
    Client,
}

/// Mints a leaf signed by the CA, with `spiffe_id` as URI SAN.
pub fn mint_leaf(
    ca: &Minted,
    spiffe: &str,
    common_name: &str,
    kind: LeafKind<'_>,
    ttl_days: u32,
) -> Result<Minted, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    p.subject_alt_names = vec![SanType::URI(spiffe.try_into()?)];
    match kind {
        LeafKind::Server { dns, ips } => {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            for d in dns {
                p.subject_alt_names.push(SanType::DnsName(d.as_str().try_into()?));
            }
            p.subject_alt_names.extend(ips.iter().copied().map(SanType::IpAddress));
        }
        LeafKind::Client => p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
    }
    let now = std::time::SystemTime::now();
    p.not_before = (now - std::time::Duration::from_secs(3600)).into();
    p.not_after = (now + std::time::Duration::from_secs(u64::from(ttl_days) * 86400)).into();
    signed(ca, p)
}

/// The first certificate of a PEM chain (the one whose key signs).
pub fn first_pem(chain: &str) -> &str {
    const END: &str = "-----END CERTIFICATE-----";
    match chain.find(END) {
        Some(i) => &chain[..i + END.len()],
        None => chain,
    }
}

/// Signs `p` with `issuer`; the certificate never outlives its issuer (its expiry is cut
/// to the issuer's).
fn signed(issuer: &Minted, mut p: CertificateParams) -> Result<Minted, PkiError> {
    let issuer_pem = first_pem(&issuer.cert_pem);
    let (_, pem) = x509_parser::pem::parse_x509_pem(issuer_pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("issuer certificate: {e}")))?;
    let issuer_cert = pem
        .parse_x509()
        .map_err(|e| PkiError::Invalid(format!("issuer certificate: {e}")))?;
    let issuer_expiry = issuer_cert.validity().not_after.to_datetime();
    if p.not_after > issuer_expiry {
        p.not_after = issuer_expiry;
    }
    let issuer_key = KeyPair::from_pem(&issuer.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(issuer_pem, issuer_key)?;
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Minted {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// How far back a certificate's validity starts: slack for a child whose clock is a
/// little behind its parent's.
pub const BACKDATE: std::time::Duration = std::time::Duration::from_secs(3600);

fn validity(p: &mut CertificateParams, ttl: std::time::Duration) {
    let now = std::time::SystemTime::now();
    p.not_before = (now - BACKDATE).into();
    p.not_after = (now + ttl).into();
}

/// How many CAs may follow a spawn CA in a chain: one per level of nesting still allowed
/// below it (a node's own spawn CA is at depth 0, its child's at 1, ...).
pub fn spawn_ca_path_len(spiffe: &str) -> u8 {
    let depth = spiffe.split('/').filter(|s| *s == "instance").count();
    let max = MAX_NESTING;
    u8::try_from(max.saturating_sub(1).saturating_sub(depth)).unwrap_or(0)
}

/// An intermediate CA that may sign SVIDs (and further intermediates) for spawned
/// instances, with the pathLen its depth allows (`spawn_ca_path_len`); what it may sign is
/// checked by every node (`chain`). `issuer` is the first certificate of its `cert_pem` chain.
pub fn mint_intermediate(
    issuer: &Minted,
    spiffe: &str,
    cn: &str,
    ttl: std::time::Duration,
) -> Result<Minted, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(spawn_ca_path_len(spiffe)));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.use_authority_key_identifier_extension = true;
    p.subject_alt_names = vec![SanType::URI(spiffe.try_into()?)];
    validity(&mut p, ttl);
    signed(issuer, p)
}

/// A short-lived X.509 SVID for a spawned instance: serves its API and is its client
/// identity, with `spiffe` as URI SAN plus the names and addresses it is reached by.
pub fn mint_svid(
    issuer: &Minted,
    spiffe: &str,
    cn: &str,
    dns: &[String],
    ips: &[IpAddr],
    ttl: std::time::Duration,
) -> Result<Minted, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.subject_alt_names = vec![SanType::URI(spiffe.try_into()?)];
    for d in dns {
        p.subject_alt_names.push(SanType::DnsName(d.as_str().try_into()?));
    }
    p.subject_alt_names.extend(ips.iter().copied().map(SanType::IpAddress));
    validity(&mut p, ttl);
    signed(issuer, p)
}

/// Writes `<dir>/<stem>.crt` (0644) and `<dir>/<stem>.key` (0600).
pub fn write_pair(dir: &Path, stem: &str, m: &Minted) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_file(&dir.join(format!("{stem}.crt")), m.cert_pem.as_bytes(), 0o644)?;
    write_file(&dir.join(format!("{stem}.key")), m.key_pem.as_bytes(), 0o600)
}

/// Replaces `<dir>/<stem>.{crt,key}` as a pair: both are written under temporary names,
/// then renamed, so a reader never sees a certificate with another's key.
pub fn replace_pair(dir: &Path, stem: &str, m: &Minted) -> Result<(), PkiError> {
    let tmp = format!(".{stem}.new");
    write_pair(dir, &tmp, m)?;
    for ext in ["key", "crt"] {
        let from = dir.join(format!("{tmp}.{ext}"));
        let to = dir.join(format!("{stem}.{ext}"));
        fs::rename(&from, &to).map_err(io_err(&to))?;
    }
    Ok(())
}

/// Writes `data` with exactly `mode`: a file (a key) that already existed with a looser
/// mode is narrowed before its new bytes go in. Every file auraed writes that may hold a
/// secret goes through here.
pub fn write_with_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(data)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    write_with_mode(path, data, mode).map_err(io_err(path))
}

/// Reads `<dir>/<stem>.crt` and `.key`.
pub fn read_pair(dir: &Path, stem: &str) -> Result<Minted, PkiError> {
    let c = dir.join(format!("{stem}.crt"));
    let k = dir.join(format!("{stem}.key"));
    Ok(Minted {
        cert_pem: fs::read_to_string(&c).map_err(io_err(&c))?,
        key_pem: fs::read_to_string(&k).map_err(io_err(&k))?,
    })
}

/// The SPIFFE ID (first `spiffe://` URI SAN) of a DER certificate.
pub fn spiffe_id_of_der(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_owned()),
        _ => None,
    })
}

/// Every certificate of a PEM chain, DER, in order (blocks that do not parse are skipped).
pub fn chain_der(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(|p| p.ok().map(|p| p.contents))
        .collect()
}

/// The DER bytes of the first certificate in a PEM string.
pub fn first_der(pem: &str) -> Option<Vec<u8>> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .ok()
        .map(|(_, p)| p.contents)
}

/// When a DER certificate expires.
pub fn not_after_of_der(der: &[u8]) -> Option<std::time::SystemTime> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = u64::try_from(c.validity().not_after.timestamp()).ok()?;
    Some(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// The SPIFFE ID of the first certificate in a PEM string.
pub fn spiffe_id_of_pem(pem: &str) -> Option<String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    spiffe_id_of_der(&p.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_carries_its_spiffe_id_and_chains_to_the_ca() {
        let ca = mint_ca("test.local").unwrap();
        let id = spiffe_id("test.local", "client/alice");
        let leaf = mint_leaf(&ca, &id, "alice", LeafKind::Client, 1).unwrap();
        assert_eq!(
            spiffe_id_of_pem(&leaf.cert_pem).as_deref(),
            Some("spiffe://test.local/client/alice")
        );
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
        let (_, leaf_pem) = x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
        let ca_x = ca_pem.parse_x509().unwrap();
        let leaf_x = leaf_pem.parse_x509().unwrap();
        assert_eq!(leaf_x.issuer(), ca_x.subject());
    }

    #[test]
    fn spawn_cas_are_path_constrained_and_nothing_outlives_its_issuer() {
        let ca = mint_ca("t.local").unwrap();
        let hour = std::time::Duration::from_secs(3600);
        let node = mint_intermediate(&ca, "spiffe://t.local/node/n/spawn-ca", "n", hour).unwrap();
        let child = mint_intermediate(&node, "spiffe://t.local/node/n/instance/c1/spawn-ca", "c1", 100 * hour).unwrap();
        let parse = |pem: &str| x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1;
        let (n, c) = (parse(&node.cert_pem), parse(&child.cert_pem));
        let (n, c) = (n.parse_x509().unwrap(), c.parse_x509().unwrap());
        let path_len = |x: &x509_parser::certificate::X509Certificate<'_>| {
            x.basic_constraints().unwrap().unwrap().value.path_len_constraint
        };
        assert_eq!(path_len(&n), Some(7));
        assert_eq!(path_len(&c), Some(6));
        assert_eq!(
            c.validity().not_after,
            n.validity().not_after,
            "cut to the issuer's expiry"
        );
    }

    #[test]
    fn bad_trust_domain_is_refused() {
        assert!(matches!(mint_ca("a/b"), Err(PkiError::Invalid(m)) if m.contains("a/b")));
    }

    #[test]
    fn keys_are_private_on_disk_even_when_the_file_was_there_before() {
        let d = tempfile::tempdir().unwrap();
        let mode = |f: &str| fs::metadata(d.path().join(f)).unwrap().permissions().mode() & 0o777;
        write_pair(d.path(), "ca", &mint_ca("t.local").unwrap()).unwrap();
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("ca.crt"), 0o644);
        // A key file left world-readable (by hand, or by an older version) is narrowed.
        fs::set_permissions(d.path().join("ca.key"), fs::Permissions::from_mode(0o644)).unwrap();
        write_pair(d.path(), "ca", &mint_ca("t.local").unwrap()).unwrap();
        assert_eq!(mode("ca.key"), 0o600);
    }
}
