//! The runtime's errors. `server::errors` maps each variant to exactly one gRPC code.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A field is malformed or out of range (INVALID_ARGUMENT).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The named thing does not exist (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The name is taken (ALREADY_EXISTS).
    #[error("{0}")]
    AlreadyExists(String),
    /// The node lacks what the request needs (see [`Lack`]).
    #[error(transparent)]
    NodeLacks(#[from] Lack),
    /// The workload is not in a phase that allows this: not running, still running,
    /// frozen, ended, not made yet.
    #[error("{0}")]
    WrongPhase(String),
    /// What the request names is held by another workload or client, or exists with
    /// another definition (a volume, an executable's private cell).
    #[error("{0}")]
    Taken(String),
    /// This auraed does not do that yet (UDP ports, nested cells with user namespaces,
    /// image cells with user namespaces, pods over 32 vCPUs).
    #[error("{0}")]
    NotYet(String),
    /// Network plumbing failed: a TAP, a veth, a listening or published port.
    #[error("{0}")]
    Network(String),
    /// A process, a cell's init or a VMM could not be started, or ended before it ran.
    #[error("{0}")]
    StartFailed(String),
    /// The workload named cannot do that by its kind (a cell has no log of its own).
    #[error("{0}")]
    Unfit(String),
    /// A request named a private cell auraed made for one of its own workloads (a VM's VMM,
    /// an instance, a pod, an executable): not a target for anyone's processes
    /// (FAILED_PRECONDITION).
    #[error("{field}: cell '{cell}' is the private cell of {owner}; only cells made with RunCell take executables (aer cell create NAME, then --cell NAME)")]
    PrivateCell {
        field: &'static str,
        cell: String,
        owner: String,
    },
    /// A workload did not get ready within the time the caller allowed (DEADLINE_EXCEEDED).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The node ran out of something (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    Exhausted(String),
    /// A file operation failed (INTERNAL).
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Spawn could not make or reach a child (the code depends on the cause).
    #[error(transparent)]
    Spawn(#[from] crate::runtime::spawn::SpawnError),
    /// An image could not be had for `field` (the code is the image error's).
    #[error("{field}: {source}")]
    Image {
        field: String,
        source: crate::image::ImageError,
    },
    /// A system call failed (INTERNAL, or RESOURCE_EXHAUSTED for EAGAIN/ENOMEM).
    #[error("{what}: {errno}")]
    Sys { what: String, errno: nix::errno::Errno },
}

/// What this node lacks for a request, each cause with its own words (all
/// FAILED_PRECONDITION, chosen in `server/errors.rs`).
#[derive(Debug, thiserror::Error)]
pub enum Lack {
    /// Bring-up left no usable workloads root.
    #[error("this node cannot run workloads: {0}")]
    Workloads(String),
    #[error("auraed cannot open its own executable")]
    OwnExecutable,
    /// KVM is unusable, or /dev/kvm did not open (why).
    #[error("{0}; this node cannot run virtual machines")]
    Kvm(String),
    /// A VM instance was asked for where KVM is unusable (why).
    #[error("isolation: {0}; a VM instance needs KVM (leave isolation unset to fall back to a cell)")]
    KvmForInstance(String),
    /// No node bridge (auraed makes one only as PID 1); `field` asked for one, for `what`.
    #[error("{field}this node has no bridge for {what} (auraed makes one only as PID 1)")]
    Bridge { field: &'static str, what: &'static str },
    #[error("this node has no spawn identity (PKI directory with spawn-ca.{{crt,key}})")]
    SpawnIdentity,
    /// The kernel lacks `what` for the limit in `field`.
    #[error("{field}: this kernel has no {what}; drop the limit")]
    KernelFeature { field: &'static str, what: &'static str },
    /// The limits in `fields` need a cgroup v2 controller the node does not offer there.
    #[error("{fields}: needs the cgroup v2 '{controller}' controller, which this node does not offer here (usable: {usable}); drop the limit or use a node that has it")]
    Controller {
        fields: String,
        controller: String,
        usable: String,
    },
    /// No image store for `field`'s images (`of` says whose), and why.
    #[error("{field}: this node has no image store{of}: {why}")]
    ImageStore {
        field: &'static str,
        of: &'static str,
        why: String,
    },
}

impl RuntimeError {
    /// The same error, said of a cell image's entrypoint: its field names move under
    /// `image` (argv[0] is `image.command`'s or the image's entrypoint's first word).
    pub fn in_entrypoint(self) -> RuntimeError {
        let say = |m: String| format!("the image's entrypoint: {m}");
        match self {
            RuntimeError::Invalid { field, reason } => RuntimeError::Invalid {
                field: format!("image ({field} of its entrypoint)"),
                reason,
            },
            RuntimeError::NotFound(m) => RuntimeError::NotFound(say(m)),
            other => other.map_message(say),
        }
    }

    /// The same cause, its message rewritten by `f` (for the causes whose message is text).
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> RuntimeError {
        use RuntimeError as E;
        match self {
            E::WrongPhase(m) => E::WrongPhase(f(m)),
            E::Taken(m) => E::Taken(f(m)),
            E::NotYet(m) => E::NotYet(f(m)),
            E::Network(m) => E::Network(f(m)),
            E::StartFailed(m) => E::StartFailed(f(m)),
            E::Unfit(m) => E::Unfit(f(m)),
            other => other,
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn sys(what: impl Into<String>, errno: nix::errno::Errno) -> RuntimeError {
        RuntimeError::Sys {
            what: what.into(),
            errno,
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
