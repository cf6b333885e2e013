//! The pull side of the OCI distribution API, with every answer read under a bound.
//!
//! oci-client read manifests, indexes, token responses and error bodies whole, whatever
//! their size: a registry that served a 50 MiB manifest took PID 1 from 7 MiB to 108 MiB,
//! and an endless chunked one would have taken all. Here every body but a blob's is read
//! chunk by chunk into a buffer that refuses to grow past its cap ([`MANIFEST_MAX`],
//! [`TOKEN_MAX`], [`ERROR_BODY_MAX`]), and what a registry says in an error reaches a gRPC
//! message cut to [`ERROR_TEXT_MAX`] characters. Blobs stream into the store, which checks
//! their size as they come and their digest at the end (`store::BlobWriter`).
//!
//! Auth: anonymous first; on 401, HTTP Basic with the credentials given, or a bearer token
//! from the challenge's realm (asked with those credentials). A realm must be HTTPS unless
//! its host is listed as insecure, so credentials never travel in clear to a host the
//! operator did not list; a redirect may not go from HTTPS to HTTP, and reqwest drops the
//! Authorization header on a redirect to another host. Proxies from the environment are
//! not used.

use super::{Digest, ImageError};
use oci_client::manifest::{OciImageIndex, OciImageManifest};
use oci_client::Reference;

/// The largest manifest or index read (the distribution registry's own limit is 4 MiB).
pub const MANIFEST_MAX: usize = 4 << 20;
/// The largest token response read.
pub const TOKEN_MAX: usize = 64 << 10;
/// The most of an error body read.
pub const ERROR_BODY_MAX: usize = 64 << 10;
/// The most of a registry's words that reach a message.
pub const ERROR_TEXT_MAX: usize = 300;
/// Redirects followed for one request.
const REDIRECTS: usize = 5;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    /// Registries (`host[:port]`) reached over plain HTTP: only those the operator lists.
    pub insecure: Vec<String>,
    /// CA certificate files (PEM) HTTPS registries are verified against, read at each
    /// pull (a node's bundle is 200 KB it need not hold between pulls).
    pub ca_files: Vec<std::path::PathBuf>,
    /// Registries (`host[:port]`) a pull may reach even on loopback, link-local, this
    /// node's own addresses or its instance bridges (the insecure ones are listed too).
    pub allow: Vec<String>,
    /// This node's instance bridges' subnets (`aurae0`, the named bridges): no pull goes
    /// there unless its registry is listed.
    pub bridges: Vec<crate::net::Ipv4Cidr>,
}

/// A user and password for a registry (basic auth, or a bearer token the registry's token
/// service gives for them), from a request or the registries file.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.username)
    }
}

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Why a pull may not reach `ip` (unless its registry is listed): loopback, link-local, no
/// host at all, this node's own address, or one of its instance bridges.
pub fn refused_address(ip: std::net::IpAddr, bridges: &[crate::net::Ipv4Cidr]) -> Option<&'static str> {
    use std::net::IpAddr;
    let own = || {
        nix::ifaddrs::getifaddrs().is_ok_and(|mut all| {
            all.any(|i| {
                i.address.as_ref().is_some_and(|a| {
                    a.as_sockaddr_in().is_some_and(|s| IpAddr::V4(s.ip()) == ip)
                        || a.as_sockaddr_in6().is_some_and(|s| IpAddr::V6(s.ip()) == ip)
                })
            })
        })
    };
    match ip {
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
        IpAddr::V4(a) if a.is_unspecified() || a.is_broadcast() || a.is_multicast() => Some("no host"),
        IpAddr::V4(a)
            if bridges
                .iter()
                .chain(&subnets_beside(bridges))
                .any(|b| b.overlaps(crate::net::Ipv4Cidr { addr: a, prefix: 32 })) =>
        {
            Some("one of this node's instance bridges")
        }
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => Some("link-local"),
        IpAddr::V6(a) if a.is_unspecified() || a.is_multicast() => Some("no host"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some_and(|m| m.is_loopback() || m.is_link_local()) => Some("loopback"),
        _ if own() => Some("this node's own address"),
        _ => None,
    }
}

/// The other subnets the interfaces carrying `bridges` have (a pod CIDR kubelet gave,
/// added to the node's bridge beside its own).
fn subnets_beside(bridges: &[crate::net::Ipv4Cidr]) -> Vec<crate::net::Ipv4Cidr> {
    let v4 = crate::net::interface_subnets();
    let on: Vec<&str> = (v4.iter())
        .filter(|(_, c)| bridges.iter().any(|b| b.overlaps(*c)))
        .map(|(n, _)| n.as_str())
        .collect();
    v4.iter()
        .filter(|(n, _)| on.contains(&n.as_str()))
        .map(|(_, c)| *c)
        .collect()
}

/// `host[:port]` without its port (a bare IPv6 address keeps its colons).
fn host_of(host_port: &str) -> &str {
    match host_port.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => host_port,
    }
}

/// Whether `host` (no port) is one of `listed` (`host` or `host:port` entries).
fn is_listed(listed: &[String], host: &str) -> bool {
    let bare = |h: &str| h.trim_start_matches('[').trim_end_matches(']').to_owned();
    listed.iter().any(|l| bare(host_of(l)) == bare(host))
}

/// A refused target, said with the way to allow it.
fn refused_target(host: &str, why: &str) -> ImageError {
    ImageError::Denied(format!(
        "registry host {host} is {why}; a pull goes there only when the node's registries file lists it (insecure = [...] or allow = [...])"
    ))
}

/// Checks a URL host that is an IP literal (names are checked as they resolve).
fn check_literal(host: &str, listed: &[String], bridges: &[crate::net::Ipv4Cidr]) -> Result<(), ImageError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) if !is_listed(listed, host) => match refused_address(ip, bridges) {
            Some(why) => Err(refused_target(host, why)),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Resolves registry names, dropping the addresses a pull may not reach unless the name
/// is listed: a name that resolves only to those is refused, so DNS cannot lead a pull
/// to loopback, the node itself or its instances.
struct GuardedResolver {
    listed: Vec<String>,
    bridges: Vec<crate::net::Ipv4Cidr>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let listed = is_listed(&self.listed, &host);
        let bridges = self.bridges.clone();
        Box::pin(async move {
            let all: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut why = "unresolvable";
            let ok: Vec<std::net::SocketAddr> = all
                .into_iter()
                .filter(|a| match (listed, refused_address(a.ip(), &bridges)) {
                    (false, Some(w)) => {
                        why = w;
                        false
                    }
                    _ => true,
                })
                .collect();
            if ok.is_empty() {
                return Err(refused_target(&host, why).to_string().into());
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

enum Auth {
    None,
    Basic(String, String),
    Bearer(String),
}

/// A client for one repository of one registry.
pub struct RegistryClient {
    http: reqwest::Client,
    /// `https://host[:port]` (or `http://` for a listed insecure registry).
    base: String,
    repo: String,
    /// The image's whole reference, for messages.
    reference: String,
    creds: Option<Credentials>,
    auth: Auth,
    insecure: Vec<String>,
    /// Registries allowed anywhere (the insecure and the allowed ones), and the bridges.
    listed: Vec<String>,
    bridges: Vec<crate::net::Ipv4Cidr>,
}

/// What a registry's bytes from a body may come to: cut to `max` characters.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Reads `resp`'s body into memory, refusing it past `cap` bytes (a stated length is
/// refused before anything is read).
async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
    what: &str,
    reference: &str,
) -> Result<Vec<u8>, ImageError> {
    let too_big = || ImageError::Registry(format!("{reference}: {what} is larger than {cap} bytes; refused"));
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(reference, &e))? {
        if body.len() + chunk.len() > cap {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A request that got no HTTP answer: the registry out of reach (TLS said as such).
fn transport(reference: &str, e: &reqwest::Error) -> ImageError {
    let why = crate::error_chain(e);
    let tls = ["certificate", "InvalidContentType", "HandshakeFailure", "tls"]
        .iter()
        .any(|w| why.contains(w));
    ImageError::Unreachable(match tls {
        true => format!(
            "{reference}: TLS with the registry failed (an HTTPS registry needs a CA the node trusts; a plain-HTTP one must be listed as insecure): {why}"
        ),
        false => format!("{reference}: cannot reach the registry: {why}"),
    })
}

/// The parameters of a `WWW-Authenticate` challenge (`Bearer realm="…",service="…"`).
fn challenge_params(c: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = c.trim().split_once(' ').unwrap_or((c.trim(), ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while let Some((k, v)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (value, after) = match v.strip_prefix('"') {
            Some(q) => match q.find('"') {
                Some(end) => (q[..end].to_owned(), &q[end + 1..]),
                None => (q.to_owned(), ""),
            },
            None => match v.find(',') {
                Some(end) => (v[..end].trim().to_owned(), &v[end..]),
                None => (v.trim().to_owned(), ""),
            },
        };
        params.push((k, value));
        rest = after.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), params)
}

impl RegistryClient {
    /// A client for `r`'s repository, trusting `regs`' CAs (the system's when none), over
    /// HTTP only when the registry is listed as insecure.
    pub fn new(regs: &Registries, r: &Reference, creds: Option<&Credentials>) -> Result<RegistryClient, ImageError> {
        // reqwest is built without a crypto provider: the process-wide one is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = regs
            .ca_files
            .iter()
            .map(|f| {
                let pem = std::fs::read(f).map_err(ImageError::io("read a registry CA file", f))?;
                reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| ImageError::Registry(format!("{}: not a PEM certificate bundle: {e}", f.display())))
            })
            .collect::<Result<Vec<Vec<reqwest::Certificate>>, ImageError>>()?
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        let insecure = regs.insecure.clone();
        let listed: Vec<String> = insecure.iter().chain(&regs.allow).cloned().collect();
        let bridges = regs.bridges.clone();
        let (allowed, redirect_bridges) = (listed.clone(), bridges.clone());
        let redirects = reqwest::redirect::Policy::custom(move |a| {
            let downgrade = a.previous().last().is_some_and(|p| p.scheme() == "https") && a.url().scheme() != "https";
            let host = a.url().host_str().unwrap_or_default().to_owned();
            let listed = is_listed(&allowed, &host);
            if a.previous().len() >= REDIRECTS {
                a.error(format!("more than {REDIRECTS} redirects"))
            } else if downgrade && !listed {
                a.error("a redirect from HTTPS to plain HTTP")
            } else if let Err(e) = check_literal(&host, &allowed, &redirect_bridges) {
                a.error(e.to_string())
            } else {
                a.follow()
            }
        });
        let host = r.resolve_registry().to_owned();
        check_literal(host_of(&host), &listed, &bridges)?;
        let mut b = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(GuardedResolver {
                listed: listed.clone(),
                bridges: bridges.clone(),
            }))
            .no_proxy()
            .redirect(redirects)
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(60))
            .user_agent(concat!("auraed/", env!("CARGO_PKG_VERSION")));
        if !certs.is_empty() {
            b = b.tls_certs_only(certs);
        }
        let http = b
            .build()
            .map_err(|e| ImageError::Registry(format!("cannot make a registry client: {e}")))?;
        let scheme = if insecure.contains(&host) { "http" } else { "https" };
        Ok(RegistryClient {
            http,
            base: format!("{scheme}://{host}"),
            repo: r.repository().to_owned(),
            reference: r.whole(),
            creds: creds.cloned(),
            auth: Auth::None,
            insecure,
            listed,
            bridges,
        })
    }

    /// GET `url` (with `accept`), answering the registry's auth challenge once.
    async fn get(&mut self, url: &str, accept: Option<&str>) -> Result<reqwest::Response, ImageError> {
        let mut challenged = false;
        loop {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            req = match &self.auth {
                Auth::None => req,
                Auth::Basic(u, p) => req.basic_auth(u, Some(p)),
                Auth::Bearer(t) => req.bearer_auth(t),
            };
            let resp = req.send().await.map_err(|e| transport(&self.reference, &e))?;
            if resp.status() != reqwest::StatusCode::UNAUTHORIZED || challenged {
                return Ok(resp);
            }
            challenged = true;
            let Some(c) = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
            else {
                return Ok(resp);
            };
            self.authenticate(&c).await?;
        }
    }

    /// Answers a challenge: Basic with the credentials, or a bearer token from the realm.
    async fn authenticate(&mut self, challenge: &str) -> Result<(), ImageError> {
        let (scheme, params) = challenge_params(challenge);
        let needs_creds = || {
            ImageError::Denied(format!(
                "{}: the registry wants credentials; give them with the request or in the node's registries file",
                self.reference
            ))
        };
        match scheme.as_str() {
            "basic" => {
                let c = self.creds.as_ref().ok_or_else(needs_creds)?;
                self.auth = Auth::Basic(c.username.clone(), c.password.clone());
                Ok(())
            }
            "bearer" => {
                let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                let realm = param("realm").ok_or_else(|| {
                    ImageError::Registry(format!("{}: a bearer challenge without a realm", self.reference))
                })?;
                let url = reqwest::Url::parse(&realm).map_err(|e| {
                    ImageError::Registry(format!(
                        "{}: the token realm '{}' is no URL: {e}",
                        self.reference,
                        cut(&realm, 100)
                    ))
                })?;
                let host = url.host_str().unwrap_or_default().to_owned();
                let listed = is_listed(&self.insecure, &host);
                if url.scheme() != "https" && !listed {
                    return Err(ImageError::Denied(format!(
                        "{}: the token realm {} is plain HTTP and its host is not listed as insecure; credentials go there only over HTTPS",
                        self.reference,
                        cut(&realm, 100)
                    )));
                }
                check_literal(&host, &self.listed, &self.bridges)?;
                let scope = param("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repo));
                let mut q: Vec<(&str, String)> = vec![("scope", scope)];
                if let Some(s) = param("service") {
                    q.push(("service", s));
                }
                let mut req = self.http.get(url).query(&q);
                if let Some(c) = &self.creds {
                    req = req.basic_auth(&c.username, Some(&c.password));
                }
                let resp = req.send().await.map_err(|e| transport(&self.reference, &e))?;
                if !resp.status().is_success() {
                    let code = resp.status().as_u16();
                    let _ = read_capped(resp, ERROR_BODY_MAX, "the token service's answer", &self.reference).await;
                    return Err(match code {
                        401 | 403 => ImageError::Denied(format!(
                            "{}: the registry's token service refused the credentials (HTTP {code})",
                            self.reference
                        )),
                        _ => ImageError::Registry(format!(
                            "{}: the registry's token service answered HTTP {code}",
                            self.reference
                        )),
                    });
                }
                let body = read_capped(resp, TOKEN_MAX, "the token response", &self.reference).await?;
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token = serde_json::from_slice(&body).map_err(|e| {
                    ImageError::Registry(format!("{}: the token response is not JSON: {e}", self.reference))
                })?;
                let token = t.token.or(t.access_token).ok_or_else(|| {
                    ImageError::Registry(format!("{}: the token response holds no token", self.reference))
                })?;
                self.auth = Auth::Bearer(token);
                Ok(())
            }
            _ => Err(ImageError::Registry(format!(
                "{}: the registry asks for '{}' authentication, which auraed does not speak (Basic, Bearer)",
                self.reference,
                cut(&scheme, 40)
            ))),
        }
    }

    /// What a registry's refusal means, in its own (cut) words.
    async fn refusal(&self, resp: reqwest::Response) -> ImageError {
        let code = resp.status().as_u16();
        let url = resp.url().path().to_owned();
        let body = read_capped(resp, ERROR_BODY_MAX, "its error", &self.reference)
            .await
            .unwrap_or_default();
        #[derive(serde::Deserialize, Default)]
        struct Envelope {
            #[serde(default)]
            errors: Vec<Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        let env: Envelope = serde_json::from_slice(&body).unwrap_or_default();
        let words = env
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let words = cut(
            &if words.is_empty() {
                String::from_utf8_lossy(&body).trim().to_owned()
            } else {
                words
            },
            ERROR_TEXT_MAX,
        );
        let first = env.errors.first().map(|e| e.code.as_str()).unwrap_or_default();
        let msg = format!("{}: {} answered HTTP {code}: {words}", self.reference, cut(&url, 200));
        match (code, first) {
            (_, "MANIFEST_UNKNOWN" | "NAME_UNKNOWN" | "BLOB_UNKNOWN" | "NOT_FOUND") | (404, _) => {
                ImageError::NotFound(msg)
            }
            (_, "UNAUTHORIZED" | "DENIED") | (401 | 403, _) => ImageError::Denied(msg),
            _ => ImageError::Registry(msg),
        }
    }

    /// The manifest `what` (a tag or a digest) names, read under the cap; its digest.
    async fn fetch_manifest(
        &mut self,
        what: &str,
        accept: &str,
    ) -> Result<(Vec<u8>, Option<String>, Digest), ImageError> {
        let url = format!("{}/v2/{}/manifests/{what}", self.base, self.repo);
        let resp = self.get(&url, Some(accept)).await?;
        if !resp.status().is_success() {
            return Err(self.refusal(resp).await);
        }
        let media = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let body = read_capped(resp, MANIFEST_MAX, "its manifest", &self.reference).await?;
        let digest = Digest::of(&body);
        if what.starts_with("sha256:") && digest.to_string() != what {
            return Err(ImageError::Mismatch {
                what: format!("{}: its manifest", self.reference),
                expected: what.to_owned(),
                got: digest.to_string(),
            });
        }
        Ok((body, media, digest))
    }

    /// The image manifest for linux/amd64 (through an index when the reference names one),
    /// its digest and its bytes (kept in the store, so `Images.Load` can send them on).
    pub async fn manifest(&mut self, r: &Reference) -> Result<(OciImageManifest, Digest, Vec<u8>), ImageError> {
        let what = r.digest().or(r.tag()).unwrap_or("latest").to_owned();
        let all: Vec<&str> = INDEX_TYPES.iter().chain(MANIFEST_TYPES).copied().collect();
        let (body, media, digest) = self.fetch_manifest(&what, &all.join(", ")).await?;
        #[derive(serde::Deserialize)]
        struct Kind {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
        }
        let kind: Kind = serde_json::from_slice(&body)
            .map_err(|e| ImageError::Registry(format!("{}: its manifest is not JSON: {e}", self.reference)))?;
        let media = kind.media_type.or(media).unwrap_or_default();
        let is_index = INDEX_TYPES.contains(&media.as_str()) || kind.manifests.is_some();
        let (body, digest) = if is_index {
            let index: OciImageIndex = serde_json::from_slice(&body)
                .map_err(|e| ImageError::Registry(format!("{}: its image index: {e}", self.reference)))?;
            let platform = oci_client::client::linux_amd64_resolver(&index.manifests).ok_or_else(|| {
                ImageError::NotFound(format!("{}: its index has no linux/amd64 image", self.reference))
            })?;
            let (body, _, digest) = self.fetch_manifest(&platform, &MANIFEST_TYPES.join(", ")).await?;
            (body, digest)
        } else {
            (body, digest)
        };
        let m: OciImageManifest = serde_json::from_slice(&body)
            .map_err(|e| ImageError::Registry(format!("{}: its image manifest: {e}", self.reference)))?;
        Ok((m, digest, body))
    }

    /// Blob `d`'s bytes as they arrive (at most `size`: a longer stated length is refused).
    pub async fn blob(
        &mut self,
        d: &Digest,
        size: u64,
    ) -> Result<impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>>, ImageError> {
        let url = format!("{}/v2/{}/blobs/{d}", self.base, self.repo);
        let resp = self.get(&url, None).await?;
        if !resp.status().is_success() {
            return Err(self.refusal(resp).await);
        }
        if resp.content_length().is_some_and(|n| n > size) {
            return Err(ImageError::Mismatch {
                what: format!("blob {d}: size"),
                expected: format!("{size} bytes"),
                got: format!("{} bytes stated", resp.content_length().unwrap_or_default()),
            });
        }
        Ok(resp.bytes_stream())
    }

    /// The registry's words for a transfer that broke off.
    pub fn transfer_error(&self, e: &reqwest::Error) -> ImageError {
        transport(&self.reference, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read_as_the_spec_writes_them() {
        let (s, p) = challenge_params(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(
            p,
            [
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "registry.example".into()),
                ("scope".into(), "repository:a/b:pull".into())
            ]
        );
        let (s, p) = challenge_params("Basic realm=test");
        assert_eq!((s.as_str(), p), ("basic", vec![("realm".into(), "test".into())]));
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(cut("ab", 3), "ab");
    }

    /// Loopback, link-local, no-host addresses, the node's own and its bridges' are
    /// refused targets; a listed registry is allowed anywhere.
    #[test]
    fn pull_targets_off_limits_unless_listed() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let aurae0: crate::net::Ipv4Cidr = "10.254.0.1/24".parse().unwrap();
        for (a, why) in [
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "no host"),
            ("224.0.0.1", "no host"),
            ("10.254.0.77", "one of this node's instance bridges"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
        ] {
            assert_eq!(refused_address(ip(a), &[aurae0]), Some(why), "{a}");
        }
        assert_eq!(refused_address(ip("192.0.2.10"), &[aurae0]), None);
        assert!(check_literal("127.0.0.1", &[], &[]).is_err());
        assert!(check_literal("127.0.0.1", &["127.0.0.1:5000".into()], &[]).is_ok());
        assert!(check_literal("[::1]", &[], &[]).is_err());
        assert!(
            check_literal("registry.example", &[], &[]).is_ok(),
            "names are checked as they resolve"
        );
        let e = check_literal("169.254.169.254", &[], &[]).unwrap_err().to_string();
        assert!(e.contains("link-local") && e.contains("allow = [...]"), "{e}");
        assert!(is_listed(&["reg.local:5000".into()], "reg.local"));
        assert!(!is_listed(&["reg.local:5000".into()], "reg"));
    }
}
