//! `aer health` and `aer node ...`: the node itself.

use super::print::{done, print_info};
use super::{CliError, Conn};
use crate::pb;
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCmd {
    /// Version, mode, kernel, cgroup controllers, KVM, identity.
    Info,
    /// Stop workloads and power the node off (a daemon just exits).
    Shutdown {
        #[arg(long, default_value_t = crate::runtime::DEFAULT_GRACE_MS)]
        grace_ms: u32,
    },
    /// Stop workloads and reboot the node (PID 1 only).
    Reboot {
        #[arg(long, default_value_t = crate::runtime::DEFAULT_GRACE_MS)]
        grace_ms: u32,
    },
}

/// `aer health`: exit 1 unless SERVING.
pub(crate) async fn health(ch: Conn, service: &str, as_json: bool) -> Result<(), CliError> {
    let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
    let r = c
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    let status = tonic_health::pb::health_check_response::ServingStatus::try_from(r.status)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| r.status.to_string());
    if as_json {
        println!("{}", json!({ "service": service, "status": status }));
    } else {
        println!("{status}");
    }
    if status != "SERVING" {
        return Err(CliError::Remote(tonic::Status::unavailable(format!(
            "health: {status}"
        ))));
    }
    Ok(())
}

pub(crate) async fn node(ch: Conn, cmd: &NodeCmd, as_json: bool) -> Result<(), CliError> {
    let mut c = pb::node_client::NodeClient::new(ch);
    match cmd {
        NodeCmd::Info => print_info(
            &c.info(pb::NodeInfoRequest {})
                .await
                .map_err(CliError::Remote)?
                .into_inner(),
            as_json,
        ),
        NodeCmd::Shutdown { grace_ms } => {
            c.shutdown(pb::ShutdownRequest {
                grace_period_millis: *grace_ms,
            })
            .await
            .map_err(CliError::Remote)?;
            done(as_json, "shutdown requested");
        }
        NodeCmd::Reboot { grace_ms } => {
            c.reboot(pb::ShutdownRequest {
                grace_period_millis: *grace_ms,
            })
            .await
            .map_err(CliError::Remote)?;
            done(as_json, "reboot requested");
        }
    }
    Ok(())
}
