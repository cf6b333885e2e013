//! What the CRI keeps beside the runtime: kubelet's database. A sandbox or container is
//! a runtime pod or a container in one; what kubelet attached to it (metadata, labels,
//! annotations, the log paths, when it was made) lives here and is echoed back byte for
//! byte, filtered as kubelet's `List*` calls ask. Kept in memory: auraed restarting is the
//! node rebooting, and kubelet recreates what it finds gone.

use aurae_proto::cri;
use std::collections::HashMap;
use std::path::PathBuf;

pub struct Sandbox {
    pub id: String,
    /// The runtime pod behind it.
    pub pod: String,
    pub metadata: cri::PodSandboxMetadata,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub handler: String,
    pub created_at: i64,
    pub log_directory: String,
    /// The namespace options kubelet asked for, echoed in its status (kubelet re-creates a
    /// sandbox whose network mode differs from the pod's).
    pub namespaces: Option<cri::NamespaceOption>,
    pub ip: String,
    /// `StopPodSandbox` was called: NOTREADY from then on.
    pub stopped: bool,
    /// The last CPU reading of its stats (timestamp ns, usage ns), for the rate.
    pub last_cpu: Option<(i64, u64)>,
    /// The resolv.conf of its DNS configuration, given to each container.
    pub resolv: Option<String>,
    /// Its pod directory is bound into its instance (the `cell` handler, when kubelet had
    /// made the directory): containers' mounts bind from it rather than copy.
    pub pod_dir_bound: bool,
}

pub struct Container {
    pub id: String,
    pub sandbox_id: String,
    /// Its name in the runtime pod (and its cell's in the pod's instance).
    pub name: String,
    pub metadata: cri::ContainerMetadata,
    /// The image as kubelet named it, and the id it resolved to.
    pub image: cri::ImageSpec,
    pub image_ref: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub created_at: i64,
    /// `log_directory/log_path`: the file the container's output is written to, when it has one.
    pub log_file: Option<PathBuf>,
    /// Tells the writer of its log file to reopen it (`ReopenContainerLog`), once started.
    pub reopen: Option<tokio::sync::watch::Sender<u64>>,
    /// The last CPU reading of its stats (timestamp ns, usage ns), for the rate.
    pub last_cpu: Option<(i64, u64)>,
    pub mounts: Vec<cri::Mount>,
    /// Its read-only copies of kubelet's files, refreshed when they change on the node.
    pub refresh: Vec<super::mounts::Refresh>,
    /// Its termination log, copied back once it has exited (then emptied).
    pub read_back: Vec<super::mounts::ReadBack>,
    /// Its entrypoint keeps stdin open for Attach; it runs on a terminal.
    pub stdin: bool,
    pub tty: bool,
}

#[derive(Default)]
pub struct Table {
    pub sandboxes: Vec<Sandbox>,
    pub containers: Vec<Container>,
}

/// Every pair of `selector` is in `labels` (kubelet's selectors are ANDed equalities).
pub fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `id` names `full`: equal, or a prefix of it (crictl and people shorten ids).
fn names(full: &str, id: &str) -> bool {
    !id.is_empty() && full.starts_with(id)
}

impl Table {
    /// The sandbox `id` names: exactly, or the one whose id it begins.
    pub fn sandbox(&self, id: &str) -> Option<&Sandbox> {
        find(&self.sandboxes, id, |s| &s.id)
    }

    pub fn sandbox_mut(&mut self, id: &str) -> Option<&mut Sandbox> {
        let full = self.sandbox(id)?.id.clone();
        self.sandboxes.iter_mut().find(|s| s.id == full)
    }

    pub fn container(&self, id: &str) -> Option<&Container> {
        find(&self.containers, id, |c| &c.id)
    }

    pub fn container_mut(&mut self, id: &str) -> Option<&mut Container> {
        let full = self.container(id)?.id.clone();
        self.containers.iter_mut().find(|c| c.id == full)
    }

    /// Sandboxes `filter` selects, newest first (kubelet takes the first as the current).
    pub fn sandboxes(&self, filter: Option<&cri::PodSandboxFilter>) -> Vec<&Sandbox> {
        let mut v: Vec<&Sandbox> = (self.sandboxes.iter())
            .filter(|s| match filter {
                None => true,
                Some(f) => (f.id.is_empty() || names(&s.id, &f.id)) && labels_match(&s.labels, &f.label_selector),
            })
            .collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.created_at));
        v
    }

    /// Containers `filter` selects (its state is the caller's to check), newest first.
    pub fn containers(&self, filter: Option<&cri::ContainerFilter>) -> Vec<&Container> {
        let mut v: Vec<&Container> = (self.containers.iter())
            .filter(|c| match filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || names(&c.id, &f.id))
                        && (f.pod_sandbox_id.is_empty() || names(&c.sandbox_id, &f.pod_sandbox_id))
                        && labels_match(&c.labels, &f.label_selector)
                }
            })
            .collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.created_at));
        v
    }
}

/// The item `id` names: the exact one, else the only one whose id begins with it.
fn find<'a, T>(items: &'a [T], id: &str, key: impl Fn(&T) -> &String) -> Option<&'a T> {
    if let Some(x) = items.iter().find(|x| key(x) == id) {
        return Some(x);
    }
    let mut prefixed = items.iter().filter(|x| names(key(x), id));
    match (prefixed.next(), prefixed.next()) {
        (Some(x), None) => Some(x),
        _ => None,
    }
}

/// A new id: 32 random bytes from the kernel, in hex (as containerd's are).
pub fn new_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(super::hex(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str, created_at: i64, labels: &[(&str, &str)]) -> Sandbox {
        Sandbox {
            id: id.into(),
            pod: format!("cri-{id}"),
            metadata: Default::default(),
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            annotations: Default::default(),
            handler: String::new(),
            created_at,
            log_directory: String::new(),
            namespaces: None,
            ip: String::new(),
            stopped: false,
            last_cpu: None,
            resolv: None,
            pod_dir_bound: false,
        }
    }

    #[test]
    fn ids_may_be_shortened_while_they_stay_unambiguous() {
        let t = Table {
            sandboxes: vec![
                sandbox("abc1", 1, &[]),
                sandbox("abc2", 2, &[]),
                sandbox("ffff", 3, &[]),
            ],
            containers: vec![],
        };
        assert_eq!(t.sandbox("abc1").unwrap().id, "abc1");
        assert_eq!(t.sandbox("f").unwrap().id, "ffff");
        assert!(t.sandbox("abc").is_none(), "two sandboxes begin so");
        assert!(t.sandbox("").is_none());
        assert!(t.sandbox("zzz").is_none());
    }

    #[test]
    fn lists_filter_by_id_and_every_label_newest_first() {
        let uid = ("io.kubernetes.pod.uid", "u1");
        let t = Table {
            sandboxes: vec![
                sandbox("a1", 1, &[uid, ("app", "web")]),
                sandbox("a2", 5, &[uid]),
                sandbox("b1", 3, &[("io.kubernetes.pod.uid", "u2")]),
            ],
            containers: vec![],
        };
        let ids = |v: Vec<&Sandbox>| v.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(t.sandboxes(None)), ["a2", "b1", "a1"]);
        let by = |pairs: &[(&str, &str)]| cri::PodSandboxFilter {
            label_selector: pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            ..Default::default()
        };
        assert_eq!(ids(t.sandboxes(Some(&by(&[uid])))), ["a2", "a1"]);
        assert_eq!(ids(t.sandboxes(Some(&by(&[uid, ("app", "web")])))), ["a1"]);
        assert!(t.sandboxes(Some(&by(&[("app", "db")]))).is_empty());
        let f = cri::PodSandboxFilter {
            id: "b".into(),
            ..Default::default()
        };
        assert_eq!(ids(t.sandboxes(Some(&f))), ["b1"]);
    }

    #[test]
    fn new_ids_are_64_hex_digits_and_differ() {
        let (a, b) = (new_id().unwrap(), new_id().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
