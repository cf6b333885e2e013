//! What the host-tier tests share: auraed as a daemon on 127.0.0.1 with a throwaway PKI
//! and image store, and `aer` against it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod registry;
#[allow(unused_imports)] // not every test binary starts a server of its own
pub use registry::free_port;

use auraed::pki;
use auraed::pki::policy::{Policy, Role};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub _dir: tempfile::TempDir,
    pub pki: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn mint(dir: &Path, domain: &str) {
    let ca = pki::mint_ca(domain).unwrap();
    let dns = ["localhost".to_owned()];
    let ips = ["127.0.0.1".parse().unwrap()];
    let server = pki::mint_leaf(
        &ca,
        &pki::spiffe_id(domain, "node/test"),
        "test",
        pki::LeafKind::Server { dns: &dns, ips: &ips },
        1,
    )
    .unwrap();
    let client = pki::mint_leaf(
        &ca,
        &pki::spiffe_id(domain, "client/tester"),
        "tester",
        pki::LeafKind::Client,
        1,
    )
    .unwrap();
    pki::write_pair(dir, "ca", &ca).unwrap();
    pki::write_pair(dir, "server", &server).unwrap();
    pki::write_pair(dir, "client", &client).unwrap();
    // Beside the admin: a reader, an operator, a client the policy does not name, and a
    // certificate shaped like a spawned instance's SVID (signed by the same CA).
    let mut policy = Policy::default();
    policy.grant(&pki::spiffe_id(domain, "client/tester"), Role::Admin);
    for (stem, path, role) in [
        ("rita", "client/rita", Some(Role::Reader)),
        ("otto", "client/otto", Some(Role::Operator)),
        ("sam", "client/sam", None),
        ("inst", "node/test/instance/c1", None),
    ] {
        let m = pki::mint_leaf(&ca, &pki::spiffe_id(domain, path), stem, pki::LeafKind::Client, 1).unwrap();
        pki::write_pair(dir, stem, &m).unwrap();
        if let Some(r) = role {
            policy.grant(&pki::spiffe_id(domain, path), r);
        }
    }
    std::fs::write(dir.join("policy.toml"), policy.render()).unwrap();
}

/// Starts a daemon on a port the kernel picks (`127.0.0.1:0`) and learns the address from
/// its "serving ... on ADDR" log line. Picking a free port first and passing it would race
/// with the other tests of this binary, which run in parallel: two daemons could be handed
/// the same port, and a test would then talk to (or shut down) another test's daemon.
pub fn start() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    mint(&pki_dir, "host.test");
    start_in(dir, pki_dir)
}

/// A daemon (as `start`) whose registries file lists `insecure` as plain-HTTP registries.
pub fn start_listing_insecure(insecure: &[&str]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    mint(&pki_dir, "host.test");
    let listed: Vec<String> = insecure.iter().map(|a| format!("\"{a}\"")).collect();
    std::fs::write(
        dir.path().join("registries.toml"),
        format!("insecure = [{}]\n", listed.join(", ")),
    )
    .unwrap();
    start_in(dir, pki_dir)
}

pub fn start_in(dir: tempfile::TempDir, pki_dir: std::path::PathBuf) -> Daemon {
    start_with(dir, pki_dir, &[])
}

/// A daemon (as `start_in`) with more command-line arguments.
pub fn start_with(dir: tempfile::TempDir, pki_dir: std::path::PathBuf, extra: &[&std::ffi::OsStr]) -> Daemon {
    // Each daemon has an image store and registries file of its own.
    let mut child = Command::new(env!("CARGO_BIN_EXE_auraed"))
        .args(extra)
        .args(["--listen", "127.0.0.1:0", "--pki-dir"])
        .arg(&pki_dir)
        .arg("--image-store")
        .arg(dir.path().join("images"))
        .arg("--registries")
        .arg(dir.path().join("registries.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    // Passes the log on to the test's stderr, and the address to the test once.
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Some(rest) = line.split(" on ").nth(1).filter(|_| line.contains("serving mTLS gRPC")) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!("auraed did not log its serving address within 60 s: {:?}", child.wait());
        }
    };
    Daemon {
        child,
        addr,
        pki: pki_dir,
        _dir: dir,
    }
}

/// `aer ARGS` against daemon `d` as the client `{stem}.crt` of its PKI.
pub fn aer_as(d: &Daemon, stem: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_auraed"))
        .arg("aer")
        .args(["--addr", &d.addr, "--server-name", "localhost"])
        .arg("--ca")
        .arg(d.pki.join("ca.crt"))
        .arg("--cert")
        .arg(d.pki.join(format!("{stem}.crt")))
        .arg("--key")
        .arg(d.pki.join(format!("{stem}.key")))
        .args(args)
        .output()
        .unwrap()
}
