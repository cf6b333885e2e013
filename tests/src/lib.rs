//! Helpers for the appliance tier: boot the real kernel + initramfs under QEMU (via
//! `qemu/run`), wait for the API with a deadline, and fail with the console log attached.

use auraed::cli::Target;
use auraed::server::tls::TlsFiles;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The build dir named by `AURAE_APPLIANCE`, or None (the caller prints SKIP).
pub fn build_dir() -> Option<PathBuf> {
    std::env::var_os("AURAE_APPLIANCE").map(PathBuf::from)
}

/// Returns the build dir or prints a loud SKIP; `make test-appliance` always sets it.
#[macro_export]
macro_rules! appliance_or_skip {
    () => {
        match $crate::build_dir() {
            Some(b) => b,
            None => {
                eprintln!(
                    "SKIP {}: AURAE_APPLIANCE is not set (run `make test-appliance`, which builds and boots the image)",
                    module_path!()
                );
                return;
            }
        }
    };
}

pub struct Appliance {
    pub child: Child,
    pub port: u16,
    pub console: PathBuf,
    pub qmp: PathBuf,
    pub build: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18443)
}

impl Appliance {
    /// Boots the appliance and waits (up to `deadline`) until health is SERVING.
    pub fn boot(build: &std::path::Path, deadline: Duration) -> Appliance {
        Appliance::boot_with(build, deadline, &[])
    }

    /// Like `boot`, with extra `qemu/run` environment (e.g. `("MACHINE", "microvm")`).
    pub fn boot_with(build: &std::path::Path, deadline: Duration, env: &[(&str, &str)]) -> Appliance {
        let dir = tempfile::tempdir().expect("tempdir");
        let console = dir.path().join("console.log");
        let qmp = dir.path().join("qmp.sock");
        let port = free_port();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let log = std::fs::File::create(&console).expect("console log");
        let child = Command::new(root.join("qemu/run"))
            .env("BUILD", build)
            .env("PORT", port.to_string())
            .env("QMP", &qmp)
            .env("NO_REBOOT", "1")
            .env("ACCEL", "tcg")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start qemu/run");
        let mut a = Appliance {
            child,
            port,
            console,
            qmp,
            build: build.to_owned(),
            _dir: dir,
        };
        let start = Instant::now();
        let rt = rt();
        loop {
            if let Ok(Some(st)) = a.child.try_wait() {
                panic!("QEMU exited ({st}) before the API served\n{}", a.console_log());
            }
            if rt.block_on(a.health_serving()) {
                eprintln!(
                    "appliance: SERVING after {:.1} s (QEMU start → health)",
                    start.elapsed().as_secs_f64()
                );
                return a;
            }
            if start.elapsed() > deadline {
                panic!("appliance not SERVING within {deadline:?}\n{}", a.console_log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn target(&self) -> Target {
        Target {
            addr: format!("127.0.0.1:{}", self.port),
            tls: TlsFiles::in_dir(&self.build.join("pki"), "client"),
            server_name: "localhost".into(),
            timeout: Duration::from_secs(10),
        }
    }

    async fn health_serving(&self) -> bool {
        let mut t = self.target();
        t.timeout = Duration::from_secs(2);
        let Ok(ch) = t.connect().await else { return false };
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
        matches!(h.check(tonic_health::pb::HealthCheckRequest::default()).await,
            Ok(r) if r.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    }

    pub fn console_log(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        format!(
            "--- console ({}) ---\n{text}--- end of console ---",
            self.console.display()
        )
    }

    /// Waits for QEMU to exit; panics with the console log after `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if start.elapsed() > deadline {
                panic!("QEMU still running {deadline:?} later\n{}", self.console_log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends one QMP command (after the capabilities handshake); returns its reply line.
    pub fn qmp(&self, command: &str) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(&self.qmp).expect("QMP socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut r = BufReader::new(s.try_clone().expect("dup"));
        let mut line = String::new();
        r.read_line(&mut line).expect("QMP greeting");
        writeln!(s, r#"{{"execute":"qmp_capabilities"}}"#).expect("QMP write");
        line.clear();
        r.read_line(&mut line).expect("QMP capabilities reply");
        writeln!(s, r#"{{"execute":"{command}"}}"#).expect("QMP write");
        // Asynchronous events ({"event": ...}) may come before the command's reply.
        loop {
            line.clear();
            if r.read_line(&mut line).expect("QMP reply") == 0 || !line.contains("\"event\"") {
                return line;
            }
        }
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
