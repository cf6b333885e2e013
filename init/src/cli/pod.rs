//! `aer pod ...`: pods from a manifest (YAML or TOML; field names as in the proto or as
//! Kubernetes writes them, flat or as a Kubernetes Pod object with `metadata` and `spec`)
//! or from flags for a one-container pod, and their lifecycle.

use super::exec::env_map;
use super::print::{phase_name, pod_json, ports_text, print_pod};
use super::workload::{
    lifecycle, parse_bytes, parse_isolation, parse_network, parse_publish, secs_to_millis, stream_logs, LogsArgs, Op,
    StopArgs,
};
use super::CliError;
use crate::pb;
use crate::runtime::pod::manifest::{from_manifest, restart_policy, ManifestError};
use clap::{Args, Subcommand};

fn usage(m: String) -> CliError {
    CliError::Usage(m)
}

impl From<ManifestError> for CliError {
    fn from(e: ManifestError) -> CliError {
        CliError::Usage(e.to_string())
    }
}

#[derive(Debug, Subcommand)]
pub enum PodCmd {
    /// Run a pod: `-f pod.toml`, or NAME --image REF [-p HOST:CONTAINER] [-e K=V] [-- ARGS].
    Run(RunArgs),
    /// List pods.
    Ls,
    /// A pod's phase, address, ports, containers (state, restarts, last end) and instance.
    Status { name: String },
    /// A container's output: POD [CONTAINER] (the only one when the pod has one); with
    /// --console, the console of the pod's instance (its VM's serial port, or its auraed's
    /// output).
    Logs {
        pod: String,
        container: Option<String>,
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        tail: Option<u64>,
        #[arg(long, conflicts_with = "container")]
        console: bool,
    },
    /// A command in a running container, attached: POD [CONTAINER] [-i] [-t] -- CMD ARGS...
    /// (the only container when the pod has one).
    Exec {
        pod: String,
        container: Option<String>,
        /// This terminal's stdin goes to the command (until EOF).
        #[arg(short = 'i', long)]
        interactive: bool,
        /// A terminal for the command (Ctrl-C and window size reach it).
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(required = true, last = true)]
        argv: Vec<String>,
    },
    /// Attach to a container's running entrypoint: its output from now on, with -i this
    /// terminal's stdin (the container must keep stdin: `stdin: true`). Ctrl-C detaches.
    Attach {
        pod: String,
        container: Option<String>,
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Raw terminal (the container must run on one: `tty: true`).
        #[arg(short = 't', long)]
        tty: bool,
    },
    /// Forward local ports to the pod's: POD [LOCAL:]PORT... until Ctrl-C.
    PortForward {
        pod: String,
        #[arg(required = true)]
        ports: Vec<String>,
        /// Where to listen on this machine.
        #[arg(long, default_value = "127.0.0.1")]
        address: String,
    },
    /// Stop: SIGTERM (or --signal) to every container, --grace-ms, then the instance.
    Stop(StopArgs),
    /// Wait until the pod has ended (its containers, or its instance).
    Wait { name: String },
    /// Remove an ended pod: its instance, cells, address and node ports.
    Free { name: String },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pod's name (with --image), or none with -f.
    name: Option<String>,
    /// A manifest: YAML (.yaml, .yml) or TOML (.toml); `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with = "image")]
    file: Option<std::path::PathBuf>,
    /// The one container's image.
    #[arg(long)]
    image: Option<String>,
    /// Publish a container port on the node: HOST:CONTAINER.
    #[arg(short = 'p', long = "publish", value_name = "HOST:CONTAINER")]
    publish: Vec<String>,
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Always, OnFailure or Never (default Always).
    #[arg(long)]
    restart: Option<String>,
    /// vm or cell (default: vm where KVM is usable, else cell).
    #[arg(long)]
    isolation: Option<String>,
    /// The container's memory limit (K/M/G suffix).
    #[arg(long)]
    memory: Option<String>,
    /// Seconds to wait for every container to run (default: the node's, 300 s).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// An extra interface (eth1, eth2, ... in order) on a named node bridge:
    /// BRIDGE=ADDRESS/PREFIX, e.g. lab0=192.168.50.2/24.
    #[arg(long = "network", value_name = "BRIDGE=ADDR/N")]
    networks: Vec<String>,
    /// The container's args (the image's cmd replaced).
    #[arg(last = true)]
    args: Vec<String>,
}

fn from_flags(a: &RunArgs) -> Result<pb::Pod, CliError> {
    let (Some(name), Some(image)) = (&a.name, &a.image) else {
        return Err(usage("aer pod run: give -f FILE, or NAME --image REF".into()));
    };
    let mut ports = Vec::new();
    for p in &a.publish {
        let (host_port, container_port, protocol) = parse_publish(p, "CONTAINER")?;
        ports.push(pb::ContainerPort {
            host_port,
            container_port,
            protocol,
        });
    }
    let limits = a
        .memory
        .as_deref()
        .map(|m| parse_bytes("memory", m))
        .transpose()?
        .map(|m| pb::ResourceList {
            cpu_millis: 0,
            memory_bytes: m,
        });
    Ok(pb::Pod {
        name: name.clone(),
        containers: vec![pb::Container {
            name: name.clone(),
            image: image.clone(),
            args: a.args.clone(),
            env: env_map(&a.env)?,
            ports,
            resources: Some(pb::ContainerResources { requests: None, limits }),
            ..Default::default()
        }],
        restart_policy: restart_policy(a.restart.as_deref())? as i32,
        isolation: parse_isolation("--isolation", a.isolation.as_deref())? as i32,
        networks: parse_network(&a.networks)?,
        ..Default::default()
    })
}

pub async fn pod(cmd: &PodCmd, target: &super::Target, as_json: bool) -> Result<(), CliError> {
    let k = pb::WorkloadKind::Pod;
    match cmd {
        PodCmd::Run(a) => {
            let mut req = match &a.file {
                Some(f) => {
                    let text = if f.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin()).map_err(|e| usage(format!("standard input: {e}")))?
                    } else {
                        std::fs::read_to_string(f).map_err(|e| usage(format!("{}: {e}", f.display())))?
                    };
                    if a.name.is_some()
                        || !a.publish.is_empty()
                        || !a.env.is_empty()
                        || !a.args.is_empty()
                        || !a.networks.is_empty()
                    {
                        return Err(usage(
                            "aer pod run -f FILE: the manifest says it all; drop NAME, -p, -e, --network and ARGS"
                                .into(),
                        ));
                    }
                    from_manifest(&text, &f.display().to_string())?
                }
                None => from_flags(a)?,
            };
            req.ready_timeout_millis = secs_to_millis("timeout", a.timeout)?;
            // RunPod returns once every container runs: an instance's boot, seconds.
            let p = pb::runtime_client::RuntimeClient::new(target.connect_unbounded().await?)
                .run_pod(req)
                .await
                .map_err(CliError::Remote)?
                .into_inner();
            print_pod(&p, as_json);
            Ok(())
        }
        PodCmd::Ls => {
            let listed = super::workload::list_kind(target, k).await?;
            let all = listed.iter().filter_map(|w| match w {
                pb::workload_status::Status::Pod(p) => Some(p),
                _ => None,
            });
            if as_json {
                println!("{}", serde_json::Value::Array(all.map(pod_json).collect()));
                return Ok(());
            }
            println!(
                "{:<24} {:<10} {:<7} {:<9} {:<16} PORTS",
                "NAME", "PHASE", "READY", "RESTARTS", "POD IP"
            );
            for p in all {
                let running = p
                    .containers
                    .iter()
                    .filter(|c| c.state == pb::ContainerState::Running as i32)
                    .count();
                let restarts: u32 = p.containers.iter().map(|c| c.restart_count).sum();
                println!(
                    "{:<24} {:<10} {:<7} {:<9} {:<16} {}",
                    p.name,
                    phase_name(p.phase),
                    format!("{running}/{}", p.containers.len()),
                    restarts,
                    p.pod_ip,
                    ports_text(p)
                );
            }
            Ok(())
        }
        PodCmd::Status { name } => lifecycle(target, k, name, Op::Status, as_json).await,
        PodCmd::Logs {
            pod,
            container,
            follow,
            tail,
            console,
        } => {
            let name = match (container, console) {
                (_, true) => pod.clone(),
                (Some(c), false) => format!("{pod}/{c}"),
                (None, false) => format!("{pod}/{}", only_container(target, pod).await?),
            };
            let l = LogsArgs {
                name,
                follow: *follow,
                tail: *tail,
            };
            let ch = if l.follow {
                target.connect_unbounded().await?
            } else {
                target.connect().await?
            };
            stream_logs(ch, k, &l.name, l.follow, l.tail).await
        }
        PodCmd::Exec {
            pod,
            container,
            interactive,
            tty,
            argv,
        } => {
            let container = named_or_only(target, pod, container.as_deref()).await?;
            let session = super::attach::Session {
                start: super::attach::Start::Exec(pb::ExecStart {
                    cell: container,
                    argv: argv.clone(),
                    pod: pod.clone(),
                    ..Default::default()
                }),
                stdin: *interactive,
                tty: *tty,
            };
            super::attach::attach(target, session).await
        }
        PodCmd::Attach {
            pod,
            container,
            interactive,
            tty,
        } => {
            let container = named_or_only(target, pod, container.as_deref()).await?;
            let session = super::attach::Session {
                start: super::attach::Start::Attach(pb::AttachStart {
                    executable: container,
                    pod: pod.clone(),
                    stdin: *interactive,
                }),
                stdin: *interactive,
                tty: *tty,
            };
            super::attach::attach(target, session).await
        }
        PodCmd::PortForward { pod, ports, address } => {
            super::forward::port_forward(target, super::forward::Dest::Pod(pod.clone()), ports, address).await
        }
        PodCmd::Stop(s) => lifecycle(target, k, &s.name, Op::Stop(s), as_json).await,
        PodCmd::Wait { name } => lifecycle(target, k, name, Op::Wait, as_json).await,
        PodCmd::Free { name } => lifecycle(target, k, name, Op::Free, as_json).await,
    }
}

/// The container named, else the pod's one container (`aer pod exec|attach POD`).
async fn named_or_only(target: &super::Target, pod: &str, container: Option<&str>) -> Result<String, CliError> {
    match container {
        Some(c) => Ok(c.to_owned()),
        None => only_container(target, pod).await,
    }
}

/// The pod's one container, for `aer pod logs|exec|attach POD`.
async fn only_container(target: &super::Target, pod: &str) -> Result<String, CliError> {
    let w = pb::workloads_client::WorkloadsClient::new(target.connect().await?)
        .status(pb::WorkloadRef {
            kind: pb::WorkloadKind::Pod as i32,
            name: pod.to_owned(),
        })
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    let Some(pb::workload_status::Status::Pod(p)) = w.status else {
        return Err(usage(format!("'{pod}' is not a pod")));
    };
    match p.containers.as_slice() {
        [one] => Ok(one.name.clone()),
        many => Err(usage(format!(
            "pod '{pod}' has {} containers; name one: {}",
            many.len(),
            many.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}
