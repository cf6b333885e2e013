//! Pulling an image from an OCI distribution registry (the v2 API) into the store.
//!
//! `registry` speaks the protocol, every answer but a blob's read under a cap: the image
//! index and the linux/amd64 manifest in it, OCI and Docker media types, anonymous, basic
//! and bearer-token auth (oci-client lends its reference and manifest types). auraed
//! checks everything it is given: the manifest against a digest it was pulled by, each blob's digest and size as it arrives (a
//! blob is committed whole and verified, or not at all, see `store`), the config's diff IDs
//! against the layers, and each layer's uncompressed content against its diff ID when it
//! is unpacked. Blobs already in the store are not fetched again, so a retried pull
//! fetches only what an interrupted one did not finish.
//!
//! TLS: only the CA certificates given (the node's bundle, per-registry CAs); plain HTTP
//! only to registries the operator lists as insecure. Credentials are used, never logged.

use super::store::Store;
use super::unpack::{Compression, Layer};
use super::{Digest, ImageError};
use futures_util::StreamExt;
use oci_client::Reference;
use std::sync::Arc;

pub use super::registry::{Credentials, Registries};

/// What a pull reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The manifest is known: its digest and the layers (digest, size).
    Resolved { digest: Digest, layers: Vec<(Digest, u64)> },
    /// Bytes of a layer so far (`cached`: it was in the store, nothing was fetched).
    Layer {
        digest: Digest,
        done: u64,
        total: u64,
        cached: bool,
    },
    /// A layer is being unpacked.
    Unpacking { digest: Digest },
}

/// A pulled image: its manifest digest, config and unpacked layers (bottom first).
#[derive(Debug, Clone)]
pub struct Pulled {
    pub reference: String,
    pub digest: Digest,
    pub config: Digest,
    pub config_json: Vec<u8>,
    /// The image manifest's bytes (its digest is `digest`), as kept in the store.
    pub manifest_json: Vec<u8>,
    pub layers: Vec<Layer>,
    /// The layers' blobs (digest, compressed size), bottom first.
    pub blobs: Vec<(Digest, u64)>,
    /// Bytes fetched from the registry this time (0 when everything was in the store).
    pub fetched: u64,
}

impl Pulled {
    /// Compressed size of the layers.
    pub fn size(&self) -> u64 {
        self.blobs.iter().map(|(_, s)| s).sum()
    }
}

/// The largest manifest or config auraed reads into memory.
const MAX_JSON: u64 = 4 << 20;

/// Parses `reference` as Docker does (`busybox` is `docker.io/library/busybox:latest`).
///
/// The grammar of the distribution project's `reference` package, checked by hand rather
/// than with oci-spec's parser: that one compiles a Unicode-aware regex into a static the
/// first time it runs, which kept 9-12 MiB in auraed for good (measured: RssAnon 0.8 ->
/// 9.5 MiB after one failed pull of the static binary).
pub fn parse_reference(reference: &str) -> Result<Reference, ImageError> {
    parse_parts(reference).map_err(|why| {
        ImageError::BadReference(format!(
            "'{reference}' is not an image reference ({why}); write REGISTRY/NAME:TAG or NAME@sha256:DIGEST"
        ))
    })
}

/// `[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`, dot-separated, optional `:PORT`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label) && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or any run of `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// Which part of a reference breaks the grammar.
#[derive(Debug, thiserror::Error)]
enum BadPart {
    #[error("it is empty")]
    Empty,
    #[error("digest '{0}' is not sha256: and 64 hex digits")]
    Digest(String),
    #[error("tag '{0}' must be 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    Tag(String),
    #[error("registry '{0}' is not HOST[:PORT]")]
    Registry(String),
    #[error(
        "name '{0}' must be lowercase letters and digits, separated by '.', '_', '__' or '-', in '/'-separated parts"
    )]
    Name(String),
    #[error("the name is longer than 255 characters")]
    TooLong,
}

fn parse_parts(s: &str) -> Result<Reference, BadPart> {
    if s.is_empty() {
        return Err(BadPart::Empty);
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let ok = d
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(BadPart::Digest(d.to_owned()));
        }
    }
    // A ':' after the last '/' starts the tag; one before it is a registry's port.
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let ok = !t.is_empty()
            && t.len() <= 128
            && word(t.as_bytes()[0])
            && t.bytes().all(|b| word(b) || b == b'.' || b == b'-');
        if !ok {
            return Err(BadPart::Tag(t.to_owned()));
        }
    }
    // The first component is a registry when it looks like a host (a '.', a ':' or
    // localhost), as Docker decides.
    let (registry, path) = match name.split_once('/') {
        Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            if !valid_domain(first) {
                return Err(BadPart::Registry(first.to_owned()));
            }
            (first.to_owned(), path.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    if path.split('/').any(|c| !valid_path_component(c)) {
        return Err(BadPart::Name(path));
    }
    let registry = if registry == "index.docker.io" {
        "docker.io".to_owned()
    } else {
        registry
    };
    let repository = if registry == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    if repository.len() > 255 {
        return Err(BadPart::TooLong);
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t.to_owned(), d.to_owned()),
        (None, Some(d)) => Reference::with_digest(registry, repository, d.to_owned()),
        (Some(t), None) => Reference::with_tag(registry, repository, t.to_owned()),
        (None, None) => Reference::with_tag(registry, repository, "latest".to_owned()),
    })
}

/// Where rustls-native-certs (under reqwest) looks for the system's CA certificates.
pub(crate) const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// oci-client builds a default reqwest client next to the configured one, and that
/// panics when the system has no CA certificates at all: refused here with the reason.
fn system_roots_present() -> bool {
    let nonempty = |p: &std::path::Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
    std::env::var_os("SSL_CERT_FILE").is_some_and(|f| nonempty(std::path::Path::new(&f)))
        || SYSTEM_ROOTS.iter().any(|p| nonempty(std::path::Path::new(p)))
}

/// Pulls `reference` into `store` and unpacks its layers; `progress` hears how it goes.
pub async fn pull(
    store: Arc<Store>,
    reference: &str,
    credentials: Option<&Credentials>,
    regs: &Registries,
    progress: &mut (dyn FnMut(Progress) + Send),
    pinned: &mut super::pins::Pinned,
) -> Result<Pulled, ImageError> {
    let r = parse_reference(reference)?;
    if !system_roots_present() && regs.ca_files.is_empty() {
        return Err(ImageError::Registry(format!(
            "this node has no CA certificates ({}): the registry client needs a system trust bundle (the appliance's base layer has one; on a host, install ca-certificates)",
            SYSTEM_ROOTS[0]
        )));
    }
    let mut client = super::registry::RegistryClient::new(regs, &r, credentials)?;
    let (manifest, digest, manifest_json) = client.manifest(&r).await?;
    let mut layers = Vec::new();
    for l in &manifest.layers {
        let d = Digest::parse(&l.digest)?;
        let size = u64::try_from(l.size).map_err(|_| ImageError::Registry(format!("layer {d}: a negative size")))?;
        Compression::of_media_type(&l.media_type)?;
        layers.push((d, size));
    }
    progress(Progress::Resolved {
        digest: digest.clone(),
        layers: layers.clone(),
    });
    let config = Digest::parse(&manifest.config.digest)?;
    // Pinned before anything is found in the store, so no removal takes it meanwhile.
    let digest_s = digest.to_string();
    pinned.pin(
        [digest_s.as_str(), manifest.config.digest.as_str()]
            .into_iter()
            .chain(manifest.layers.iter().map(|l| l.digest.as_str())),
    );
    // The manifest is kept (it is at most `registry::MANIFEST_MAX` bytes, read already): a load to
    // another node sends it, and the receiver checks the config and layers against it.
    let (s, d, json) = (store.clone(), digest.clone(), manifest_json.clone());
    tokio::task::spawn_blocking(move || s.put_blob(&d, json.len() as u64, &mut json.as_slice()))
        .await
        .map_err(|e| ImageError::Registry(format!("the manifest task ended: {e}")))??;
    let config_size = u64::try_from(manifest.config.size).unwrap_or(u64::MAX);
    if config_size > MAX_JSON {
        return Err(ImageError::Registry(format!(
            "{reference}: its config is {config_size} bytes; at most {MAX_JSON} are read"
        )));
    }
    let mut fetched = 0;
    fetched += fetch(&mut client, &store, &config, config_size, &mut |_| {}).await?;
    let config_json = std::fs::read(store.blob_path(&config))
        .map_err(ImageError::io("read the image's config", store.blob_path(&config)))?;
    let diff_ids = diff_ids(&config_json, reference)?;
    if diff_ids.len() != layers.len() {
        return Err(ImageError::Registry(format!(
            "{reference}: the manifest has {} layers and the config {} diff IDs",
            layers.len(),
            diff_ids.len()
        )));
    }
    // The layers' chain IDs, pinned before any is looked for in the store.
    let mut chain: Option<Digest> = None;
    let chains: Vec<String> = diff_ids
        .iter()
        .map(|d| {
            let c = Digest::chain(chain.as_ref(), d);
            chain = Some(c.clone());
            c.to_string()
        })
        .collect();
    pinned.pin(chains.iter().map(String::as_str));
    // Each layer is unpacked (on a thread of its own, after its parents) while the next
    // is fetched: the download and the unpacking overlap.
    let mut unpacking: Option<Unpacking> = None;
    for (((d, size), desc), diff_id) in layers.iter().zip(&manifest.layers).zip(diff_ids) {
        let cached = store.has_blob(d, *size);
        if cached {
            progress(Progress::Layer {
                digest: d.clone(),
                done: *size,
                total: *size,
                cached: true,
            });
        } else {
            let got = fetch(&mut client, &store, d, *size, &mut |done| {
                progress(Progress::Layer {
                    digest: d.clone(),
                    done,
                    total: *size,
                    cached: false,
                })
            })
            .await;
            match got {
                Ok(n) => fetched += n,
                Err(e) => {
                    // Nothing runs on after the pull has answered.
                    if let Some(u) = unpacking {
                        let _ = u.await;
                    }
                    return Err(e);
                }
            }
        }
        progress(Progress::Unpacking { digest: d.clone() });
        let compression = Compression::of_media_type(&desc.media_type)?;
        let (s, blob, before) = (store.clone(), d.clone(), unpacking.take());
        unpacking = Some(tokio::spawn(async move {
            let mut below = match before {
                Some(u) => u
                    .await
                    .map_err(|e| ImageError::Registry(format!("the unpacking task ended: {e}")))??,
                None => Vec::new(),
            };
            let parents = below.clone();
            let layer = tokio::task::spawn_blocking(move || {
                let began = std::time::Instant::now();
                let l = s.unpack(&parents, &blob, compression, &diff_id);
                tracing::info!("layer {blob}: unpacked in {} ms", began.elapsed().as_millis());
                l
            })
            .await
            .map_err(|e| ImageError::Registry(format!("the unpacking task ended: {e}")))??;
            below.push(layer);
            Ok(below)
        }));
    }
    let unpacked = match unpacking {
        Some(u) => u
            .await
            .map_err(|e| ImageError::Registry(format!("the unpacking task ended: {e}")))??,
        None => Vec::new(),
    };
    Ok(Pulled {
        reference: reference.to_owned(),
        digest,
        config,
        config_json,
        manifest_json,
        layers: unpacked,
        fetched,
        blobs: layers,
    })
}

/// The layers unpacked so far, bottom first, once the last one queued is.
type Unpacking = tokio::task::JoinHandle<Result<Vec<Layer>, ImageError>>;

/// Fetches blob `d` of `size` bytes into the store unless it is there; returns the bytes
/// fetched. The store checks the size as the bytes come and the digest at the end.
async fn fetch(
    client: &mut super::registry::RegistryClient,
    store: &Arc<Store>,
    d: &Digest,
    size: u64,
    on_bytes: &mut (dyn FnMut(u64) + Send),
) -> Result<u64, ImageError> {
    if store.has_blob(d, size) {
        return Ok(0);
    }
    // Room is reserved (or refused) before the registry is asked for the blob.
    let mut w = store.blob_writer(d, size)?;
    let mut stream = client.blob(d, size).await?;
    let mut done = 0u64;
    let began = std::time::Instant::now();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| client.transfer_error(&e))?;
        w.write(&chunk)?;
        done += chunk.len() as u64;
        on_bytes(done);
    }
    tokio::task::spawn_blocking(move || w.commit())
        .await
        .map_err(|e| ImageError::Registry(format!("the commit task ended: {e}")))??;
    tracing::info!("blob {d}: {done} bytes fetched in {} ms", began.elapsed().as_millis());
    Ok(done)
}

/// The config's `rootfs.diff_ids`.
pub(crate) fn diff_ids(config: &[u8], reference: &str) -> Result<Vec<Digest>, ImageError> {
    let c: oci_spec::image::ImageConfiguration = serde_json::from_slice(config)
        .map_err(|e| ImageError::Registry(format!("{reference}: its config is not an OCI image config: {e}")))?;
    c.rootfs().diff_ids().iter().map(|d| Digest::parse(d)).collect()
}

#[cfg(test)]
mod reference_tests {
    use super::*;

    /// Our parser says what oci-spec's regex parser says, on good and bad references.
    #[test]
    fn references_parse_as_the_distribution_grammar_says() {
        let hex = "a".repeat(64);
        let good = [
            "busybox",
            "busybox:1.36",
            "library/busybox",
            "docker.io/library/busybox:latest",
            "index.docker.io/busybox",
            "10.0.2.100:5000/test/busybox:1",
            "localhost/app",
            "localhost:5000/a/b/c:v1.2-rc_3",
            "registry.example.com/team/app__x.y-z:tag",
            "reg.io/a---b/c",
            &format!("reg.io:443/app@sha256:{hex}"),
            &format!("reg.io/app:1@sha256:{hex}"),
        ];
        for r in good {
            let ours = parse_reference(r).unwrap_or_else(|e| panic!("{r}: {e}"));
            let theirs: Reference = r.parse().unwrap();
            assert_eq!(ours.whole(), theirs.whole(), "{r}");
            assert_eq!(ours.resolve_registry(), theirs.resolve_registry(), "{r}");
        }
        let bad = [
            "",
            "UPPER/Case:1",
            "busybox:",
            "busybox:.x",
            &format!("busybox:{}", "x".repeat(129)),
            "reg.io/-app",
            "reg.io/app-",
            "reg.io/a..b",
            "reg.io//app",
            "reg.io:port/app",
            "-reg.io/app",
            "reg.io/app@sha256:abc",
            "reg.io/app@md5:abc",
            "with space",
            "reg.io/app:1:2",
        ];
        for r in bad {
            assert!(parse_reference(r).is_err(), "{r} should be refused");
            assert!(r.parse::<Reference>().is_err(), "{r}: oci-spec accepts it");
        }
    }
}
