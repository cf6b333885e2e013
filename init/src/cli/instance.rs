//! `aer spawn` and `aer instance ...`: copies of auraed in microVMs (or cells).

use super::print::{instance_json, print_instance, state_name};
use super::workload::{life, parse_bytes, secs_to_millis, Life};
use super::CliError;
use crate::pb;
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Debug, Args)]
pub struct SpawnArgs {
    name: String,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest memory, with an optional K/M/G suffix.
    #[arg(long, default_value = "256M")]
    memory: String,
    /// Lifetime of the child's SVID in seconds (renewed by this node at half-life).
    #[arg(long, default_value_t = 3600)]
    svid_ttl: u32,
    /// vm or cell (default: vm where KVM is usable, else cell).
    #[arg(long)]
    isolation: Option<String>,
    /// Seconds to wait for the child to serve (default: the node's, 300 s).
    #[arg(long, value_name = "SECS")]
    serving_timeout: Option<f64>,
    /// An extra interface (eth1, eth2, ... in order) on a named node bridge:
    /// BRIDGE=ADDRESS/PREFIX, e.g. lab0=192.168.50.2/24.
    #[arg(long = "network", value_name = "BRIDGE=ADDR/N")]
    networks: Vec<String>,
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

pub async fn spawn(a: &SpawnArgs, target: &super::Target, as_json: bool) -> Result<(), CliError> {
    let isolation = super::workload::parse_isolation("--isolation", a.isolation.as_deref())?;
    let req = pb::Instance {
        name: a.name.clone(),
        isolation: isolation as i32,
        vcpus: a.vcpus,
        memory_bytes: parse_bytes("memory", &a.memory)?,
        svid_ttl_seconds: a.svid_ttl,
        serving_timeout_millis: secs_to_millis("serving-timeout", a.serving_timeout)?,
        networks: super::workload::parse_network(&a.networks)?,
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
            let listed = super::workload::list_kind(target, k).await?;
            let all = listed.iter().filter_map(|w| match w {
                pb::workload_status::Status::Instance(i) => Some(i),
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
