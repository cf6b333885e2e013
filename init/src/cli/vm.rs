//! `aer vm ...` (virtual machines run by auraed's own VMM), `aer spawn` and
//! `aer instance ...` (copies of auraed in microVMs).

use super::workloads::{lifecycle, parse_bytes, state_name, stream_logs, LogsArgs, Op, StopArgs};
use super::CliError;
use crate::pb;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Boot a VM: aer vm run NAME [--kernel K] [--initramfs I] [--cmdline C] [--vcpus N] [--memory 256M] [-f]
    Run(Box<VmRun>),
    /// List VMs.
    Ls,
    /// status, logs (the serial console; the VMM's own messages on stderr), stop (the VMM
    /// ends the VM at once; cgroup.kill after --grace-ms), wait, free (its cell and logs).
    #[command(flatten)]
    Life(Life),
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

async fn life(cmd: &Life, k: pb::WorkloadKind, target: &super::Target, as_json: bool) -> Result<(), CliError> {
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

#[derive(Debug, Args)]
pub struct VmRun {
    name: String,
    /// bzImage or ELF vmlinux on the node (default: the node's own kernel, /boot/vmlinuz).
    #[arg(long)]
    kernel: Option<String>,
    /// Initramfs on the node.
    #[arg(long)]
    initramfs: Option<String>,
    /// The whole kernel command line (default: console=ttyS0 reboot=k panic=-1 pci=off
    /// tsc=reliable no_timer_check i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd).
    #[arg(long)]
    cmdline: Option<String>,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest memory, with an optional K/M/G suffix.
    #[arg(long, default_value = "128M")]
    memory: String,
    /// memory.max of the VM's cell (guest memory plus the VMM).
    #[arg(long)]
    memory_max: Option<String>,
    /// A virtio-net NIC on a TAP on the node's bridge (aurae0).
    #[arg(long)]
    net: bool,
    /// A raw disk image on the node as virtio-blk (/dev/vda, vdb, ...); `PATH` or `PATH:ro`.
    #[arg(long = "disk", value_name = "PATH[:ro]")]
    disks: Vec<String>,
    /// Stream the console here until the VM ends.
    #[arg(short, long)]
    follow: bool,
    /// Seconds to wait for the VMM to run the guest (default: the node's, 60 s).
    #[arg(long, value_name = "SECS")]
    ready_timeout: Option<f64>,
}

pub fn vm_json(v: &pb::VirtualMachineStatus) -> Value {
    json!({
        "kind": "vm", "name": v.name, "state": state_name(v.state), "vcpus": v.vcpus,
        "memory_bytes": v.memory_bytes, "tap_device": v.tap_device, "exit_reason": v.exit_reason,
        "error": v.error, "vmm_pid": v.vmm_pid, "cpu_usage_micros": v.cpu_usage_micros,
        "memory_peak_bytes": v.memory_peak_bytes,
    })
}

pub fn print_vm(v: &pb::VirtualMachineStatus, as_json: bool) {
    if as_json {
        println!("{}", vm_json(v));
        return;
    }
    println!("vm          {}", v.name);
    println!("state       {} {}", state_name(v.state), v.exit_reason);
    println!("vcpus       {}", v.vcpus);
    println!("memory      {} MiB", v.memory_bytes >> 20);
    println!("vmm pid     {}", v.vmm_pid);
    println!("cpu         {:.3} s", v.cpu_usage_micros as f64 / 1e6);
    println!("memory peak {:.1} MiB", v.memory_peak_bytes as f64 / 1048576.0);
    if !v.tap_device.is_empty() {
        println!("tap         {}", v.tap_device);
    }
    if !v.error.is_empty() {
        println!("error       {}", v.error);
    }
}

pub async fn vm(cmd: &VmCmd, target: &super::Target, as_json: bool) -> Result<(), CliError> {
    let k = pb::WorkloadKind::VirtualMachine;
    match cmd {
        VmCmd::Run(r) => run(r, target, as_json).await,
        VmCmd::Ls => {
            let l = pb::workloads_client::WorkloadsClient::new(target.connect().await?)
                .list(pb::ListRequest { kind: k as i32 })
                .await
                .map_err(CliError::Remote)?
                .into_inner();
            let vms = l.workloads.iter().filter_map(|w| match &w.status {
                Some(pb::workload_status::Status::VirtualMachine(v)) => Some(v),
                _ => None,
            });
            if as_json {
                println!("{}", Value::Array(vms.map(vm_json).collect()));
                return Ok(());
            }
            println!(
                "{:<24} {:<9} {:<6} {:<9} {:<8} EXIT",
                "NAME", "STATE", "VCPUS", "MEMORY", "VMM PID"
            );
            for v in vms {
                println!(
                    "{:<24} {:<9} {:<6} {:<9} {:<8} {}",
                    v.name,
                    state_name(v.state),
                    v.vcpus,
                    format!("{}M", v.memory_bytes >> 20),
                    v.vmm_pid,
                    v.exit_reason
                );
            }
            Ok(())
        }
        VmCmd::Life(l) => life(l, k, target, as_json).await,
    }
}

async fn run(r: &VmRun, target: &super::Target, as_json: bool) -> Result<(), CliError> {
    let req = pb::VirtualMachine {
        name: r.name.clone(),
        kernel_path: r.kernel.clone().unwrap_or_default(),
        initramfs_path: r.initramfs.clone().unwrap_or_default(),
        kernel_cmdline: r.cmdline.clone().unwrap_or_default(),
        vcpus: r.vcpus,
        memory_bytes: parse_bytes("memory", &r.memory)?,
        disks: r
            .disks
            .iter()
            .map(|d| match d.strip_suffix(":ro") {
                Some(p) => pb::Disk {
                    path: p.into(),
                    read_only: true,
                },
                None => pb::Disk {
                    path: d.clone(),
                    read_only: false,
                },
            })
            .collect(),
        network: r.net,
        resources: Some(pb::CellResources {
            memory_max_bytes: r
                .memory_max
                .as_deref()
                .map(|m| parse_bytes("memory-max", m))
                .transpose()?,
            ..Default::default()
        }),
        ready_timeout_millis: secs_to_millis("ready-timeout", r.ready_timeout)?,
    };
    // Booting waits for the VMM to start the vCPUs, which can take a while under TCG.
    let v = pb::runtime_client::RuntimeClient::new(target.connect_unbounded().await?)
        .run_virtual_machine(req)
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    if !r.follow {
        print_vm(&v, as_json);
        return Ok(());
    }
    let long = target.connect_unbounded().await?;
    stream_logs(long.clone(), pb::WorkloadKind::VirtualMachine, &r.name, true, None).await?;
    let w = pb::workloads_client::WorkloadsClient::new(long)
        .wait(super::workloads::wref(pb::WorkloadKind::VirtualMachine, &r.name))
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    if let Some(pb::workload_status::Status::VirtualMachine(v)) = &w.status {
        if as_json {
            print_vm(v, true);
        } else {
            eprintln!("aer: vm {} {}: {}", v.name, state_name(v.state), v.exit_reason);
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct SpawnArgs {
    name: String,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest memory, with an optional K/M/G suffix.
    #[arg(long, default_value = "256M")]
    memory: String,
    /// Lifetime of the child's SVID in seconds.
    #[arg(long, default_value_t = 86400)]
    svid_ttl: u32,
    /// vm or cell (default: vm where KVM is usable, else cell).
    #[arg(long)]
    isolation: Option<String>,
    /// Seconds to wait for the child to serve (default: the node's, 300 s).
    #[arg(long, value_name = "SECS")]
    serving_timeout: Option<f64>,
}

/// A `--…-timeout SECS` flag as the API's milliseconds (0 = the node's default).
fn secs_to_millis(flag: &str, secs: Option<f64>) -> Result<u32, CliError> {
    match secs {
        None => Ok(0),
        Some(s) if s > 0.0 && s * 1000.0 <= f64::from(u32::MAX) => Ok((s * 1000.0).ceil() as u32),
        Some(s) => Err(CliError::Usage(format!(
            "--{flag} {s}: give a positive number of seconds (at most {})",
            u32::MAX / 1000
        ))),
    }
}

#[derive(Debug, Subcommand)]
pub enum InstanceCmd {
    /// List spawned instances.
    Ls,
    /// status, logs, stop (the child is asked to power off; its workloads get --grace-ms),
    /// wait, free (its VM or cell, image, keys and address).
    #[command(flatten)]
    Life(Life),
}

pub fn instance_json(i: &pb::InstanceStatus) -> Value {
    json!({
        "kind": "instance", "name": i.name, "state": state_name(i.state),
        "isolation": pb::IsolationKind::try_from(i.isolation).map(|k| k.as_str_name()).unwrap_or("?"),
        "address": i.address, "spiffe_id": i.spiffe_id, "error": i.error, "pid": i.pid,
        "vm": i.vm.as_ref().map(vm_json),
    })
}

pub fn print_instance(i: &pb::InstanceStatus, as_json: bool) {
    if as_json {
        println!("{}", instance_json(i));
        return;
    }
    println!("instance    {}", i.name);
    println!(
        "state       {} {}",
        state_name(i.state),
        i.vm.as_ref().map_or("", |v| v.exit_reason.as_str())
    );
    println!(
        "isolation   {}",
        pb::IsolationKind::try_from(i.isolation)
            .map(|k| k.as_str_name().trim_start_matches("ISOLATION_KIND_").to_lowercase())
            .unwrap_or_default()
    );
    println!("address     {}", i.address);
    println!("spiffe id   {}", i.spiffe_id);
    match &i.vm {
        Some(vm) => println!(
            "vm          {} vCPU, {} MiB, tap {}, vmm pid {}",
            vm.vcpus,
            vm.memory_bytes >> 20,
            vm.tap_device,
            vm.vmm_pid
        ),
        None => println!("process     pid {} (in a cell of its own)", i.pid),
    }
    println!("reach it    aer --instance {} node info", i.name);
    if !i.error.is_empty() {
        println!("error       {}", i.error);
    }
}

pub async fn spawn(a: &SpawnArgs, target: &super::Target, as_json: bool) -> Result<(), CliError> {
    let isolation = match a.isolation.as_deref() {
        None => pb::IsolationKind::Unspecified,
        Some("vm") => pb::IsolationKind::Vm,
        Some("cell") => pb::IsolationKind::Cell,
        Some(o) => return Err(CliError::Usage(format!("--isolation '{o}': choose vm or cell"))),
    };
    let req = pb::Instance {
        name: a.name.clone(),
        isolation: isolation as i32,
        vcpus: a.vcpus,
        memory_bytes: parse_bytes("memory", &a.memory)?,
        svid_ttl_seconds: a.svid_ttl,
        serving_timeout_millis: secs_to_millis("serving-timeout", a.serving_timeout)?,
    };
    // Spawn returns once the child serves: seconds under TCG.
    let i = pb::runtime_client::RuntimeClient::new(target.connect_unbounded().await?)
        .spawn(req)
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    print_instance(&i, as_json);
    Ok(())
}

pub async fn instance(cmd: &InstanceCmd, target: &super::Target, as_json: bool) -> Result<(), CliError> {
    let k = pb::WorkloadKind::Instance;
    match cmd {
        InstanceCmd::Ls => {
            let l = pb::workloads_client::WorkloadsClient::new(target.connect().await?)
                .list(pb::ListRequest { kind: k as i32 })
                .await
                .map_err(CliError::Remote)?
                .into_inner();
            let all = l.workloads.iter().filter_map(|w| match &w.status {
                Some(pb::workload_status::Status::Instance(i)) => Some(i),
                _ => None,
            });
            if as_json {
                println!("{}", Value::Array(all.map(instance_json).collect()));
                return Ok(());
            }
            println!("{:<24} {:<9} {:<21} SPIFFE ID", "NAME", "STATE", "ADDRESS");
            for i in all {
                println!(
                    "{:<24} {:<9} {:<21} {}",
                    i.name,
                    state_name(i.state),
                    i.address,
                    i.spiffe_id
                );
            }
            Ok(())
        }
        InstanceCmd::Life(l) => life(l, k, target, as_json).await,
    }
}
