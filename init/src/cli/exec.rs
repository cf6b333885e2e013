//! `aer exec`, `aer ps`, and an executable's logs (its status, stop, wait and free are the
//! shared lifecycle in `workload.rs`).

use super::print::{cell_json, ended, exec_json, instance_json, print_status, state_name, vm_json};
use super::workload::{outcome, stream_logs, usage, wref, LogsArgs};
use super::CliError;
use super::Conn as Channel;
use crate::pb;
use clap::Args;
use serde_json::Value;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Name of the executable ([a-z0-9][a-z0-9._-]*); with -i/-t (not listed), the cell
    /// unless --cell names it.
    name: String,
    /// Cell to run in (default: a private cell named after the executable).
    #[arg(long)]
    cell: Option<String>,
    /// Attached: this terminal's stdin goes to the process (until EOF).
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Attached, on a terminal of its own (Ctrl-C and window size reach it).
    #[arg(short = 't', long)]
    tty: bool,
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

/// `-e KEY=VALUE` flags as a map.
pub fn env_map(flags: &[String]) -> Result<std::collections::HashMap<String, String>, CliError> {
    let mut env = std::collections::HashMap::new();
    for kv in flags {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| usage(format!("--env '{kv}': use KEY=VALUE")))?;
        env.insert(k.to_owned(), v.to_owned());
    }
    Ok(env)
}

pub async fn exec(a: &ExecArgs, target: &super::Target, as_json: bool) -> Result<(), CliError> {
    let env = env_map(&a.env)?;
    if a.interactive || a.tty {
        if a.wait || a.follow {
            return Err(usage(
                "-i/-t attach to the process already; leave out --wait and --follow",
            ));
        }
        let session = super::attach::Session {
            start: super::attach::Start::Exec(pb::ExecStart {
                cell: a.cell.clone().unwrap_or_else(|| a.name.clone()),
                argv: a.argv.clone(),
                env,
                cwd: a.cwd.clone().unwrap_or_default(),
                uid: a.uid,
                gid: a.gid,
                ..Default::default()
            }),
            stdin: a.interactive,
            tty: a.tty,
        };
        return super::attach::attach(target, session).await;
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
            ..Default::default()
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
                Some(pb::workload_status::Status::VirtualMachine(v)) => Some(vm_json(v)),
                Some(pb::workload_status::Status::Instance(i)) => Some(instance_json(i)),
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

pub async fn logs(a: &LogsArgs, target: &super::Target) -> Result<(), CliError> {
    let ch = if a.follow {
        target.connect_unbounded().await?
    } else {
        target.connect().await?
    };
    stream_logs(ch, pb::WorkloadKind::Executable, &a.name, a.follow, a.tail).await
}
