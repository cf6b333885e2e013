//! What every kind of workload shares in `aer`: status, stop, wait, free, freeze, thaw and
//! logs of one workload by kind and name, and the flags and sizes they parse.

use super::print::{done, ended, print_status};
use super::CliError;
use super::Conn as Channel;
use crate::pb;
use clap::{Args, Subcommand};
use std::io::Write;

#[derive(Debug, Args)]
pub struct StopArgs {
    pub name: String,
    /// Signal sent first (number or name, e.g. TERM, INT, 9).
    #[arg(long, default_value = "TERM")]
    signal: String,
    /// Milliseconds to wait before cgroup.kill.
    #[arg(long, default_value_t = crate::runtime::DEFAULT_GRACE_MS)]
    grace_ms: u32,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub name: String,
    /// Keep streaming new lines until the workload ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Start this many lines before the end.
    #[arg(long)]
    pub tail: Option<u64>,
}

/// What VMs and instances share: status, logs, stop, wait, free.
#[derive(Debug, Subcommand)]
pub enum Life {
    Status {
        name: String,
    },
    /// The console (a VM's serial port; a cell child's output).
    Logs(LogsArgs),
    /// Stop it (grace period, then a hard stop).
    Stop(StopArgs),
    Wait {
        name: String,
    },
    /// Remove it once ended, with everything it held.
    Free {
        name: String,
    },
}

pub(crate) async fn life(
    cmd: &Life,
    k: pb::WorkloadKind,
    target: &super::Target,
    as_json: bool,
) -> Result<(), CliError> {
    match cmd {
        Life::Status { name } => lifecycle(target, k, name, Op::Status, as_json).await,
        Life::Logs(l) => {
            let ch = if l.follow {
                target.connect_unbounded().await?
            } else {
                target.connect().await?
            };
            stream_logs(ch, k, &l.name, l.follow, l.tail).await
        }
        Life::Stop(s) => lifecycle(target, k, &s.name, Op::Stop(s), as_json).await,
        Life::Wait { name } => lifecycle(target, k, name, Op::Wait, as_json).await,
        Life::Free { name } => lifecycle(target, k, name, Op::Free, as_json).await,
    }
}

/// `-p HOST:INSIDE[/PROTOCOL]` as (node port, port inside, protocol); `inside` names the
/// other end in the message ("CELL", "CONTAINER").
pub(crate) fn parse_publish(p: &str, inside: &str) -> Result<(u32, u32, String), CliError> {
    p.split_once(':')
        .and_then(|(h, c)| {
            let (c, protocol) = c.split_once('/').unwrap_or((c, "tcp"));
            Some((h.parse().ok()?, c.parse().ok()?, protocol.to_owned()))
        })
        .ok_or_else(|| CliError::Usage(format!("-p '{p}': use HOST:{inside}, e.g. 8080:80")))
}

/// `vm` or `cell` (unset: the node chooses); `what` names the flag or field in the message.
pub(crate) fn parse_isolation(what: &str, s: Option<&str>) -> Result<pb::IsolationKind, CliError> {
    match s {
        None => Ok(pb::IsolationKind::Unspecified),
        Some("vm") => Ok(pb::IsolationKind::Vm),
        Some("cell") => Ok(pb::IsolationKind::Cell),
        Some(o) => Err(CliError::Usage(format!("{what} '{o}': choose vm or cell"))),
    }
}

/// `--network BRIDGE=ADDR/N` values as attachments (the node checks the rest).
pub(crate) fn parse_network(values: &[String]) -> Result<Vec<pb::NetworkAttachment>, CliError> {
    (values.iter())
        .map(|v| match v.split_once('=') {
            Some((bridge, address)) if !bridge.is_empty() && address.contains('/') => Ok(pb::NetworkAttachment {
                bridge: bridge.into(),
                address: address.into(),
                interface: String::new(),
            }),
            _ => Err(CliError::Usage(format!(
                "--network '{v}': give BRIDGE=ADDRESS/PREFIX, e.g. lab0=192.168.50.2/24"
            ))),
        })
        .collect()
}

/// Every workload of `kind` on the node, as `List` gives them.
pub(crate) async fn list_kind(
    target: &super::Target,
    kind: pb::WorkloadKind,
) -> Result<Vec<pb::workload_status::Status>, CliError> {
    let l = pb::workloads_client::WorkloadsClient::new(target.connect().await?)
        .list(pb::ListRequest { kind: kind as i32 })
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    Ok(l.workloads.into_iter().filter_map(|w| w.status).collect())
}

/// status / stop / wait / free / freeze / thaw of one workload.
pub enum Op<'a> {
    Status,
    Stop(&'a StopArgs),
    Wait,
    Free,
    Freeze,
    Thaw,
}

pub async fn lifecycle(
    target: &super::Target,
    kind: pb::WorkloadKind,
    name: &str,
    op: Op<'_>,
    as_json: bool,
) -> Result<(), CliError> {
    let ch = match op {
        Op::Wait | Op::Stop(_) => target.connect_unbounded().await?,
        _ => target.connect().await?,
    };
    let mut c = pb::workloads_client::WorkloadsClient::new(ch);
    let r = wref(kind, name);
    let w = match op {
        Op::Status => c.status(r).await,
        Op::Wait => c.wait(r).await,
        Op::Freeze => c.freeze(r).await,
        Op::Thaw => c.thaw(r).await,
        Op::Stop(s) => {
            c.stop(pb::StopRequest {
                workload: Some(r),
                signal: parse_signal(&s.signal)?,
                grace_period_millis: s.grace_ms,
            })
            .await
        }
        Op::Free => {
            c.free(r).await.map_err(CliError::Remote)?;
            done(as_json, &format!("{name} freed"));
            return Ok(());
        }
    }
    .map_err(CliError::Remote)?
    .into_inner();
    print_status(&w, as_json);
    if matches!(op, Op::Wait) {
        return outcome(&w);
    }
    Ok(())
}

pub(crate) async fn stream_logs(
    ch: Channel,
    kind: pb::WorkloadKind,
    name: &str,
    follow: bool,
    tail: Option<u64>,
) -> Result<(), CliError> {
    let mut c = pb::workloads_client::WorkloadsClient::new(ch);
    let mut s = c
        .logs(pb::LogsRequest {
            workload: Some(wref(kind, name)),
            follow,
            tail_lines: tail,
        })
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    while let Some(e) = s.message().await.map_err(CliError::Remote)? {
        if e.dropped_before > 0 {
            let _ = writeln!(err, "aer: [{} line(s) dropped from the log buffer]", e.dropped_before);
        }
        let w: &mut dyn Write = if e.stream == pb::LogStream::Stderr as i32 {
            &mut err
        } else {
            &mut out
        };
        let _ = w.write_all(&e.line);
        if !e.partial {
            let _ = w.write_all(b"\n");
        }
    }
    let _ = out.flush();
    Ok(())
}

pub(crate) fn wref(kind: pb::WorkloadKind, name: &str) -> pb::WorkloadRef {
    pb::WorkloadRef {
        kind: kind as i32,
        name: name.to_owned(),
    }
}

/// Exit status of `aer exec --wait` / `aer wait`: 0 only when the executable exited 0.
pub(crate) fn outcome(w: &pb::WorkloadStatus) -> Result<(), CliError> {
    match &w.status {
        Some(pb::workload_status::Status::Executable(e)) if e.exit_code != Some(0) => {
            Err(CliError::Workload(format!("{} ended with {}", e.name, ended(e))))
        }
        _ => Ok(()),
    }
}

pub(crate) fn usage(m: impl Into<String>) -> CliError {
    CliError::Usage(m.into())
}

/// "64M" → 67108864.
pub fn parse_bytes(flag: &str, s: &str) -> Result<u64, CliError> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => {
                    return Err(usage(format!(
                        "--{flag} '{s}': use a number with an optional K, M, G or T suffix"
                    )))
                }
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            usage(format!(
                "--{flag} '{s}': use a number with an optional K, M, G or T suffix"
            ))
        })
}

pub(crate) fn parse_signal(s: &str) -> Result<u32, CliError> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    nix::sys::signal::Signal::iterator()
        .find(|sig| sig.as_str().strip_prefix("SIG") == Some(name))
        .map(|sig| sig as i32 as u32)
        .ok_or_else(|| usage(format!("--signal '{s}': not a signal name or number")))
}

/// A `--…-timeout SECS` flag as the API's milliseconds (0 = the node's default).
pub(crate) fn secs_to_millis(flag: &str, secs: Option<f64>) -> Result<u32, CliError> {
    match secs {
        None => Ok(0),
        Some(s) if s > 0.0 && s * 1000.0 <= f64::from(u32::MAX) => Ok((s * 1000.0).ceil() as u32),
        Some(s) => Err(CliError::Usage(format!(
            "--{flag} {s}: give a positive number of seconds (at most {})",
            u32::MAX / 1000
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_and_signals() {
        assert_eq!(parse_bytes("m", "64M").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("m", "4096").unwrap(), 4096);
        assert_eq!(parse_bytes("m", "1g").unwrap(), 1 << 30);
        assert!(parse_bytes("m", "12Q").is_err());
        assert_eq!(parse_signal("TERM").unwrap(), 15);
        assert_eq!(parse_signal("sigkill").unwrap(), 9);
        assert_eq!(parse_signal("2").unwrap(), 2);
        assert!(parse_signal("NOPE").is_err());
    }
}
