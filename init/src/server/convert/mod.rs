//! The one place requests become validated runtime specs and runtime views become
//! protobuf: one file per request family (`executable`, `cell` with its image, `vm`, `instance`,
//! `pod`) and one for statuses. Every field is checked here, once; errors name the field
//! and the fix. What needs more than the method's role is `authz::FIELDS`' to say.

mod cell;
mod executable;
mod instance;
mod pod;
mod status;
mod vm;

pub use cell::{volume_files, volumes};
pub use instance::*;
pub use pod::*;
pub use status::*;

use crate::pb;
use crate::runtime::error::RuntimeError;
use crate::runtime::{Kind, Phase};
use std::time::Duration;

pub(super) const MAX_ARGS: usize = 4096;
pub(super) const MAX_ARG_BYTES: usize = 1 << 20;
pub(super) const MAX_BYTES: u64 = 1 << 62;
pub(super) const MIN_MEMORY_LIMIT: u64 = 1 << 20;
pub(super) const PID_MAX_LIMIT: u64 = 4_194_304;

/// A request with its caller's gRPC timeout (None: the caller set none): the requests
/// whose wait for the workload (ready, serving) the caller's deadline bounds.
pub struct Timed<T>(pub T, pub Option<Duration>);

pub(super) const MIB: u64 = 1 << 20;

pub(super) fn millis(v: u32) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(u64::from(v)))
}

pub(super) fn env_entries(field: &str, env: &std::collections::HashMap<String, String>) -> Result<(), RuntimeError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') {
            return Err(invalid(
                format!("{field}[{k:?}]"),
                "a variable name must be non-empty and contain no '='",
            ));
        }
        no_nul(&format!("{field}[{k:?}]"), k)?;
        no_nul(&format!("{field}[{k:?}]"), v)?;
    }
    Ok(())
}

pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::invalid(field, reason)
}

pub(super) fn no_nul(field: &str, s: &str) -> Result<(), RuntimeError> {
    if s.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

pub(super) fn range(field: &str, v: Option<u64>, lo: u64, hi: u64, hint: &str) -> Result<Option<u64>, RuntimeError> {
    match v {
        Some(v) if v < lo || v > hi => Err(invalid(field, format!("{v} is out of range {lo}..={hi}{hint}"))),
        other => Ok(other),
    }
}

pub(super) fn non_empty(s: String) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.trim().to_owned())
}

pub fn kind(k: i32, field: &str) -> Result<Option<Kind>, RuntimeError> {
    match pb::WorkloadKind::try_from(k) {
        Ok(pb::WorkloadKind::Unspecified) => Ok(None),
        Ok(pb::WorkloadKind::Executable) => Ok(Some(Kind::Executable)),
        Ok(pb::WorkloadKind::Cell) => Ok(Some(Kind::Cell)),
        Ok(pb::WorkloadKind::VirtualMachine) => Ok(Some(Kind::VirtualMachine)),
        Ok(pb::WorkloadKind::Instance) => Ok(Some(Kind::Instance)),
        Ok(pb::WorkloadKind::Pod) => Ok(Some(Kind::Pod)),
        Err(_) => Err(invalid(field, format!("{k} is not a WorkloadKind"))),
    }
}

/// The kind and name a WorkloadRef names; the kind is required.
pub fn workload_ref(r: Option<pb::WorkloadRef>, field: &str) -> Result<(Kind, String), RuntimeError> {
    let r = r.ok_or_else(|| invalid(field, "is missing; name the workload (kind and name)"))?;
    let kind = kind(r.kind, &format!("{field}.kind"))?.ok_or_else(|| {
        invalid(
            format!("{field}.kind"),
            "is unspecified; say WORKLOAD_KIND_EXECUTABLE or WORKLOAD_KIND_CELL",
        )
    })?;
    if r.name.is_empty() {
        return Err(invalid(format!("{field}.name"), "is empty"));
    }
    Ok((kind, r.name))
}

pub fn phase(p: Option<Phase>) -> i32 {
    (match p {
        None => pb::WorkloadState::Unspecified,
        Some(Phase::Starting) => pb::WorkloadState::Starting,
        Some(Phase::Running) => pb::WorkloadState::Running,
        Some(Phase::Exited) => pb::WorkloadState::Exited,
        Some(Phase::Killed) => pb::WorkloadState::Killed,
        Some(Phase::Failed) => pb::WorkloadState::Failed,
        Some(Phase::Frozen) => pb::WorkloadState::Frozen,
        Some(Phase::Stopped) => pb::WorkloadState::Stopped,
    }) as i32
}

#[cfg(test)]
mod tests;

/// A workload event as the API sends it (`missed`: events before it a reader lost).
pub fn event(e: crate::runtime::events::Event<Kind>, missed: u64) -> pb::Event {
    use crate::runtime::events::What;
    let kind = match e.kind {
        Kind::Cell => pb::WorkloadKind::Cell,
        Kind::Executable => pb::WorkloadKind::Executable,
        Kind::VirtualMachine => pb::WorkloadKind::VirtualMachine,
        Kind::Instance => pb::WorkloadKind::Instance,
        Kind::Pod => pb::WorkloadKind::Pod,
    };
    let mut out = pb::Event {
        seq: e.seq,
        unix_nanos: e.unix_nanos,
        kind: kind as i32,
        name: e.name,
        missed,
        ..Default::default()
    };
    let t = match e.what {
        What::Created => pb::EventType::Created,
        What::Started => pb::EventType::Started,
        What::Exited { code, oom } => {
            out.exit_code = Some(code);
            out.oom_killed = oom;
            pb::EventType::Exited
        }
        What::Killed { signal, oom } => {
            out.signal = Some(signal);
            out.oom_killed = oom;
            pb::EventType::Killed
        }
        What::Ended(how) => {
            out.reason = how;
            pb::EventType::Ended
        }
        What::Failed(why) => {
            out.reason = why;
            pb::EventType::Failed
        }
        What::Stopped => pb::EventType::Stopped,
        What::Freed => pb::EventType::Freed,
    };
    out.r#type = t as i32;
    out
}
