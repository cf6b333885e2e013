//! `aer pod port-forward` and `aer cell port-forward` (as `kubectl port-forward`): this
//! machine listens on each local port, and every connection it accepts becomes one
//! `PortForward` stream to the pod's (or cell's) port, until Ctrl-C.

use super::CliError;
use crate::pb::{self, port_forward_request::Request as In};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

/// `[LOCAL:]REMOTE`: the local port (0: any free one) and the remote one.
pub fn parse_ports(spec: &str) -> Result<(u16, u16), CliError> {
    let bad = || {
        CliError::Usage(format!(
            "'{spec}': give PORT or LOCAL:PORT (ports 1..65535; LOCAL 0 or empty picks a free one)"
        ))
    };
    let (local, remote) = match spec.split_once(':') {
        Some(("", r)) => (0, r.parse::<u16>().map_err(|_| bad())?),
        Some((l, r)) => (
            l.parse::<u16>().map_err(|_| bad())?,
            r.parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = spec.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if remote == 0 {
        return Err(bad());
    }
    Ok((local, remote))
}

/// Where the streams go: a pod or a cell.
pub enum Dest {
    Pod(String),
    Cell(String),
}

/// Listens on `address` at each local port of `ports` and forwards until interrupted.
pub async fn port_forward(target: &super::Target, dest: Dest, ports: &[String], address: &str) -> Result<(), CliError> {
    if ports.is_empty() {
        return Err(CliError::Usage("give at least one port: PORT or LOCAL:PORT".into()));
    }
    let pairs = ports.iter().map(|p| parse_ports(p)).collect::<Result<Vec<_>, _>>()?;
    let ch = target.connect_unbounded().await?;
    let (pod, cell) = match dest {
        Dest::Pod(p) => (p, String::new()),
        Dest::Cell(c) => (String::new(), c),
    };
    let mut tasks = Vec::new();
    for (local, remote) in pairs {
        let l = tokio::net::TcpListener::bind((address, local))
            .await
            .map_err(|e| CliError::Usage(format!("listen on {address}:{local}: {e}")))?;
        let at = l
            .local_addr()
            .map_err(|e| CliError::Usage(format!("listen on {address}:{local}: {e}")))?;
        println!("Forwarding from {at} -> {remote}");
        let start = pb::PortForwardStart {
            pod: pod.clone(),
            cell: cell.clone(),
            port: u32::from(remote),
        };
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((conn, peer)) = l.accept().await else {
                    continue;
                };
                let (ch, start) = (ch.clone(), start.clone());
                tokio::spawn(async move {
                    if let Err(e) = carry(ch, start, conn).await {
                        eprintln!("{peer} -> {remote}: {e}");
                    }
                });
            }
        }));
    }
    let _ = tokio::signal::ctrl_c().await;
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// One accepted connection as one stream, both ways, until either side ends.
async fn carry(ch: super::Conn, start: pb::PortForwardStart, conn: tokio::net::TcpStream) -> Result<(), CliError> {
    let (mut r, mut w) = conn.into_split();
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::PortForwardRequest>(16);
    let first = pb::PortForwardRequest {
        request: Some(In::Start(start)),
    };
    let _ = tx.send(first).await;
    let mut answers = pb::runtime_client::RuntimeClient::new(ch)
        .port_forward(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let m = pb::PortForwardRequest {
                        request: Some(In::Data(buf[..n].to_vec())),
                    };
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
        }
        // Dropping `tx` half-closes the stream: the far side reads EOF.
    });
    let down = async {
        while let Some(m) = answers.next().await {
            let m = m.map_err(CliError::Remote)?;
            if w.write_all(&m.data).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
        Ok::<(), CliError>(())
    };
    let r = down.await;
    up.abort();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_port_or_local_colon_port() {
        assert_eq!(parse_ports("8080").unwrap(), (8080, 8080));
        assert_eq!(parse_ports("9000:80").unwrap(), (9000, 80));
        assert_eq!(parse_ports(":80").unwrap(), (0, 80));
        assert_eq!(parse_ports("0:80").unwrap(), (0, 80));
        for bad in ["", "x", "80:", "1:0", "0", "70000", "1:2:3"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }
}
