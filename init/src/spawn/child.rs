//! Speaking the API to a child: the mTLS channel (this node's own certificate, the child's
//! SVID verified), the wait until it serves, and the request to power off. A pod's calls
//! to its instance (`pod/remote.rs`) and clients' forwarded calls (`server/forward.rs`) go
//! over the same channel.

use super::SpawnError;
use crate::pb;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// A lazily connecting mTLS channel to the child `name` (SPIFFE ID `child_id`) at
/// `address`: this node presents its own certificate (the renewed one, once renewed) and
/// accepts only the child's exact ID, issued by a CA entitled to (`pki::chain`). Made
/// before the child boots, so bad TLS material fails before anything is created.
pub fn channel(
    id: &super::identity::SpawnIdentity,
    name: &str,
    child_id: &str,
    address: SocketAddr,
) -> Result<tonic::transport::Channel, SpawnError> {
    let config = crate::pki::tls::child_client_config(&id.root_pem, id.identity.clone(), child_id)
        .map_err(|e| SpawnError::Tls(e.to_string()))?;
    let connector = crate::pki::tls::TlsConnector::new(&address.to_string(), name, config)
        .map_err(|e| SpawnError::Tls(e.to_string()))?;
    // Plain "http": the connector does TLS itself (tonic's own TLS cannot pin an ID).
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| SpawnError::Tls(format!("endpoint for {address}: {e}")))?
        .connect_timeout(Duration::from_secs(2));
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// What the wait needs to know about the child's body (its VM or its cell), which the
/// runtime owns.
pub trait Watched {
    /// How it ended, once it has.
    fn outcome(&self) -> Option<String>;
    /// Its console so far: a VM's serial port, a cell child's output.
    fn console(&self) -> Vec<String>;
}

/// Probes the child's health every 100 ms until it is SERVING; fails when the body ends
/// or `deadline` passes, saying how far the child got.
pub async fn wait_serving(
    channel: &tonic::transport::Channel,
    address: SocketAddr,
    body: &(dyn Watched + Sync),
    deadline: Instant,
) -> Result<(), SpawnError> {
    let started = Instant::now();
    loop {
        if let Some(how) = body.outcome() {
            return Err(SpawnError::Ended(format!(
                "{how}; its console ended with: {}",
                tail(&body.console(), 8)
            )));
        }
        let mut h = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
        let probe = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(2))
            .max(Duration::from_millis(100));
        let last = match tokio::time::timeout(probe, h.check(req)).await {
            Ok(Ok(r)) if r.get_ref().status == 1 => return Ok(()),
            Ok(Ok(r)) => format!("health status {}", r.get_ref().status),
            Ok(Err(e)) => e.message().to_owned(),
            Err(_) => format!("no answer within {probe:?}"),
        };
        if Instant::now() >= deadline {
            let console = body.console();
            return Err(SpawnError::NotServing(format!(
                "the child did not serve at {address} within {:.1} s (the caller's deadline, or serving_timeout_millis): {}; last probe: {last}; its console ended with: {}",
                started.elapsed().as_secs_f64(),
                progress(&console),
                tail(&console, 8)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks the child to power off; its workloads get `grace`. The answer comes at once (the
/// child powers off after replying); a child that does not answer is ended by the caller.
pub async fn request_shutdown(channel: &tonic::transport::Channel, grace: Duration) -> Result<(), SpawnError> {
    let mut n = pb::node_client::NodeClient::new(channel.clone());
    let req = pb::ShutdownRequest {
        grace_period_millis: grace.as_millis().min(u128::from(u32::MAX)) as u32,
    };
    match tokio::time::timeout(Duration::from_secs(5), n.shutdown(req)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(SpawnError::Refused(e)),
        Err(_) => Err(SpawnError::NotServing("no answer to Shutdown within 5 s".into())),
    }
}

/// How far a child that does not serve yet got, read from its console: auraed logs
/// "starting as PID 1" (or "as a daemon") first thing.
pub fn progress(console: &[String]) -> String {
    let auraed = console.iter().any(|l| l.contains("starting as"));
    match (console.len(), auraed) {
        (0, _) => "it has printed nothing yet (its kernel is still booting)".into(),
        (n, false) => format!("its kernel printed {n} line(s) but auraed has not started yet"),
        (n, true) => format!("auraed started ({n} console line(s)) but does not serve yet"),
    }
}

/// The last `n` lines, joined with " | ".
pub fn tail(console: &[String], n: usize) -> String {
    console[console.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn progress_says_how_far_the_child_got() {
        assert!(progress(&[]).contains("printed nothing yet"));
        assert!(progress(&lines(&["Linux version 6.1", "x"])).contains("kernel printed 2 line(s)"));
        let up = lines(&["k", "INFO auraed 0.1.0 starting as PID 1", "cgroup v2 ..."]);
        assert!(
            progress(&up).contains("auraed started (3 console line(s))"),
            "{}",
            progress(&up)
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail(&lines(&["a", "b", "c"]), 2), "b | c");
        assert_eq!(tail(&lines(&["a"]), 8), "a");
        assert_eq!(tail(&[], 8), "");
    }

    struct Booting {
        ended: Option<String>,
    }

    impl Watched for Booting {
        fn outcome(&self) -> Option<String> {
            self.ended.clone()
        }
        fn console(&self) -> Vec<String> {
            lines(&["Linux version 6.1"])
        }
    }

    #[tokio::test]
    async fn a_child_that_never_serves_fails_at_the_deadline_with_its_progress() {
        // Nothing listens on this loopback port: every probe fails to connect.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_lazy();
        let deadline = Instant::now() + Duration::from_millis(300);
        let e = wait_serving(&ch, address, &Booting { ended: None }, deadline)
            .await
            .unwrap_err();
        assert!(matches!(e, SpawnError::NotServing(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("kernel printed 1 line(s)") && msg.contains("Linux version 6.1"),
            "{msg}"
        );
        let e = wait_serving(
            &ch,
            address,
            &Booting {
                ended: Some("the VMM exited".into()),
            },
            deadline,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, SpawnError::Ended(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("the child ended before it served: the VMM exited"),
            "{e}"
        );
    }
}
