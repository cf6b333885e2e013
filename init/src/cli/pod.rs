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
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

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

/// A Kubernetes quantity ("500m", "64Mi", "1G", 2) or a plain number.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
enum Quantity {
    Number(u64),
    Fraction(f64),
    Text(String),
}

impl Quantity {
    fn bytes(&self, field: &str) -> Result<u64, CliError> {
        match self {
            Quantity::Number(n) => Ok(*n),
            Quantity::Fraction(f) => Err(usage(format!("{field}: {f} is not a whole number of bytes"))),
            Quantity::Text(t) => {
                let t = t.trim();
                let units: [(&str, u64); 8] = [
                    ("Ki", 1 << 10),
                    ("Mi", 1 << 20),
                    ("Gi", 1 << 30),
                    ("Ti", 1 << 40),
                    ("k", 1000),
                    ("M", 1_000_000),
                    ("G", 1_000_000_000),
                    ("T", 1_000_000_000_000),
                ];
                let (num, mult) = units
                    .iter()
                    .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n, *m)))
                    .unwrap_or((t, 1));
                num.trim()
                    .parse::<u64>()
                    .ok()
                    .and_then(|n| n.checked_mul(mult))
                    .ok_or_else(|| usage(format!("{field}: '{t}' is not a size like 64Mi, 1Gi or 1048576")))
            }
        }
    }

    fn millicpus(&self, field: &str) -> Result<u64, CliError> {
        match self {
            Quantity::Number(n) => Ok(n * 1000),
            Quantity::Fraction(c) if *c >= 0.0 && *c <= 1e6 => Ok((c * 1000.0).round() as u64),
            Quantity::Fraction(c) => Err(usage(format!("{field}: {c} is not a CPU amount"))),
            Quantity::Text(t) => {
                let t = t.trim();
                let parsed = match t.strip_suffix('m') {
                    Some(m) => m.parse::<u64>().ok(),
                    None => t
                        .parse::<f64>()
                        .ok()
                        .filter(|c| *c >= 0.0)
                        .map(|c| (c * 1000.0).round() as u64),
                };
                parsed.ok_or_else(|| usage(format!("{field}: '{t}' is not a CPU amount like 500m or 1.5")))
            }
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResourceListFile {
    #[serde(default)]
    cpu: Option<Quantity>,
    #[serde(default)]
    memory: Option<Quantity>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResourcesFile {
    #[serde(default)]
    requests: Option<ResourceListFile>,
    #[serde(default)]
    limits: Option<ResourceListFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortFile {
    #[serde(alias = "containerPort")]
    container_port: u32,
    #[serde(default, alias = "hostPort")]
    host_port: u32,
    #[serde(default)]
    protocol: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MountFile {
    name: String,
    #[serde(alias = "mountPath")]
    mount_path: String,
    #[serde(default, alias = "readOnly")]
    read_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvVar {
    name: String,
    #[serde(default)]
    value: String,
}

/// `env` as a table (`{ A = "1" }`) or as Kubernetes' list of name/value.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EnvFile {
    Map(BTreeMap<String, String>),
    List(Vec<EnvVar>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerFile {
    name: String,
    image: String,
    #[serde(default, alias = "imagePullPolicy")]
    image_pull_policy: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Option<EnvFile>,
    #[serde(default, alias = "workingDir")]
    working_dir: String,
    #[serde(default)]
    ports: Vec<PortFile>,
    #[serde(default)]
    resources: Option<ResourcesFile>,
    #[serde(default, alias = "volumeMounts")]
    volume_mounts: Vec<MountFile>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EmptyDirFile {
    /// "Memory" for a tmpfs of its own.
    #[serde(default)]
    medium: String,
    #[serde(default, alias = "sizeLimit")]
    size_limit: Option<Quantity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeFile {
    name: String,
    #[serde(default, alias = "emptyDir")]
    empty_dir: Option<EmptyDirFile>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PodResourcesFile {
    #[serde(default)]
    vcpus: u32,
    #[serde(default)]
    memory: Option<Quantity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    bridge: String,
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PodFile {
    name: String,
    containers: Vec<ContainerFile>,
    #[serde(default)]
    volumes: Vec<VolumeFile>,
    #[serde(default, alias = "restartPolicy")]
    restart_policy: Option<String>,
    #[serde(default)]
    resources: Option<PodResourcesFile>,
    #[serde(default)]
    isolation: Option<String>,
    #[serde(default)]
    networks: Vec<NetworkFile>,
}

fn usage(m: String) -> CliError {
    CliError::Usage(m)
}

fn restart_policy(s: Option<&str>) -> Result<pb::RestartPolicy, CliError> {
    Ok(match s.map(|s| s.to_ascii_lowercase().replace(['_', '-'], "")) {
        None => pb::RestartPolicy::Unspecified,
        Some(s) if s == "always" => pb::RestartPolicy::Always,
        Some(s) if s == "onfailure" => pb::RestartPolicy::OnFailure,
        Some(s) if s == "never" => pb::RestartPolicy::Never,
        Some(o) => {
            return Err(usage(format!(
                "restart policy '{o}': choose Always, OnFailure or Never"
            )))
        }
    })
}

fn pull_policy(s: Option<&str>) -> Result<pb::PullPolicy, CliError> {
    Ok(
        match s.map(|s| s.to_ascii_lowercase().replace(['_', '-'], "")).as_deref() {
            None => pb::PullPolicy::Unspecified,
            Some("ifnotpresent") => pb::PullPolicy::IfNotPresent,
            Some("always") => pb::PullPolicy::Always,
            Some("never") => pb::PullPolicy::Never,
            Some(o) => {
                return Err(usage(format!(
                    "image_pull_policy '{o}': choose IfNotPresent, Always or Never"
                )))
            }
        },
    )
}

fn resource_list(field: &str, r: Option<ResourceListFile>) -> Result<Option<pb::ResourceList>, CliError> {
    let Some(r) = r else { return Ok(None) };
    Ok(Some(pb::ResourceList {
        cpu_millis: r
            .cpu
            .map(|q| q.millicpus(&format!("{field}.cpu")))
            .transpose()?
            .unwrap_or(0),
        memory_bytes: r
            .memory
            .map(|q| q.bytes(&format!("{field}.memory")))
            .transpose()?
            .unwrap_or(0),
    }))
}

/// The fields of a Kubernetes Pod object's `metadata` that mean nothing here and are
/// ignored; any other is refused, as it would be silently lost.
const IGNORED_METADATA: [&str; 2] = ["labels", "annotations"];

/// A manifest's text: YAML or TOML by the file's extension (standard input, or another
/// extension: TOML if it parses as TOML, else YAML), flat or a Kubernetes Pod object.
fn parse_pod_file(text: &str, path: &str) -> Result<PodFile, CliError> {
    let ext = std::path::Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let yaml = match ext.as_deref() {
        Some("yaml" | "yml" | "json") => true,
        Some("toml") => false,
        _ => toml::from_str::<Value>(text).is_err(),
    };
    let value: Value = if yaml {
        serde_yaml_ng::from_str(text).map_err(|e| usage(format!("{path} (YAML): {e}")))?
    } else {
        toml::from_str(text).map_err(|e| usage(format!("{path} (TOML): {e}")))?
    };
    let value = from_kubernetes(value).map_err(|e| usage(format!("{path}: {e}")))?;
    serde_json::from_value(value).map_err(|e| usage(format!("{path}: {e}")))
}

/// A Kubernetes Pod object (`apiVersion`, `kind: Pod`, `metadata.name`, `spec`) as the
/// flat form: the spec with the name. A flat manifest passes unchanged.
fn from_kubernetes(v: Value) -> Result<Value, String> {
    let Value::Object(mut top) = v else {
        return Err("a manifest is a table of fields (name, containers, ...)".into());
    };
    let kube = ["apiVersion", "kind", "metadata", "spec"];
    if !kube.iter().any(|k| top.contains_key(*k)) {
        return Ok(Value::Object(top));
    }
    match top.remove("kind") {
        None => {}
        Some(Value::String(k)) if k == "Pod" => {}
        Some(k) => return Err(format!("kind {k}: aer pod run takes a Pod")),
    }
    match top.remove("apiVersion") {
        None => {}
        Some(Value::String(a)) if a == "v1" => {}
        Some(a) => return Err(format!("apiVersion {a}: a Pod is v1")),
    }
    let mut meta = match top.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => return Err("metadata.name: a Kubernetes Pod object names the pod there".into()),
    };
    let Some(name) = meta.remove("name") else {
        return Err("metadata.name: missing".into());
    };
    if let Some(k) = meta.keys().find(|k| !IGNORED_METADATA.contains(&k.as_str())) {
        return Err(format!(
            "metadata.{k}: not supported (of metadata, only name is read; labels and annotations are ignored)"
        ));
    }
    let mut spec = match top.remove("spec") {
        Some(Value::Object(s)) => s,
        _ => return Err("spec: a Kubernetes Pod object has its containers there".into()),
    };
    if let Some(k) = top.keys().next() {
        return Err(format!("{k}: unknown beside apiVersion, kind, metadata and spec"));
    }
    if spec.contains_key("name") {
        return Err("spec.name: the name is metadata.name".into());
    }
    spec.insert("name".into(), name);
    Ok(Value::Object(spec))
}

/// A manifest's text as a `Pod` request.
fn from_manifest(text: &str, path: &str) -> Result<pb::Pod, CliError> {
    let f = parse_pod_file(text, path)?;
    let mut containers = Vec::with_capacity(f.containers.len());
    for (n, c) in f.containers.into_iter().enumerate() {
        let field = format!("{path}: containers[{n}]");
        let r = c.resources.unwrap_or_default();
        containers.push(pb::Container {
            name: c.name,
            image: c.image,
            image_pull_policy: pull_policy(c.image_pull_policy.as_deref())? as i32,
            command: c.command,
            args: c.args,
            env: match c.env {
                None => Default::default(),
                Some(EnvFile::Map(m)) => m.into_iter().collect(),
                Some(EnvFile::List(l)) => l.into_iter().map(|v| (v.name, v.value)).collect(),
            },
            working_dir: c.working_dir,
            ports: c
                .ports
                .into_iter()
                .map(|p| pb::ContainerPort {
                    container_port: p.container_port,
                    host_port: p.host_port,
                    protocol: p.protocol,
                })
                .collect(),
            resources: Some(pb::ContainerResources {
                requests: resource_list(&format!("{field}.resources.requests"), r.requests)?,
                limits: resource_list(&format!("{field}.resources.limits"), r.limits)?,
            }),
            volume_mounts: c
                .volume_mounts
                .into_iter()
                .map(|m| pb::VolumeMount {
                    name: m.name,
                    mount_path: m.mount_path,
                    read_only: m.read_only,
                })
                .collect(),
            image_pull_credentials: None,
        });
    }
    let mut volumes = Vec::with_capacity(f.volumes.len());
    for (n, v) in f.volumes.into_iter().enumerate() {
        let d = v.empty_dir.unwrap_or_default();
        let memory = match d.medium.as_str() {
            "" => false,
            m if m.eq_ignore_ascii_case("memory") => true,
            m => {
                return Err(usage(format!(
                    "{path}: volumes[{n}].empty_dir.medium '{m}': use \"Memory\" or leave it out"
                )))
            }
        };
        volumes.push(pb::Volume {
            name: v.name,
            empty_dir: Some(pb::EmptyDirVolume {
                memory,
                size_limit_bytes: d
                    .size_limit
                    .map(|q| q.bytes(&format!("{path}: volumes[{n}].empty_dir.size_limit")))
                    .transpose()?
                    .unwrap_or(0),
            }),
        });
    }
    let r = f.resources.unwrap_or_default();
    Ok(pb::Pod {
        name: f.name,
        containers,
        volumes,
        restart_policy: restart_policy(f.restart_policy.as_deref())? as i32,
        resources: Some(pb::PodResources {
            vcpus: r.vcpus,
            memory_bytes: r
                .memory
                .map(|q| q.bytes(&format!("{path}: resources.memory")))
                .transpose()?
                .unwrap_or(0),
        }),
        isolation: parse_isolation(&format!("{path}: isolation"), f.isolation.as_deref())? as i32,
        ready_timeout_millis: 0,
        networks: (f.networks.into_iter())
            .map(|n| pb::NetworkAttachment {
                bridge: n.bridge,
                address: n.address,
                interface: String::new(),
            })
            .collect(),
    })
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
                println!("{}", Value::Array(all.map(pod_json).collect()));
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
        PodCmd::Stop(s) => lifecycle(target, k, &s.name, Op::Stop(s), as_json).await,
        PodCmd::Wait { name } => lifecycle(target, k, name, Op::Wait, as_json).await,
        PodCmd::Free { name } => lifecycle(target, k, name, Op::Free, as_json).await,
    }
}

/// The pod's one container, for `aer pod logs POD`.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The manual's example manifest (docs/pods.md) is one `aer pod run -f` takes.
    #[test]
    fn the_manuals_manifest_parses() {
        let readme = include_str!("../../../docs/pods.md");
        let start = readme.find("# site.toml").unwrap();
        let end = start + readme[start..].find("```").unwrap();
        let p = from_manifest(&readme[start..end], "docs/pods.md").unwrap();
        assert_eq!(p.name, "site");
        assert_eq!(p.containers.len(), 2);
        assert_eq!(p.containers[1].env.get("TZ").map(String::as_str), Some("UTC"));
        assert!(p.volumes[0].empty_dir.unwrap().memory);
    }

    /// What both site manifests (TOML and YAML) say.
    fn assert_site(p: &pb::Pod) {
        assert_eq!(p.name, "site");
        assert_eq!(p.restart_policy, pb::RestartPolicy::OnFailure as i32);
        let web = &p.containers[0];
        assert_eq!((web.ports[0].container_port, web.ports[0].host_port), (80, 8080));
        let r = web.resources.as_ref().unwrap();
        assert_eq!(r.limits.as_ref().unwrap().cpu_millis, 500);
        assert_eq!(r.limits.as_ref().unwrap().memory_bytes, 64 << 20);
        assert_eq!(r.requests.as_ref().unwrap().cpu_millis, 250);
        assert!(web.volume_mounts[0].read_only);
        assert_eq!(p.containers[1].env.get("A").map(String::as_str), Some("1"));
    }

    #[test]
    fn a_manifest_reads_with_proto_or_kubernetes_names() {
        let text = r#"
name = "site"
restartPolicy = "OnFailure"
isolation = "cell"

[[containers]]
name = "web"
image = "10.0.2.100:5000/busybox:1"
command = ["httpd", "-f", "-p", "80", "-h", "/www"]
ports = [{ containerPort = 80, hostPort = 8080 }]
resources = { limits = { cpu = "500m", memory = "64Mi" }, requests = { memory = "32Mi", cpu = 0.25 } }
volumeMounts = [{ name = "www", mountPath = "/www", readOnly = true }]

[[containers]]
name = "side"
image = "10.0.2.100:5000/busybox:1"
env = [{ name = "A", value = "1" }]
volume_mounts = [{ name = "www", mount_path = "/www" }]

[[volumes]]
name = "www"
emptyDir = { medium = "Memory", sizeLimit = "16Mi" }
"#;
        let p = from_manifest(text, "pod.toml").unwrap();
        assert_site(&p);
        assert_eq!(p.isolation, pb::IsolationKind::Cell as i32);
        let v = p.volumes[0].empty_dir.as_ref().unwrap();
        assert!(v.memory);
        assert_eq!(v.size_limit_bytes, 16 << 20);
        let bad = from_manifest("name = \"x\"\ncontainers = []\nrestart = \"x\"\n", "p.toml").unwrap_err();
        assert!(bad.to_string().contains("unknown field `restart`"), "{bad}");
        let bad = from_manifest(
            "name = \"x\"\n[[containers]]\nname = \"a\"\nimage = \"i\"\nresources = { limits = { memory = \"lots\" } }\n",
            "p.toml",
        )
        .unwrap_err();
        assert!(
            bad.to_string()
                .contains("containers[0].resources.limits.memory: 'lots'"),
            "{bad}"
        );
    }

    /// What a Kubernetes user writes from memory: a Pod object in YAML.
    #[test]
    fn a_kubernetes_pod_in_yaml_reads_as_the_same_request() {
        let yaml = r#"
apiVersion: v1
kind: Pod
metadata:
  name: site
  labels: { app: site }
spec:
  restartPolicy: OnFailure
  networks:
    - bridge: lab0
      address: 192.168.50.2/24
  containers:
    - name: web
      image: 10.0.2.100:5000/busybox:1
      command: ["httpd", "-f", "-p", "80", "-h", "/www"]
      ports:
        - containerPort: 80
          hostPort: 8080
      resources:
        limits: { cpu: 500m, memory: 64Mi }
        requests: { cpu: 0.25 }
      volumeMounts:
        - name: www
          mountPath: /www
          readOnly: true
    - name: side
      image: 10.0.2.100:5000/busybox:1
      env:
        - name: A
          value: "1"
  volumes:
    - name: www
      emptyDir: { medium: Memory, sizeLimit: 16Mi }
"#;
        let p = from_manifest(yaml, "pod.yaml").unwrap();
        assert_site(&p);
        assert_eq!(p.volumes[0].empty_dir.as_ref().unwrap().size_limit_bytes, 16 << 20);
        assert_eq!(
            (p.networks[0].bridge.as_str(), p.networks[0].address.as_str()),
            ("lab0", "192.168.50.2/24")
        );
        // Flat YAML, and TOML from standard input (no extension), read the same.
        let flat = "name: one\ncontainers:\n  - name: c\n    image: i\n";
        assert_eq!(from_manifest(flat, "p.yml").unwrap().containers[0].image, "i");
        let toml = "name = \"one\"\n[[containers]]\nname = \"c\"\nimage = \"i\"\n";
        assert_eq!(from_manifest(toml, "-").unwrap().name, "one");
        assert_eq!(from_manifest(flat, "-").unwrap().name, "one");
        for (text, want) in [
            (
                "kind: Deployment\nmetadata: { name: x }\nspec: {}\n",
                "kind \"Deployment\": aer pod run takes a Pod",
            ),
            ("kind: Pod\nspec: { containers: [] }\n", "metadata.name"),
            (
                "kind: Pod\nmetadata: { name: x, namespace: y }\nspec: {}\n",
                "metadata.namespace: not supported",
            ),
            (
                "kind: Pod\nmetadata: { name: x }\nspec: { nodeName: n, containers: [] }\n",
                "unknown field `nodeName`",
            ),
            ("name: x\ncontainers: [\n", "(YAML)"),
        ] {
            let e = from_manifest(text, "p.yaml").unwrap_err().to_string();
            assert!(e.contains(want), "{e}\n  should contain: {want}");
        }
    }
}
