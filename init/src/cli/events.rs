//! `aer events`: what happens to the node's workloads, a line each (JSON with `--json`),
//! until interrupted. A broken stream is opened again after the last event printed, so a
//! node restarting its listener or a flaky link loses nothing the node still holds; what it
//! no longer holds is said.

use super::CliError;
use crate::pb;

/// One event as a line: `SEQ TIME KIND NAME TYPE [details]`.
pub fn line(e: &pb::Event) -> String {
    let kind = pb::WorkloadKind::try_from(e.kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("WORKLOAD_KIND_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| e.kind.to_string());
    let what = pb::EventType::try_from(e.r#type)
        .map(|t| t.as_str_name().trim_start_matches("EVENT_TYPE_").to_ascii_lowercase())
        .unwrap_or_else(|_| e.r#type.to_string());
    let mut s = format!(
        "{:>6} {} {kind} {} {what}",
        e.seq,
        crate::cri::logfile::rfc3339_nano(e.unix_nanos),
        e.name
    );
    if let Some(c) = e.exit_code {
        s += &format!(" code {c}");
    }
    if let Some(sig) = e.signal {
        s += &format!(" signal {sig}");
    }
    if e.oom_killed {
        s += " oom-killed";
    }
    if !e.reason.is_empty() {
        s += &format!(": {}", e.reason);
    }
    s
}

pub fn json(e: &pb::Event) -> serde_json::Value {
    serde_json::json!({
        "seq": e.seq,
        "unix_nanos": e.unix_nanos,
        "kind": pb::WorkloadKind::try_from(e.kind).map(|k| k.as_str_name()).unwrap_or("UNKNOWN"),
        "name": e.name,
        "type": pb::EventType::try_from(e.r#type).map(|t| t.as_str_name()).unwrap_or("UNKNOWN"),
        "exit_code": e.exit_code,
        "signal": e.signal,
        "oom_killed": e.oom_killed,
        "reason": e.reason,
    })
}

/// Prints events after `after` (from now with `from_now`) until interrupted.
pub async fn events(target: &super::Target, after: u64, from_now: bool, as_json: bool) -> Result<(), CliError> {
    let mut after = after;
    let mut from_now = from_now;
    let mut tries = 0u32;
    loop {
        let stream = async {
            let ch = target.connect_unbounded().await?;
            pb::workloads_client::WorkloadsClient::new(ch)
                .events(pb::EventsRequest { after, from_now })
                .await
                .map_err(CliError::Remote)
        };
        let mut s = match stream.await {
            Ok(s) => s.into_inner(),
            // Refused (a role, a limit): saying so is all there is to do.
            Err(e @ CliError::Remote(_)) => return Err(e),
            Err(e) if tries < 5 => {
                eprintln!("aer events: {e}; trying again");
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        from_now = false;
        loop {
            match s.message().await {
                Ok(Some(e)) => {
                    tries = 0;
                    if e.missed > 0 {
                        eprintln!(
                            "aer events: {} events before {} are no longer held by the node",
                            e.missed, e.seq
                        );
                    }
                    after = e.seq;
                    match as_json {
                        true => println!("{}", json(&e)),
                        false => println!("{}", line(&e)),
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    eprintln!("aer events: the stream broke ({}); resuming after {after}", e.message());
                    break;
                }
            }
        }
    }
}
