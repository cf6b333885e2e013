//! `aer vm ...`: virtual machines run by auraed's own VMM.

use super::print::{print_vm, state_name, vm_json};
use super::workload::{life, parse_bytes, secs_to_millis, stream_logs, Life};
use super::CliError;
use crate::pb;
use clap::{Args, Subcommand};
use serde_json::Value;

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

pub async fn vm(cmd: &VmCmd, target: &super::Target, as_json: bool) -> Result<(), CliError> {
    let k = pb::WorkloadKind::VirtualMachine;
    match cmd {
        VmCmd::Run(r) => run(r, target, as_json).await,
        VmCmd::Ls => {
            let listed = super::workload::list_kind(target, k).await?;
            let vms = listed.iter().filter_map(|w| match w {
                pb::workload_status::Status::VirtualMachine(v) => Some(v),
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
        .wait(super::workload::wref(pb::WorkloadKind::VirtualMachine, &r.name))
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
