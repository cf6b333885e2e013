//! Host tier: auraed as a daemon on 127.0.0.1 with a throwaway PKI, driven over the real
//! network stack with the real client code.

#![allow(clippy::unwrap_used)]

mod common;
use common::{aer_as, free_port, mint, start, start_in, Daemon};

use auraed::cli::Target;
use auraed::pb;
use auraed::pki;
use auraed::pki::tls::TlsFiles;
use std::process::Command;
use std::time::{Duration, Instant};

fn client(d: &Daemon, stem: &str) -> Target {
    target(
        d,
        TlsFiles {
            ca: d.pki.join("ca.crt"),
            cert: d.pki.join(format!("{stem}.crt")),
            key: d.pki.join(format!("{stem}.key")),
        },
    )
}

fn target(d: &Daemon, tls: TlsFiles) -> Target {
    Target {
        addr: d.addr.clone(),
        tls,
        server_name: "localhost".into(),
        server_id: None,
        timeout: Duration::from_secs(10),
        instance: None,
    }
}

/// True when the node refused us: at connection (TLS handshake) or on the first rpc (with
/// TLS 1.3 the server may reject the client certificate after the client's handshake ends).
async fn refused<T, E>(ch: Result<T, E>) -> bool
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    match ch {
        Err(_) => true,
        Ok(ch) => pb::node_client::NodeClient::new(ch)
            .info(pb::NodeInfoRequest {})
            .await
            .is_err(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn mtls_client_gets_serving_health_and_node_info() {
    let d = start();
    let t = target(&d, TlsFiles::in_dir(&d.pki, "client"));
    rt().block_on(async {
        let ch = t.connect().await.unwrap();
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
        for service in ["", "aurae.v0.Node", "aurae.v0.Runtime", "aurae.v0.Workloads"] {
            let r = h
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                r.status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "service '{service}'"
            );
        }
        let info = pb::node_client::NodeClient::new(ch.clone())
            .info(pb::NodeInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.mode, pb::Mode::Daemon as i32);
        assert_eq!(info.pid, d.child.id());
        assert_eq!(info.spiffe_id, "spiffe://host.test/node/test");
        assert_eq!(info.peer_spiffe_id, "spiffe://host.test/client/tester");
        assert_eq!(info.auraed_version, auraed::VERSION);
        assert!(info.auraed_rss_bytes > 0);
        // A pod without containers names the field, before anything is pulled or made.
        let mut rt = pb::runtime_client::RuntimeClient::new(ch);
        let e = rt
            .run_pod(pb::Pod {
                name: "p".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("containers: is empty"), "{}", e.message());
        // A VM's kernel is checked before anything is created.
        let e = rt
            .run_virtual_machine(pb::VirtualMachine {
                name: "vm".into(),
                kernel_path: "relative/bzImage".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(e.message().starts_with("kernel_path"), "{}", e.message());
        // Bad input is refused at the edge, naming the field, whatever the host's cgroups.
        for (name, field) in [("..", "name: '..'"), ("a/../b", "name: 'a/../b'"), ("", "name: ''")] {
            let e = rt
                .run_cell(pb::Cell {
                    name: name.into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{name:?}: {}", e.message());
            assert!(e.message().starts_with(field), "{name:?}: {}", e.message());
        }
        let e = rt
            .run_executable(pb::Executable {
                name: "x".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("argv: is empty"), "{}", e.message());
    });
}

#[test]
fn plaintext_client_is_refused() {
    let d = start();
    rt().block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", d.addr))
            .unwrap()
            .connect()
            .await;
        let refused = refused(ch).await;
        assert!(refused, "a plaintext client got an answer");
    });
}

#[test]
fn client_from_another_ca_is_refused() {
    let d = start();
    let other = tempfile::tempdir().unwrap();
    mint(other.path(), "evil.test");
    // Trusts the real server (its CA), but presents a certificate from a different CA.
    let tls = TlsFiles {
        ca: d.pki.join("ca.crt"),
        cert: other.path().join("client.crt"),
        key: other.path().join("client.key"),
    };
    let t = target(&d, tls);
    rt().block_on(async {
        let refused = refused(t.connect().await).await;
        assert!(refused, "a client certificate from a foreign CA was accepted");
    });
}

#[test]
fn client_without_certificate_is_refused() {
    let d = start();
    rt().block_on(async {
        let ca = std::fs::read_to_string(d.pki.join("ca.crt")).unwrap();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name("localhost");
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", d.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await;
        let refused = refused(ch).await;
        assert!(refused, "a client with no certificate was accepted");
    });
}

#[test]
fn shutdown_rpc_stops_the_daemon_cleanly_and_reboot_is_refused() {
    let mut d = start();
    let t = target(&d, TlsFiles::in_dir(&d.pki, "client"));
    rt().block_on(async {
        let mut c = pb::node_client::NodeClient::new(t.connect().await.unwrap());
        let e = c.reboot(pb::ShutdownRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        // A power action is never held off for longer than five minutes.
        let e = c
            .shutdown(pb::ShutdownRequest {
                grace_period_millis: 300_001,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message()
                .starts_with("grace_period_millis: 300001 is above the limit 300000"),
            "{}",
            e.message()
        );
        c.shutdown(pb::ShutdownRequest::default()).await.unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = d.child.try_wait().unwrap() {
            assert!(st.success(), "auraed exited with {st}");
            break;
        }
        assert!(Instant::now() < deadline, "auraed still running 60 s after Shutdown");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn aer_cli_exit_codes() {
    let d = start();
    let aer = |args: &[&str]| aer_as(&d, "client", args);
    let ok = aer(&["--json", "node", "info"]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["mode"], "daemon");
    assert_eq!(v["peer_spiffe_id"], "spiffe://host.test/client/tester");
    let h = aer(&["health"]);
    assert_eq!(h.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&h.stdout).trim(), "SERVING");
    assert_eq!(aer(&["node", "reboot"]).status.code(), Some(1), "a refused rpc exits 1");
    assert_eq!(aer(&["node", "bogus"]).status.code(), Some(2), "a usage error exits 2");
    let unreachable = Command::new(env!("CARGO_BIN_EXE_auraed"))
        // The daemons listen on 127.0.0.1 only, so nothing answers on 127.0.0.3.
        .args(["aer", "--addr", &format!("127.0.0.3:{}", free_port()), "--timeout", "2"])
        .arg("--ca")
        .arg(d.pki.join("ca.crt"))
        .arg("--cert")
        .arg(d.pki.join("client.crt"))
        .arg("--key")
        .arg(d.pki.join("client.key"))
        .arg("health")
        .output()
        .unwrap();
    assert_eq!(
        unreachable.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&unreachable.stderr)
    );
}

/// Puts a raw header (any bytes) on every request, as a hostile client can.
#[derive(Clone)]
struct RawHeader<S>(S, &'static str, http::HeaderValue);

impl<S, B> tower_service::Service<http::Request<B>> for RawHeader<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        req.headers_mut().insert(self.1, self.2.clone());
        self.0.call(req)
    }
}

/// A malformed `aurae-instance` header (not ASCII, empty segment, bad name, too deep) is
/// INVALID_ARGUMENT and the call is never served here: a Shutdown meant for a child must
/// not power off this node.
#[test]
fn a_malformed_instance_header_is_refused_and_never_served_here() {
    let d = start();
    let files = TlsFiles::in_dir(&d.pki, "client");
    rt().block_on(async {
        let tls = files.load().unwrap();
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", d.addr))
            .unwrap()
            .tls_config(tls.client_config("localhost"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        for bad in [&b"c1\x80"[..], b"c1//g1", b"../c1", b"Bad", b"a/b/c/d/e/f/g/h/i"] {
            let hv = http::HeaderValue::from_bytes(bad).unwrap();
            let mut node = pb::node_client::NodeClient::new(RawHeader(ch.clone(), "aurae-instance", hv));
            let e = node.info(pb::NodeInfoRequest {}).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e:?}");
            assert!(e.message().starts_with("aurae-instance: "), "{bad:?}: {}", e.message());
            let e = node.shutdown(pb::ShutdownRequest::default()).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e:?}");
        }
        // Still serving: none of those Shutdowns reached this node.
        let info = pb::node_client::NodeClient::new(ch)
            .info(pb::NodeInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.pid, d.child.id());
    });
}

fn denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, needs: &str) -> String {
    let e = r.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(needs), "{}", e.message());
    e.message().to_owned()
}

/// Each role gets what it needs and nothing more; a client the policy does not name and a
/// spawned instance's SVID get nothing, health included; the node is unchanged after.
#[test]
fn roles_gate_every_rpc_and_a_denial_names_caller_method_and_role() {
    let d = start();
    rt().block_on(async {
        let conn = |stem: &'static str| {
            let t = client(&d, stem);
            async move { t.connect().await.unwrap() }
        };
        let rita = conn("rita").await;
        let mut work = pb::workloads_client::WorkloadsClient::new(rita.clone());
        let before = work.list(pb::ListRequest::default()).await.unwrap().into_inner();
        let info = pb::node_client::NodeClient::new(rita.clone())
            .info(pb::NodeInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                info.caller_spiffe_id.as_str(),
                info.caller_role.as_str(),
                info.forwarded
            ),
            ("spiffe://host.test/client/rita", "reader", false)
        );
        assert!(
            info.policy.is_empty(),
            "the policy is the admin's to read: {:?}",
            info.policy
        );
        let admin = pb::node_client::NodeClient::new(conn("client").await)
            .info(pb::NodeInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(admin.policy.len(), 3, "{:?}", admin.policy);
        let e = work.status(auraed::pb::WorkloadRef {
            kind: pb::WorkloadKind::Executable as i32,
            name: "nope".into(),
        });
        assert_eq!(e.await.unwrap_err().code(), tonic::Code::NotFound, "a reader may ask");
        let m = denied(
            pb::runtime_client::RuntimeClient::new(rita.clone())
                .run_executable(pb::Executable {
                    name: "x".into(),
                    argv: vec!["/bin/true".into()],
                    ..Default::default()
                })
                .await,
            "needs operator",
        );
        assert_eq!(
            m,
            "spiffe://host.test/client/rita has role reader on this node; aurae.v0.Runtime/RunExecutable needs operator"
        );
        denied(
            pb::node_client::NodeClient::new(rita.clone())
                .shutdown(pb::ShutdownRequest::default())
                .await,
            "needs admin",
        );
        // Authorization comes before forwarding: a reader's Shutdown for a child is refused
        // here, not passed on (and not NOT_FOUND, which would tell a reader what exists).
        let mut fwd =
            pb::node_client::NodeClient::new(RawHeader(rita.clone(), "aurae-instance", "c1".try_into().unwrap()));
        denied(fwd.shutdown(pb::ShutdownRequest::default()).await, "needs admin");
        // Only a node's parent may name someone else as the caller.
        let mut spoof = pb::node_client::NodeClient::new(RawHeader(
            rita.clone(),
            "aurae-caller",
            "spiffe://host.test/client/tester".try_into().unwrap(),
        ));
        denied(
            spoof.shutdown(pb::ShutdownRequest::default()).await,
            "only from the node that spawned it",
        );

        let otto = conn("otto").await;
        denied(
            pb::node_client::NodeClient::new(otto.clone())
                .shutdown(pb::ShutdownRequest::default())
                .await,
            "aurae.v0.Node/Shutdown needs admin",
        );
        denied(
            pb::runtime_client::RuntimeClient::new(otto.clone())
                .run_virtual_machine(pb::VirtualMachine {
                    name: "vm".into(),
                    kernel_path: "/etc/shadow".into(),
                    ..Default::default()
                })
                .await,
            "kernel_path, a file on the node, needs admin",
        );
        // A cell without confinement is the node's root: admin only, like node files.
        for (conf, what) in [
            (
                pb::CellConfinement {
                    privileged: true,
                    ..Default::default()
                },
                "confinement.privileged needs admin",
            ),
            (
                pb::CellConfinement {
                    seccomp: pb::SeccompProfile::Unconfined as i32,
                    ..Default::default()
                },
                "confinement.seccomp UNCONFINED needs admin",
            ),
        ] {
            denied(
                pb::runtime_client::RuntimeClient::new(otto.clone())
                    .run_cell(pb::Cell {
                        name: "wide".into(),
                        confinement: Some(conf),
                        ..Default::default()
                    })
                    .await,
                what,
            );
        }

        for stem in ["sam", "inst"] {
            let ch = conn(stem).await;
            let m = denied(
                tonic_health::pb::health_client::HealthClient::new(ch.clone())
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await,
                "has no role on this node",
            );
            assert!(m.contains("grpc.health.v1.Health/Check needs reader"), "{m}");
            denied(
                pb::node_client::NodeClient::new(ch.clone())
                    .info(pb::NodeInfoRequest {})
                    .await,
                "no role",
            );
            denied(
                pb::node_client::NodeClient::new(ch)
                    .shutdown(pb::ShutdownRequest::default())
                    .await,
                "no role",
            );
        }
        // RenewIdentity is for a node's own parent alone; this node has none.
        let tester = conn("client").await;
        denied(
            pb::node_client::NodeClient::new(tester)
                .renew_identity(pb::RenewIdentityRequest::default())
                .await,
            "may not renew this node's identity: no node spawned it",
        );
        // Nothing changed, and the node still serves.
        let after = work.list(pb::ListRequest::default()).await.unwrap().into_inner();
        assert_eq!(before, after);
        assert!(d_alive(&d));
    });
}

fn d_alive(d: &Daemon) -> bool {
    Command::new("kill")
        .args(["-0", &d.child.id().to_string()])
        .status()
        .unwrap()
        .success()
}

/// `aer` says "permission denied: ..." on one line and exits 1.
#[test]
fn aer_shows_a_denial_on_one_line_with_exit_code_1() {
    let d = start();
    let out = aer_as(&d, "rita", &["node", "shutdown"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("permission denied: spiffe://host.test/client/rita has role reader on this node; aurae.v0.Node/Shutdown needs admin"),
        "{err}"
    );
    assert!(d_alive(&d));
}

/// A node without a policy serves nobody and says why, instead of serving everybody.
#[test]
fn a_node_without_a_policy_refuses_every_call_and_says_why() {
    let d = {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        mint(&pki_dir, "host.test");
        std::fs::remove_file(pki_dir.join("policy.toml")).unwrap();
        start_in(dir, pki_dir)
    };
    rt().block_on(async {
        let ch = client(&d, "client").connect().await.unwrap();
        let m = denied(
            pb::node_client::NodeClient::new(ch).info(pb::NodeInfoRequest {}).await,
            "policy.toml",
        );
        assert!(m.contains("every call is refused"), "{m}");
    });
}

/// `auraed pki node` gives each node its own key, server certificate and spawn CA, all
/// signed by the root, with the keys 0600 and the spawn CA valid a year at most.
#[test]
fn pki_node_issues_every_node_an_identity_of_its_own() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("pki");
    let auraed = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_auraed")).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let dir_s = dir.to_str().unwrap();
    auraed(&["pki", "init", dir_s]);
    auraed(&["pki", "node", dir_s, "n1", "--ip", "10.1.0.5"]);
    auraed(&["pki", "node", dir_s, "n2"]);
    let read = |n: &str, f: &str| std::fs::read_to_string(dir.join("nodes").join(n).join(f)).unwrap();
    for f in ["server.key", "spawn-ca.key", "server.crt", "spawn-ca.crt"] {
        assert_ne!(read("n1", f), read("n2", f), "{f} is per node");
    }
    assert_ne!(
        read("n1", "server.key"),
        std::fs::read_to_string(dir.join("server.key")).unwrap()
    );
    assert_eq!(
        pki::spiffe_id_of_pem(&read("n1", "server.crt")).as_deref(),
        Some("spiffe://aurae.local/node/n1")
    );
    assert_eq!(
        pki::spiffe_id_of_pem(&read("n2", "spawn-ca.crt")).as_deref(),
        Some("spiffe://aurae.local/node/n2/spawn-ca")
    );
    let root = pki::first_der(&std::fs::read_to_string(dir.join("ca.crt")).unwrap()).unwrap();
    for (n, f) in [("n1", "server.crt"), ("n2", "spawn-ca.crt")] {
        let leaf = pki::first_der(&read(n, f)).unwrap();
        pki::chain::check(&[&leaf], &root).unwrap();
    }
    let pem = read("n1", "spawn-ca.crt");
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let c = p.parse_x509().unwrap();
    let days = (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) / 86400;
    assert!(days <= 366, "a node's spawn CA lives a year at most: {days} days");
    for f in ["server.key", "spawn-ca.key"] {
        let mode = std::fs::metadata(dir.join("nodes/n1").join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    assert_eq!(
        read("n1", "policy.toml"),
        std::fs::read_to_string(dir.join("policy.toml")).unwrap()
    );
    assert!(read("n1", "server.crt").contains("-----BEGIN CERTIFICATE-----"));
}

/// A certificate the root signed but without a SPIFFE ID of this trust domain (none at
/// all, or another domain's) ends at the TLS handshake: no rpc, health included, runs.
#[test]
fn certificates_without_a_spiffe_id_of_this_domain_are_refused_at_the_handshake() {
    let d = start();
    let ca = pki::read_pair(&d.pki, "ca").unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, rcgen::KeyPair::from_pem(&ca.key_pem).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (stem, uri) in [
        ("nouri", None),
        ("foreign", Some("spiffe://evil.test/client/tester")),
        ("https", Some("https://host.test/client/tester")),
    ] {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["x.test".to_owned()]).unwrap();
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        if let Some(u) = uri {
            p.subject_alt_names.push(rcgen::SanType::URI(u.try_into().unwrap()));
        }
        let cert = p.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.path().join(format!("{stem}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.path().join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        let t = target(
            &d,
            TlsFiles {
                ca: d.pki.join("ca.crt"),
                cert: dir.path().join(format!("{stem}.crt")),
                key: dir.path().join(format!("{stem}.key")),
            },
        );
        rt().block_on(async {
            let r = match t.connect().await {
                Err(_) => None,
                Ok(ch) => Some(
                    tonic_health::pb::health_client::HealthClient::new(ch)
                        .check(tonic_health::pb::HealthCheckRequest::default())
                        .await,
                ),
            };
            match r {
                None => {}
                // TLS 1.3: the client's handshake ends before the server's verdict arrives;
                // the refusal is then a transport error, never a gRPC answer.
                Some(Err(e)) => assert_ne!(
                    e.code(),
                    tonic::Code::PermissionDenied,
                    "{stem}: answered by gRPC: {e:?}"
                ),
                Some(Ok(_)) => panic!("{stem}: served"),
            }
        });
    }
    assert!(d_alive(&d));
}

/// A compromised child can sign, inside its own subtree, a server certificate for any DNS
/// name. aer accepts only a node the root CA certified (or the exact ID it is told), so such
/// a certificate cannot stand in for a node, whatever name it carries.
#[test]
fn aer_refuses_a_server_certificate_a_spawn_ca_issued() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    mint(&pki_dir, "host.test");
    let ca = pki::read_pair(&pki_dir, "ca").unwrap();
    let hour = Duration::from_secs(3600);
    let spawn_ca = pki::mint_intermediate(&ca, "spiffe://host.test/node/test/spawn-ca", "s", hour).unwrap();
    let id = "spiffe://host.test/node/test/instance/x";
    let mut svid = pki::mint_svid(
        &spawn_ca,
        id,
        "x",
        &["localhost".into()],
        &["127.0.0.1".parse().unwrap()],
        hour,
    )
    .unwrap();
    svid.cert_pem.push_str(&spawn_ca.cert_pem);
    pki::write_pair(&pki_dir, "server", &svid).unwrap();
    let d = start_in(dir, pki_dir);
    let aer = |extra: &[&str]| {
        let args: Vec<&str> = extra.iter().copied().chain(["node", "info"]).collect();
        aer_as(&d, "client", &args)
    };
    let out = aer(&[]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("the server presented {id}, not a node the root CA certified")),
        "{err}"
    );
    // Told exactly whom to expect, aer talks to it.
    let out = aer(&["--server-id", id]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
