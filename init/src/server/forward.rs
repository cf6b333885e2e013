//! Reaching descendants through their ancestors. A call carrying the metadata header
//! `aurae-instance: a/b/c` is not served here: it goes to this node's instance `a` with the
//! header rewritten to `b/c` (dropped at the last hop), over the mTLS channel the parent
//! holds to the child. So each hop is mutually authenticated: the client to this node, this
//! node (its own SVID) to the child, and so on; a child sees its parent's SPIFFE ID as the
//! caller. A client outside the appliance thus reaches any descendant without a route to
//! the internal bridges.

use crate::runtime::Runtime;
use http::{HeaderValue, Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tower_service::Service;

pub const HEADER: &str = aurae_proto::INSTANCE_HEADER;

#[derive(Clone)]
pub struct ForwardLayer {
    pub rt: Arc<Runtime>,
}

impl<S> tower_layer::Layer<S> for ForwardLayer {
    type Service = Forward<S>;
    fn layer(&self, inner: S) -> Forward<S> {
        Forward {
            inner,
            rt: self.rt.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Forward<S> {
    inner: S,
    rt: Arc<Runtime>,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send>>;

/// Splits "a/b/c" into ("a", Some("b/c")).
pub fn split_path(path: &str) -> (&str, Option<&str>) {
    match path.trim_matches('/').split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path.trim_matches('/'), None),
    }
}

impl<S> Service<Request<Body>> for Forward<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> BoxFuture {
        let Some(path) = req
            .headers()
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
        else {
            return Box::pin(self.inner.call(req));
        };
        let (first, rest) = split_path(&path);
        match rest.map(HeaderValue::from_str) {
            Some(Ok(v)) => {
                req.headers_mut().insert(HEADER, v);
            }
            Some(Err(_)) => {
                let s = tonic::Status::invalid_argument(format!("{HEADER}: '{path}' is not a valid header value"));
                return Box::pin(async move { Ok(s.into_http()) });
            }
            None => {
                req.headers_mut().remove(HEADER);
            }
        }
        let channel = self.rt.instance_channel(first);
        let first = first.to_owned();
        Box::pin(async move {
            let mut channel = match channel {
                Ok(c) => c,
                Err(e) => {
                    let s: tonic::Status = e.into();
                    let s = tonic::Status::new(s.code(), format!("{HEADER}: {}", s.message()));
                    return Ok(s.into_http());
                }
            };
            if let Err(e) = std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                return Ok(tonic::Status::unavailable(format!("{HEADER}: instance '{first}': {e}")).into_http());
            }
            match channel.call(req).await {
                Ok(r) => Ok(r),
                Err(e) => Ok(
                    tonic::Status::unavailable(format!("{HEADER}: instance '{first}' did not answer: {e}")).into_http(),
                ),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_instance_paths() {
        assert_eq!(split_path("a"), ("a", None));
        assert_eq!(split_path("a/b/c"), ("a", Some("b/c")));
        assert_eq!(split_path("/a/b/"), ("a", Some("b")));
    }
}
