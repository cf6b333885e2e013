//! Host tier: pulling images from a real OCI registry (Debian's `docker-registry`, the
//! Docker distribution server) on 127.0.0.1, over plain HTTP (listed insecure), HTTPS with
//! a test CA, and with basic auth. The images are built offline by `tests/images/build.sh`
//! (umoci, static busybox, crafted layers) and pushed once with skopeo; each test starts
//! its own registry on that storage. Needs root: unpacking mounts overlays.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::registry::{fixture, Cutter, Options, Registry};

use auraed::image::pull::{pull, Credentials, Progress, Registries};
use auraed::image::store::Store;
use auraed::image::ImageError;
use common::free_port;
use std::path::PathBuf;
use std::sync::Arc;

struct Node {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("images"), 1 << 30).unwrap());
    Node { _dir: dir, store }
}

fn insecure(r: &Registry) -> Registries {
    Registries {
        insecure: vec![r.addr.clone()],
        ..Default::default()
    }
}

async fn pull_quiet(
    n: &Node,
    reference: &str,
    creds: Option<&Credentials>,
    regs: &Registries,
) -> Result<auraed::image::pull::Pulled, ImageError> {
    pull(
        n.store.clone(),
        reference,
        creds,
        regs,
        &mut |_| {},
        &mut Default::default(),
    )
    .await
}

/// The layers stacked read-only, as a cell will see them; unmounted on drop.
struct Merged(tempfile::TempDir);

impl Merged {
    fn of(layers: &[auraed::image::unpack::Layer]) -> Merged {
        let at = tempfile::tempdir().unwrap();
        auraed::image::overlay::mount_overlay(layers, None, at.path()).unwrap();
        Merged(at)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.0.path().join(p)
    }
}

impl Drop for Merged {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn pull_from_an_insecure_registry_reports_progress_and_a_second_pull_fetches_nothing() {
    let f = fixture();
    let r = Registry::start(&f.storage, Options::default());
    let n = node();
    let reference = format!("{}/test/busybox:1", r.addr);
    let mut seen = Vec::new();
    let p = pull(
        n.store.clone(),
        &reference,
        None,
        &insecure(&r),
        &mut |e| seen.push(e),
        &mut Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(p.layers.len(), 1);
    assert!(
        p.fetched > p.size(),
        "layers and config fetched: {} of {}",
        p.fetched,
        p.size()
    );
    let Some(Progress::Resolved { digest, layers }) = seen.first() else {
        panic!("{seen:?}")
    };
    assert_eq!(digest, &p.digest);
    let last_bytes = seen.iter().rev().find_map(|e| match e {
        Progress::Layer {
            done, total, cached, ..
        } => Some((*done, *total, *cached)),
        _ => None,
    });
    assert_eq!(last_bytes, Some((layers[0].1, layers[0].1, false)), "{seen:?}");
    assert!(seen.iter().any(|e| matches!(e, Progress::Unpacking { .. })));
    let root = &p.layers[0].dir;
    assert!(root.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/os-release"))
            .unwrap()
            .lines()
            .next(),
        Some("ID=aurae-test")
    );
    let config: serde_json::Value = serde_json::from_slice(&p.config_json).unwrap();
    assert_eq!(config["config"]["WorkingDir"], "/srv");

    // Again: the manifest is checked, nothing else is fetched, the layers are shared.
    let again = pull_quiet(&n, &reference, None, &insecure(&r)).await.unwrap();
    assert_eq!((again.fetched, again.digest.clone()), (0, p.digest.clone()));
    assert_eq!(again.layers, p.layers);
}

#[tokio::test]
async fn whiteouts_opaque_directories_and_writes_through_symlinks_survive_the_registry() {
    let f = fixture();
    let r = Registry::start(&f.storage, Options::default());
    let n = node();
    let p = pull_quiet(&n, &format!("{}/test/layered:1", r.addr), None, &insecure(&r))
        .await
        .unwrap();
    assert_eq!(p.layers.len(), 3);
    let m = Merged::of(&p.layers);
    assert!(!m.path("etc/os-release").exists(), "deleted by a whiteout");
    assert!(m.path("etc/passwd").exists());
    let cache: Vec<String> = std::fs::read_dir(m.path("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        cache,
        ["new-entry"],
        "an opaque directory keeps only its layer's entries"
    );
    assert!(std::fs::symlink_metadata(m.path("lib")).unwrap().is_symlink());
    assert_eq!(
        std::fs::read(m.path("usr/lib/b.so")).unwrap(),
        b"b\n",
        "written through lib -> /usr/lib"
    );
    assert_eq!(std::fs::read(m.path("usr/lib/a.so")).unwrap(), b"a\n");
}

#[tokio::test]
async fn a_zstd_layer_is_pulled_and_unpacked() {
    let f = fixture();
    let r = Registry::start(&f.storage, Options::default());
    let n = node();
    let p = pull_quiet(&n, &format!("{}/test/busybox:zstd", r.addr), None, &insecure(&r))
        .await
        .unwrap();
    assert!(p.layers[0].dir.join("bin/busybox").is_file());
}

#[tokio::test]
async fn a_malicious_layer_is_refused_and_writes_nothing_outside() {
    let f = fixture();
    let r = Registry::start(&f.storage, Options::default());
    let n = node();
    let e = pull_quiet(&n, &format!("{}/test/malicious:1", r.addr), None, &insecure(&r))
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("'../escaped'"), "{e}");
    assert!(!n.store.root().join("escaped").exists() && !n.store.root().join("../escaped").exists());
    assert_eq!(std::fs::read_dir(n.store.root().join("tmp")).unwrap().count(), 0);
}

#[tokio::test]
async fn refusals_say_what_went_wrong_in_the_registrys_words() {
    let f = fixture();
    let r = Registry::start(&f.storage, Options::default());
    let n = node();
    let regs = insecure(&r);
    let e = pull_quiet(&n, &format!("{}/test/busybox:nope", r.addr), None, &regs)
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::NotFound(_)), "{e}");
    eprintln!("{e}");
    let e = pull_quiet(&n, &format!("{}/test/nothing:1", r.addr), None, &regs)
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::NotFound(_)), "{e}");
    eprintln!("{e}");
    let e = pull_quiet(&n, "Not A Reference!", None, &regs).await.unwrap_err();
    assert!(matches!(e, ImageError::BadReference(_)), "{e}");
    let closed = format!("127.0.0.1:{}", free_port());
    let e = pull_quiet(
        &n,
        &format!("{closed}/test/busybox:1"),
        None,
        &Registries {
            insecure: vec![closed.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ImageError::Unreachable(_)), "{e}");
    eprintln!("{e}");
    // Not listed as insecure: HTTPS only, which a plain-HTTP registry does not speak.
    let e = pull_quiet(&n, &format!("{}/test/busybox:1", r.addr), None, &Registries::default())
        .await
        .unwrap_err();
    assert!(!matches!(e, ImageError::NotFound(_)), "{e}");
    eprintln!("{e}");
    assert_eq!(
        std::fs::read_dir(n.store.root().join("blobs/sha256")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn https_registries_are_verified_against_the_cas_given() {
    let f = fixture();
    let tls = Some((f.pki.join("server.crt"), f.pki.join("server.key")));
    let r = Registry::start(
        &f.storage,
        Options {
            tls,
            ..Default::default()
        },
    );
    let n = node();
    let reference = format!("{}/test/busybox:1", r.addr);
    // Listed (it is on loopback), with no CA that signed it.
    let no_ca = Registries {
        allow: vec![r.addr.clone()],
        ..Default::default()
    };
    let e = pull_quiet(&n, &reference, None, &no_ca).await.unwrap_err();
    assert!(
        e.to_string().to_lowercase().contains("certificate"),
        "an unknown CA: {e}"
    );
    eprintln!("{e}");
    // On loopback, so listed (`allow`): an unlisted registry there is refused by name.
    let unlisted = Registries {
        ca_files: vec![f.pki.join("ca.crt")],
        ..Default::default()
    };
    let e = pull_quiet(&n, &reference, None, &unlisted).await.unwrap_err();
    assert!(
        e.to_string().contains("is loopback") && e.to_string().contains("allow"),
        "{e}"
    );
    let regs = Registries {
        ca_files: vec![f.pki.join("ca.crt")],
        allow: vec![r.addr.clone()],
        ..Default::default()
    };
    let p = pull_quiet(&n, &reference, None, &regs).await.unwrap();
    assert!(p.layers[0].dir.join("bin/busybox").is_file());
}

#[tokio::test]
async fn basic_auth_is_required_and_checked() {
    let f = fixture();
    let line = common::registry::htpasswd("puller", "s3cret");
    let r = Registry::start(
        &f.storage,
        Options {
            htpasswd: Some(line),
            ..Default::default()
        },
    );
    let n = node();
    let reference = format!("{}/test/busybox:1", r.addr);
    let regs = insecure(&r);
    let e = pull_quiet(&n, &reference, None, &regs).await.unwrap_err();
    assert!(matches!(e, ImageError::Denied(_)), "anonymous: {e}");
    let wrong = Credentials {
        username: "puller".into(),
        password: "wrong".into(),
    };
    let e = pull_quiet(&n, &reference, Some(&wrong), &regs).await.unwrap_err();
    assert!(matches!(e, ImageError::Denied(_)), "wrong password: {e}");
    eprintln!("{e}");
    assert!(!e.to_string().contains("wrong"), "the password is never said: {e}");
    let right = Credentials {
        username: "puller".into(),
        password: "s3cret".into(),
    };
    let p = pull_quiet(&n, &reference, Some(&right), &regs).await.unwrap();
    assert!(p.layers[0].dir.join("bin/busybox").is_file());
}

/// The whole path a user takes: `aer image pull` against a daemon whose registries file
/// lists the registry as insecure, then `ls`, `status`, a second pull, `rm`; roles hold.
#[test]
fn aer_image_pull_ls_status_rm_through_the_api() {
    let f = fixture();
    let r = Registry::start(&f.storage, Options::default());
    let d = common::start_listing_insecure(&[&r.addr]);
    let aer = |args: &[&str]| common::aer_as(&d, "client", args);
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let reference = format!("{}/test/busybox:1", r.addr);
    let o = aer(&["image", "pull", &reference]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("1 layers") && out.contains("layer 1/1") && out.contains("unpacking"),
        "{out}"
    );
    assert!(out.contains("workdir    /srv") && out.contains("8080/tcp"), "{out}");

    let o = aer(&["--json", "image", "ls"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["reference"], reference.as_str());
    assert_eq!(v[0]["config"]["entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(
        v[0]["config"]["env"],
        serde_json::json!(["PATH=/bin", "GREETING=image"])
    );

    let o = aer(&["--json", "image", "pull", &reference]);
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again["fetched_bytes"], 0, "a second pull fetches nothing");
    assert_eq!(again["digest"], v[0]["digest"]);
    let o = aer(&["--json", "image", "status", again["digest"].as_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "status by digest: {}", text(&o));

    // A reader lists but may not pull or remove; a bad reference names itself.
    let o = common::aer_as(&d, "rita", &["image", "ls"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = common::aer_as(&d, "rita", &["image", "pull", &reference]);
    assert!(
        text(&o).contains("permission denied") && text(&o).contains("Images/Pull"),
        "{}",
        text(&o)
    );
    let o = aer(&["image", "pull", "Not A Ref"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("InvalidArgument") && text(&o).contains("'Not A Ref'"),
        "{}",
        text(&o)
    );
    let o = aer(&["image", "pull", &format!("{}/test/busybox:nope", r.addr)]);
    assert!(
        text(&o).contains("NotFound") && text(&o).contains("manifest unknown"),
        "{}",
        text(&o)
    );

    let o = aer(&["image", "rm", &reference]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("freed"), "{}", text(&o));
    let o = aer(&["--json", "image", "ls"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
    let store = d._dir.path().join("images");
    assert_eq!(
        std::fs::read_dir(store.join("blobs/sha256")).unwrap().count(),
        0,
        "blobs freed"
    );
    assert_eq!(
        std::fs::read_dir(store.join("layers")).unwrap().count(),
        0,
        "layers freed"
    );
    let o = aer(&["image", "status", &reference]);
    assert!(
        text(&o).contains("NotFound") && text(&o).contains("aer image pull"),
        "{}",
        text(&o)
    );
}

/// Every blob in the store, by digest hex, each checked against its name.
fn verified_blobs(n: &Node) -> Vec<(String, u64)> {
    use sha2::Digest as _;
    let dir = n.store.root().join("blobs/sha256");
    let mut v: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let data = std::fs::read(e.path()).unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            assert_eq!(
                hex(&sha2::Sha256::digest(&data)),
                name,
                "a blob in the store is what its name says"
            );
            (name, data.len() as u64)
        })
        .collect();
    v.sort();
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn tmp_is_empty(n: &Node) -> bool {
    std::fs::read_dir(n.store.root().join("tmp")).unwrap().count() == 0
}

#[tokio::test]
async fn a_pull_cut_mid_layer_leaves_only_verified_blobs_and_a_retry_fetches_the_rest() {
    let f = fixture();
    let r = Registry::start(&f.storage, Options::default());
    // Responses over 256 KiB are cut half way: the 1 MiB busybox layer never arrives whole.
    let cut = Cutter::start(&r.addr, 256 * 1024);
    let n = node();
    let through = |addr: &str| Registries {
        insecure: vec![addr.to_owned()],
        ..Default::default()
    };
    let e = pull_quiet(&n, &format!("{}/test/layered:1", cut.addr), None, &through(&cut.addr))
        .await
        .unwrap_err();
    eprintln!("{e}");
    assert!(matches!(e, ImageError::Unreachable(_)), "{e}");
    assert!(tmp_is_empty(&n), "nothing half-written");
    let kept = verified_blobs(&n);
    assert!(
        kept.iter().all(|(_, size)| *size < 256 * 1024),
        "the cut blob is not kept: {kept:?}"
    );
    assert!(std::fs::read_dir(n.store.root().join("layers")).unwrap().count() < 3);

    // The registry again, whole: only what is missing travels.
    let p = pull_quiet(&n, &format!("{}/test/layered:1", r.addr), None, &insecure(&r))
        .await
        .unwrap();
    let kept_bytes: u64 = kept.iter().map(|(_, s)| s).sum();
    let all: u64 = verified_blobs(&n).iter().map(|(_, s)| s).sum();
    assert_eq!(
        p.fetched,
        all - kept_bytes,
        "fetched only the blobs the first try did not verify"
    );
    assert!(p.fetched > 1 << 20);
    assert_eq!(std::fs::read_dir(n.store.root().join("layers")).unwrap().count(), 3);
    assert!(tmp_is_empty(&n));
}

#[tokio::test]
async fn a_corrupt_blob_in_the_registry_is_refused_and_a_repaired_one_is_pulled() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let (storage, blob) = common::registry::corrupt_copy(&f.storage, dir.path());
    let bad = std::fs::read(&blob).unwrap();
    let mut good = bad.clone();
    let mid = good.len() / 2;
    good[mid] ^= 0xff;
    let r = Registry::start(&storage, Options::default());
    let n = node();
    let reference = format!("{}/test/busybox:1", r.addr);
    let e = pull_quiet(&n, &reference, None, &insecure(&r)).await.unwrap_err();
    eprintln!("{e}");
    assert!(matches!(e, ImageError::Mismatch { .. }), "{e}");
    let digest = blob
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        verified_blobs(&n).iter().all(|(d, _)| *d != digest),
        "the corrupt blob is not in the store"
    );
    assert!(tmp_is_empty(&n));
    assert_eq!(std::fs::read_dir(n.store.root().join("layers")).unwrap().count(), 0);
    std::fs::write(&blob, &good).unwrap();
    let p = pull_quiet(&n, &reference, None, &insecure(&r)).await.unwrap();
    assert_eq!(p.layers.len(), 1);
}

#[tokio::test]
async fn a_full_store_is_refused_with_what_was_needed_and_a_bigger_one_pulls() {
    let f = fixture();
    let r = Registry::start(&f.storage, Options::default());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let small = Node {
        _dir: tempfile::tempdir().unwrap(),
        store: Arc::new(Store::open(&root, 512 * 1024).unwrap()),
    };
    let reference = format!("{}/test/busybox:1", r.addr);
    let e = pull_quiet(&small, &reference, None, &insecure(&r)).await.unwrap_err();
    eprintln!("{e}");
    let ImageError::Full { store, needed, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(store, &root);
    assert!(*needed > 0);
    assert!(e.to_string().contains("aer image rm"), "{e}");
    assert!(tmp_is_empty(&small));
    assert!(small.store.used() <= 512 * 1024);
    // The same store with room: the pull completes.
    let roomy = Node {
        _dir: tempfile::tempdir().unwrap(),
        store: Arc::new(Store::open(&root, 64 << 20).unwrap()),
    };
    pull_quiet(&roomy, &reference, None, &insecure(&r)).await.unwrap();
}

/// Every entry below `root`: path, kind, mode, owner, and content or link target.
fn tree(root: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if m.is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                dirs.push(p.clone());
                "dir".to_owned()
            } else {
                format!(
                    "file {}",
                    hex(&<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&p).unwrap()))
                )
            };
            out.push(format!("{rel} {:o} {}:{} {what}", m.mode() & 0o7777, m.uid(), m.gid()));
        }
    }
    out.sort();
    out
}

/// What `umoci unpack` makes of `tag` of the fixture's layout: its rootfs's tree.
fn umoci_tree(tag: &str) -> Vec<String> {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    common::registry::run(
        std::process::Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{tag}", f.layout.display()))
            .arg(&bundle),
    );
    tree(&bundle.join("rootfs"))
}

#[tokio::test]
async fn layered_and_zstd_images_unpack_exactly_as_umoci_unpacks_them() {
    let f = fixture();
    let r = Registry::start(&f.storage, Options::default());
    for (reference, tag) in [("test/layered:1", "layered"), ("test/busybox:zstd", "busybox")] {
        let n = node();
        let p = pull_quiet(&n, &format!("{}/{reference}", r.addr), None, &insecure(&r))
            .await
            .unwrap();
        // One layer is its own tree (an overlay needs two lower layers).
        let ours = match p.layers.as_slice() {
            [one] => tree(&one.dir),
            many => tree(Merged::of(many).0.path()),
        };
        let theirs = umoci_tree(tag);
        let only_ours: Vec<&String> = ours.iter().filter(|e| !theirs.contains(e)).collect();
        let only_theirs: Vec<&String> = theirs.iter().filter(|e| !ours.contains(e)).collect();
        assert!(
            only_ours.is_empty() && only_theirs.is_empty(),
            "{reference} differs from umoci's unpack of {tag}:\n ours only: {only_ours:#?}\n umoci only: {only_theirs:#?}"
        );
        assert!(ours.len() > 20, "{ours:?}");
    }
}

fn api(d: &common::Daemon, stem: &str) -> auraed::cli::Target {
    auraed::cli::Target {
        addr: d.addr.clone(),
        tls: auraed::pki::tls::TlsFiles {
            ca: d.pki.join("ca.crt"),
            cert: d.pki.join(format!("{stem}.crt")),
            key: d.pki.join(format!("{stem}.key")),
        },
        server_name: "localhost".into(),
        server_id: None,
        timeout: std::time::Duration::from_secs(30),
        instance: None,
    }
}

/// The messages of a load of `p` from `n`'s store, with `tamper` applied to the blob
/// bytes (layer index, bytes) before they are sent.
fn load_messages(
    n: &Node,
    p: &auraed::image::pull::Pulled,
    sent: bool,
    tamper: impl Fn(usize, &mut Vec<u8>),
) -> Vec<auraed::pb::LoadRequest> {
    load_messages_with(n, p, sent, tamper, |_| {})
}

/// As `load_messages`, with `offer` applied to the first message (the offer).
fn load_messages_with(
    n: &Node,
    p: &auraed::image::pull::Pulled,
    sent: bool,
    tamper: impl Fn(usize, &mut Vec<u8>),
    offer: impl FnOnce(&mut auraed::pb::LoadImage),
) -> Vec<auraed::pb::LoadRequest> {
    use auraed::pb::{load_request::Request as R, LoadImage, LoadLayer, LoadRequest};
    let mut image = LoadImage {
        reference: p.reference.clone(),
        digest: p.digest.to_string(),
        manifest: p.manifest_json.clone(),
        config: p.config_json.clone(),
        layers: p
            .blobs
            .iter()
            .map(|(d, s)| LoadLayer {
                digest: d.to_string(),
                size_bytes: *s,
                sent,
            })
            .collect(),
    };
    offer(&mut image);
    let mut v = vec![LoadRequest {
        request: Some(R::Image(image)),
    }];
    if sent {
        for (i, (d, _)) in p.blobs.iter().enumerate() {
            let mut bytes = std::fs::read(n.store.blob_path(d)).unwrap();
            tamper(i, &mut bytes);
            for chunk in bytes.chunks(100_000) {
                v.push(LoadRequest {
                    request: Some(R::Data(chunk.to_vec())),
                });
            }
        }
    }
    v
}

/// Images.Load is how a pod's instance gets its images: only an admin (its parent) may
/// load, and the receiver trusts no byte it is given. A forged layer, a stream that is cut
/// or too long, and a blob said to be there that is not are each refused: the image is
/// not recorded, and no blob that failed its check is kept.
#[test]
fn a_loaded_image_is_checked_byte_for_byte_and_only_an_admin_may_load() {
    use auraed::pb;
    let f = fixture();
    let r = Registry::start(&f.storage, Options::default());
    let src = node();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reference = format!("{}/test/layered:1", r.addr);
    let p = rt.block_on(pull_quiet(&src, &reference, None, &insecure(&r))).unwrap();
    assert!(p.blobs.len() > 1, "a layered image: {:?}", p.blobs);
    let d = common::start();
    let store = d._dir.path().join("images");
    let blobs_kept = || {
        std::fs::read_dir(store.join("blobs/sha256"))
            .map(|rd| rd.count())
            .unwrap_or(0)
    };
    rt.block_on(async {
        let load = |stem: &'static str, msgs: Vec<pb::LoadRequest>| {
            let t = api(&d, stem);
            async move {
                let ch = t.connect().await.unwrap();
                pb::images_client::ImagesClient::new(ch)
                    .load(tokio_stream::iter(msgs))
                    .await
                    .map(|r| r.into_inner())
            }
        };
        let status = |stem: &'static str| {
            let t = api(&d, stem);
            let reference = reference.clone();
            async move {
                let ch = t.connect().await.unwrap();
                pb::images_client::ImagesClient::new(ch)
                    .status(pb::ImageRef { reference })
                    .await
            }
        };
        let good = || load_messages(&src, &p, true, |_, _| {});

        // The manifest: missing, not the bytes of the digest it is recorded under, or a
        // manifest of the sender's own making (its digest right) that names another config
        // or other layers than those sent.
        let e = load(
            "client",
            load_messages_with(&src, &p, true, |_, _| {}, |i| i.manifest.clear()),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with("image.manifest:"), "{}", e.message());
        let e = load(
            "client",
            load_messages_with(&src, &p, true, |_, _| {}, |i| i.manifest.push(b' ')),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("its manifest"), "{}", e.message());
        let forge = |edit: fn(&mut serde_json::Value)| {
            move |i: &mut pb::LoadImage| {
                let mut m: serde_json::Value = serde_json::from_slice(&i.manifest).unwrap();
                edit(&mut m);
                i.manifest = serde_json::to_vec(&m).unwrap();
                i.digest = auraed::image::Digest::of(&i.manifest).to_string();
            }
        };
        let other_config: fn(&mut serde_json::Value) = |m| {
            m["config"]["digest"] = format!("sha256:{}", "0".repeat(64)).into();
        };
        let one_layer_less: fn(&mut serde_json::Value) = |m| {
            m["layers"].as_array_mut().unwrap().pop();
        };
        for (lie, said) in [
            (other_config, "the config the manifest names"),
            (one_layer_less, "the layers the manifest lists"),
        ] {
            let e = load("client", load_messages_with(&src, &p, true, |_, _| {}, forge(lie)))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
            assert!(e.message().contains(said), "{}", e.message());
        }
        assert_eq!(status("client").await.unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!(blobs_kept(), 0, "nothing of an offer whose manifest lies is kept");

        // Blobs said to be there that are not.
        let e = load("client", load_messages(&src, &p, false, |_, _| {}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

        // An operator may pull, but not hand the node an image of its own making.
        let e = load("otto", good()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert_eq!(status("client").await.unwrap_err().code(), tonic::Code::NotFound);

        // One byte of the top layer changed: refused, and nothing of the image recorded.
        let forged = load_messages(&src, &p, true, |i, b| {
            if i == 1 {
                let mid = b.len() / 2;
                b[mid] ^= 0x40;
            }
        });
        let e = load("client", forged).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("expected"), "{}", e.message());
        assert_eq!(status("client").await.unwrap_err().code(), tonic::Code::NotFound);

        // Cut short, and too long.
        let mut cut = good();
        cut.pop();
        let e = load("client", cut).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        let mut long = good();
        long.push(pb::LoadRequest {
            request: Some(pb::load_request::Request::Data(b"more".to_vec())),
        });
        let e = load("client", long).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert_eq!(status("client").await.unwrap_err().code(), tonic::Code::NotFound);

        // Data before the offer.
        let e = load(
            "client",
            vec![pb::LoadRequest {
                request: Some(pb::load_request::Request::Data(vec![0; 8])),
            }],
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

        // The real thing: recorded as the sender resolved it, every layer unpacked.
        let s = load("client", good()).await.unwrap();
        assert_eq!(
            (s.reference.as_str(), s.digest.as_str()),
            (reference.as_str(), p.digest.as_str())
        );
        assert_eq!(s.layers.len(), p.blobs.len());
        assert_eq!(
            blobs_kept(),
            p.blobs.len() + 2,
            "the layers, the config and the manifest, each once"
        );
        // Again, with the blobs it has now: nothing sent, the same image.
        let again = load("client", load_messages(&src, &p, false, |_, _| {})).await.unwrap();
        assert_eq!(again.digest, s.digest);
    });
    let tmp = std::fs::read_dir(store.join("tmp")).map(|rd| rd.count()).unwrap_or(0);
    assert_eq!(tmp, 0, "a refused load left temporary files");
}

/// A registry that accepts and never answers (a stalled pull): removing another image does
/// not wait behind that pull, and the pull ends when its caller goes away or its caller's
/// deadline passes (its connection to the registry closes), instead of running on
/// unwatched.
#[test]
fn a_stalled_pull_holds_up_no_removal_and_ends_with_its_caller() {
    use std::io::Read;
    let f = fixture();
    let r = Registry::start(&f.storage, Options::default());
    let stall = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stall_addr = stall.local_addr().unwrap().to_string();
    let (accepted_tx, accepted) = std::sync::mpsc::channel();
    let (closed_tx, closed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in stall.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = accepted_tx.send(());
            let closed_tx = closed_tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
                let _ = closed_tx.send(());
            });
        }
    });
    let d = common::start_listing_insecure(&[&r.addr, &stall_addr]);
    let busybox = format!("{}/test/busybox:1", r.addr);
    let o = common::aer_as(&d, "client", &["image", "pull", &busybox]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let t = api(&d, "client");
    let wait = std::time::Duration::from_secs(30);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let ch = t.connect().await.unwrap();
            let mut images = auraed::pb::images_client::ImagesClient::new(ch);
            let stuck = images
                .pull(auraed::pb::PullRequest {
                    reference: format!("{stall_addr}/test/stuck:1"),
                    credentials: None,
                })
                .await
                .unwrap()
                .into_inner();
            tokio::task::spawn_blocking(move || accepted.recv_timeout(wait))
                .await
                .unwrap()
                .expect("the pull reached the stalled registry");
            // The removal answers while the pull hangs (before: it waited for the pull).
            let removed = tokio::time::timeout(
                wait,
                images.remove(auraed::pb::ImageRef {
                    reference: busybox.clone(),
                }),
            )
            .await;
            let freed = removed.expect("Remove waited behind the stalled pull").unwrap();
            assert!(freed.into_inner().freed_bytes > 0);
            // The caller goes away: the pull ends and its connection closes.
            drop(stuck);
            let closed = tokio::task::spawn_blocking(move || closed.recv_timeout(wait).map(|()| closed))
                .await
                .unwrap()
                .expect("the pull went on after its caller left");
            // A caller that stays, with a deadline: the pull ends at the deadline with
            // DEADLINE_EXCEEDED, and its connection to the registry closes.
            let mut req = tonic::Request::new(auraed::pb::PullRequest {
                reference: format!("{stall_addr}/test/stuck:2"),
                credentials: None,
            });
            req.set_timeout(std::time::Duration::from_millis(1500));
            let mut s = images.pull(req).await.unwrap().into_inner();
            let e = tokio::time::timeout(wait, s.message())
                .await
                .expect("the pull outlived its caller's deadline")
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
            assert!(e.message().contains("within the caller's deadline"), "{}", e.message());
            tokio::task::spawn_blocking(move || closed.recv_timeout(wait))
                .await
                .unwrap()
                .expect("the registry connection outlived the deadline");
        });
}

/// What a hostile registry sends, per request path.
#[derive(Clone, Copy)]
enum Hostile {
    /// A 50 MiB manifest, its length stated.
    BigManifest,
    /// A manifest that never ends (chunked, no length).
    EndlessManifest,
    /// A 404 whose body is 200 MB of words.
    HugeError,
    /// A bearer challenge whose token service answers forever.
    EndlessToken,
    /// A bearer challenge whose realm is plain HTTP on a host nobody listed.
    PlainRealm,
}

/// An HTTP/1.1 server on 127.0.0.1 (a thread per connection) that hands each request's
/// path and the connection to `respond`, which says whether the connection goes on; its
/// address.
fn serve_http(respond: impl Fn(&str, &str, &mut std::net::TcpStream) -> bool + Clone + Send + 'static) -> String {
    use std::io::{BufRead, BufReader};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let me = addr.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let (me, respond) = (me.clone(), respond.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut w = c;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    if !respond(&me, &path, &mut w) {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A registry on 127.0.0.1 that answers every request as `mode` says; its address.
fn hostile_registry(mode: Hostile) -> String {
    use std::io::Write;
    serve_http(move |me, path, w| {
        // Writes until the reader goes away; the connection ends then.
        let chunked = |w: &mut std::net::TcpStream, head: &str| -> bool {
            let _ = w.write_all(format!("{head}Transfer-Encoding: chunked\r\n\r\n").as_bytes());
            let piece = format!("1000\r\n{}\r\n", "x".repeat(4096));
            while w.write_all(piece.as_bytes()).is_ok() {}
            false
        };
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n";
        match (mode, path.starts_with("/token")) {
            (Hostile::BigManifest, _) => {
                let _ = w.write_all(format!("{ok}Content-Length: {}\r\n\r\n", 50 << 20).as_bytes());
                let chunk = vec![b' '; 1 << 20];
                for _ in 0..50 {
                    if w.write_all(&chunk).is_err() {
                        return false;
                    }
                }
            }
            (Hostile::EndlessManifest, _) => return chunked(w, ok),
            (Hostile::HugeError, _) => {
                let _ = w
                    .write_all(format!("HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n", 200_000_000).as_bytes());
                let chunk = "no such image ".repeat(1 << 16);
                for _ in 0..200 {
                    if w.write_all(chunk.as_bytes()).is_err() {
                        return false;
                    }
                }
            }
            (Hostile::EndlessToken, true) => return chunked(w, "HTTP/1.1 200 OK\r\n"),
            (Hostile::EndlessToken, false) | (Hostile::PlainRealm, _) => {
                let realm = match mode {
                    Hostile::EndlessToken => format!("http://{me}/token"),
                    _ => "http://127.0.0.2:1/token".into(),
                };
                let _ = w.write_all(
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"evil\"\r\nContent-Length: 0\r\n\r\n"
                    )
                    .as_bytes(),
                );
            }
        }
        true
    })
}

/// A hostile registry cannot make a pull hold more than the caps: a 50 MiB manifest, an
/// endless one, a 200 MB error body, an endless token are refused once past their cap
/// (4 MiB, 4 MiB, 64 KiB read and 300 characters said, 64 KiB); a plain-HTTP token realm on
/// a host nobody listed gets no credentials. The store holds nothing of any of them.
#[tokio::test]
async fn a_hostile_registry_is_cut_off_at_every_cap() {
    let n = node();
    let creds = Credentials {
        username: "u".into(),
        password: "s3cr3t-pw".into(),
    };
    for (mode, what) in [
        (Hostile::BigManifest, "its manifest is larger than 4194304 bytes"),
        (Hostile::EndlessManifest, "its manifest is larger than 4194304 bytes"),
        (Hostile::HugeError, "answered HTTP 404"),
        (Hostile::EndlessToken, "the token response is larger than 65536 bytes"),
        (
            Hostile::PlainRealm,
            "is plain HTTP and its host is not listed as insecure",
        ),
    ] {
        let addr = hostile_registry(mode);
        let regs = Registries {
            insecure: vec![addr.clone()],
            ..Default::default()
        };
        let e = pull_quiet(&n, &format!("{addr}/evil/image:1"), Some(&creds), &regs)
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(what), "{what}: {msg}");
        assert!(msg.len() < 1000, "the registry's words are cut: {} bytes", msg.len());
        assert!(!msg.contains("s3cr3t-pw"), "no password in {msg}");
        assert_eq!(
            std::fs::read_dir(n.store.root().join("blobs/sha256")).unwrap().count(),
            0
        );
    }
}

mod registry_fuzz {
    //! The registry client fuzzed: a registry on loopback answers every request with one
    //! generated answer (a status, odd headers, an auth challenge, a redirect, a stated
    //! length that lies, a body that is random, manifest-shaped or endless). Each pull
    //! ends, without a panic, and a failed one leaves nothing in the store.

    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    #[derive(Debug, Clone)]
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        length: Option<u64>,
        body: Vec<u8>,
        endless: bool,
    }

    fn answer() -> impl Strategy<Value = Answer> {
        let header = prop_oneof![
            Just((
                "Content-Type".to_owned(),
                "application/vnd.oci.image.index.v1+json".to_owned()
            )),
            Just((
                "Content-Type".to_owned(),
                "application/vnd.oci.image.manifest.v1+json".to_owned()
            )),
            Just((
                "WWW-Authenticate".to_owned(),
                "Bearer realm=\"http://127.0.0.2:1/t\"".to_owned()
            )),
            Just(("WWW-Authenticate".to_owned(), "Bearer realm=\"::\",,,=\"".to_owned())),
            Just(("WWW-Authenticate".to_owned(), "Basic".to_owned())),
            Just(("WWW-Authenticate".to_owned(), "Negotiate abc".to_owned())),
            Just(("Location".to_owned(), "http://169.254.169.254/latest".to_owned())),
            Just(("Location".to_owned(), "/v2/x/manifests/y".to_owned())),
            "[a-zA-Z-]{1,12}".prop_map(|k| (k, "x".to_owned())),
        ];
        let body = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..3000),
            Just(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"a","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":99999999999},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":-5}]}"#.to_vec()),
            Just(br#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":1,"platform":{"architecture":"amd64","os":"linux"}}]}"#.to_vec()),
            Just(br#"{"errors":[{"code":"DENIED","message":"no"}]}"#.to_vec()),
            Just(br#"{"token":"t"}"#.to_vec()),
        ];
        (
            prop_oneof![
                Just(200u16),
                Just(401),
                Just(404),
                Just(500),
                Just(302),
                Just(307),
                100u16..600
            ],
            proptest::collection::vec(header, 0..4),
            prop_oneof![
                Just(None),
                Just(Some(0u64)),
                Just(Some(5)),
                Just(Some(1 << 40)),
                any::<u32>().prop_map(|n| Some(u64::from(n)))
            ],
            body,
            prop::bool::weighted(0.15),
        )
            .prop_map(|(status, headers, length, body, endless)| Answer {
                status,
                headers,
                length,
                body,
                endless,
            })
    }

    /// A registry answering every request with `a`; its address.
    fn serve(a: Answer) -> String {
        serve_http(move |_, _, w| {
            let mut head = format!("HTTP/1.1 {} X\r\n", a.status);
            for (k, v) in &a.headers {
                head += &format!("{k}: {v}\r\n");
            }
            if a.endless {
                head += "Transfer-Encoding: chunked\r\n\r\n";
                let _ = w.write_all(head.as_bytes());
                let piece = format!("1000\r\n{}\r\n", "y".repeat(4096));
                while w.write_all(piece.as_bytes()).is_ok() {}
                return false;
            }
            head += &format!("Content-Length: {}\r\n\r\n", a.length.unwrap_or(a.body.len() as u64));
            if w.write_all(head.as_bytes()).is_err() || w.write_all(&a.body).is_err() {
                return false;
            }
            // A stated length that lies ends the connection here.
            a.length.is_none_or(|n| n == a.body.len() as u64)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn hostile_registry_answers_end_cleanly_and_store_nothing(a in answer()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let n = node();
            let addr = serve(a);
            let regs = Registries {
                insecure: vec![addr.clone()],
                ..Default::default()
            };
            let before = n.store.used();
            let r = rt.block_on(pull_quiet(&n, &format!("{addr}/fuzz/image:1"), None, &regs));
            if let Err(e) = r {
                prop_assert!(!e.to_string().is_empty());
                prop_assert!(e.to_string().len() < 2000, "a bounded message: {}", e.to_string().len());
                prop_assert_eq!(n.store.used(), before, "nothing stored: {}", e);
            }
        }
    }
}
