//! `aer`, the Aurae client: the same binary as auraed (run as `aer`, or `auraed aer ...`).
//!
//! Exit codes: 0 success; 1 the node answered with an error (or NOT_SERVING);
//! 2 usage or configuration error; 3 the node could not be reached (connection or TLS);
//! 4 the awaited executable did not exit 0 (`exec --wait`, `exec -f`, `wait`).

mod attach;
mod cell;
pub mod config;
mod events;
mod exec;
mod fleet;
mod forward;
mod image;
mod instance;
mod metrics;
mod node;
mod pod;
mod print;
mod run;
mod vm;
pub mod workload;

use crate::pb;
use crate::pki::tls::{ServerId, TlsConnector, TlsFiles};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A connection to a node, with the `aurae-instance` header set when the call is for a
/// descendant (`--instance a/b`).
pub type Conn = tonic::service::interceptor::InterceptedService<Channel, InstanceHeader>;

/// Adds `aurae-instance: PATH` to every call (see server/forward.rs).
#[derive(Debug, Clone)]
pub struct InstanceHeader(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for InstanceHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(aurae_proto::INSTANCE_HEADER, v.clone());
        }
        Ok(req)
    }
}

#[derive(Debug, Parser)]
#[command(name = "aer", version, about = "Aurae client: talk to an auraed node over mTLS")]
pub struct Aer {
    /// Config file (default: $AURAE_CONFIG, else ~/.config/aurae/aer.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Node address, HOST:PORT.
    #[arg(long, global = true, conflicts_with = "nodes")]
    addr: Option<String>,
    /// Run the command on each of these nodes at once (HOST[:PORT],...; port 8443 if
    /// none): each node's output under its name; the exit is non-zero if any failed, and
    /// aer says which.
    #[arg(long, global = true, value_name = "HOST[:PORT],...")]
    nodes: Option<String>,
    /// Like --nodes, with the nodes the config file lists (`nodes = ["HOST[:PORT]", ...]`).
    #[arg(long, global = true, conflicts_with_all = ["nodes", "addr"])]
    all_nodes: bool,
    /// CA certificate that signed the node's certificate.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// Name to verify in the node's certificate (default: the host part of --addr).
    #[arg(long, global = true)]
    server_name: Option<String>,
    /// The SPIFFE ID the node must present (default: any node the root CA certified,
    /// spiffe://DOMAIN/node/NAME; a spawned instance is reached with --instance instead).
    #[arg(long, global = true)]
    server_id: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Talk to a spawned instance through this node (and its ancestors): `child` or
    /// `child/grandchild`.
    #[arg(long, global = true)]
    instance: Option<String>,
    /// Seconds to wait for the node to answer (connection, TLS handshake and each call;
    /// fractions allowed).
    #[arg(long, global = true, default_value_t = 10.0)]
    timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The node itself.
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// grpc.health.v1 status (exit 1 unless SERVING).
    Health {
        /// Service to ask about ("" = the whole node).
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Run an executable: aer exec NAME [--cell C] [-e K=V] [--wait|-f] -- PROGRAM ARGS...;
    /// with -i/-t, a process attached to this terminal: aer exec -it CELL -- sh
    Exec(exec::ExecArgs),
    /// A cell from an image, its entrypoint running (like docker run):
    /// aer run NAME --image REF [-e K=V] [-it] [-d] [--rm] -- [ARGS]
    Run(Box<run::RunArgs>),
    /// Attach to a running executable (a cell's entrypoint: the cell's name): its output
    /// from now on; with -i this terminal's stdin (it must have been started with stdin).
    /// Ctrl-C detaches; it runs on. aer exits with its code if it ends meanwhile.
    Attach {
        name: String,
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Raw terminal: every key (Ctrl-C too) goes to it, window sizes follow (it must
        /// have been started with a terminal: Executable.tty).
        #[arg(short = 't', long)]
        tty: bool,
    },
    /// What happens to workloads (created, started, exited, killed, failed, freed), a line
    /// each, until Ctrl-C; a broken stream resumes after the last event printed.
    Events {
        /// Start after this event number (0: the oldest the node holds).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only events from now on.
        #[arg(long, conflicts_with = "after")]
        from_now: bool,
    },
    /// The node's metrics as a Prometheus server scrapes them (GET /metrics over HTTP/1.1,
    /// this client's certificate; reader role).
    Metrics,
    /// List cells and executables.
    Ps,
    /// An executable's status.
    Status { name: String },
    /// An executable's stdout and stderr.
    Logs(workload::LogsArgs),
    /// Stop an executable: signal, grace period, then cgroup.kill.
    Stop(workload::StopArgs),
    /// Wait for an executable to end (exit 4 unless it exited 0).
    Wait { name: String },
    /// Forget an ended executable: its cgroup, logs and (if private) its cell.
    Free { name: String },
    /// Cells: create, status, stop, wait, free, freeze, thaw.
    #[command(subcommand)]
    Cell(cell::CellCmd),
    /// Virtual machines run by auraed's VMM: run, ls, status, logs, stop, wait, free.
    #[command(subcommand)]
    Vm(vm::VmCmd),
    /// OCI images on the node: pull, ls, status, rm.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Boot a copy of auraed in a microVM; reach it with `aer --instance NAME ...`.
    Spawn(instance::SpawnArgs),
    /// Spawned instances: ls, status, logs, stop, wait, free.
    #[command(subcommand)]
    Instance(instance::InstanceCmd),
    /// Pods (containers sharing a network, in an instance of their own): run, ls, status,
    /// logs, stop, wait, free.
    #[command(subcommand)]
    Pod(pod::PodCmd),
}

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub enum CliError {
    Usage(String),
    Connect(String),
    Remote(tonic::Status),
    /// The workload ran, but did not exit 0.
    Workload(String),
    /// An attached process ended with this code (`aer run`, `aer exec -i`): aer leaves
    /// with the same, saying nothing more.
    Exit(u8),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Remote(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Connect(_) => 3,
            CliError::Workload(_) => 4,
            CliError::Exit(c) => *c,
        }
    }
}

impl CliError {
    /// How an attached or awaited process ended, as aer's own exit: Ok for code 0, its
    /// code, 128 + N for signal N; None when neither is known.
    pub fn from_exit(code: Option<i32>, signal: Option<i32>) -> Option<Result<(), CliError>> {
        match (code, signal) {
            (Some(0), _) => Some(Ok(())),
            (Some(c), _) => Some(Err(CliError::Exit(c.clamp(1, 255) as u8))),
            (None, Some(sig)) => Some(Err(CliError::Exit((128 + sig).clamp(1, 255) as u8))),
            (None, None) => None,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "{m}"),
            CliError::Connect(m) => write!(f, "cannot reach the node: {m}"),
            CliError::Remote(s) if s.code() == tonic::Code::PermissionDenied => {
                write!(f, "permission denied: {}", s.message())
            }
            CliError::Remote(s) => write!(f, "{:?}: {}", s.code(), s.message()),
            CliError::Workload(m) => write!(f, "{m}"),
            CliError::Exit(c) => write!(f, "exit code {c}"),
        }
    }
}

/// What this client lets a node send on one stream before it reads (HTTP/2's window).
const RECEIVE_WINDOW: u32 = 1 << 20;

/// How to reach a node: resolved from flags and config.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: String,
    pub tls: TlsFiles,
    pub server_name: String,
    /// The SPIFFE ID the node must present; None: any node the root certified.
    pub server_id: Option<String>,
    pub timeout: Duration,
    /// `a/b`: the call is for instance b of instance a of this node.
    pub instance: Option<String>,
}

impl Target {
    /// Connects with mTLS; every call is bounded by `timeout`.
    pub async fn connect(&self) -> Result<Conn, CliError> {
        self.connect_with(Some(self.timeout)).await
    }

    /// Connects with mTLS for calls that may rightly take long (wait, follow, stop).
    pub async fn connect_unbounded(&self) -> Result<Conn, CliError> {
        self.connect_with(None).await
    }

    async fn connect_with(&self, call_timeout: Option<Duration>) -> Result<Conn, CliError> {
        let header = match &self.instance {
            None => None,
            Some(p) => Some(
                p.parse()
                    .map_err(|_| CliError::Usage(format!("--instance '{p}': use names like a/b")))?,
            ),
        };
        let ch = self.channel(call_timeout).await?;
        Ok(tonic::service::interceptor::InterceptedService::new(
            ch,
            InstanceHeader(header),
        ))
    }

    /// This client's TLS configuration: its certificate, and the node it must reach.
    fn tls_config(&self) -> Result<rustls::ClientConfig, CliError> {
        let material = self.tls.load().map_err(|e| CliError::Usage(e.to_string()))?;
        let expect = match &self.server_id {
            Some(id) => ServerId::Exact(id.clone()),
            None => ServerId::TopNode,
        };
        material
            .checked_client_config(expect)
            .map_err(|e| CliError::Usage(format!("TLS config: {e}")))
    }

    async fn channel(&self, call_timeout: Option<Duration>) -> Result<Channel, CliError> {
        let config = self.tls_config()?;
        let connector = TlsConnector::new(&self.addr, &self.server_name, config)
            .map_err(|e| CliError::Usage(format!("--server-name: {e}")))?;
        // Plain "http": the connector does TLS itself, checking the node's SPIFFE ID too.
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| CliError::Usage(format!("--addr '{}': {e}", self.addr)))?
            .connect_timeout(self.timeout)
            // HTTP/2's default 64 KiB receive window holds a download (a port-forward, a
            // followed log) to one window per round trip; this client can buffer more.
            .initial_stream_window_size(Some(RECEIVE_WINDOW))
            .initial_connection_window_size(Some(2 * RECEIVE_WINDOW));
        let endpoint = match call_timeout {
            Some(t) => endpoint.timeout(t),
            None => endpoint,
        };
        // connect_timeout bounds only the TCP connect; a forwarding proxy (QEMU's user
        // network) accepts at once and may then hold the TLS handshake for seconds.
        match tokio::time::timeout(self.timeout, endpoint.connect_with_connector(connector)).await {
            Ok(r) => r.map_err(|e| CliError::Connect(format!("{}: {}", self.addr, crate::error_chain(&e)))),
            Err(_) => Err(CliError::Connect(format!(
                "{}: no answer within {:.1} s",
                self.addr,
                self.timeout.as_secs_f64()
            ))),
        }
    }
}

fn resolve(a: &Aer) -> Result<Target, CliError> {
    let file = match config::FileConfig::locate(a.config.as_deref()) {
        Some(p) => config::FileConfig::load(&p).map_err(|e| CliError::Usage(e.to_string()))?,
        None => config::FileConfig::default(),
    };
    let need = |flag: Option<&PathBuf>, file: Option<PathBuf>, name: &str| {
        flag.cloned().or(file).ok_or_else(|| {
            CliError::Usage(format!("no {name} given: pass --{name} FILE or set `{name} = ...` in the config file (--config / $AURAE_CONFIG)"))
        })
    };
    let addr = a
        .addr
        .clone()
        .or(file.address)
        .unwrap_or_else(|| format!("127.0.0.1:{}", crate::DEFAULT_PORT));
    let host = addr
        .rsplit_once(':')
        .map_or(addr.as_str(), |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']');
    let server_name = a
        .server_name
        .clone()
        .or(file.server_name)
        .unwrap_or_else(|| host.to_owned());
    let server_id = a.server_id.clone().or(file.server_id);
    Ok(Target {
        tls: TlsFiles {
            ca: need(a.ca.as_ref(), file.ca, "ca")?,
            cert: need(a.cert.as_ref(), file.cert, "cert")?,
            key: need(a.key.as_ref(), file.key, "key")?,
        },
        addr,
        server_name,
        server_id,
        timeout: Duration::try_from_secs_f64(a.timeout)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| CliError::Usage(format!("--timeout {}: give a positive number of seconds", a.timeout)))?,
        instance: a.instance.clone(),
    })
}

/// Entry point; `args` includes argv[0].
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // `aer ps | head` should end quietly when head does, like any other CLI (Rust ignores
    // SIGPIPE by default, and printing then panics).
    crate::os::default_sigpipe();
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let a = match Aer::try_parse_from(&args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // Each node's run has no standard input: one-shot commands, not attached ones.
    let listed = if a.all_nodes {
        match fleet::config_nodes(a.config.as_deref()) {
            Ok(list) => Some(list),
            Err(e) => {
                eprintln!("aer: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        a.nodes.clone()
    };
    if let Some(list) = &listed {
        return match fleet::parse_nodes(list) {
            Ok(nodes) => fleet::fan_out(&args, &nodes, a.json),
            Err(e) => {
                eprintln!("aer: {e}");
                ExitCode::from(2)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(run(&a));
    // A read of stdin may still be blocked in its thread (aer run -i): do not wait for it.
    rt.shutdown_background();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Exit(c)) => ExitCode::from(c),
        Err(e) => {
            eprintln!("aer: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(a: &Aer) -> Result<(), CliError> {
    use workload::Op;
    let target = resolve(a)?;
    let exe = pb::WorkloadKind::Executable;
    match &a.command {
        Command::Exec(e) => exec::exec(e, &target, a.json).await,
        Command::Events { after, from_now } => events::events(&target, *after, *from_now, a.json).await,
        Command::Attach { name, interactive, tty } => {
            let session = attach::Session {
                start: attach::Start::Attach(pb::AttachStart {
                    executable: name.clone(),
                    stdin: *interactive,
                    ..Default::default()
                }),
                stdin: *interactive,
                tty: *tty,
            };
            attach::attach(&target, session).await
        }
        Command::Run(r) => run::run(r, &target, a.json).await,
        Command::Metrics => metrics::metrics(&target).await,
        Command::Ps => exec::ps(target.connect().await?, a.json).await,
        Command::Status { name } => workload::lifecycle(&target, exe, name, Op::Status, a.json).await,
        Command::Logs(l) => exec::logs(l, &target).await,
        Command::Stop(s) => workload::lifecycle(&target, exe, &s.name, Op::Stop(s), a.json).await,
        Command::Wait { name } => workload::lifecycle(&target, exe, name, Op::Wait, a.json).await,
        Command::Free { name } => workload::lifecycle(&target, exe, name, Op::Free, a.json).await,
        Command::Cell(c) => cell::cell(c, &target, a.json).await,
        Command::Vm(v) => vm::vm(v, &target, a.json).await,
        Command::Image(i) => image::image(i, &target, a.json).await,
        Command::Spawn(s) => instance::spawn(s, &target, a.json).await,
        Command::Instance(i) => instance::instance(i, &target, a.json).await,
        Command::Pod(p) => pod::pod(p, &target, a.json).await,
        Command::Health { service } => node::health(target.connect().await?, service, a.json).await,
        Command::Node(cmd) => node::node(target.connect().await?, cmd, a.json).await,
    }
}
