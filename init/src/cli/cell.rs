//! `aer cell ...`: create (with limits and shared namespaces), and the shared lifecycle.

use super::print::print_cell;
use super::workload::{lifecycle, parse_bytes, usage, Op, StopArgs};
use super::CliError;
use crate::pb;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum CellCmd {
    /// Create a cell (cgroup + new namespaces).
    Create(Box<CellCreate>),
    Status {
        name: String,
    },
    /// SIGTERM (or --signal) to its processes, grace, then cgroup.kill.
    Stop(StopArgs),
    Wait {
        name: String,
    },
    /// Remove a stopped cell, its nested cells and their executables.
    Free {
        name: String,
    },
    Freeze {
        name: String,
    },
    Thaw {
        name: String,
    },
    /// Forward local ports into the cell's network: CELL [LOCAL:]PORT... until Ctrl-C.
    PortForward {
        name: String,
        #[arg(required = true)]
        ports: Vec<String>,
        /// Where to listen on this machine.
        #[arg(long, default_value = "127.0.0.1")]
        address: String,
    },
}

#[derive(Debug, Args)]
pub struct CellCreate {
    /// `name` or `parent/name`.
    name: String,
    #[command(flatten)]
    opts: CellOpts,
    #[command(flatten)]
    image: ImageOpts,
    /// Make the cell on the image's root but start nothing in it.
    #[arg(long, requires = "image")]
    no_entrypoint: bool,
    /// Arguments replacing the image's cmd (after `--`).
    #[arg(last = true, requires = "image")]
    args: Vec<String>,
}

/// A cell from an image (`aer cell create --image`, `aer run`).
#[derive(Debug, Args)]
pub struct ImageOpts {
    /// The image to run: REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:...
    #[arg(long)]
    pub image: Option<String>,
    /// When to pull it: if-not-present, always, never.
    #[arg(long, value_name = "POLICY", default_value = "if-not-present", requires = "image")]
    pub pull: String,
    /// Environment variable KEY=VALUE over the image's (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", requires = "image")]
    pub env: Vec<String>,
    /// Replace the image's entrypoint (and drop its cmd); `-- ARGS` follow it.
    #[arg(long, value_name = "PROGRAM", requires = "image")]
    pub entrypoint: Option<String>,
    /// Replace the image's user: uid, uid:gid, name or name:group.
    #[arg(long, requires = "image")]
    pub user: Option<String>,
    /// Replace the image's working directory.
    #[arg(long, requires = "image")]
    pub workdir: Option<String>,
    /// Publish the cell's TCP port CELL on the node's port HOST (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "HOST:CELL", requires = "image")]
    pub publish: Vec<String>,
    /// Registry user for the pull (with --password-stdin).
    #[arg(long, requires = "image")]
    pub username: Option<String>,
    /// Read the registry password from stdin (never from the command line).
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
}

impl ImageOpts {
    /// The request's image, with `args` replacing its cmd.
    pub fn request(&self, args: &[String], no_entrypoint: bool) -> Result<Option<pb::OciImage>, CliError> {
        let Some(reference) = &self.image else { return Ok(None) };
        let pull_policy = match self.pull.as_str() {
            "if-not-present" | "ifnotpresent" | "IfNotPresent" => pb::PullPolicy::IfNotPresent,
            "always" | "Always" => pb::PullPolicy::Always,
            "never" | "Never" => pb::PullPolicy::Never,
            other => {
                return Err(usage(format!(
                    "--pull '{other}': choose if-not-present, always or never"
                )))
            }
        };
        let credentials = match (&self.username, self.password_stdin) {
            (None, _) => None,
            (Some(u), true) => Some(pb::RegistryCredentials {
                username: u.clone(),
                password: super::image::password_from_stdin()?,
            }),
            (Some(_), false) => {
                return Err(usage(
                    "--username needs --password-stdin (a password on the command line would show in ps)",
                ))
            }
        };
        let mut ports = Vec::new();
        for p in &self.publish {
            let (host_port, container_port, protocol) = super::workload::parse_publish(p, "CELL")?;
            ports.push(pb::PortMapping {
                host_port,
                container_port,
                protocol,
            });
        }
        Ok(Some(pb::OciImage {
            reference: reference.clone(),
            args: args.to_vec(),
            ports,
            command: self.entrypoint.iter().cloned().collect(),
            env: super::exec::env_map(&self.env)?,
            pull_policy: pull_policy as i32,
            working_dir: self.workdir.clone().unwrap_or_default(),
            user: self.user.clone().unwrap_or_default(),
            no_entrypoint,
            credentials,
            ..Default::default()
        }))
    }
}

/// A cell's limits, namespaces and confinement.
#[derive(Debug, Args)]
pub struct CellOpts {
    /// cpu.weight (1..10000).
    #[arg(long)]
    cpu_weight: Option<u64>,
    /// cpu.max as QUOTA or QUOTA/PERIOD in microseconds (e.g. 50000/100000).
    #[arg(long)]
    cpu_max: Option<String>,
    /// cpuset.cpus (e.g. 0-1).
    #[arg(long)]
    cpus: Option<String>,
    /// cpuset.mems.
    #[arg(long)]
    mems: Option<String>,
    /// Bytes, with an optional K/M/G suffix (powers of 1024).
    #[arg(long)]
    memory_min: Option<String>,
    #[arg(long)]
    memory_low: Option<String>,
    #[arg(long)]
    memory_high: Option<String>,
    #[arg(long)]
    memory_max: Option<String>,
    #[arg(long)]
    swap_max: Option<String>,
    #[arg(long)]
    pids_max: Option<u64>,
    /// io.weight (1..10000).
    #[arg(long)]
    io_weight: Option<u64>,
    /// Host namespaces to share instead of new ones: pid,mount,net,ipc,uts,cgroup.
    #[arg(long, value_delimiter = ',')]
    share: Vec<String>,
    /// Capabilities to add to the default set (NET_ADMIN,SYS_PTRACE,... or ALL).
    #[arg(long, value_delimiter = ',')]
    cap_add: Vec<String>,
    /// Capabilities to drop from the default set (applied before --cap-add; ALL drops all).
    #[arg(long, value_delimiter = ',')]
    cap_drop: Vec<String>,
    /// seccomp profile: default, strict (no ptrace, vmsplice, SysV message
    /// queues; sockets unix/inet/inet6/netlink only), or unconfined (admin only).
    #[arg(long, default_value = "default")]
    seccomp: String,
    /// System calls to refuse on top of the profile (mkdir,ptrace,...).
    #[arg(long, value_delimiter = ',', value_name = "CALLS")]
    seccomp_deny: Vec<String>,
    /// The node's filesystem, every capability, no seccomp (admin only).
    #[arg(long)]
    privileged: bool,
    /// A user namespace of its own: root in the cell is an unprivileged uid on the node.
    #[arg(long)]
    userns: bool,
}

pub async fn cell(cmd: &CellCmd, target: &super::Target, as_json: bool) -> Result<(), CliError> {
    let k = pb::WorkloadKind::Cell;
    match cmd {
        CellCmd::Create(c) => create(c, target, as_json).await,
        CellCmd::Status { name } => lifecycle(target, k, name, Op::Status, as_json).await,
        CellCmd::Stop(s) => lifecycle(target, k, &s.name, Op::Stop(s), as_json).await,
        CellCmd::Wait { name } => lifecycle(target, k, name, Op::Wait, as_json).await,
        CellCmd::Free { name } => lifecycle(target, k, name, Op::Free, as_json).await,
        CellCmd::Freeze { name } => lifecycle(target, k, name, Op::Freeze, as_json).await,
        CellCmd::Thaw { name } => lifecycle(target, k, name, Op::Thaw, as_json).await,
        CellCmd::PortForward { name, ports, address } => {
            super::forward::port_forward(target, super::forward::Dest::Cell(name.clone()), ports, address).await
        }
    }
}

async fn create(c: &CellCreate, target: &super::Target, as_json: bool) -> Result<(), CliError> {
    let image = c.image.request(&c.args, c.no_entrypoint)?;
    let cell = request(&c.name, &c.opts, image)?;
    // A pull may take long: the caller's --timeout bounds only the connection then.
    let ch = if cell.image.is_some() {
        target.connect_unbounded().await?
    } else {
        target.connect().await?
    };
    let s = pb::runtime_client::RuntimeClient::new(ch)
        .run_cell(cell)
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    print_cell(&s, as_json);
    Ok(())
}

/// The RunCell request for cell `name`.
pub fn request(name: &str, c: &CellOpts, image: Option<pb::OciImage>) -> Result<pb::Cell, CliError> {
    let bytes = |flag: &str, v: &Option<String>| v.as_deref().map(|s| parse_bytes(flag, s)).transpose();
    let cpu_max = match &c.cpu_max {
        None => None,
        Some(s) => {
            let (q, p) = s.split_once('/').unwrap_or((s, "0"));
            let n = |x: &str| {
                x.parse::<u64>()
                    .map_err(|_| usage(format!("--cpu-max '{s}': use QUOTA or QUOTA/PERIOD in microseconds")))
            };
            Some(pb::CpuMax {
                quota_micros: n(q)?,
                period_micros: n(p)?,
            })
        }
    };
    let mut iso = pb::CellIsolation::default();
    for s in &c.share {
        match s.as_str() {
            "pid" => iso.share_host_pid = true,
            "mount" | "mnt" => iso.share_host_mount = true,
            "net" | "network" => iso.share_host_network = true,
            "ipc" => iso.share_host_ipc = true,
            "uts" => iso.share_host_uts = true,
            "cgroup" => iso.share_host_cgroup = true,
            other => {
                return Err(usage(format!(
                    "--share '{other}': choose from pid,mount,net,ipc,uts,cgroup"
                )))
            }
        }
    }
    let seccomp = match c.seccomp.as_str() {
        "default" => pb::SeccompProfile::Unspecified,
        "strict" => pb::SeccompProfile::Strict,
        "unconfined" => pb::SeccompProfile::Unconfined,
        other => {
            return Err(usage(format!(
                "--seccomp '{other}': choose default, strict or unconfined"
            )))
        }
    };
    Ok(pb::Cell {
        name: name.to_owned(),
        confinement: Some(pb::CellConfinement {
            cap_add: c.cap_add.clone(),
            cap_drop: c.cap_drop.clone(),
            seccomp: seccomp as i32,
            privileged: c.privileged,
            user_namespace: c.userns,
            seccomp_deny: c.seccomp_deny.clone(),
        }),
        resources: Some(pb::CellResources {
            cpu_weight: c.cpu_weight,
            cpu_max,
            cpuset_cpus: c.cpus.clone().unwrap_or_default(),
            cpuset_mems: c.mems.clone().unwrap_or_default(),
            memory_min_bytes: bytes("memory-min", &c.memory_min)?,
            memory_low_bytes: bytes("memory-low", &c.memory_low)?,
            memory_high_bytes: bytes("memory-high", &c.memory_high)?,
            memory_max_bytes: bytes("memory-max", &c.memory_max)?,
            swap_max_bytes: bytes("swap-max", &c.swap_max)?,
            pids_max: c.pids_max,
            io_weight: c.io_weight,
            io_max: Vec::new(),
        }),
        isolation: Some(iso),
        image,
    })
}
