//! Host tier: the Kubernetes CRI of auraed as a daemon, driven the way kubelet and crictl
//! drive a runtime, by a client generated from the same vendored `api.proto`: over its
//! unix socket (a kubelet on the node) and over the mTLS API port (admin only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::registry::{fixture, Options, Registry};
use common::Daemon;

use aurae_proto::cri;
use auraed::cli::Target;
use auraed::pki::tls::TlsFiles;
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A daemon whose registries file lists `insecure`, serving the CRI on a socket in its
/// directory; the socket's path.
fn start_with_cri(insecure: &str) -> (Daemon, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    common::mint(&pki_dir, "host.test");
    std::fs::write(
        dir.path().join("registries.toml"),
        format!("insecure = [\"{insecure}\"]\n"),
    )
    .unwrap();
    // In a directory anyone may enter: only the socket's own mode keeps others out.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("cri.sock");
    let d = common::start_with(dir, pki_dir, &["--cri-socket".as_ref(), socket.as_os_str()]);
    (d, socket)
}

/// A channel over the CRI's unix socket, as kubelet's `unix:///run/aurae/cri.sock`.
async fn over_socket(path: &Path) -> tonic::transport::Channel {
    let path = path.to_owned();
    // The socket is made before the API serves; this waits only for its first accept.
    tonic::transport::Endpoint::from_static("http://cri.sock")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap()
}

/// PullImage as kubelet sends it without credentials: the image's id, or the refusal.
async fn pull(img: &mut ImageServiceClient<tonic::transport::Channel>, image: &str) -> Result<String, tonic::Status> {
    let r = cri::PullImageRequest {
        image: spec(image),
        auth: None,
        sandbox_config: None,
    };
    Ok(img.pull_image(r).await?.into_inner().image_ref)
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// What kubelet and crictl do first (`Version` and `ImageFsInfo`, any error = give up),
/// the node's readiness, and an image's whole life as kubelet's image manager sees it:
/// `ImageStatus` of a missing image is OK and empty, a pull answers the id, the id and
/// digest references name the same image across calls, removal is idempotent.
#[test]
fn kubelets_connect_check_status_and_image_life_over_the_socket() {
    let f = fixture();
    let reg = Registry::start(&f.storage, Options::default());
    let (d, socket) = start_with_cri(&reg.addr);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the CRI socket is root's alone");
    // A local user who is not root tries to connect, as a workload escaping to the host
    // would: refused by the kernel before auraed sees a byte.
    let o = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .arg("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])")
        .arg(&socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("PermissionError"), "{err}");
    let store = d._dir.path().join("images");
    rt().block_on(async {
        let ch = over_socket(&socket).await;
        let mut run = RuntimeServiceClient::new(ch.clone());
        let mut img = ImageServiceClient::new(ch);

        // Connect: kubelet's validateServiceConnection, then its version check.
        let v = run
            .version(cri::VersionRequest {
                version: "0.1.0".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                v.version.as_str(),
                v.runtime_api_version.as_str(),
                v.runtime_name.as_str()
            ),
            ("0.1.0", "v1", "auraed")
        );
        let fs = img
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fs.image_filesystems.len(), 1);
        let usage = &fs.image_filesystems[0];
        assert_eq!(
            usage.fs_id.as_ref().unwrap().mountpoint,
            store.to_string_lossy(),
            "the image store's path"
        );
        assert!(usage.used_bytes.is_some() && usage.timestamp > 0);
        let cfg = run
            .runtime_config(cri::RuntimeConfigRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cfg.linux.unwrap().cgroup_driver, cri::CgroupDriver::Cgroupfs as i32);

        // Readiness: this daemon has neither a spawn CA nor a bridge, and says so.
        run.update_runtime_config(cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig {
                    pod_cidr: "10.244.7.0/24".into(),
                }),
            }),
        })
        .await
        .unwrap();
        let s = run
            .status(cri::StatusRequest { verbose: true })
            .await
            .unwrap()
            .into_inner();
        let conds = s.status.unwrap().conditions;
        let cond = |t: &str| conds.iter().find(|c| c.r#type == t).unwrap().clone();
        assert!(!cond("RuntimeReady").status && cond("RuntimeReady").message.contains("spawn identity"));
        assert!(!cond("NetworkReady").status && cond("NetworkReady").message.contains("bridge"));
        let handlers: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(handlers, ["", "vm", "cell"]);
        assert_eq!(s.info["podCIDR"], "10.244.7.0/24");
        let e = run
            .update_runtime_config(cri::UpdateRuntimeConfigRequest {
                runtime_config: Some(cri::RuntimeConfig {
                    network_config: Some(cri::NetworkConfig {
                        pod_cidr: "10.244.7.0/33".into(),
                    }),
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().starts_with("runtime_config.network_config.pod_cidr:"),
            "{e:?}"
        );

        // An image the node does not have: OK, with no image (kubelet then pulls).
        let busybox = format!("{}/test/busybox:1", reg.addr);
        let podsite = format!("{}/test/podsite:1", reg.addr);
        let st = img
            .image_status(cri::ImageStatusRequest {
                image: spec(&busybox),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(st.image.is_none());

        // Pulled: the answer is the id, and the id, the tag and the digest name one image.
        let id = pull(&mut img, &busybox).await.unwrap();
        assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
        let probe = img.clone();
        let status_of = move |s: String| {
            let mut img = probe.clone();
            async move {
                img.image_status(cri::ImageStatusRequest {
                    image: spec(&s),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner()
                .image
            }
        };
        let image = status_of(busybox.clone()).await.unwrap();
        assert_eq!(image.id, id);
        assert_eq!(image.repo_tags, [busybox.as_str()]);
        assert_eq!(image.repo_digests.len(), 1);
        let repo_digest = image.repo_digests[0].clone();
        assert!(
            repo_digest.starts_with(&format!("{}/test/busybox@sha256:", reg.addr)),
            "{repo_digest}"
        );
        assert!(image.size > 0);
        assert_eq!(image.spec.as_ref().unwrap().image, id);
        assert_eq!(status_of(id.clone()).await.unwrap(), image, "by id");
        assert_eq!(status_of(repo_digest.clone()).await.unwrap(), image, "by digest");
        let short = busybox.replace(
            ":1",
            "@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        );
        assert!(status_of(short).await.is_none(), "another digest is another image");

        // The same image under a second name: one image, two tags, one id.
        let again = pull(&mut img, &podsite).await.unwrap();
        assert_eq!(again, id);
        let list = img
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .images;
        assert_eq!(list.len(), 1, "{list:?}");
        let mut tags = vec![busybox.clone(), podsite.clone()];
        tags.sort();
        assert_eq!(list[0].repo_tags, tags);
        let filtered = img
            .list_images(cri::ListImagesRequest {
                filter: Some(cri::ImageFilter { image: spec(&podsite) }),
            })
            .await
            .unwrap()
            .into_inner()
            .images;
        assert_eq!(
            filtered.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            [id.as_str()]
        );

        // Bad input names the field; a missing tag is NOT_FOUND in the registry's words.
        for (bad, code, words) in [
            ("", Code::InvalidArgument, "image.image: empty"),
            ("Not A Ref", Code::InvalidArgument, "'Not A Ref'"),
        ] {
            let e = pull(&mut img, bad).await.unwrap_err();
            assert_eq!(e.code(), code, "{bad}: {e:?}");
            assert!(e.message().contains(words), "{bad}: {e:?}");
        }
        let e = pull(&mut img, &format!("{}/test/busybox:nope", reg.addr))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = img
            .pull_image(cri::PullImageRequest {
                image: spec(&busybox),
                auth: Some(cri::AuthConfig {
                    registry_token: "t0ken".into(),
                    ..Default::default()
                }),
                sandbox_config: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("auth.registry_token:"), "{e:?}");

        // Removal by tag forgets that name; by id, every name; again: OK, nothing to do.
        img.remove_image(cri::RemoveImageRequest { image: spec(&podsite) })
            .await
            .unwrap();
        assert_eq!(status_of(id.clone()).await.unwrap().repo_tags, [busybox.as_str()]);
        assert!(status_of(podsite.clone()).await.is_none());
        img.remove_image(cri::RemoveImageRequest { image: spec(&id) })
            .await
            .unwrap();
        img.remove_image(cri::RemoveImageRequest { image: spec(&id) })
            .await
            .unwrap();
        assert!(status_of(busybox.clone()).await.is_none());
        let list = img
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .images;
        assert!(list.is_empty(), "{list:?}");
        assert_eq!(
            std::fs::read_dir(store.join("blobs/sha256")).unwrap().count(),
            0,
            "blobs freed"
        );

        // A node that cannot spawn refuses a sandbox, saying why, and lists none after.
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            ..Default::default()
        };
        let e = run
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: "cell".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("spawn identity"), "{e:?}");
        let e = run
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: "kata".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("runtime_handler: 'kata'"), "{e:?}");
        let listed = run
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
        assert!(listed.is_empty(), "{listed:?}");
        // An unknown container is NOT_FOUND; what is not served yet says so.
        let e = run.exec_sync(cri::ExecSyncRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let stats = run
            .list_container_stats(cri::ListContainerStatsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .stats;
        assert!(stats.is_empty());
        let e = run
            .update_container_resources(cri::UpdateContainerResourcesRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
    });
}

fn target(d: &Daemon, stem: &str) -> Target {
    Target {
        addr: d.addr.clone(),
        tls: TlsFiles {
            ca: d.pki.join("ca.crt"),
            cert: d.pki.join(format!("{stem}.crt")),
            key: d.pki.join(format!("{stem}.key")),
        },
        server_name: "localhost".into(),
        server_id: None,
        timeout: Duration::from_secs(10),
        instance: None,
    }
}

/// The CRI on the API port is a kubelet's power, so it is the admin's: a reader and an
/// operator are refused every method (the harmless-looking `Version` as much as a pull),
/// and their refused pull changes nothing on the node.
#[test]
fn the_cri_on_the_api_port_is_the_admins_alone() {
    let f = fixture();
    let reg = Registry::start(&f.storage, Options::default());
    let d = common::start_listing_insecure(&[&reg.addr]);
    let store = d._dir.path().join("images");
    let busybox = format!("{}/test/busybox:1", reg.addr);
    rt().block_on(async {
        for stem in ["rita", "otto"] {
            let ch = target(&d, stem).connect().await.unwrap();
            let e = RuntimeServiceClient::new(ch.clone())
                .version(cri::VersionRequest::default())
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{stem}: {e:?}");
            assert!(
                e.message().contains("runtime.v1.RuntimeService/Version needs admin"),
                "{stem}: {e:?}"
            );
            let e = ImageServiceClient::new(ch)
                .pull_image(cri::PullImageRequest {
                    image: spec(&busybox),
                    auth: None,
                    sandbox_config: None,
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{stem}: {e:?}");
        }
        assert!(
            !store.join("refs").exists() || std::fs::read_dir(store.join("refs")).unwrap().count() == 0,
            "a refused pull pulls nothing"
        );
        let ch = target(&d, "client").connect().await.unwrap();
        let v = RuntimeServiceClient::new(ch.clone())
            .version(cri::VersionRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.version, "0.1.0");
        let id = ImageServiceClient::new(ch)
            .pull_image(cri::PullImageRequest {
                image: spec(&busybox),
                auth: None,
                sandbox_config: None,
            })
            .await
            .unwrap()
            .into_inner()
            .image_ref;
        assert!(id.starts_with("sha256:"));
    });
}
