//! `aer metrics`: the node's `GET /metrics`, fetched as a Prometheus server scrapes it:
//! HTTP/1.1 over mTLS with this client's certificate, the node's identity checked as for
//! every call.

use super::{CliError, Target};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest scrape aer reads (a node with thousands of cells is far below it).
const MAX: usize = 64 << 20;

pub(crate) async fn metrics(t: &Target) -> Result<(), CliError> {
    if t.instance.is_some() {
        return Err(CliError::Usage(
            "aer metrics reads one node's own figures: --instance is not forwarded; scrape the instance at its address (--addr)"
                .into(),
        ));
    }
    let text = tokio::time::timeout(t.timeout, scrape(t))
        .await
        .map_err(|_| CliError::Connect(format!("{}: no answer within {:.1} s", t.addr, t.timeout.as_secs_f64())))??;
    print!("{text}");
    Ok(())
}

async fn scrape(t: &Target) -> Result<String, CliError> {
    let mut config = t.tls_config()?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(t.server_name.clone())
        .map_err(|e| CliError::Usage(format!("--server-name '{}': {e}", t.server_name)))?;
    let connect = |e: std::io::Error| CliError::Connect(format!("{}: {}", t.addr, crate::error_chain(&e)));
    let tcp = tokio::net::TcpStream::connect(&t.addr).await.map_err(connect)?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(connect)?;
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\nConnection: close\r\n\r\n",
        t.server_name
    );
    tls.write_all(request.as_bytes()).await.map_err(connect)?;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if let Some((status, body)) = answer(&got)? {
            return match status {
                200 => String::from_utf8(body.to_vec())
                    .map_err(|_| CliError::Remote(tonic::Status::internal("/metrics: not UTF-8"))),
                403 => Err(CliError::Remote(tonic::Status::permission_denied(
                    String::from_utf8_lossy(body).trim().to_owned(),
                ))),
                s => Err(CliError::Remote(tonic::Status::unknown(format!(
                    "/metrics answered HTTP {s}: {}",
                    String::from_utf8_lossy(body).trim()
                )))),
            };
        }
        let n = tls.read(&mut buf).await.map_err(connect)?;
        if n == 0 || got.len() + n > MAX {
            return Err(CliError::Connect(format!(
                "{}: the answer to /metrics ended early or is over {MAX} bytes",
                t.addr
            )));
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// The status and body of a whole HTTP/1.1 answer in `got` (its Content-Length read), or
/// None while more is to come.
fn answer(got: &[u8]) -> Result<Option<(u16, &[u8])>, CliError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let start = match r.parse(got) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(CliError::Connect(format!("/metrics: not an HTTP answer: {e}"))),
    };
    let length = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
        .ok_or_else(|| CliError::Connect("/metrics: the answer has no Content-Length".into()))?;
    let body = &got[start..];
    Ok((body.len() >= length).then(|| (r.code.unwrap_or(0), &body[..length])))
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_answer_is_whole_only_with_its_body() {
        let whole = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert!(super::answer(&whole[..20]).unwrap().is_none());
        assert!(super::answer(&whole[..whole.len() - 1]).unwrap().is_none());
        assert_eq!(super::answer(whole).unwrap(), Some((200, &b"hello"[..])));
        assert!(super::answer(b"HTTP/1.1 200 OK\r\n\r\n").is_err(), "no length");
        assert!(super::answer(b"SSH-2.0\r\n\r\n").is_err());
    }
}
