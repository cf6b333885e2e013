//! A real OCI registry for tests (Debian's `docker-registry`) on 127.0.0.1, holding the
//! test images of `tests/images/build.sh`, pushed once per test binary with skopeo. Shared
//! by the host tier (`init/tests/images.rs`) and the appliance tier (`tests/tests/images.rs`,
//! through a forwarding rule of QEMU's user network).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use auraed::pki;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[path = "port.rs"]
mod port;
pub use port::free_port;

pub fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (make deps installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A registry process on 127.0.0.1, killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
pub struct Options {
    /// (certificate, key) files for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// An htpasswd line.
    pub htpasswd: Option<String>,
    /// Where its access log goes (one line per request), when it should keep one.
    pub access_log: Option<PathBuf>,
}

impl Registry {
    pub fn start(storage: &Path, o: Options) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: {}\nstorage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {addr}\n",
            o.access_log.is_none(),
            storage.display()
        );
        if let Some((cert, key)) = &o.tls {
            cfg += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        if let Some(line) = &o.htpasswd {
            let f = dir.path().join("htpasswd");
            std::fs::write(&f, format!("{line}\n")).unwrap();
            cfg += &format!("auth:\n  htpasswd:\n    realm: test\n    path: {}\n", f.display());
        }
        let cfg_file = dir.path().join("config.yml");
        std::fs::write(&cfg_file, cfg).unwrap();
        let log = || match &o.access_log {
            Some(f) => Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(f).unwrap()),
            None => Stdio::null(),
        };
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_file)
            .stdout(log())
            .stderr(log())
            .spawn()
            .expect("docker-registry (make deps installs it)");
        let r = Registry { child, addr, _dir: dir };
        let until = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&r.addr).is_err() {
            assert!(Instant::now() < until, "the registry did not listen on {}", r.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }
}

/// An htpasswd line for `user` with `password` (bcrypt, as the registry wants).
pub fn htpasswd(user: &str, password: &str) -> String {
    let hash = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            &format!("import crypt; print(crypt.crypt({password:?}, crypt.mksalt(crypt.METHOD_BLOWFISH)))"),
        ])
        .output()
        .unwrap();
    format!("{user}:{}", String::from_utf8(hash.stdout).unwrap().trim())
}

/// Registry storage holding the test images, pushed once per test binary.
pub struct Fixture {
    pub storage: PathBuf,
    pub pki: PathBuf,
    /// The OCI layout the images were built in (tags busybox, layered, ...).
    pub layout: PathBuf,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // The target directory may be shared by checkouts (the Makefile's cache): one
        // fixture per checkout, so two test runs never rebuild each other's.
        let checkout = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            env!("CARGO_MANIFEST_DIR").hash(&mut h);
            h.finish()
        };
        // And one per test binary: `make test` runs binaries side by side.
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("images-fixture-{checkout:016x}-{binary}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let images = root.join("images");
        // Both test crates sit one level below the workspace.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/build.sh");
        run(Command::new(script).arg(&images));
        // A CA and a server certificate for 127.0.0.1, for the HTTPS registry.
        let pki_dir = root.join("pki");
        std::fs::create_dir_all(&pki_dir).unwrap();
        let ca = pki::mint_ca("registry.test").unwrap();
        let server = pki::mint_leaf(
            &ca,
            &pki::spiffe_id("registry.test", "node/registry"),
            "registry",
            pki::LeafKind::Server {
                dns: &["localhost".to_owned()],
                // The host's loopback, and the addresses the appliance tier's guests use.
                ips: &["127.0.0.1", "10.0.2.101", "10.0.2.102"].map(|ip| ip.parse().unwrap()),
            },
            1,
        )
        .unwrap();
        pki::write_pair(&pki_dir, "ca", &ca).unwrap();
        pki::write_pair(&pki_dir, "server", &server).unwrap();
        let storage = root.join("storage");
        let r = Registry::start(&storage, Options::default());
        for (tag, dest) in [
            ("busybox", "test/busybox:1"),
            ("busybox", "test/podsite:1"),
            ("busybox-zstd", "test/busybox:zstd"),
            ("layered", "test/layered:1"),
            ("malicious", "test/malicious:1"),
            ("many", "test/many:1"),
        ] {
            run(Command::new("skopeo").args([
                "copy",
                "-q",
                "--dest-tls-verify=false",
                &format!("oci:{}:{tag}", images.join("layout").display()),
                &format!("docker://{}/{dest}", r.addr),
            ]));
        }
        Fixture {
            storage,
            pki: pki_dir,
            layout: images.join("layout"),
        }
    })
}

/// A TCP proxy to `to` that cuts a connection once one response has carried more than
/// `limit` bytes (the registry "going away" in the middle of a large blob). Bytes from the
/// client start a new response count. Runs until dropped (its threads end with the sockets).
pub struct Cutter {
    pub addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Cutter {
    pub fn start(to: &str, limit: u64) -> Cutter {
        Cutter::with(to, limit, false)
    }

    /// Like `start`, but past `limit` the connection is held open with nothing more sent
    /// (a pull stuck in the middle of a blob, for a power cut to find it there).
    pub fn stalling(to: &str, limit: u64) -> Cutter {
        Cutter::with(to, limit, true)
    }

    fn with(to: &str, limit: u64, stall: bool) -> Cutter {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (to, halt) = (to.to_owned(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if halt.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(&to) else {
                    continue;
                };
                let count = Arc::new(AtomicU64::new(0));
                let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let reset = count.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        reset.store(0, Ordering::Relaxed);
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Both);
                });
                let (mut s_in, mut c_out) = (server, client);
                let halt = halt.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if count.fetch_add(n as u64, Ordering::Relaxed) + n as u64 > limit {
                            // Half of what fits, then the connection is gone (or stalls
                            // until the proxy is dropped).
                            let _ = c_out.write_all(&buf[..n / 2]);
                            while stall && !halt.load(Ordering::Relaxed) {
                                std::thread::sleep(std::time::Duration::from_millis(50));
                            }
                            break;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                    let _ = s_in.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Cutter { addr, stop }
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

/// A copy of `storage` in `dir` with one byte in the middle of its largest blob (the
/// busybox layer) flipped, its size unchanged: (the copy, that blob's data file).
pub fn corrupt_copy(storage: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    run(Command::new("cp").arg("-a").arg(storage).arg(dir));
    let copy = dir.join(storage.file_name().unwrap());
    let mut largest: Option<(u64, PathBuf)> = None;
    let mut dirs = vec![copy.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.file_name().is_some_and(|n| n == "data") {
                let len = p.metadata().unwrap().len();
                if largest.as_ref().is_none_or(|(l, _)| len > *l) {
                    largest = Some((len, p));
                }
            }
        }
    }
    let (_, blob) = largest.unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    (copy, blob)
}
