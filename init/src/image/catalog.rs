//! The node's images: which references it has pulled (`refs/`, one JSON record each) over
//! the store's blobs and layers, the registries file, and removal with the collection of
//! what no image uses any more.

use super::config::ImageConfig;
use super::load::{self, Offer};
use super::pins::{Pinned, Pins};
use super::pull::{self, Credentials, Progress, Pulled, Registries};
use super::store::Store;
use super::{Digest, ImageError};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An image the node has: what `Status` and `List` show, and what a cell's root needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The reference as pulled, in full (`docker.io/library/busybox:latest`).
    pub reference: String,
    pub digest: String,
    pub config: String,
    /// Per layer, bottom first: blob digest, compressed size, chain ID.
    pub layers: Vec<(String, u64, String)>,
    pub pulled_unix_seconds: u64,
    pub fetched_bytes: u64,
}

impl Record {
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|(_, s, _)| s).sum()
    }
}

/// How the node reaches registries: `/etc/aurae/registries.toml` (admin-written).
///
/// ```toml
/// insecure = ["10.0.2.2:5000"]          # plain HTTP, only these
/// allow = ["127.0.0.1:5443"]            # HTTPS where pulls may not go unless listed
/// ca_files = ["/etc/aurae/registry-ca.crt"]
/// [credentials."registry.example:5000"]
/// username = "puller"
/// password = "..."
/// ```
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistriesFile {
    #[serde(default)]
    pub insecure: Vec<String>,
    /// HTTPS registries a pull may reach on loopback, link-local, this node's own
    /// addresses or its instance bridges (the insecure ones may too).
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
    #[serde(default)]
    pub credentials: HashMap<String, Credentials>,
}

pub struct Images {
    store: Arc<Store>,
    registries: Registries,
    credentials: HashMap<String, Credentials>,
    /// Loads and cells being made share; a removal (which collects unused blobs) is alone.
    /// Pulls do not take it: a pull from a stalled registry would hold every removal up.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// What pulls in progress will record (blob digests and chain IDs, hex): a removal's
    /// sweep keeps them. Held only for moments, by a pull pinning and by the sweep.
    pins: Arc<Pins>,
}

/// When a cell's image is pulled (Kubernetes' imagePullPolicy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    IfNotPresent,
    Always,
    Never,
}

/// An image ready to be a cell's root. While `hold` lives, no removal can take its layers;
/// once the cell exists, removal asks which cells use what (`remove`'s `in_use`).
pub struct Prepared {
    pub record: Record,
    /// Unpacked layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
    pub hold: tokio::sync::OwnedRwLockReadGuard<()>,
}

/// An image a workload uses: `remove` refuses to forget its reference and keeps its layers.
#[derive(Debug, Clone)]
pub struct InUse {
    /// Who uses it ("cell web").
    pub by: String,
    pub reference: String,
    pub chains: Vec<String>,
}

impl Images {
    /// The store at `root` (at most `limit` bytes) with the registries file at
    /// `registries` (absent: no insecure registries, no credentials).
    pub fn open(
        root: &Path,
        limit: u64,
        registries: &Path,
        insecure: &[String],
        bridges: &[crate::net::Ipv4Cidr],
    ) -> Result<Images, ImageError> {
        let store = Store::open(root, limit)?;
        std::fs::create_dir_all(root.join("refs")).map_err(ImageError::io("create the store", root.join("refs")))?;
        let file: RegistriesFile = match std::fs::read_to_string(registries) {
            Ok(text) => toml::from_str(&text).map_err(|e| ImageError::RegistriesFile {
                path: registries.to_owned(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RegistriesFile::default(),
            Err(e) => return Err(ImageError::io("read the registries file", registries)(e)),
        };
        // The node's trust bundle (the first found), then the listed CA files, each checked
        // now so a wrong registries file is said at boot; they are read at each pull.
        let mut ca_files: Vec<PathBuf> = pull::SYSTEM_ROOTS
            .iter()
            .map(PathBuf::from)
            .find(|b| b.is_file())
            .into_iter()
            .collect();
        for f in &file.ca_files {
            std::fs::File::open(f).map_err(|e| ImageError::RegistriesFile {
                path: registries.to_owned(),
                why: format!("ca_files: {}: {e}", f.display()),
            })?;
            ca_files.push(f.clone());
        }
        Ok(Images {
            store: Arc::new(store),
            registries: Registries {
                insecure: file.insecure.into_iter().chain(insecure.iter().cloned()).collect(),
                ca_files,
                allow: file.allow,
                bridges: bridges.to_vec(),
            },
            credentials: file.credentials,
            gate: Arc::new(tokio::sync::RwLock::new(())),
            pins: Arc::default(),
        })
    }

    fn refs(&self) -> PathBuf {
        self.store.root().join("refs")
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        self.refs().join(Digest::of(reference.as_bytes()).hex())
    }

    /// Pulls `reference` (credentials from the request, else the registries file) and
    /// records it.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<Credentials>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Record, ImageError> {
        let r = pull::parse_reference(reference)?;
        let full = r.whole();
        let creds = credentials.or_else(|| self.credentials.get(r.resolve_registry()).cloned());
        let mut pinned = Pinned::on(&self.pins);
        let p: Pulled = pull::pull(
            self.store.clone(),
            &full,
            creds.as_ref(),
            &self.registries,
            progress,
            &mut pinned,
        )
        .await?;
        let record = Record {
            reference: full,
            digest: p.digest.to_string(),
            config: p.config.to_string(),
            layers: p
                .layers
                .iter()
                .zip(&p.blobs)
                .map(|(l, (d, size))| (d.to_string(), *size, l.chain_id.to_string()))
                .collect(),
            pulled_unix_seconds: now_seconds(),
            fetched_bytes: p.fetched,
        };
        self.record(&record)?;
        Ok(record)
    }

    fn record(&self, record: &Record) -> Result<(), ImageError> {
        let path = self.record_path(&record.reference);
        let json = serde_json::to_vec_pretty(record).map_err(|e| ImageError::Registry(e.to_string()))?;
        let tmp = self.store.tmp_name("ref");
        let before = std::fs::symlink_metadata(&path).map_or(0, |m| super::store::cost(&m));
        // On the disk before its name: after a power cut a record is whole or absent.
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            std::io::Write::write_all(&mut f, &json)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(ImageError::io("record the image", &path)(e));
        }
        super::store::sync_dir(path.parent().unwrap_or(self.store.root()));
        self.store.count_out(before);
        self.store.count_in(&path);
        Ok(())
    }

    /// Takes an image from a caller (`load`): its blobs from `data`, checked as a pull
    /// checks them, then recorded under the offer's reference.
    pub async fn load<S>(&self, offer: Offer, data: &mut S) -> Result<Record, ImageError>
    where
        S: futures_util::Stream<Item = Result<Vec<u8>, ImageError>> + Unpin,
    {
        let full = pull::parse_reference(&offer.reference)?.whole();
        let _shared = self.gate.read().await;
        let got = load::receive(self.store.clone(), &offer, data).await?;
        let record = Record {
            reference: full,
            digest: offer.digest.to_string(),
            config: got.config.to_string(),
            layers: got
                .layers
                .iter()
                .zip(&offer.layers)
                .map(|(l, o)| (o.digest.to_string(), o.size, l.chain_id.to_string()))
                .collect(),
            pulled_unix_seconds: now_seconds(),
            fetched_bytes: got.bytes,
        };
        self.record(&record)?;
        tracing::info!("image {} loaded: {} bytes received", record.reference, got.bytes);
        Ok(record)
    }

    /// What `load` needs to give image `r` to another node: the offer and the layer
    /// blobs' paths (bottom first).
    pub fn offer(&self, r: &Record) -> Result<(Offer, Vec<PathBuf>), ImageError> {
        let mut layers = Vec::with_capacity(r.layers.len());
        let mut paths = Vec::with_capacity(r.layers.len());
        for (d, size, _) in &r.layers {
            let digest = Digest::parse(d)?;
            paths.push(self.store.blob_path(&digest));
            layers.push(load::OfferedLayer {
                digest,
                size: *size,
                sent: true,
            });
        }
        let digest = Digest::parse(&r.digest)?;
        let manifest = self.store.blob_path(&digest);
        let manifest_json = std::fs::read(&manifest).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::NotFound(format!(
                "image '{}' was pulled before this node kept manifests, so it cannot be given to another node; pull it again (aer image pull {})",
                r.reference, r.reference
            )),
            _ => ImageError::io("read the image's manifest", &manifest)(e),
        })?;
        let offer = Offer {
            reference: r.reference.clone(),
            digest,
            manifest_json,
            config_json: self.config_json(r)?,
            layers,
        };
        Ok((offer, paths))
    }

    /// Where the store is, what it holds and may hold (bytes).
    pub fn store_usage(&self) -> (PathBuf, u64, u64) {
        (self.store.root().to_owned(), self.store.used(), self.store.limit())
    }

    /// Every image the node has, by reference.
    pub fn list(&self) -> Vec<Record> {
        let mut v: Vec<Record> = std::fs::read_dir(self.refs())
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice(&b).ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a: &Record, b: &Record| a.reference.cmp(&b.reference));
        v
    }

    /// The image `reference` names (as pulled, in short or full form, or by digest).
    pub fn get(&self, reference: &str) -> Result<Record, ImageError> {
        let full = pull::parse_reference(reference).map(|r| r.whole()).ok();
        // A reference has its record at a path of its own: one file read, where a cell
        // from an image asks. Only a digest (or an unparsable name) needs every record.
        if let Some(f) = &full {
            let direct = std::fs::read(self.record_path(f))
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
                .filter(|r| &r.reference == f);
            if let Some(r) = direct {
                return Ok(r);
            }
        }
        self.list()
            .into_iter()
            .find(|r| Some(&r.reference) == full.as_ref() || r.reference == reference || r.digest == reference)
            .ok_or_else(|| {
                ImageError::NotFound(format!(
                    "no image '{reference}' on this node; pull it first (aer image pull {reference})"
                ))
            })
    }

    /// The image's config JSON (from the store).
    pub fn config_json(&self, r: &Record) -> Result<Vec<u8>, ImageError> {
        let d = Digest::parse(&r.config)?;
        std::fs::read(self.store.blob_path(&d))
            .map_err(ImageError::io("read the image's config", self.store.blob_path(&d)))
    }

    /// The image `reference` names, pulled first as `policy` says, with its layers held
    /// until the returned `hold` is dropped.
    pub async fn prepare(
        &self,
        reference: &str,
        policy: PullPolicy,
        credentials: Option<Credentials>,
    ) -> Result<Prepared, ImageError> {
        let have = self.get(reference).ok();
        let record = match (policy, have) {
            (PullPolicy::Never, None) => {
                return Err(ImageError::NotFound(format!(
                    "image '{reference}' is not on this node and the pull policy is NEVER; pull it first (aer image pull {reference}) or use IF_NOT_PRESENT"
                )))
            }
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(r)) => r,
            _ => self.pull(reference, credentials, &mut |_| {}).await?,
        };
        let hold = self.gate.clone().read_owned().await;
        // Removed between the pull and the hold: say so rather than use a half-freed image.
        let record = self.get(&record.reference)?;
        let mut layers = Vec::with_capacity(record.layers.len());
        for (blob, _, chain) in &record.layers {
            let layer = self.store.layer(&Digest::parse(chain)?).ok_or_else(|| {
                ImageError::NotFound(format!(
                    "layer {blob} of image '{}' is missing from the store; pull the image again (aer image pull {})",
                    record.reference, record.reference
                ))
            })?;
            layers.push(layer.dir);
        }
        let config = ImageConfig::parse(&self.config_json(&record)?)?;
        Ok(Prepared {
            record,
            layers,
            config,
            hold,
        })
    }

    /// Forgets `reference` and frees what no other image uses; returns the bytes freed.
    /// Refused (`InUse`) while a workload `in_use` names uses it; the layers of every image
    /// in use are kept even when their reference now names another image.
    pub async fn remove(&self, reference: &str, in_use: impl FnOnce() -> Vec<InUse>) -> Result<u64, ImageError> {
        let _alone = self.gate.write().await;
        let r = self.get(reference)?;
        let using = in_use();
        let users: Vec<&str> = using
            .iter()
            .filter(|u| u.reference == r.reference)
            .map(|u| u.by.as_str())
            .collect();
        if !users.is_empty() {
            return Err(ImageError::InUse(format!(
                "image '{}' is in use by {}; stop and free {} first",
                r.reference,
                users.join(", "),
                if users.len() == 1 { "it" } else { "them" }
            )));
        }
        let before = self.store.used();
        let path = self.record_path(&r.reference);
        self.store
            .remove_counted(&path)
            .map_err(ImageError::io("forget the image", &path))?;
        let store = self.store.clone();
        let kept = self.list();
        let chains_in_use: Vec<String> = using.into_iter().flat_map(|u| u.chains).collect();
        let pins = self.pins.clone();
        tokio::task::spawn_blocking(move || collect(&store, &kept, &chains_in_use, &pins))
            .await
            .map_err(|e| ImageError::Registry(format!("the collecting task ended: {e}")))?;
        Ok(before.saturating_sub(self.store.used()))
    }
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Removes the blobs and layers none of `kept` uses, keeping the layers `in_use` and what
/// pulls in progress have pinned (pinning waits for the sweep; the sweep never waits for a
/// pull).
fn collect(store: &Store, kept: &[Record], in_use: &[String], pins: &Pins) {
    let pinned = pins.lock();
    let mut blobs: HashSet<String> = HashSet::new();
    let mut chains: HashSet<String> = in_use.iter().cloned().collect();
    for r in kept {
        blobs.insert(r.digest.clone());
        blobs.insert(r.config.clone());
        for (d, _, c) in &r.layers {
            blobs.insert(d.clone());
            chains.insert(c.clone());
        }
    }
    let hex = |s: &String| s.strip_prefix("sha256:").unwrap_or(s).to_owned();
    let blobs: HashSet<String> = blobs.iter().map(hex).collect();
    let chains: HashSet<String> = chains.iter().map(hex).collect();
    let sweep = |dir: PathBuf, keep: &HashSet<String>| {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) || pinned.contains_key(&name) {
                    continue;
                }
                if let Err(err) = store.remove_counted(&e.path()) {
                    tracing::warn!("image store: remove {}: {err}", e.path().display());
                }
            }
        }
    };
    sweep(store.root().join("blobs/sha256"), &blobs);
    sweep(store.root().join("layers"), &chains);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a pull in progress has pinned survives a removal's sweep (the pull records it
    /// next); unpinned, the same sweep takes it, and the count follows.
    #[test]
    fn a_sweep_keeps_what_a_pull_in_progress_pinned() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join("images"), 1 << 30).unwrap();
        let data = b"a layer blob".to_vec();
        let blob = Digest::of(&data);
        store.put_blob(&blob, data.len() as u64, &mut &data[..]).unwrap();
        let chain = Digest::of(b"chain");
        let layer = store.root().join("layers").join(chain.hex()).join("fs");
        std::fs::create_dir_all(&layer).unwrap();
        store.count_in(&store.root().join("layers").join(chain.hex()));
        let pins = Arc::new(Pins::default());
        let mut pinned = Pinned::on(&pins);
        pinned.pin([blob.to_string().as_str(), chain.to_string().as_str()]);
        collect(&store, &[], &[], &pins);
        assert!(store.has_blob(&blob, data.len() as u64), "pinned: kept");
        assert!(layer.is_dir(), "pinned: kept");
        drop(pinned);
        collect(&store, &[], &[], &pins);
        assert!(
            !store.has_blob(&blob, data.len() as u64) && !layer.exists(),
            "unpinned: swept"
        );
        assert_eq!(store.used(), super::super::store::measure(store.root()));
    }

    #[test]
    fn the_registries_file_names_insecure_registries_cas_and_credentials() {
        let f: RegistriesFile = toml::from_str(
            "insecure = [\"10.0.2.100:5000\"]\nca_files = [\"/etc/aurae/ca.crt\"]\n\
             [credentials.\"reg.example:5000\"]\nusername = \"puller\"\npassword = \"s3cret\"\n",
        )
        .unwrap();
        assert_eq!(f.insecure, ["10.0.2.100:5000"]);
        assert_eq!(f.ca_files, [PathBuf::from("/etc/aurae/ca.crt")]);
        let c = &f.credentials["reg.example:5000"];
        assert_eq!((c.username.as_str(), c.password.as_str()), ("puller", "s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"), "never printed");
        let e = toml::from_str::<RegistriesFile>("[credentials.x]\nusername = \"u\"\npasword = \"p\"\n").unwrap_err();
        assert!(e.to_string().contains("pasword"), "{e}");
    }

    #[test]
    fn a_missing_ca_file_is_said_when_the_store_opens() {
        let d = tempfile::tempdir().unwrap();
        let reg = d.path().join("registries.toml");
        std::fs::write(&reg, "ca_files = [\"/nonexistent/ca.crt\"]\n").unwrap();
        let e = Images::open(&d.path().join("images"), 1 << 20, &reg, &[], &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ca_files") && e.contains("/nonexistent/ca.crt"), "{e}");
    }
}
