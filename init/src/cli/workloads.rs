//! `aer exec`, `aer ps`, the executable lifecycle (status, logs, stop, wait, free) and
//! `aer cell ...`.

use super::CliError;
use super::Conn as Channel;
use crate::pb;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::io::Write;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Name of the executable ([a-z0-9][a-z0-9._-]*).
    name: String,
    /// Cell to run in (default: a private cell named after the executable).
    #[arg(long)]
    cell: Option<String>,
    /// Environment variable KEY=VALUE (repeatable); nothing else is inherited.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the cell.
    #[arg(long)]
    cwd: Option<String>,
    #[arg(long)]
    uid: Option<u32>,
    #[arg(long)]
    gid: Option<u32>,
    /// Wait for it to end and print the final status; exit 1 unless it exited 0.
    #[arg(long)]
    wait: bool,
    /// Stream its output here until it ends (implies --wait).
    #[arg(short, long)]
    follow: bool,
    /// The program and its arguments (after `--`).
    #[arg(required = true, last = true)]
    argv: Vec<String>,
}

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
}

#[derive(Debug, Args)]
pub struct CellCreate {
    /// `name` or `parent/name`.
    name: String,
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
}

fn usage(m: impl Into<String>) -> CliError {
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

fn parse_signal(s: &str) -> Result<u32, CliError> {
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

pub(crate) fn state_name(s: i32) -> String {
    pb::WorkloadState::try_from(s)
        .map(|s| s.as_str_name().trim_start_matches("WORKLOAD_STATE_").to_lowercase())
        .unwrap_or_else(|_| s.to_string())
}

fn exec_json(s: &pb::ExecutableStatus) -> Value {
    json!({
        "kind": "executable", "name": s.name, "cell": s.cell, "state": state_name(s.state), "pid": s.pid,
        "exit_code": s.exit_code, "signal": s.signal, "oom_killed": s.oom_killed,
        "started_at_unix_nanos": s.started_at_unix_nanos, "ended_at_unix_nanos": s.ended_at_unix_nanos,
        "cpu_usage_micros": s.cpu_usage_micros, "memory_peak_bytes": s.memory_peak_bytes, "error": s.error,
    })
}

fn cell_json(s: &pb::CellStatus) -> Value {
    let r = s.resources.clone().unwrap_or_default();
    let u = s.usage.unwrap_or_default();
    let i = s.isolation.unwrap_or_default();
    json!({
        "kind": "cell", "name": s.name, "state": state_name(s.state), "executables": s.executables, "error": s.error,
        "resources": {
            "cpu_weight": r.cpu_weight, "cpu_max": r.cpu_max.map(|m| json!({"quota_micros": m.quota_micros, "period_micros": m.period_micros})),
            "cpuset_cpus": r.cpuset_cpus, "cpuset_mems": r.cpuset_mems, "memory_min_bytes": r.memory_min_bytes,
            "memory_low_bytes": r.memory_low_bytes, "memory_high_bytes": r.memory_high_bytes,
            "memory_max_bytes": r.memory_max_bytes, "swap_max_bytes": r.swap_max_bytes, "pids_max": r.pids_max,
            "io_weight": r.io_weight,
        },
        "isolation": {
            "share_host_pid": i.share_host_pid, "share_host_mount": i.share_host_mount,
            "share_host_network": i.share_host_network, "share_host_ipc": i.share_host_ipc,
            "share_host_uts": i.share_host_uts, "share_host_cgroup": i.share_host_cgroup,
        },
        "usage": {
            "cpu_usage_micros": u.cpu_usage_micros, "cpu_throttled_micros": u.cpu_throttled_micros,
            "cpu_nr_throttled": u.cpu_nr_throttled, "memory_current_bytes": u.memory_current_bytes,
            "memory_peak_bytes": u.memory_peak_bytes, "memory_oom_events": u.memory_oom_events,
            "memory_oom_kill_events": u.memory_oom_kill_events, "pids_current": u.pids_current,
        },
    })
}

fn ended(s: &pb::ExecutableStatus) -> String {
    match (s.exit_code, s.signal) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(sig)) => format!(
            "signal {}{}",
            nix::sys::signal::Signal::try_from(sig).map_or(sig.to_string(), |s| s.as_str().to_owned()),
            if s.oom_killed { " (OOM)" } else { "" }
        ),
        _ => String::new(),
    }
}

fn print_exec(s: &pb::ExecutableStatus, as_json: bool) {
    if as_json {
        println!("{}", exec_json(s));
        return;
    }
    println!("executable  {} (cell {})", s.name, s.cell);
    println!("state       {} {}", state_name(s.state), ended(s));
    println!("pid         {}", s.pid);
    println!("cpu         {:.3} s", s.cpu_usage_micros as f64 / 1e6);
    println!("memory peak {:.1} MiB", s.memory_peak_bytes as f64 / 1048576.0);
    if s.oom_killed {
        println!("oom killed  yes");
    }
    if !s.error.is_empty() {
        println!("error       {}", s.error);
    }
}

fn print_cell(s: &pb::CellStatus, as_json: bool) {
    if as_json {
        println!("{}", cell_json(s));
        return;
    }
    let v = cell_json(s);
    println!("cell        {}", s.name);
    println!("state       {}", state_name(s.state));
    let set: Vec<String> = v["resources"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| !v.is_null() && v.as_str() != Some(""))
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "limits      {}",
        if set.is_empty() { "(none)".into() } else { set.join(" ") }
    );
    let shared: Vec<&str> = v["isolation"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.trim_start_matches("share_host_"))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "namespaces  {}",
        if shared.is_empty() {
            "all new".into()
        } else {
            format!("new, except host {}", shared.join(","))
        }
    );
    let u = s.usage.unwrap_or_default();
    println!(
        "usage       cpu {:.3} s (throttled {} times, {:.3} s), memory {:.1} MiB (peak {:.1}), pids {}, oom kills {}",
        u.cpu_usage_micros as f64 / 1e6,
        u.cpu_nr_throttled,
        u.cpu_throttled_micros as f64 / 1e6,
        u.memory_current_bytes as f64 / 1048576.0,
        u.memory_peak_bytes as f64 / 1048576.0,
        u.pids_current,
        u.memory_oom_kill_events
    );
    println!("executables {}", s.executables.join(" "));
    if !s.error.is_empty() {
        println!("error       {}", s.error);
    }
}

fn print_status(w: &pb::WorkloadStatus, as_json: bool) {
    match &w.status {
        Some(pb::workload_status::Status::Executable(e)) => print_exec(e, as_json),
        Some(pb::workload_status::Status::Cell(c)) => print_cell(c, as_json),
        Some(pb::workload_status::Status::VirtualMachine(v)) => super::vm::print_vm(v, as_json),
        Some(pb::workload_status::Status::Instance(i)) => super::vm::print_instance(i, as_json),
        _ => println!("{w:?}"),
    }
}

pub(crate) fn wref(kind: pb::WorkloadKind, name: &str) -> pb::WorkloadRef {
    pb::WorkloadRef {
        kind: kind as i32,
        name: name.to_owned(),
    }
}

/// Exit status of `aer exec --wait` / `aer wait`: 0 only when the executable exited 0.
fn outcome(w: &pb::WorkloadStatus) -> Result<(), CliError> {
    match &w.status {
        Some(pb::workload_status::Status::Executable(e)) if e.exit_code != Some(0) => {
            Err(CliError::Workload(format!("{} ended with {}", e.name, ended(e))))
        }
        _ => Ok(()),
    }
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
        let _ = w.write_all(b"\n");
    }
    let _ = out.flush();
    Ok(())
}

pub async fn exec(a: &ExecArgs, target: &super::Target, as_json: bool) -> Result<(), CliError> {
    let mut env = std::collections::HashMap::new();
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| usage(format!("--env '{kv}': use KEY=VALUE")))?;
        env.insert(k.to_owned(), v.to_owned());
    }
    let ch = target.connect().await?;
    let s = pb::runtime_client::RuntimeClient::new(ch)
        .run_executable(pb::Executable {
            name: a.name.clone(),
            argv: a.argv.clone(),
            env,
            cwd: a.cwd.clone().unwrap_or_default(),
            uid: a.uid,
            gid: a.gid,
            cell: a.cell.clone().unwrap_or_default(),
        })
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    if !(a.wait || a.follow) {
        if as_json {
            println!("{}", exec_json(&s));
        } else {
            println!("{} running in cell {} (pid {})", s.name, s.cell, s.pid);
        }
        return Ok(());
    }
    let long = target.connect_unbounded().await?;
    if a.follow {
        stream_logs(long.clone(), pb::WorkloadKind::Executable, &a.name, true, None).await?;
    }
    let w = pb::workloads_client::WorkloadsClient::new(long)
        .wait(wref(pb::WorkloadKind::Executable, &a.name))
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    if as_json || !a.follow {
        print_status(&w, as_json);
    }
    outcome(&w)
}

pub async fn ps(ch: Channel, as_json: bool) -> Result<(), CliError> {
    let l = pb::workloads_client::WorkloadsClient::new(ch)
        .list(pb::ListRequest { kind: 0 })
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    if as_json {
        let v: Vec<Value> = l
            .workloads
            .iter()
            .filter_map(|w| match &w.status {
                Some(pb::workload_status::Status::Executable(e)) => Some(exec_json(e)),
                Some(pb::workload_status::Status::Cell(c)) => Some(cell_json(c)),
                Some(pb::workload_status::Status::VirtualMachine(v)) => Some(super::vm::vm_json(v)),
                Some(pb::workload_status::Status::Instance(i)) => Some(super::vm::instance_json(i)),
                _ => None,
            })
            .collect();
        println!("{}", Value::Array(v));
        return Ok(());
    }
    println!("{:<11} {:<24} {:<9} {:<8} DETAIL", "KIND", "NAME", "STATE", "PID");
    for w in &l.workloads {
        match &w.status {
            Some(pb::workload_status::Status::Cell(c)) => println!(
                "{:<11} {:<24} {:<9} {:<8} {} executable(s)",
                "cell",
                c.name,
                state_name(c.state),
                "-",
                c.executables.len()
            ),
            Some(pb::workload_status::Status::Executable(e)) => println!(
                "{:<11} {:<24} {:<9} {:<8} cell {} {}",
                "executable",
                e.name,
                state_name(e.state),
                e.pid,
                e.cell,
                ended(e)
            ),
            Some(pb::workload_status::Status::Instance(i)) => println!(
                "{:<11} {:<24} {:<9} {:<8} {} {}",
                "instance",
                i.name,
                state_name(i.state),
                i.vm.as_ref().map_or(0, |v| v.vmm_pid),
                i.address,
                i.spiffe_id
            ),
            Some(pb::workload_status::Status::VirtualMachine(v)) => println!(
                "{:<11} {:<24} {:<9} {:<8} {} vCPU, {} MiB {}",
                "vm",
                v.name,
                state_name(v.state),
                v.vmm_pid,
                v.vcpus,
                v.memory_bytes >> 20,
                v.exit_reason
            ),
            _ => {}
        }
    }
    Ok(())
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
            super::done(as_json, &format!("{name} freed"));
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

pub async fn logs(a: &LogsArgs, target: &super::Target) -> Result<(), CliError> {
    let ch = if a.follow {
        target.connect_unbounded().await?
    } else {
        target.connect().await?
    };
    stream_logs(ch, pb::WorkloadKind::Executable, &a.name, a.follow, a.tail).await
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
    }
}

async fn create(c: &CellCreate, target: &super::Target, as_json: bool) -> Result<(), CliError> {
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
    let cell = pb::Cell {
        name: c.name.clone(),
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
        image: None,
    };
    let s = pb::runtime_client::RuntimeClient::new(target.connect().await?)
        .run_cell(cell)
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    print_cell(&s, as_json);
    Ok(())
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
