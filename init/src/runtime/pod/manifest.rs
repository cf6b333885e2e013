//! A pod manifest as a user writes it: YAML or TOML, field names as in the proto or as
//! Kubernetes writes them, flat or as a Kubernetes Pod object with `metadata` and `spec`;
//! read into the `Pod` request `aer pod run -f` sends. Only the manifest's shape is checked
//! here: the node validates the request (names, sizes, images) as it does any other.

use crate::pb;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// What is wrong with a manifest: the file, the field and what to write instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ManifestError(String);

/// `isolation = "vm" | "cell"`.
fn isolation(what: &str, s: Option<&str>) -> Result<pb::IsolationKind, ManifestError> {
    match s {
        None => Ok(pb::IsolationKind::Unspecified),
        Some("vm") => Ok(pb::IsolationKind::Vm),
        Some("cell") => Ok(pb::IsolationKind::Cell),
        Some(o) => Err(ManifestError(format!("{what} '{o}': choose vm or cell"))),
    }
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
    fn bytes(&self, field: &str) -> Result<u64, ManifestError> {
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

    fn millicpus(&self, field: &str) -> Result<u64, ManifestError> {
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
    /// Keep stdin open for `aer attach -i` (Kubernetes' stdin, stdinOnce).
    #[serde(default)]
    stdin: bool,
    #[serde(default, alias = "stdinOnce")]
    stdin_once: bool,
    /// A terminal for the entrypoint (Kubernetes' tty).
    #[serde(default)]
    tty: bool,
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

fn usage(m: String) -> ManifestError {
    ManifestError(m)
}

pub fn restart_policy(s: Option<&str>) -> Result<pb::RestartPolicy, ManifestError> {
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

pub fn pull_policy(s: Option<&str>) -> Result<pb::PullPolicy, ManifestError> {
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

fn resource_list(field: &str, r: Option<ResourceListFile>) -> Result<Option<pb::ResourceList>, ManifestError> {
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
fn parse_pod_file(text: &str, path: &str) -> Result<PodFile, ManifestError> {
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
fn from_kubernetes(v: Value) -> Result<Value, ManifestError> {
    let Value::Object(mut top) = v else {
        return Err(ManifestError(
            "a manifest is a table of fields (name, containers, ...)".into(),
        ));
    };
    let kube = ["apiVersion", "kind", "metadata", "spec"];
    if !kube.iter().any(|k| top.contains_key(*k)) {
        return Ok(Value::Object(top));
    }
    match top.remove("kind") {
        None => {}
        Some(Value::String(k)) if k == "Pod" => {}
        Some(k) => return Err(ManifestError(format!("kind {k}: aer pod run takes a Pod"))),
    }
    match top.remove("apiVersion") {
        None => {}
        Some(Value::String(a)) if a == "v1" => {}
        Some(a) => return Err(ManifestError(format!("apiVersion {a}: a Pod is v1"))),
    }
    let mut meta = match top.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => {
            return Err(ManifestError(
                "metadata.name: a Kubernetes Pod object names the pod there".into(),
            ))
        }
    };
    let Some(name) = meta.remove("name") else {
        return Err(ManifestError("metadata.name: missing".into()));
    };
    if let Some(k) = meta.keys().find(|k| !IGNORED_METADATA.contains(&k.as_str())) {
        return Err(ManifestError(format!(
            "metadata.{k}: not supported (of metadata, only name is read; labels and annotations are ignored)"
        )));
    }
    let mut spec = match top.remove("spec") {
        Some(Value::Object(s)) => s,
        _ => {
            return Err(ManifestError(
                "spec: a Kubernetes Pod object has its containers there".into(),
            ))
        }
    };
    if let Some(k) = top.keys().next() {
        return Err(ManifestError(format!(
            "{k}: unknown beside apiVersion, kind, metadata and spec"
        )));
    }
    if spec.contains_key("name") {
        return Err(ManifestError("spec.name: the name is metadata.name".into()));
    }
    spec.insert("name".into(), name);
    Ok(Value::Object(spec))
}

/// A manifest's text as a `Pod` request.
pub fn from_manifest(text: &str, path: &str) -> Result<pb::Pod, ManifestError> {
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
                    ..Default::default()
                })
                .collect(),
            image_pull_credentials: None,
            stdin: c.stdin,
            stdin_once: c.stdin_once,
            tty: c.tty,
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
            ..Default::default()
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
        isolation: isolation(&format!("{path}: isolation"), f.isolation.as_deref())? as i32,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The manual's example manifest (docs/pods.md) is one `aer pod run -f` takes.
    #[test]
    fn the_manuals_manifest_parses() {
        let readme = include_str!("../../../../docs/pods.md");
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
