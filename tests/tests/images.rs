//! Appliance tier: the booted appliance (static musl auraed as PID 1, no CA store, a RAM
//! root) pulls from a real registry. The registry listens on the host's loopback; QEMU's
//! user network forwards the guest's connections to 10.0.2.100:5000 there (a `guestfwd`
//! rule; `restrict=on` still holds for everything else), and the kernel command line lists
//! it as insecure.

#[path = "../../init/tests/common/registry.rs"]
mod registry;

use aurae_appliance_tests::{rt, Appliance, Client, BOOT_DEADLINE};
use auraed::pb;
use tonic::Code;

/// Plain HTTP, listed insecure on the kernel command line.
const REGISTRY: &str = "10.0.2.100:5000";
/// HTTPS with a certificate of the test CA, which the node's registries file lists.
const TLS_REGISTRY: &str = "10.0.2.101:5000";
/// HTTPS and basic auth; the node's registries file holds the credentials.
const AUTH_REGISTRY: &str = "10.0.2.102:5000";
/// Plain HTTP; its busybox layer has one byte flipped.
const CORRUPT_REGISTRY: &str = "10.0.2.103:5000";
/// The plain registry through a proxy that cuts every response after 256 KiB.
const CUT_REGISTRY: &str = "10.0.2.104:5000";
/// Nothing listens behind it.
const DOWN_REGISTRY: &str = "10.0.2.105:5000";

/// Pulls `reference`, returning the progress messages and the outcome.
async fn pull(c: &Client, reference: &str) -> (Vec<pb::pull_progress::Event>, Result<pb::ImageStatus, tonic::Status>) {
    let mut events = Vec::new();
    let mut stream = match c
        .images
        .clone()
        .pull(pb::PullRequest {
            reference: reference.into(),
            credentials: None,
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(e) => return (events, Err(e)),
    };
    loop {
        match stream.message().await {
            Ok(Some(m)) => match m.event {
                Some(pb::pull_progress::Event::Done(s)) => return (events, Ok(s)),
                Some(e) => events.push(e),
                None => {}
            },
            Ok(None) => return (events, Err(tonic::Status::unknown("the stream ended without an image"))),
            Err(e) => return (events, Err(e)),
        }
    }
}

/// The appliance and the registry this binary's tests share (one boot); the tests run one
/// at a time and each leaves the node as it found it.
struct Shared {
    a: Appliance,
    _registries: Vec<registry::Registry>,
    _cutter: registry::Cutter,
    _layer: tempfile::TempDir,
    _corrupt: tempfile::TempDir,
    /// The host's loopback port QEMU forwards to the node's port 8080.
    web: u16,
}

fn shared() -> Option<&'static Shared> {
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    let build = aurae_appliance_tests::build_dir()?;
    Some(SHARED.get_or_init(|| {
        let f = registry::fixture();
        let tls = || Some((f.pki.join("server.crt"), f.pki.join("server.key")));
        let registries = vec![
            registry::Registry::start(&f.storage, registry::Options::default()),
            registry::Registry::start(
                &f.storage,
                registry::Options {
                    tls: tls(),
                    ..Default::default()
                },
            ),
            registry::Registry::start(
                &f.storage,
                registry::Options {
                    tls: tls(),
                    htpasswd: Some(registry::htpasswd("puller", "s3cret")),
                    ..Default::default()
                },
            ),
        ];
        // And for failures: a registry whose busybox layer has a byte flipped, a proxy to
        // the plain one that cuts any response after 256 KiB, and a port nothing serves.
        let corrupt = tempfile::tempdir().unwrap();
        let (bad_storage, _) = registry::corrupt_copy(&f.storage, corrupt.path());
        let mut registries = registries;
        registries.push(registry::Registry::start(&bad_storage, registry::Options::default()));
        let cutter = registry::Cutter::start(&registries[0].addr, 256 * 1024);
        let closed = format!("127.0.0.1:{}", aurae_appliance_tests::free_port());
        let addrs: Vec<String> = registries
            .iter()
            .map(|r| r.addr.clone())
            .chain([cutter.addr.clone(), closed])
            .collect();
        let fwd: Vec<String> = [REGISTRY, TLS_REGISTRY, AUTH_REGISTRY, CORRUPT_REGISTRY, CUT_REGISTRY, DOWN_REGISTRY]
            .iter()
            .zip(&addrs)
            .map(|(guest, addr)| {
                let port = addr.rsplit(':').next().unwrap();
                format!("tcp:{guest}-cmd:busybox nc 127.0.0.1 {port}")
            })
            .collect();
        let fwd = fwd.join("|");
        let cmdline = format!("aurae.insecure_registries={REGISTRY},{CORRUPT_REGISTRY},{CUT_REGISTRY},{DOWN_REGISTRY}");
        // The node's registries file (admin-written, invisible to cells): the test CA, and
        // credentials for the registry that wants them.
        let layer_dir = tempfile::tempdir().unwrap();
        let layer = layer_dir.path().join("registries.cpio");
        let conf = format!(
            "ca_files = [\"/etc/aurae/registry-ca.crt\"]\n[credentials.\"{AUTH_REGISTRY}\"]\nusername = \"puller\"\npassword = \"s3cret\"\n"
        );
        let ca = std::fs::read(f.pki.join("ca.crt")).unwrap();
        aurae_appliance_tests::files_layer(
            &layer,
            &[
                ("/etc/aurae/registries.toml", conf.as_bytes(), 0o600),
                ("/etc/aurae/registry-ca.crt", &ca, 0o644),
            ],
        );
        let web = aurae_appliance_tests::free_port();
        let hostfwd = format!("{web}:8080");
        let a = Appliance::boot_with(
            &build,
            BOOT_DEADLINE,
            &[
                ("GUESTFWD", fwd.as_str()),
                ("EXTRA_CMDLINE", cmdline.as_str()),
                ("HOSTFWD", hostfwd.as_str()),
                ("EXTRA_LAYER", layer.to_str().unwrap()),
            ],
        );
        Shared {
            a,
            _registries: registries,
            _cutter: cutter,
            _layer: layer_dir,
            _corrupt: corrupt,
            web,
        }
    }))
}

macro_rules! shared_or_skip {
    () => {
        match shared() {
            Some(s) => &s.a,
            None => {
                eprintln!(
                    "SKIP {}: AURAE_APPLIANCE is not set (run `make test-appliance`)",
                    module_path!()
                );
                return;
            }
        }
    };
}

fn image_cell(name: &str, reference: &str, f: impl FnOnce(&mut pb::OciImage)) -> pb::Cell {
    let mut image = pb::OciImage {
        reference: reference.into(),
        ..Default::default()
    };
    f(&mut image);
    pb::Cell {
        name: name.into(),
        image: Some(image),
        ..Default::default()
    }
}

#[test]
fn the_appliance_pulls_from_a_registry_refuses_a_malicious_layer_and_removes_images() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        let info = c.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        assert!(info.init_failures.is_empty(), "{:?}", info.init_failures);

        let reference = format!("{REGISTRY}/test/busybox:1");
        // From an empty store, whatever ran before.
        let _ = c.remove_image(&reference).await;
        let (events, done) = pull(&c, &reference).await;
        let s = done.unwrap_or_else(|e| panic!("{e:?}\n{}", a.console_log()));
        assert_eq!(s.layers.len(), 1);
        assert!(matches!(events.first(), Some(pb::pull_progress::Event::Resolved(_))), "{events:?}");
        assert!(
            events.iter().any(|e| matches!(e, pb::pull_progress::Event::Layer(l) if l.done_bytes == l.total_bytes && !l.cached)),
            "{events:?}"
        );
        let config = s.config.clone().unwrap();
        assert_eq!(config.working_dir, "/srv");
        assert_eq!(config.entrypoint, ["/bin/sh", "-c"]);
        // The layer is unpacked where cells will find it, under /var/lib/aurae (which no
        // cell sees).
        let found = c
            .on_node("ls /var/lib/aurae/images/layers/*/fs/bin/busybox /var/lib/aurae/images/layers/*/fs/etc/os-release | wc -l")
            .await;
        assert_eq!(found.trim(), "2", "{found}");

        // Again: nothing fetched, the layer already on the node.
        let (events, again) = pull(&c, &reference).await;
        let again = again.unwrap();
        assert_eq!((again.fetched_bytes, again.digest.clone()), (0, s.digest.clone()));
        assert!(events.iter().any(|e| matches!(e, pb::pull_progress::Event::Layer(l) if l.cached)), "{events:?}");

        // A layer with a '../' name: refused, and nothing written outside the store.
        let (_, bad) = pull(&c, &format!("{REGISTRY}/test/malicious:1")).await;
        let e = bad.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("'../escaped'"), "{}", e.message());
        let outside = c.on_node("ls /var/lib/aurae/images/layers/escaped /var/lib/aurae/escaped /escaped 2>/dev/null | wc -l").await;
        assert_eq!(outside.trim(), "0");

        // Unknown tag: NOT_FOUND in the registry's words; PID 1 still serves.
        let (_, missing) = pull(&c, &format!("{REGISTRY}/test/busybox:nope")).await;
        let e = missing.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");

        let list = c.images.clone().list(pb::ListImagesRequest {}).await.unwrap().into_inner();
        let refs: Vec<&str> = list.images.iter().map(|i| i.reference.as_str()).collect();
        assert_eq!(refs, [reference.as_str()], "the malicious image was not recorded");
        let freed = c.remove_image(&reference).await.unwrap();
        assert!(freed.freed_bytes > 1 << 20, "{freed:?}");
        let left = c
            .on_node("echo $(ls -A /var/lib/aurae/images/blobs/sha256 | wc -l) $(ls -A /var/lib/aurae/images/layers | wc -l)")
            .await;
        assert_eq!(left.trim(), "0 0", "every blob and layer freed (the refused image's too)");
    });
}

#[test]
fn a_cell_from_an_image_runs_its_entrypoint_on_the_images_root_and_forgets_its_writes() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        let reference = format!("{REGISTRY}/test/busybox:1");

        // NEVER with the image absent: NOT_FOUND, and nothing made.
        let e = c
            .cell(image_cell("web", &reference, |i| i.pull_policy = pb::PullPolicy::Never as i32))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(e.message().contains("NEVER"), "{}", e.message());
        assert!(c.cell_status_opt("web").await.is_none());

        // IF_NOT_PRESENT pulls it; the entrypoint runs as executable `web` with the
        // image's env (one overridden), in the image's working dir.
        let s = c
            .cell(image_cell("web", &reference, |i| {
                i.env.insert("GREETING".into(), "the request".into());
            }))
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", a.console_log()));
        let img = s.image.clone().unwrap();
        assert_eq!(img.reference, reference);
        assert_eq!(img.entrypoint, ["/bin/sh", "-c", "echo hello from $GREETING in $(pwd)"]);
        assert_eq!(img.exposed_ports, ["8080/tcp"]);
        assert!(s.confinement.unwrap().own_root);
        let st = c.wait("web").await;
        assert_eq!(st.exit_code, Some(0), "{st:?}");
        assert_eq!(c.stdout("web").await, "hello from the request in /srv");

        // Executables started in the cell run on the image's root too: bare names from the
        // image's PATH (/bin), the image's files, none of the node's.
        let (st, out) = c
            .run(pb::Executable {
                name: "look".into(),
                argv: vec!["sh".into(), "-c".into(), "cat /etc/os-release; cat marker; ls /etc/aurae /init /usr/bin/auraed 2>&1; echo x > /srv/written; cat /srv/written".into()],
                cell: "web".into(),
                ..Default::default()
            })
            .await;
        assert_eq!(st.exit_code, Some(0), "{out}");
        assert!(out.contains("ID=aurae-test"), "{out}");
        assert!(out.contains("from the image"), "the image's working dir: {out}");
        assert_eq!(out.matches("No such file or directory").count(), 3, "nothing of the node: {out}");
        assert!(out.ends_with('x'), "{out}");
        let (st, out) = c
            .run(pb::Executable {
                name: "who".into(),
                argv: vec!["id".into()],
                cell: "web".into(),
                ..Default::default()
            })
            .await;
        assert_eq!((st.exit_code, out.as_str()), (Some(0), "uid=0(root) gid=0(root)"));

        // A second cell from the image, as the image's user `app`: the same single unpacked
        // layer on the node, and no trace of the first cell's write.
        let s2 = c
            .cell(image_cell("web2", &reference, |i| {
                i.user = "app".into();
                i.command = vec!["/bin/sh".into(), "-c".into()];
                i.args = vec!["id -u; id -g; cat /srv/written 2>&1; sleep 600".into()];
            }))
            .await
            .unwrap();
        assert_eq!(s2.image.unwrap().user, "app");
        let layers = c.on_node("ls /var/lib/aurae/images/layers | wc -l").await;
        assert_eq!(layers.trim(), "1", "one layer shared by both cells: {layers}");
        let budget = a.budget(std::time::Duration::from_secs(20));
        let printed = aurae_appliance_tests::eventually(budget, || async { c.stdout("web2").await.lines().count() >= 3 }).await;
        let out = c.stdout("web2").await;
        assert!(printed, "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[..2], ["1000", "1000"], "the image's user app: {out}");
        assert!(lines[2].contains("No such file"), "the other cell's write is not here: {out}");

        // Removing an image a cell uses is refused, naming the cells.
        let e = c.remove_image(&reference).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("cell 'web'") && e.message().contains("cell 'web2'"), "{}", e.message());

        c.remove_cell("web").await;
        c.remove_cell("web2").await;

        // The layered image as a cell's root: a deleted file is gone, an opaque directory
        // shows only the upper layer's entries, a write through the absolute symlink
        // lib -> /usr/lib landed in /usr/lib.
        let layered = format!("{REGISTRY}/test/layered:1");
        c.cell(image_cell("layers", &layered, |i| {
            i.args = vec!["ls /etc/os-release 2>&1; ls /cache; cat /usr/lib/b.so /lib/a.so".into()];
        }))
        .await
        .unwrap();
        assert_eq!(c.wait("layers").await.exit_code, Some(0));
        let out = c.stdout("layers").await;
        assert!(out.starts_with("ls: /etc/os-release: No such file or directory"), "{out}");
        assert!(out.ends_with("new-entry\nb\na"), "{out}");
        c.remove_cell("layers").await;
        c.remove_image(&layered).await.unwrap();
        // The writes went with the cells; the image's layer never saw them.
        let left = c.on_node("ls /var/lib/aurae/images/layers/*/fs/srv").await;
        assert!(!left.contains("written"), "{left}");
        c.remove_image(&reference).await.unwrap();
        c.assert_left_nothing("image cells").await;
    });
}

/// A tmux session running a command, read and driven as a person would.
struct Tmux(String);

impl Tmux {
    fn start(cmd: &str) -> Tmux {
        let name = format!("aurae-{}", std::process::id());
        let ok = std::process::Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x", "100", "-y", "30", cmd])
            .status()
            .expect("tmux (make deps installs it)");
        assert!(ok.success());
        Tmux(name)
    }

    fn keys(&self, keys: &[&str]) {
        let ok = std::process::Command::new("tmux")
            .args(["send-keys", "-t", &self.0])
            .args(keys)
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn screen(&self) -> String {
        let o = std::process::Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Waits until the screen holds `text`; the screen on failure.
    fn wait_for(&self, text: &str, budget: std::time::Duration) {
        let start = std::time::Instant::now();
        while start.elapsed() < budget {
            if self.screen().contains(text) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the terminal never showed {text:?}:\n{}", self.screen());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[test]
fn aer_run_it_is_a_terminal_a_person_can_use() {
    let a = shared_or_skip!();
    let reference = format!("{REGISTRY}/test/busybox:1");
    let pki = a.build.join("pki");
    let aer = format!(
        "{} aer --addr 127.0.0.1:{} --server-name localhost --ca {} --cert {} --key {}",
        a.build.join("bin/auraed").display(),
        a.port,
        pki.join("ca.crt").display(),
        pki.join("client.crt").display(),
        pki.join("client.key").display()
    );
    let t = Tmux::start(&format!(
        "{aer} run shell --image {reference} -it --rm -- sh; echo EXIT=$?; sleep 600"
    ));
    let budget = a.budget(std::time::Duration::from_secs(60));
    // The image's working dir in busybox's prompt.
    t.wait_for("/srv #", budget);
    t.keys(&["echo hi-$((6*7))", "Enter"]);
    t.wait_for("hi-42", budget);
    // The window grows; the process's terminal follows.
    let ok = std::process::Command::new("tmux")
        .args(["resize-window", "-t", &t.0, "-x", "120", "-y", "40"])
        .status()
        .unwrap();
    assert!(ok.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    t.keys(&["stty size", "Enter"]);
    t.wait_for("40 120", budget);
    // Ctrl-C stops the foreground command in the cell, not aer: the shell answers again.
    t.keys(&["sleep 1000", "Enter"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    t.keys(&["C-c"]);
    t.keys(&["echo after-$((1+1))", "Enter"]);
    t.wait_for("after-2", budget);
    t.keys(&["exit 3", "Enter"]);
    t.wait_for("EXIT=3", budget);
    rt().block_on(async {
        let c = Client::connect(a).await;
        assert!(c.cell_status_opt("shell").await.is_none(), "--rm freed the cell");
        c.remove_image(&reference).await.unwrap();
        c.assert_left_nothing("aer run -it").await;
    });
}

/// GET `path` from 127.0.0.1:`port` on the host; the whole answer, or the error.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn a_published_port_reaches_the_cells_server_from_outside_the_appliance() {
    let a = shared_or_skip!();
    let web = shared().unwrap().web;
    rt().block_on(async {
        let c = Client::connect(a).await;
        let reference = format!("{REGISTRY}/test/busybox:1");
        let site = |name: &str, host_port: u32| {
            image_cell(name, &reference, |i| {
                i.command = vec![
                    "httpd".into(),
                    "-f".into(),
                    "-p".into(),
                    "8080".into(),
                    "-h".into(),
                    "/srv".into(),
                ];
                i.ports = vec![pb::PortMapping {
                    host_port,
                    container_port: 8080,
                    protocol: "tcp".into(),
                }];
            })
        };
        let s = c
            .cell(site("site", 8080))
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", a.console_log()));
        assert_eq!(s.ports.len(), 1);
        assert_eq!((s.ports[0].host_port, s.ports[0].container_port), (8080, 8080));
        // From this test process: host loopback -> QEMU -> the node's port 8080 -> the
        // cell's own loopback, where httpd listens.
        let mut answer = String::new();
        let served = aurae_appliance_tests::eventually(a.budget(std::time::Duration::from_secs(20)), || {
            let r = http_get(web, "/marker");
            if let Ok(t) = &r {
                answer = t.clone();
            }
            let ok = r.is_ok_and(|t| t.contains("from the image"));
            async move { ok }
        })
        .await;
        assert!(served, "{answer}");

        // The node port is the cell's alone; auraed's own API port cannot be taken either.
        for (name, port) in [("site2", 8080), ("api", 8443)] {
            let e = c.cell(site(name, port)).await.unwrap_err();
            assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
            assert!(
                e.message().contains(&format!("port {port} of the node is taken")),
                "{}",
                e.message()
            );
            assert!(c.cell_status_opt(name).await.is_none(), "nothing made");
        }
        let e = c
            .cell(image_cell("udp", &reference, |i| {
                i.ports = vec![pb::PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: "udp".into(),
                }]
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

        // Freed with the cell: nothing listens, and the port can be published again.
        c.remove_cell("site").await;
        assert!(http_get(web, "/marker").map_or(true, |t| !t.contains("from the image")));
        c.cell(site("site2", 8080)).await.unwrap();
        c.remove_cell("site2").await;
        c.remove_image(&reference).await.unwrap();
        c.assert_left_nothing("published ports").await;
    });
}

#[test]
fn registries_over_https_and_with_basic_auth_serve_cells() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        // HTTPS, verified against the CA the registries file names.
        let tls_ref = format!("{TLS_REGISTRY}/test/busybox:1");
        let (_, done) = pull(&c, &tls_ref).await;
        done.unwrap_or_else(|e| panic!("{e:?}"));

        // Basic auth with the node's credentials, a zstd layer, straight from RunCell.
        let auth_ref = format!("{AUTH_REGISTRY}/test/busybox:zstd");
        c.cell(image_cell("zst", &auth_ref, |_| {}))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(c.wait("zst").await.exit_code, Some(0));
        assert_eq!(c.stdout("zst").await, "hello from image in /srv");

        // Credentials in the request win over the file's; wrong ones are PERMISSION_DENIED
        // and never said back.
        let mut s = c
            .images
            .clone()
            .pull(pb::PullRequest {
                reference: format!("{AUTH_REGISTRY}/test/layered:1"),
                credentials: Some(pb::RegistryCredentials {
                    username: "puller".into(),
                    password: "not-the-password".into(),
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let e = loop {
            match s.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the pull ended without an error"),
                Err(e) => break e,
            }
        };
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(!e.message().contains("not-the-password"), "{}", e.message());

        // A cell cannot read the node's registries file or the CA it names.
        let (_, out) = c
            .run(pb::Executable {
                name: "peek".into(),
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "cat /etc/aurae/registries.toml; ls /etc/aurae".into(),
                ],
                cell: "zst".into(),
                ..Default::default()
            })
            .await;
        assert!(!out.contains("s3cret"), "{out}");

        c.remove_cell("zst").await;
        for r in [tls_ref, auth_ref] {
            c.remove_image(&r).await.unwrap();
        }
        c.assert_left_nothing("https and auth registries").await;
    });
}

/// Checks every blob in the node's store against its name (its SHA-256): what the store
/// keeps is verified content only. How many there are.
async fn blobs_verified(c: &Client, store: &str) -> usize {
    let sums = c.on_node(&format!("cd {store}/blobs/sha256 && sha256sum *")).await;
    let mut n = 0;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, name) = line.split_once("  ").unwrap_or_else(|| panic!("{sums}"));
        assert_eq!(
            sum,
            name.trim(),
            "a blob in the store is not what its name says:\n{sums}"
        );
        n += 1;
    }
    n
}

/// The data disk, through a full disk under a pull, a power cut in the middle of a pull,
/// a leftover of an unpack, a power cut in the middle of an unpack, and reboots: the store keeps verified content only, `tmp/` is
/// emptied, the filesystem is clean, and the same pull works again.
#[test]
fn images_on_the_data_disk_survive_a_full_disk_a_power_cut_and_a_reboot() {
    let Some(build) = aurae_appliance_tests::build_dir() else {
        eprintln!(
            "SKIP {}: AURAE_APPLIANCE is not set (run `make test-appliance`)",
            module_path!()
        );
        return;
    };
    let f = registry::fixture();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("data.img");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    registry::run(std::process::Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk));
    // With the CRI's socket, a kubelet's directories are kept on the disk too.
    let cmdline = format!("aurae.insecure_registries={REGISTRY} aurae.data=/dev/vda aurae.cri=1");
    let reference = format!("{REGISTRY}/test/busybox:1");
    // The same busybox, its layer compressed with zstd: another blob.
    let zstd = format!("{REGISTRY}/test/busybox:zstd");
    let boot = |fwd: &str| {
        Appliance::boot_with(
            &build,
            BOOT_DEADLINE,
            &[
                ("GUESTFWD", fwd),
                ("EXTRA_CMDLINE", cmdline.as_str()),
                ("DISK", disk.to_str().unwrap()),
            ],
        )
    };
    {
        let r = registry::Registry::start(&f.storage, registry::Options::default());
        let port = r.addr.rsplit(':').next().unwrap().to_owned();
        let mut a = boot(&format!("tcp:{REGISTRY}-cmd:busybox nc 127.0.0.1 {port}"));
        rt().block_on(async {
            let c = Client::connect(&a).await;
            let info = c.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
            assert!(info.init_failures.is_empty(), "{:?}", info.init_failures);
            let (_, done) = pull(&c, &reference).await;
            done.unwrap();
            let l = c
                .images
                .clone()
                .list(pb::ListImagesRequest {})
                .await
                .unwrap()
                .into_inner();
            let store = l.store.unwrap();
            assert_eq!(store.path, "/var/lib/aurae/data/images");
            assert!(
                store.limit_bytes > 40 << 20 && store.limit_bytes < 64 << 20,
                "{store:?}"
            );
            let mounts = c.on_node("grep ' /var/lib/aurae/data ' /proc/mounts").await;
            assert!(mounts.starts_with("/dev/vda /var/lib/aurae/data ext4 rw"), "{mounts}");
            let kubelet = c
                .on_node("grep -c '^/dev/vda /var/lib/kubelet \\|^/dev/vda /var/log/pods ' /proc/mounts")
                .await;
            assert_eq!(kubelet.trim(), "2", "kubelet's directories on the disk");
            c.on_node("echo kept > /var/lib/kubelet/pod-state && echo kept > /var/log/pods/log")
                .await;
            // The disk fills (something else on it takes every block) and a pull runs
            // into it: RESOURCE_EXHAUSTED, nothing of the refused blob kept, the store's
            // blobs all verified; once there is room the same pull works.
            let store = "/var/lib/aurae/data/images";
            c.on_node("dd if=/dev/zero of=/var/lib/aurae/data/fill bs=64k 2>/dev/null; sync")
                .await;
            let e = pull_error(&c, &zstd).await;
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
            assert_eq!(c.on_node(&format!("ls -A {store}/tmp | wc -l")).await.trim(), "0");
            // The refused pull's manifest and config may be kept: verified, as all are.
            assert!(
                blobs_verified(&c, store).await >= 3,
                "busybox's manifest, config and layer"
            );
            c.on_node("rm /var/lib/aurae/data/fill").await;
            let (_, done) = pull(&c, &zstd).await;
            done.unwrap();
            c.remove_image(&zstd).await.unwrap();
            c.shutdown().await;
        });
        a.wait_exit(a.budget(std::time::Duration::from_secs(60)));
    }
    // A leftover in the store's tmp/ as a hostile layer's unpack would leave it after a
    // crash: a tree 8,000 directories deep (made with debugfs, one step at a time).
    let script = dir.path().join("deep.debugfs");
    let mut steps = String::from("cd /images/tmp\nmkdir layer-1-1\ncd layer-1-1\n");
    for _ in 0..8000 {
        steps.push_str("mkdir d\ncd d\n");
    }
    std::fs::write(&script, steps).unwrap();
    registry::run(
        std::process::Command::new("debugfs")
            .args(["-w", "-f"])
            .arg(&script)
            .arg(&disk),
    );
    // Then the power goes (QEMU SIGKILLed) in the middle of a pull: the registry stalls
    // after 300 KiB of the 1 MiB layer, with its first bytes written to the store's tmp/.
    // (After debugfs: it writes past the journal, so it needs the clean disk it has now.)
    {
        let r = registry::Registry::start(&f.storage, registry::Options::default());
        let stall = registry::Cutter::stalling(&r.addr, 300 * 1024);
        let port = stall.addr.rsplit(':').next().unwrap().to_owned();
        let mut a = boot(&format!("tcp:{REGISTRY}-cmd:busybox nc 127.0.0.1 {port}"));
        rt().block_on(async {
            let c = Client::connect(&a).await;
            let mut images = c.images.clone();
            let pulling = zstd.clone();
            let pull = tokio::spawn(async move {
                let mut s = images
                    .pull(pb::PullRequest {
                        reference: pulling,
                        credentials: None,
                    })
                    .await?
                    .into_inner();
                while s.message().await?.is_some() {}
                Ok::<(), tonic::Status>(())
            });
            let partial = "find /var/lib/aurae/data/images/tmp -type f -size +64k | wc -l";
            let midway = aurae_appliance_tests::eventually(a.budget(std::time::Duration::from_secs(60)), || async {
                c.on_node(partial).await.trim() != "0"
            })
            .await;
            assert!(midway, "the pull writes its blob:\n{}", a.console_log());
            registry::run(std::process::Command::new("pkill").args(["-KILL", "-P", &a.child.id().to_string()]));
            a.wait_exit(a.budget(std::time::Duration::from_secs(30)));
            pull.abort();
        });
    }
    // Then the power goes in the middle of an unpack: a layer of 8,000 empty files (seconds
    // to unpack here), QEMU SIGKILLed as soon as the node says it unpacks it.
    let many = format!("{REGISTRY}/test/many:1");
    {
        let r = registry::Registry::start(&f.storage, registry::Options::default());
        let port = r.addr.rsplit(':').next().unwrap().to_owned();
        let mut a = boot(&format!("tcp:{REGISTRY}-cmd:busybox nc 127.0.0.1 {port}"));
        rt().block_on(async {
            let c = Client::connect(&a).await;
            let mut s = c
                .images
                .clone()
                .pull(pb::PullRequest {
                    reference: many.clone(),
                    credentials: None,
                })
                .await
                .unwrap()
                .into_inner();
            loop {
                let m = s.message().await.unwrap();
                let m = m.unwrap_or_else(|| panic!("the pull ended before its unpack:\n{}", a.console_log()));
                match m.event {
                    Some(pb::pull_progress::Event::Unpacking(_)) => break,
                    Some(pb::pull_progress::Event::Done(_)) => panic!("the pull ended before its unpack"),
                    _ => {}
                }
            }
            // Once the unpack has written some of its files, they are flushed (as the
            // kernel's own writeback would, given time) and the power goes.
            let store = "/var/lib/aurae/data/images";
            let begun = c
                .on_node(&format!(
                    "for i in $(seq 200); do [ $(find {store}/tmp -path '*/layer-*/*' 2>/dev/null | head -50 | wc -l) -ge 50 ] && break; \
                     sleep 0.05; done; sync; find {store}/tmp -path '*/layer-*/*' | head -50 | wc -l"
                ))
                .await;
            assert_eq!(begun.trim(), "50", "the unpack had begun:\n{}", a.console_log());
            registry::run(std::process::Command::new("pkill").args(["-KILL", "-P", &a.child.id().to_string()]));
            a.wait_exit(a.budget(std::time::Duration::from_secs(30)));
        });
    }
    // Again from the same disk: the node starts and serves (the leftovers, the cut pull's
    // and the deep one, are moved out of tmp/ and removed on a thread of its own,
    // without recursion), the image is there, and a cell runs from it without pulling.
    // Then the pull the power cut stopped works.
    let r = registry::Registry::start(&f.storage, registry::Options::default());
    let port = r.addr.rsplit(':').next().unwrap().to_owned();
    let mut a = boot(&format!("tcp:{REGISTRY}-cmd:busybox nc 127.0.0.1 {port}"));
    rt().block_on(async {
        let c = Client::connect(&a).await;
        let store = "/var/lib/aurae/data/images";
        assert_eq!(c.on_node(&format!("ls -A {store}/tmp | wc -l")).await.trim(), "0");
        // The power cut landed inside the unpack: its directory was left in tmp/.
        let console = a.console_log();
        assert!(
            console.contains("image store: layer-") && console.contains("was left by a write cut short"),
            "the unpack's leftover is found at start:\n{console}"
        );
        let kept = c.on_node("cat /var/lib/kubelet/pod-state /var/log/pods/log").await;
        assert_eq!(kept.trim_end(), "kept\nkept", "kubelet's files survived the reboot");
        let emptied = aurae_appliance_tests::eventually(a.budget(std::time::Duration::from_secs(120)), || async {
            c.on_node(&format!("ls -A {store}/trash | wc -l")).await.trim() == "0"
        })
        .await;
        assert!(emptied, "the deep leftover is removed:\n{}", a.console_log());
        let l = c
            .images
            .clone()
            .list(pb::ListImagesRequest {})
            .await
            .unwrap()
            .into_inner();
        let refs: Vec<&str> = l.images.iter().map(|i| i.reference.as_str()).collect();
        assert_eq!(refs, [reference.as_str()]);
        c.cell(image_cell("kept", &reference, |i| {
            i.pull_policy = pb::PullPolicy::Never as i32
        }))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", a.console_log()));
        assert_eq!(c.wait("kept").await.exit_code, Some(0));
        assert_eq!(c.stdout("kept").await, "hello from image in /srv");
        assert!(blobs_verified(&c, store).await >= 3, "verified blobs only");
        let (_, done) = pull(&c, &zstd).await;
        done.unwrap_or_else(|e| panic!("the pull the power cut stopped: {e:?}\n{}", a.console_log()));
        let (_, done) = pull(&c, &many).await;
        done.unwrap_or_else(|e| {
            panic!(
                "the pull whose unpack the power cut stopped: {e:?}\n{}",
                a.console_log()
            )
        });
        let files = c
            .on_node(&format!("find {store}/layers -path '*/many/*' -type f | wc -l"))
            .await;
        assert_eq!(files.trim(), "8000", "the layer, whole");
        c.shutdown().await;
    });
    a.wait_exit(a.budget(std::time::Duration::from_secs(60)));
    // Clean, as a filesystem checker sees it.
    registry::run(std::process::Command::new("e2fsck").args(["-n", "-f"]).arg(&disk));
}

/// The pull's error (its progress ignored).
async fn pull_error(c: &Client, reference: &str) -> tonic::Status {
    let (_, done) = pull(c, reference).await;
    done.expect_err("the pull fails")
}

#[test]
fn registry_failures_are_said_and_leave_the_store_whole() {
    let a = shared_or_skip!();
    rt().block_on(async {
        let c = Client::connect(a).await;
        let store = || async {
            c.on_node(
                "cd /var/lib/aurae/images && echo $(ls blobs/sha256 | wc -l) $(ls layers | wc -l) $(ls tmp | wc -l)",
            )
            .await
            .trim()
            .to_owned()
        };
        assert_eq!(store().await, "0 0 0", "an empty store to begin with");

        let e = pull_error(&c, &format!("{DOWN_REGISTRY}/test/busybox:1")).await;
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        // The busybox layer's bytes are not what the manifest says: refused, not kept.
        let e = pull_error(&c, &format!("{CORRUPT_REGISTRY}/test/busybox:1")).await;
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("expected sha256:"), "{}", e.message());
        let after = store().await;
        assert!(after.ends_with(" 0 0"), "no layer, nothing half-written: {after}");
        // Cut half way through the layer: UNAVAILABLE, only whole blobs kept.
        let e = pull_error(&c, &format!("{CUT_REGISTRY}/test/layered:1")).await;
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        let after = store().await;
        assert!(after.ends_with(" 0 0"), "{after}");
        // The same image from the whole registry: only what was missing travels (the
        // store is content-addressed, so blobs kept from the other registry count).
        let (_, done) = pull(&c, &format!("{REGISTRY}/test/layered:1")).await;
        let s = done.unwrap();
        assert!(
            s.fetched_bytes > 1 << 20 && s.fetched_bytes < s.size_bytes + 4096,
            "{s:?}"
        );
        let kept: u64 = c
            .on_node("cd /var/lib/aurae/images && echo $(ls blobs/sha256 | wc -l)")
            .await
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            kept, 7,
            "busybox's manifest and config (whole and verified, kept from the refused pull), layered's manifest, config and three layers"
        );
        assert!(store().await.ends_with(" 3 0"));
        c.remove_image(&format!("{REGISTRY}/test/layered:1")).await.unwrap();
        assert_eq!(store().await, "0 0 0");
        c.assert_left_nothing("registry failures").await;
    });
}
