//! The mounts kubelet sends with a container, and the sandbox's resolv.conf, as volumes of
//! the container's cell in the sandbox's instance.
//!
//! With the `cell` handler the instance is given the pod's directory (kubelet's
//! `pods/UID`, bound in when the sandbox is made and kept a slave of the node's mount, so
//! subPaths kubelet mounts later appear): each mount binds its own path of it, so the
//! container's writes reach the node and kubelet's updates are seen at once.
//!
//! A microVM (`vm`) cannot be given a directory of the node, so what kubelet made is
//! copied in (`copy.rs`):
//!
//! - a file (`/etc/hosts`, the termination log) or a directory of files (configmaps,
//!   secrets, the service-account token, the downward API): a files volume holding a copy.
//!   Read-only ones are refreshed when they change on the node (kubelet rotates the token:
//!   `refresh`); the termination log is copied back out when the container has exited
//!   (`read_back`).
//! - an emptyDir: an emptyDir of the instance, which every container of the sandbox that
//!   mounts the same directory joins.
//!
//! Either way only paths kubelet made for this sandbox's pod, under
//! `/var/lib/kubelet/pods/UID/`, are taken (after following symlinks); a symlink in a
//! copied volume that leads out of it, a writable directory other than an emptyDir to
//! copy (its writes would never reach the node), and mount options the instance cannot
//! give are refused, naming the mount.

use super::{Cri, CriError};
use crate::pb;
use crate::values::names::ExecName;
use crate::values::volume::{VolumeFile, VolumeMount, VolumeSpec};
use aurae_proto::cri;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

use super::copy::FILE;
use super::copy::{copy_of, digest, recopy, stamp_of, write_back};

/// Where kubelet makes its pods' files.
pub const KUBELET_PODS: &str = "/var/lib/kubelet/pods";
/// What kubelet reads of a termination log (its `maxTerminationMessagePerContainer`).
pub const TERMINATION_LOG_BYTES: u32 = 4096;

/// A read-only copy to keep up to date: its volume, its source, and the digest of what
/// was sent last.
#[derive(Clone)]
pub struct Refresh {
    pub volume: String,
    pub source: PathBuf,
    pub digest: [u8; 32],
    /// The source's `stamp_of` when it was last read.
    pub stamp: [u8; 32],
}

/// A file to copy back to the node when the container has exited.
#[derive(Clone)]
pub struct ReadBack {
    pub volume: String,
    pub host: PathBuf,
}

/// What a container's mounts become.
#[derive(Default)]
pub struct Planned {
    pub volumes: Vec<VolumeSpec>,
    pub mounts: Vec<VolumeMount>,
    pub refresh: Vec<Refresh>,
    pub read_back: Vec<ReadBack>,
}

fn bad(n: usize, why: String) -> CriError {
    CriError::Invalid {
        field: "config.mounts",
        why: format!("[{n}]: {why}"),
    }
}

fn volume_name(s: String) -> Result<ExecName, CriError> {
    ExecName::parse(&s).map_err(|e| CriError::NodeLacks(format!("volume name '{s}': {e}")))
}

/// The resolv.conf of a sandbox's DNS configuration; None when kubelet gave none.
pub fn resolv_conf(dns: Option<&cri::DnsConfig>) -> Result<Option<String>, CriError> {
    let Some(d) = dns else { return Ok(None) };
    if d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty() {
        return Ok(None);
    }
    let mut text = String::new();
    for (field, list, word) in [
        ("servers", &d.servers, "nameserver"),
        ("searches", &d.searches, "search"),
        ("options", &d.options, "options"),
    ] {
        if let Some(bad) = list
            .iter()
            .find(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(CriError::Invalid {
                field: "config.dns_config",
                why: format!(
                    "{field}: '{}' is not one word; send each as an entry of its own",
                    bad.escape_debug()
                ),
            });
        }
        if list.is_empty() {
            continue;
        }
        match word {
            "nameserver" => list.iter().for_each(|s| text.push_str(&format!("nameserver {s}\n"))),
            _ => text.push_str(&format!("{word} {}\n", list.join(" "))),
        }
    }
    Ok(Some(text))
}

/// A sandbox's pod directory on the node (kubelet's `pods/UID`), and whether it is bound
/// into the sandbox's instance (the `cell` handler) rather than copied in.
#[derive(Debug, Clone, Copy)]
pub struct PodDir<'a> {
    pub path: &'a Path,
    pub bound: bool,
}

/// The directory kubelet makes for pod `uid` (a single path component, checked when the
/// sandbox was made).
pub fn pod_dir_of(uid: &str) -> PathBuf {
    Path::new(KUBELET_PODS).join(uid)
}

/// The volumes and mounts of container `cell` (its cell's name in the instance) for
/// kubelet's `mounts` and the sandbox's `resolv` (mounted at /etc/resolv.conf unless a
/// mount of kubelet's is there). Refused, naming the mount, for a path kubelet did not
/// make for this sandbox's pod and for what the instance cannot give.
pub fn plan(cell: &str, mounts: &[cri::Mount], resolv: Option<&str>, pod: PodDir<'_>) -> Result<Planned, CriError> {
    let mut p = Planned::default();
    let pod_real = std::fs::canonicalize(pod.path).ok();
    let pods_real = std::fs::canonicalize(KUBELET_PODS).unwrap_or_else(|_| KUBELET_PODS.into());
    for (n, m) in mounts.iter().enumerate() {
        let target = m.container_path.as_str();
        if !target.starts_with('/') || !crate::values::volume::relative_normal(target.trim_start_matches('/')) {
            return Err(bad(
                n,
                format!("container_path '{target}' must be an absolute path without '.' or '..'"),
            ));
        }
        if m.propagation != cri::MountPropagation::PropagationPrivate as i32 {
            return Err(bad(n, "propagation: only private mounts are given (the instance shares no mounts with the node); drop mountPropagation".into()));
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(bad(
                n,
                "uid_mappings/gid_mappings: id-mapped mounts are not given on this node".into(),
            ));
        }
        if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
            return Err(bad(n, "image: image volumes are not given on this node".into()));
        }
        let host = Path::new(&m.host_path);
        let real = std::fs::canonicalize(host).ok();
        let under = real
            .as_deref()
            .zip(pod_real.as_deref())
            .and_then(|(r, own)| r.strip_prefix(own).ok());
        // pods/<uid>/<something>: a file or directory kubelet made for this pod.
        let Some(under) = under.filter(|u| u.components().count() >= 1) else {
            let another = real.as_deref().is_some_and(|r| r.starts_with(&pods_real));
            return Err(bad(
                n,
                match another {
                    true => format!(
                        "host_path '{}' is not in this sandbox's pod directory ({}); a container is given only its own pod's files",
                        m.host_path,
                        pod.path.display()
                    ),
                    false => format!(
                        "host_path '{}' is not a file or directory kubelet made for this pod (under {}); hostPath volumes and the node's own files are not given to pods",
                        m.host_path,
                        pod.path.display()
                    ),
                },
            ));
        };
        if pod.bound {
            // The pod directory is bound into the instance: the same file or directory,
            // bound again, so writes reach the node and kubelet's updates are seen at once.
            let Some(rel) = under.to_str() else {
                return Err(bad(n, format!("host_path '{}' is not UTF-8", m.host_path)));
            };
            let hash = Sha256::digest(rel.as_bytes());
            let name = volume_name(format!("p-{}", super::hex(&hash[..8])))?;
            if !p.volumes.iter().any(|v| v.name == name) {
                p.volumes.push(VolumeSpec {
                    name: name.clone(),
                    memory: false,
                    size_limit: 0,
                    owner: String::new(),
                    files: None,
                    pod_path: Some(rel.to_owned()),
                });
            }
            p.mounts.push(VolumeMount {
                volume: name,
                path: target.trim_end_matches('/').to_owned(),
                read_only: m.readonly,
                sub_path: None,
            });
            continue;
        }
        let parts: Vec<&std::ffi::OsStr> = under.iter().collect();
        let empty_dir = parts.first().is_some_and(|c| *c == "volumes")
            && parts.get(1).is_some_and(|c| *c == "kubernetes.io~empty-dir");
        if empty_dir {
            let hash = Sha256::digest(m.host_path.as_bytes());
            let name = volume_name(format!("e-{}", super::hex(&hash[..8])))?;
            if !p.volumes.iter().any(|v| v.name == name) {
                p.volumes.push(VolumeSpec {
                    name: name.clone(),
                    memory: false,
                    size_limit: 0,
                    owner: String::new(),
                    files: None,
                    pod_path: None,
                });
            }
            p.mounts.push(VolumeMount {
                volume: name,
                path: target.trim_end_matches('/').to_owned(),
                read_only: m.readonly,
                sub_path: None,
            });
            continue;
        }
        let (files, dir) = copy_of(host).map_err(|why| bad(n, format!("host_path '{}': {why}", m.host_path)))?;
        if dir && !m.readonly {
            return Err(bad(
                n,
                format!(
                    "host_path '{}' is a writable directory that is not an emptyDir; its writes would not reach the node, so only read-only ones (configmaps, secrets, projected, downward API) and emptyDirs are given",
                    m.host_path
                ),
            ));
        }
        let name = volume_name(format!("{cell}-m{n}"))?;
        // The termination log, under pods/<uid>/containers/: read back when it has exited.
        if !dir && !m.readonly && parts.first().is_some_and(|c| *c == "containers") {
            p.read_back.push(ReadBack {
                volume: name.to_string(),
                host: real.clone().unwrap_or_default(),
            });
        }
        if m.readonly {
            p.refresh.push(Refresh {
                volume: name.to_string(),
                source: host.to_owned(),
                digest: digest(&files),
                stamp: stamp_of(host).unwrap_or_default(),
            });
        }
        p.volumes.push(VolumeSpec {
            name: name.clone(),
            memory: true,
            size_limit: 0,
            owner: String::new(),
            files: Some(files),
            pod_path: None,
        });
        p.mounts.push(VolumeMount {
            volume: name,
            path: target.trim_end_matches('/').to_owned(),
            read_only: m.readonly,
            sub_path: (!dir).then(|| FILE.to_owned()),
        });
    }
    if let Some(text) = resolv {
        if !p.mounts.iter().any(|m| m.path == "/etc/resolv.conf") {
            let name = volume_name(format!("{cell}-dns"))?;
            p.volumes.push(VolumeSpec {
                name: name.clone(),
                memory: true,
                size_limit: 0,
                owner: String::new(),
                files: Some(vec![VolumeFile {
                    path: FILE.into(),
                    content: text.as_bytes().to_vec(),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                }]),
                pod_path: None,
            });
            p.mounts.push(VolumeMount {
                volume: name,
                path: "/etc/resolv.conf".into(),
                read_only: true,
                sub_path: Some(FILE.into()),
            });
        }
    }
    Ok(p)
}

/// How often read-only copies are compared with kubelet's files (kubelet itself updates
/// configmaps and secrets about once a minute, and rotates the token at 80% of its life).
pub const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// How long one call to an instance about its volumes may take.
const CALL: std::time::Duration = std::time::Duration::from_secs(30);

impl Cri {
    /// Sends every read-only copy whose files changed on the node to its instance, once.
    pub async fn refresh_mounts(&self) {
        let work: Vec<(String, String, Refresh)> = {
            let t = self.table();
            (t.containers.iter())
                .filter_map(|c| {
                    let s = t.sandbox(&c.sandbox_id).filter(|s| !s.stopped)?;
                    Some(
                        c.refresh
                            .iter()
                            .map(|r| (c.id.clone(), s.pod.clone(), r.clone()))
                            .collect::<Vec<_>>(),
                    )
                })
                .flatten()
                .collect()
        };
        for (id, pod, r) in work {
            // Off PID 1's thread: the files are read only when their stamp moved. Gone
            // from the node (kubelet tearing the pod down, or half way through its atomic
            // update): the next round looks again.
            let (source, known) = (r.source.clone(), r.stamp);
            let probe = tokio::task::spawn_blocking(move || {
                let stamp = stamp_of(&source).ok()?;
                if stamp == known {
                    return Some((stamp, None));
                }
                let files = recopy(&source, Path::new(KUBELET_PODS)).ok()?;
                Some((stamp, Some(files)))
            });
            let Ok(Some((stamp, files))) = probe.await else {
                continue;
            };
            let Some(files) = files else { continue };
            let d = digest(&files);
            if d == r.digest {
                self.note_read(&id, &r.volume, stamp, None);
                continue;
            }
            let Ok(ch) = self.rt.channel(crate::runtime::Kind::Pod, &pod) else {
                continue;
            };
            let req = pb::VolumeFilesRequest {
                volume: r.volume.clone(),
                write: files.iter().map(crate::runtime::pod::container::file_pb).collect(),
                replace: true,
                ..Default::default()
            };
            match crate::runtime::spawn::child::volume_files(&ch.channel, req, CALL).await {
                Ok(_) => {
                    tracing::info!(
                        "CRI: container {}: {} refreshed from {}",
                        &id[..12],
                        r.volume,
                        r.source.display()
                    );
                    self.note_read(&id, &r.volume, stamp, Some(d));
                }
                Err(s) => tracing::warn!("CRI: container {}: refresh {}: {}", &id[..12], r.volume, s.message()),
            }
        }
    }

    /// Records what container `id`'s copy `volume` was read as (and sent as, `digest`).
    fn note_read(&self, id: &str, volume: &str, stamp: [u8; 32], digest: Option<[u8; 32]>) {
        let mut t = self.table();
        let c = t.containers.iter_mut().find(|c| c.id == id);
        if let Some(x) = c.and_then(|c| c.refresh.iter_mut().find(|x| x.volume == volume)) {
            x.stamp = stamp;
            if let Some(d) = digest {
                x.digest = d;
            }
        }
    }

    /// Refreshes read-only copies every `REFRESH_EVERY`, for as long as the node runs.
    pub async fn keep_mounts_fresh(self: std::sync::Arc<Self>) {
        loop {
            let any = self.table().containers.iter().any(|c| !c.refresh.is_empty());
            if !any {
                self.copies.notified().await;
            }
            tokio::time::sleep(REFRESH_EVERY).await;
            self.refresh_mounts().await;
        }
    }

    /// Copies container `id`'s termination log back to the file kubelet made for it, once
    /// it has exited (kubelet reads it there).
    pub async fn read_back(&self, id: &str) {
        let (pod, files) = {
            let mut t = self.table();
            let Some(i) = t.containers.iter().position(|c| c.id == id) else {
                return;
            };
            let sandbox = t.containers[i].sandbox_id.clone();
            let Some(pod) = t.sandbox(&sandbox).map(|s| s.pod.clone()) else {
                return;
            };
            (pod, std::mem::take(&mut t.containers[i].read_back))
        };
        if files.is_empty() {
            return;
        }
        let Ok(ch) = self.rt.channel(crate::runtime::Kind::Pod, &pod) else {
            return;
        };
        for rb in files {
            let req = pb::VolumeFilesRequest {
                volume: rb.volume.clone(),
                read: vec![FILE.into()],
                read_max_bytes: TERMINATION_LOG_BYTES,
                ..Default::default()
            };
            let read = crate::runtime::spawn::child::volume_files(&ch.channel, req, CALL).await;
            let written = match read {
                Ok(r) => match r.read.first() {
                    Some(f) => write_back(&rb.host, &f.content).map_err(|e| e.to_string()),
                    None => Ok(()),
                },
                Err(s) => Err(s.message().to_owned()),
            };
            if let Err(e) = written {
                tracing::warn!(
                    "CRI: container {}: termination log to {}: {e}",
                    &id[..12],
                    rb.host.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::copy::MAX_MOUNT_BYTES;

    fn mount(host: &Path, at: &str, ro: bool) -> cri::Mount {
        cri::Mount {
            container_path: at.into(),
            host_path: host.display().to_string(),
            readonly: ro,
            ..Default::default()
        }
    }

    /// A kubelet-shaped pod directory: etc-hosts, a termination log, a configmap written
    /// the atomic-writer way, an emptyDir.
    fn pod_dir() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let pods = t.path().join("pods");
        let pod = pods.join("uid-1");
        std::fs::create_dir_all(pod.join("containers/app")).unwrap();
        std::fs::write(pod.join("etc-hosts"), "10.0.0.5 web\n").unwrap();
        std::fs::write(pod.join("containers/app/1234"), "").unwrap();
        let cm = pod.join("volumes/kubernetes.io~configmap/conf");
        std::fs::create_dir_all(cm.join("..2026_12_07_00_00_00.1/sub")).unwrap();
        std::fs::write(cm.join("..2026_12_07_00_00_00.1/app.conf"), "a=1\n").unwrap();
        std::fs::write(cm.join("..2026_12_07_00_00_00.1/sub/x"), "x\n").unwrap();
        std::os::unix::fs::symlink("..2026_12_07_00_00_00.1", cm.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/app.conf", cm.join("app.conf")).unwrap();
        std::os::unix::fs::symlink("..data/sub", cm.join("sub")).unwrap();
        std::fs::create_dir_all(pod.join("volumes/kubernetes.io~empty-dir/cache")).unwrap();
        (t, pods)
    }

    fn copied(pod: &Path) -> PodDir<'_> {
        PodDir {
            path: pod,
            bound: false,
        }
    }

    #[test]
    fn kubelets_mounts_become_copies_and_emptydirs() {
        let (_t, pods) = pod_dir();
        let pod = pods.join("uid-1");
        let mounts = [
            mount(&pod.join("etc-hosts"), "/etc/hosts", false),
            mount(&pod.join("containers/app/1234"), "/dev/termination-log", false),
            mount(&pod.join("volumes/kubernetes.io~configmap/conf"), "/etc/conf", true),
            mount(&pod.join("volumes/kubernetes.io~empty-dir/cache"), "/cache", false),
        ];
        let p = plan("c-1", &mounts, Some("nameserver 10.96.0.10\n"), copied(&pod)).unwrap();
        let names: Vec<&str> = p.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names[..3], ["c-1-m0", "c-1-m1", "c-1-m2"]);
        assert!(names[3].starts_with("e-") && names[4] == "c-1-dns", "{names:?}");
        let hosts = p.volumes[0].files.as_ref().unwrap();
        assert_eq!(
            (hosts[0].path.as_str(), &hosts[0].content[..]),
            ("file", &b"10.0.0.5 web\n"[..])
        );
        let conf = p.volumes[2].files.as_ref().unwrap();
        let paths: Vec<&str> = conf.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["app.conf", "sub/x"],
            "the atomic writer's own directories left out"
        );
        assert!(
            p.volumes[3].files.is_none() && !p.volumes[3].memory,
            "an emptyDir of the instance"
        );
        assert_eq!(p.mounts[0].sub_path.as_deref(), Some("file"));
        assert_eq!(p.mounts[2].sub_path, None);
        assert_eq!(
            (p.mounts[4].path.as_str(), p.mounts[4].read_only),
            ("/etc/resolv.conf", true)
        );
        assert_eq!(p.read_back.len(), 1, "the termination log only");
        assert!(p.read_back[0].host.ends_with("containers/app/1234"));
        assert_eq!(p.refresh.len(), 1, "the read-only configmap only");
    }

    /// The attacks: a path kubelet did not make, a way out through `..` or a symlink, a
    /// writable copy that would lose its writes. Each refused naming the mount.
    #[test]
    fn paths_kubelet_did_not_make_are_refused() {
        let (t, pods) = pod_dir();
        let pod = pods.join("uid-1");
        std::fs::write(t.path().join("secret"), "node's own").unwrap();
        let cm = pod.join("volumes/kubernetes.io~configmap/conf");
        let evil = pod.join("volumes/kubernetes.io~configmap/evil");
        std::fs::create_dir_all(&evil).unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), evil.join("key")).unwrap();
        let cases = [
            (
                mount(Path::new("/etc/aurae"), "/x", true),
                "is not a file or directory kubelet made",
            ),
            (
                mount(&t.path().join("secret"), "/x", true),
                "is not a file or directory kubelet made",
            ),
            (
                mount(&pod.join("../../secret"), "/x", true),
                "is not a file or directory kubelet made",
            ),
            (mount(&pods, "/x", true), "is not a file or directory kubelet made"),
            (mount(&pod, "/x", true), "is not a file or directory kubelet made"),
            (
                mount(&pods.join("uid-2/etc-hosts"), "/x", true),
                "is not a file or directory kubelet made",
            ),
            (mount(&evil, "/x", true), "'key' leads out of the volume"),
            (mount(&cm, "/x", false), "writable directory that is not an emptyDir"),
            (mount(&cm, "x", true), "container_path 'x' must be an absolute path"),
            (mount(&cm, "/a/../etc", true), "must be an absolute path"),
        ];
        for (m, want) in cases {
            let e = plan("c-1", &[m], None, copied(&pod))
                .err()
                .expect("refused")
                .to_string();
            assert!(e.contains("config.mounts") && e.contains(want), "{e}");
        }
        let mut m = mount(&cm, "/x", true);
        m.propagation = cri::MountPropagation::PropagationBidirectional as i32;
        assert!(plan("c-1", &[m], None, copied(&pod)).is_err());
    }

    /// With the pod directory bound into the instance (the `cell` handler), each mount
    /// binds its own path of it, writable ones too: nothing is copied, refreshed or read
    /// back, and a path mounted twice is one volume. What is not this pod's is refused as
    /// it is for a copy.
    #[test]
    fn with_the_pod_directory_bound_each_mount_binds_its_path() {
        let (_t, pods) = pod_dir();
        let pod = pods.join("uid-1");
        std::fs::create_dir_all(pods.join("uid-2")).unwrap();
        std::fs::write(pods.join("uid-2/etc-hosts"), "other\n").unwrap();
        let bound = PodDir {
            path: &pod,
            bound: true,
        };
        let cm = pod.join("volumes/kubernetes.io~configmap/conf");
        let mounts = [
            mount(&pod.join("etc-hosts"), "/etc/hosts", false),
            mount(&cm, "/etc/conf", true),
            mount(&cm, "/etc/conf2", false),
            mount(&pod.join("volumes/kubernetes.io~empty-dir/cache"), "/cache", false),
        ];
        let p = plan("c-1", &mounts, None, bound).unwrap();
        let paths: Vec<&str> = p.volumes.iter().map(|v| v.pod_path.as_deref().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "etc-hosts",
                "volumes/kubernetes.io~configmap/conf",
                "volumes/kubernetes.io~empty-dir/cache"
            ]
        );
        assert!(p
            .volumes
            .iter()
            .all(|v| v.files.is_none() && v.name.as_str().starts_with("p-")));
        assert_eq!(p.mounts.len(), 4);
        assert_eq!(p.mounts[1].volume, p.mounts[2].volume);
        assert!(p.mounts[1].read_only && !p.mounts[2].read_only);
        assert!(p.refresh.is_empty() && p.read_back.is_empty());
        for m in [
            mount(&pods.join("uid-2/etc-hosts"), "/x", true),
            mount(&pod.join("../uid-2/etc-hosts"), "/x", true),
            mount(Path::new("/etc/aurae"), "/x", true),
        ] {
            let e = plan("c-1", &[m], None, bound).err().expect("refused").to_string();
            assert!(
                e.contains("is not a file or directory kubelet made for this pod"),
                "{e}"
            );
        }
    }

    /// The stamp stays while nothing changes and moves with kubelet's atomic update, so a
    /// refresh reads the files only then.
    #[test]
    fn the_stamp_moves_with_kubelets_update_only() {
        let (_t, pods) = pod_dir();
        let cm = pods.join("uid-1/volumes/kubernetes.io~configmap/conf");
        let first = stamp_of(&cm).unwrap();
        assert_eq!(stamp_of(&cm).unwrap(), first);
        std::fs::create_dir(cm.join("..2026_12_07_00_01_00.2")).unwrap();
        std::fs::write(cm.join("..2026_12_07_00_01_00.2/app.conf"), "a=2\n").unwrap();
        std::fs::create_dir(cm.join("..2026_12_07_00_01_00.2/sub")).unwrap();
        std::fs::write(cm.join("..2026_12_07_00_01_00.2/sub/x"), "x\n").unwrap();
        std::fs::remove_file(cm.join("..data")).unwrap();
        std::os::unix::fs::symlink("..2026_12_07_00_01_00.2", cm.join("..data")).unwrap();
        assert_ne!(stamp_of(&cm).unwrap(), first);
        let files = recopy(&cm, &pods).unwrap();
        assert_eq!(files[0].content, b"a=2\n");
    }

    #[test]
    fn a_copy_is_capped() {
        let (_t, pods) = pod_dir();
        let big = pods.join("uid-1/volumes/kubernetes.io~secret/big");
        std::fs::create_dir_all(&big).unwrap();
        std::fs::write(big.join("a"), vec![0u8; MAX_MOUNT_BYTES]).unwrap();
        std::fs::write(big.join("b"), b"1").unwrap();
        let e = plan("c-1", &[mount(&big, "/s", true)], None, copied(&pods.join("uid-1")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("more than 1048576 bytes"), "{e}");
    }

    #[test]
    fn resolv_conf_of_kubelets_dns_config() {
        let d = cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&d)).unwrap().unwrap(),
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(None).unwrap(), None);
        let bad = cri::DnsConfig {
            servers: vec!["1.1.1.1\nnameserver 6.6.6.6".into()],
            ..Default::default()
        };
        assert!(resolv_conf(Some(&bad))
            .unwrap_err()
            .to_string()
            .contains("not one word"));
    }
}
