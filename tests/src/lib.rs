//! Helpers for the appliance tier: boot the real kernel + initramfs under QEMU (via
//! `qemu/run`), wait for the API with a deadline, and fail with the console log attached.

use auraed::cli::Target;
use auraed::pki::tls::TlsFiles;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[path = "../../init/tests/common/port.rs"]
mod port;
pub mod spdy;
pub mod ws;
pub use port::free_port;

/// The project's top level (where qemu/, rootfs/ and kernel/ are).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The build dir named by `AURAE_APPLIANCE`, or None (the caller prints SKIP).
pub fn build_dir() -> Option<PathBuf> {
    std::env::var_os("AURAE_APPLIANCE").map(PathBuf::from)
}

/// How long the first boot of a test binary may take before it fails with the console
/// log: generous, because it is the only thing measured before budgets can scale.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(120);

/// The appliance this test binary's tests share, booted by the first test that asks; the
/// tests run one at a time (`--test-threads=1`), each cleaning up after itself. QEMU ends
/// with the test process (`qemu/run` watches it). None when AURAE_APPLIANCE is unset.
/// Its policy also grants `client/test-operator` the operator role and `client/test-reader`
/// the reader role ([`shared_roles`]), so any test can act as them.
pub fn shared() -> Option<&'static Appliance> {
    static SHARED: std::sync::OnceLock<Appliance> = std::sync::OnceLock::new();
    let build = build_dir()?;
    let roles = shared_roles()?;
    Some(SHARED.get_or_init(|| {
        let layer = roles.layer.to_str().expect("a UTF-8 temp path");
        Appliance::boot_with(&build, BOOT_DEADLINE, &[("EXTRA_LAYER", layer)])
    }))
}

/// The identities the shared appliance grants roles to: `test-operator` and `test-reader`.
pub fn shared_roles() -> Option<&'static TestRoles> {
    use auraed::pki::policy::Role;
    static ROLES: std::sync::OnceLock<TestRoles> = std::sync::OnceLock::new();
    let build = build_dir()?;
    Some(ROLES.get_or_init(|| {
        TestRoles::new(
            &build,
            &[("test-operator", Role::Operator), ("test-reader", Role::Reader)],
        )
    }))
}

/// The shared appliance, or a loud SKIP; `make test-appliance` always sets AURAE_APPLIANCE.
/// What an earlier test of the same boot left (it failed before its own cleanup) is
/// removed first, so one failure never fails the tests after it.
#[macro_export]
macro_rules! shared_or_skip {
    () => {
        match $crate::shared() {
            Some(a) => {
                $crate::tidy(a);
                a
            }
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

/// QEMU start → SERVING on the machine the tests' budgets were sized on (p50 1.8 s).
pub const REFERENCE_BOOT: Duration = Duration::from_secs(2);

pub struct Appliance {
    pub child: Child,
    /// QEMU start → health SERVING, as measured by `boot`.
    pub boot_time: Duration,
    pub port: u16,
    pub console: PathBuf,
    pub qmp: PathBuf,
    pub build: PathBuf,
    _dir: tempfile::TempDir,
}

impl Appliance {
    /// Boots the appliance and waits (up to `deadline`) until health is SERVING.
    pub fn boot(build: &std::path::Path, deadline: Duration) -> Appliance {
        Appliance::boot_with(build, deadline, &[])
    }

    /// Like `boot`, with extra `qemu/run` environment (e.g. `("MACHINE", "microvm")`).
    pub fn boot_with(build: &std::path::Path, deadline: Duration, env: &[(&str, &str)]) -> Appliance {
        let mut a = Appliance::start_with(build, env);
        let start = Instant::now();
        let rt = rt();
        loop {
            if let Ok(Some(st)) = a.child.try_wait() {
                panic!("QEMU exited ({st}) before the API served\n{}", a.console_log());
            }
            if rt.block_on(a.health_serving()) {
                a.boot_time = start.elapsed();
                eprintln!(
                    "appliance: SERVING after {:.1} s (QEMU start → health); test budgets ×{:.2}",
                    a.boot_time.as_secs_f64(),
                    a.slowness()
                );
                return a;
            }
            if start.elapsed() > deadline {
                panic!("appliance not SERVING within {deadline:?}\n{}", a.console_log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts QEMU and returns at once, for a node the test cannot reach over the API (it
    /// watches the console instead); budgets stay unscaled.
    pub fn start_with(build: &std::path::Path, env: &[(&str, &str)]) -> Appliance {
        let dir = tempfile::tempdir().expect("tempdir");
        let console = dir.path().join("console.log");
        let qmp = dir.path().join("qmp.sock");
        let port = free_port();
        let root = project_root();
        let log = std::fs::File::create(&console).expect("console log");
        let child = Command::new(root.join("qemu/run"))
            .env("BUILD", build)
            .env("PORT", port.to_string())
            .env("QMP", &qmp)
            .env("NO_REBOOT", "1")
            .env("ACCEL", "tcg")
            // Guests of the appliance's KVM without nested paging: QEMU's emulated one
            // triple-faults side-by-side guests now and then (docs/faults.md).
            // AURAE_TEST_NPT=1 keeps it, to see that happen.
            .env(
                "GUEST_NPT",
                if std::env::var("AURAE_TEST_NPT").is_ok_and(|v| v == "1") {
                    "1"
                } else {
                    "0"
                },
            )
            .env("WATCH_PID", std::process::id().to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start qemu/run");
        Appliance {
            child,
            boot_time: Duration::ZERO,
            port,
            console,
            qmp,
            build: build.to_owned(),
            _dir: dir,
        }
    }

    /// Waits until `needle` shows up `times` times on the console (or QEMU ends, or
    /// `deadline` passes); true when it did.
    pub fn wait_console(&mut self, needle: &str, times: usize, deadline: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.console_log().matches(needle).count() >= times {
                return true;
            }
            if start.elapsed() > deadline || matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// How much slower than the reference machine this one is, from the measured boot
    /// (never below 1: a fast machine keeps the stated budgets).
    pub fn slowness(&self) -> f64 {
        (self.boot_time.as_secs_f64() / REFERENCE_BOOT.as_secs_f64()).max(1.0)
    }

    /// A budget sized on the reference machine, scaled to this one. Tests wait on
    /// conditions with these as upper bounds; nothing is timed against them.
    pub fn budget(&self, reference: Duration) -> Duration {
        reference.mul_f64(self.slowness())
    }

    /// `aer` (the build's auraed) pointed at this appliance, or at `port` on the test's
    /// loopback (a relay to it), as client `tls` (the build's admin client when None).
    pub fn aer(&self, port: Option<u16>, tls: Option<&TlsFiles>) -> Command {
        let admin = TlsFiles::in_dir(&self.build.join("pki"), "client");
        let tls = tls.unwrap_or(&admin);
        let mut cmd = Command::new(self.build.join("bin/auraed"));
        cmd.arg("aer")
            .args(["--addr", &format!("127.0.0.1:{}", port.unwrap_or(self.port))])
            .args(["--server-name", "localhost"])
            .arg("--ca")
            .arg(&tls.ca)
            .arg("--cert")
            .arg(&tls.cert)
            .arg("--key")
            .arg(&tls.key);
        cmd
    }

    pub fn target(&self) -> Target {
        self.target_as(TlsFiles::in_dir(&self.build.join("pki"), "client"))
    }

    /// The appliance, reached with another client identity (see `TestRoles`).
    pub fn target_as(&self, tls: TlsFiles) -> Target {
        Target {
            addr: format!("127.0.0.1:{}", self.port),
            tls,
            server_name: "localhost".into(),
            server_id: None,
            timeout: Duration::from_secs(10),
            instance: None,
        }
    }

    async fn health_serving(&self) -> bool {
        let mut t = self.target();
        t.timeout = Duration::from_millis(500);
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
    /// SIGTERM to `qemu/run`, which stops QEMU and cleans up; SIGKILL only as a last resort
    /// (it would leave QEMU running as an orphan).
    fn drop(&mut self) {
        stop_runner(&mut self.child);
        // A test that failed on a live appliance shows what the node said (its last lines).
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.console).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(150)..].join("\n");
            eprintln!("--- the appliance's console, last 150 lines ---\n{tail}\n--- end of console ---");
        }
    }
}

/// Stops a `qemu/run` child: SIGTERM (passed on to QEMU), up to 10 s, then SIGKILL.
pub fn stop_runner(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A client of the appliance's runtime with helpers for tests: run a shell script in a
/// cell, wait for it, and collect its output.
#[derive(Clone)]
pub struct Client {
    pub runtime: auraed::pb::runtime_client::RuntimeClient<auraed::cli::Conn>,
    pub workloads: auraed::pb::workloads_client::WorkloadsClient<auraed::cli::Conn>,
    pub node: auraed::pb::node_client::NodeClient<auraed::cli::Conn>,
    pub images: auraed::pb::images_client::ImagesClient<auraed::cli::Conn>,
}

use auraed::pb;

pub fn exe_ref(name: &str) -> pb::WorkloadRef {
    pb::WorkloadRef {
        kind: pb::WorkloadKind::Executable as i32,
        name: name.into(),
    }
}

pub fn cell_ref(name: &str) -> pb::WorkloadRef {
    pb::WorkloadRef {
        kind: pb::WorkloadKind::Cell as i32,
        name: name.into(),
    }
}

/// `/bin/sh -c script` as an Executable.
/// Output of a probe script that prints one `key value` per line.
pub struct Fields {
    map: std::collections::HashMap<String, String>,
    text: String,
}

impl Fields {
    pub fn parse(text: &str) -> Fields {
        Fields {
            map: text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                .collect(),
            text: text.to_owned(),
        }
    }

    /// The value of `key`; a missing key fails the test, showing the whole output.
    pub fn get(&self, key: &str) -> &str {
        self.opt(key)
            .unwrap_or_else(|| panic!("{key} missing in:\n{}", self.text))
    }

    pub fn opt(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }
}

pub fn sh(name: &str, cell: &str, script: &str) -> pb::Executable {
    pb::Executable {
        name: name.into(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        cell: cell.into(),
        ..Default::default()
    }
}

impl Client {
    /// Connects without a per-call deadline (Wait and followed Logs may take long); callers
    /// bound whole steps with `tokio::time::timeout`.
    pub async fn connect(a: &Appliance) -> Client {
        Client::connect_to(a, None).await
    }

    /// A client of a spawned descendant (`child` or `child/grandchild`), reached through
    /// the appliance, which forwards the calls.
    pub async fn connect_to(a: &Appliance, instance: Option<&str>) -> Client {
        Client::connect_with(a.target(), instance).await
    }

    /// Like `connect_to`, as another client identity.
    pub async fn connect_with(mut t: Target, instance: Option<&str>) -> Client {
        t.timeout = Duration::from_secs(600);
        t.instance = instance.map(str::to_owned);
        let ch = t.connect().await.expect("connect to the appliance");
        Client {
            runtime: pb::runtime_client::RuntimeClient::new(ch.clone()),
            workloads: pb::workloads_client::WorkloadsClient::new(ch.clone()),
            images: pb::images_client::ImagesClient::new(ch.clone()),
            node: pb::node_client::NodeClient::new(ch),
        }
    }

    pub async fn cell(&self, c: pb::Cell) -> Result<pb::CellStatus, tonic::Status> {
        self.runtime.clone().run_cell(c).await.map(|r| r.into_inner())
    }

    pub async fn exec(&self, e: pb::Executable) -> Result<pb::ExecutableStatus, tonic::Status> {
        self.runtime.clone().run_executable(e).await.map(|r| r.into_inner())
    }

    pub async fn wait(&self, name: &str) -> pb::ExecutableStatus {
        let w = tokio::time::timeout(Duration::from_secs(120), self.workloads.clone().wait(exe_ref(name)))
            .await
            .expect("executable ended within 120 s")
            .expect("Wait")
            .into_inner();
        match w.status {
            Some(pb::workload_status::Status::Executable(e)) => e,
            other => panic!("Wait returned {other:?}"),
        }
    }

    pub async fn cell_status(&self, name: &str) -> pb::CellStatus {
        let w = self
            .workloads
            .clone()
            .status(cell_ref(name))
            .await
            .expect("Status")
            .into_inner();
        match w.status {
            Some(pb::workload_status::Status::Cell(c)) => c,
            other => panic!("Status returned {other:?}"),
        }
    }

    /// Every log entry of an ended (or running, without follow) executable.
    pub async fn log_entries(&self, name: &str, follow: bool) -> Vec<pb::LogEntry> {
        let mut s = self
            .workloads
            .clone()
            .logs(pb::LogsRequest {
                workload: Some(exe_ref(name)),
                follow,
                tail_lines: None,
            })
            .await
            .expect("Logs")
            .into_inner();
        let mut out = Vec::new();
        while let Some(e) = s.message().await.expect("log stream") {
            out.push(e);
        }
        out
    }

    /// Stdout of an executable, one string, lines joined with '\n' (the pieces of a line
    /// longer than 16 KiB joined back).
    pub async fn stdout(&self, name: &str) -> String {
        let mut out = Vec::new();
        for e in self.log_entries(name, false).await {
            if e.stream == pb::LogStream::Stdout as i32 {
                out.extend_from_slice(&e.line);
                if !e.partial {
                    out.push(b'\n');
                }
            }
        }
        if out.last() == Some(&b'\n') {
            out.pop();
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub async fn free(&self, name: &str) {
        self.workloads.clone().free(exe_ref(name)).await.expect("Free");
    }

    /// Runs `e`, waits, returns (status, stdout), frees it.
    pub async fn run(&self, e: pb::Executable) -> (pb::ExecutableStatus, String) {
        let name = e.name.clone();
        self.exec(e).await.unwrap_or_else(|err| panic!("run {name}: {err:?}"));
        let st = self.wait(&name).await;
        let out = self.stdout(&name).await;
        self.free(&name).await;
        (st, out)
    }

    /// Runs a script in `cell` ("" = a private cell), waits, returns (status, stdout), frees it.
    pub async fn run_sh(&self, name: &str, cell: &str, script: &str) -> (pb::ExecutableStatus, String) {
        self.run(sh(name, cell, script)).await
    }

    /// Runs `argv` in a private cell, waits, returns (status, stdout), frees it.
    pub async fn run_argv(&self, name: &str, argv: &[&str]) -> (pb::ExecutableStatus, String) {
        self.run(pb::Executable {
            name: name.into(),
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        })
        .await
    }

    /// Runs a script with the node's own view (a privileged cell sharing every host
    /// namespace, so /proc, /sys/fs/cgroup, the hostname, eth0 and every capability are the
    /// node's) and returns its stdout.
    pub async fn on_node(&self, script: &str) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        if self.cell_status_opt("probe").await.is_none() {
            self.cell(pb::Cell {
                name: "probe".into(),
                isolation: Some(pb::CellIsolation {
                    share_host_pid: true,
                    share_host_mount: true,
                    share_host_network: true,
                    share_host_ipc: true,
                    share_host_uts: true,
                    share_host_cgroup: true,
                }),
                confinement: Some(pb::CellConfinement {
                    privileged: true,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("probe cell");
        }
        let name = format!("probe-{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let (st, out) = self.run_sh(&name, "probe", script).await;
        assert_eq!(st.exit_code, Some(0), "probe script failed: {script}\n{out}");
        out
    }

    /// Names of the cgroups directly under the workloads root, as the node sees them.
    pub async fn workload_cgroups(&self) -> Vec<String> {
        self.on_node("cd /sys/fs/cgroup/aurae && for d in */; do echo ${d%/}; done")
            .await
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// What a test could leave behind on the node: every workload in the table (all kinds)
    /// and every cgroup under the workloads root, except the probe cell's.
    pub async fn leftovers(&self) -> (Vec<String>, Vec<String>) {
        let mut cgroups = self.workload_cgroups().await;
        cgroups.retain(|n| n != "probe");
        let list = self
            .workloads
            .clone()
            .list(pb::ListRequest { kind: 0 })
            .await
            .expect("List")
            .into_inner();
        let workloads = list
            .workloads
            .iter()
            .filter_map(|w| match &w.status {
                Some(pb::workload_status::Status::Cell(c)) if c.name == "probe" => None,
                Some(pb::workload_status::Status::Executable(e)) if e.cell == "probe" => None,
                Some(s) => Some(format!("{s:?}").chars().take(120).collect()),
                None => None,
            })
            .collect();
        (workloads, cgroups)
    }

    /// Asserts the node holds no workload and no cgroup beyond the probe's, and no zombie.
    pub async fn assert_left_nothing(&self, test: &str) {
        let (workloads, cgroups) = self.leftovers().await;
        assert!(workloads.is_empty(), "{test} left workloads: {workloads:#?}");
        assert!(cgroups.is_empty(), "{test} left cgroups: {cgroups:?}");
        assert!(
            eventually(Duration::from_secs(30), || async { self.zombies().await.is_empty() }).await,
            "{test} left zombies: {}",
            self.zombies().await
        );
    }

    /// Stops workload `r` (`grace_ms` before the kill) and frees it; its status at the stop.
    pub async fn stop_and_free(&self, r: pb::WorkloadRef, grace_ms: u32) -> pb::WorkloadStatus {
        let w = self
            .workloads
            .clone()
            .stop(pb::StopRequest {
                workload: Some(r.clone()),
                signal: 0,
                grace_period_millis: grace_ms,
            })
            .await
            .unwrap_or_else(|e| panic!("stop {}: {e:?}", r.name))
            .into_inner();
        self.workloads
            .clone()
            .free(r.clone())
            .await
            .unwrap_or_else(|e| panic!("free {}: {e:?}", r.name));
        w
    }

    /// The workloads of `kind` (`Unspecified`: all) as `List` answers.
    pub async fn list(&self, kind: pb::WorkloadKind) -> Vec<pb::WorkloadStatus> {
        self.workloads
            .clone()
            .list(pb::ListRequest { kind: kind as i32 })
            .await
            .unwrap_or_else(|e| panic!("list: {e:?}"))
            .into_inner()
            .workloads
    }

    /// Stops cell `name` (0.5 s grace) with everything in it; its status after.
    pub async fn stop_cell(&self, name: &str) -> pb::CellStatus {
        let w = self
            .workloads
            .clone()
            .stop(pb::StopRequest {
                workload: Some(cell_ref(name)),
                signal: 0,
                grace_period_millis: 500,
            })
            .await
            .unwrap_or_else(|e| panic!("stop cell {name}: {e:?}"))
            .into_inner();
        match w.status {
            Some(pb::workload_status::Status::Cell(s)) => s,
            other => panic!("Stop returned {other:?}"),
        }
    }

    /// Stops cell `name` and frees it with everything in it.
    pub async fn remove_cell(&self, name: &str) -> pb::CellStatus {
        let s = self.stop_cell(name).await;
        self.workloads
            .clone()
            .free(cell_ref(name))
            .await
            .unwrap_or_else(|e| panic!("free cell {name}: {e:?}"));
        s
    }

    /// `Images.Remove` of `reference`.
    pub async fn remove_image(&self, reference: &str) -> Result<pb::RemoveImageResponse, tonic::Status> {
        self.images
            .clone()
            .remove(pb::ImageRef {
                reference: reference.to_owned(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Shuts the node down (2 s grace).
    pub async fn shutdown(&self) {
        self.node
            .clone()
            .shutdown(pb::ShutdownRequest {
                grace_period_millis: 2000,
            })
            .await
            .expect("Shutdown");
    }

    pub async fn cell_status_opt(&self, name: &str) -> Option<pb::CellStatus> {
        let w = self.workloads.clone().status(cell_ref(name)).await.ok()?.into_inner();
        match w.status {
            Some(pb::workload_status::Status::Cell(c)) => Some(c),
            _ => None,
        }
    }

    /// Zombie processes anywhere on the node ("pid (comm) Z ..." lines of /proc/*/stat).
    pub async fn zombies(&self) -> String {
        self.on_node(
            r#"for s in /proc/[0-9]*/stat; do read -r l < "$s" 2>/dev/null || continue; case "$l" in *") Z "*) echo "$l";; esac; done; true"#,
        )
        .await
    }
}

/// Stops and frees every workload of the shared boot but the probe cell's, saying what it
/// found: the guard that keeps one failed test from failing the tests after it. Tests clean
/// up after themselves; this only acts after one that panicked first.
pub fn tidy(a: &Appliance) {
    rt().block_on(async {
        let c = Client::connect(a).await;
        for _ in 0..3 {
            let list = match c.workloads.clone().list(pb::ListRequest { kind: 0 }).await {
                Ok(l) => l.into_inner().workloads,
                Err(e) => {
                    eprintln!("tidy: List failed: {e:?}");
                    return;
                }
            };
            use pb::workload_status::Status as S;
            use pb::WorkloadKind as K;
            let mut left: Vec<(u8, K, String)> = list
                .iter()
                .filter_map(|w| match w.status.as_ref()? {
                    S::Cell(c) if c.name == "probe" => None,
                    S::Executable(e) if e.cell == "probe" => None,
                    S::Pod(p) => Some((0, K::Pod, p.name.clone())),
                    S::Instance(i) => Some((1, K::Instance, i.name.clone())),
                    S::VirtualMachine(v) => Some((2, K::VirtualMachine, v.name.clone())),
                    S::Executable(e) => Some((3, K::Executable, e.name.clone())),
                    // Outermost first: freeing it frees the cells inside.
                    S::Cell(c) => Some((4 + c.name.matches('/').count() as u8, K::Cell, c.name.clone())),
                })
                .collect();
            if left.is_empty() {
                return;
            }
            left.sort();
            eprintln!("tidy: an earlier test left {left:?}; removing them");
            for (_, kind, name) in left {
                let workload = pb::WorkloadRef {
                    kind: kind as i32,
                    name,
                };
                let _ = c
                    .workloads
                    .clone()
                    .stop(pb::StopRequest {
                        workload: Some(workload.clone()),
                        signal: 0,
                        grace_period_millis: 500,
                    })
                    .await;
                let _ = c.workloads.clone().free(workload).await;
            }
        }
    });
}

/// Polls `f` every 50 ms until it returns true or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An initramfs layer (boot with `("EXTRA_LAYER", path)`) adding `files` (absolute path,
/// content, mode), their directories made 0755 (0700 for /etc/aurae/pki).
pub fn files_layer(path: &std::path::Path, files: &[(&str, &[u8], u32)]) {
    use auraed::cpio::Entry;
    let mut dirs: Vec<String> = Vec::new();
    for (f, _, _) in files {
        let mut d = std::path::Path::new(f).parent();
        let mut chain = Vec::new();
        while let Some(p) = d.filter(|p| p != &std::path::Path::new("/")) {
            chain.push(p.to_string_lossy().into_owned());
            d = p.parent();
        }
        for p in chain.into_iter().rev() {
            if !dirs.contains(&p) {
                dirs.push(p);
            }
        }
    }
    let mut entries: Vec<Entry> = dirs
        .into_iter()
        .map(|p| Entry::Dir {
            mode: if p == "/etc/aurae/pki" { 0o700 } else { 0o755 },
            path: p,
            uid: 0,
            gid: 0,
        })
        .collect();
    for (f, data, mode) in files {
        entries.push(Entry::File {
            path: (*f).to_owned(),
            data: data.to_vec(),
            mode: *mode,
            uid: 0,
            gid: 0,
        });
    }
    let mut buf = Vec::new();
    auraed::cpio::write_archive(&entries, &mut buf).expect("cpio");
    std::fs::write(path, buf).expect("write layer");
}

/// Client identities with roles, for tests of authorization: certificates minted with the
/// build's CA for `spiffe://aurae.local/client/NAME`, and an initramfs layer (boot with
/// `("EXTRA_LAYER", layer)`) whose policy.toml is the build's plus these entries.
pub struct TestRoles {
    dir: tempfile::TempDir,
    pub layer: PathBuf,
}

impl TestRoles {
    pub fn new(build: &std::path::Path, roles: &[(&str, auraed::pki::policy::Role)]) -> TestRoles {
        use auraed::cpio::Entry;
        use auraed::pki::{self, policy::Policy};
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = pki::read_pair(&build.join("pki"), "ca").expect("the build's CA");
        let mut policy = Policy::load(&build.join("pki")).expect("the build's policy");
        for (name, role) in roles {
            let id = pki::spiffe_id(pki::DEFAULT_TRUST_DOMAIN, &format!("client/{name}"));
            let m = pki::mint_leaf(&ca, &id, name, pki::LeafKind::Client, 1).expect("mint");
            pki::write_pair(dir.path(), name, &m).expect("write");
            policy.grant(&id, *role);
        }
        std::fs::copy(build.join("pki/ca.crt"), dir.path().join("ca.crt")).expect("ca.crt");
        let dirs = ["/etc", "/etc/aurae"].map(|p| Entry::Dir {
            path: p.into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
        let mut entries: Vec<Entry> = dirs.into_iter().collect();
        entries.push(Entry::Dir {
            path: "/etc/aurae/pki".into(),
            mode: 0o700,
            uid: 0,
            gid: 0,
        });
        entries.push(Entry::File {
            path: "/etc/aurae/pki/policy.toml".into(),
            data: policy.render().into_bytes(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        });
        let mut buf = Vec::new();
        auraed::cpio::write_archive(&entries, &mut buf).expect("cpio");
        let layer = dir.path().join("roles.cpio");
        std::fs::write(&layer, buf).expect("write layer");
        TestRoles { dir, layer }
    }

    /// The TLS files of client `name`.
    pub fn tls(&self, name: &str) -> TlsFiles {
        TlsFiles::in_dir(self.dir.path(), name)
    }
}
