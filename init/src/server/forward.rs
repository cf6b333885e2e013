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
    match path.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path, None),
    }
}

/// The descendant path a call names, checked before anything else happens: a header that
/// is present but not a valid path is refused, never read as absent (which would serve a
/// call meant for a child, a Shutdown say, on this node).
pub fn instance_path(value: Option<&HeaderValue>) -> Result<Option<String>, tonic::Status> {
    let Some(v) = value else { return Ok(None) };
    let refuse = |why: String| tonic::Status::invalid_argument(format!("{HEADER}: {why}"));
    let path = v
        .to_str()
        .map_err(|_| refuse("is not printable ASCII; name descendants like 'child' or 'child/grandchild'".into()))?;
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() > crate::runtime::names::MAX_DEPTH {
        return Err(refuse(format!(
            "'{path}' is {} levels deep; the limit is {}",
            segments.len(),
            crate::runtime::names::MAX_DEPTH
        )));
    }
    for s in segments {
        crate::runtime::names::ExecName::parse_instance(s).map_err(|e| refuse(format!("in '{path}': {e}")))?;
    }
    Ok(Some(path.to_owned()))
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
        let path = match instance_path(req.headers().get(HEADER)) {
            Ok(Some(p)) => p,
            Ok(None) => return Box::pin(self.inner.call(req)),
            Err(s) => return Box::pin(async move { Ok(s.into_http()) }),
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
        // The child authorizes the original caller, whom the authorization layer (in front
        // of this one) has already let through here.
        match req
            .extensions()
            .get::<super::authz::Caller>()
            .and_then(|c| HeaderValue::from_str(&c.id).ok())
        {
            Some(v) => {
                req.headers_mut().insert(super::authz::CALLER_HEADER, v);
            }
            None => {
                let s =
                    tonic::Status::permission_denied(format!("{HEADER}: the call has no authorized caller to forward"));
                return Box::pin(async move { Ok(s.into_http()) });
            }
        }
        let channel = self.rt.channel(crate::runtime::Kind::Instance, first);
        let first = first.to_owned();
        Box::pin(async move {
            let crate::runtime::ChildChannel { mut channel, ended } = match channel {
                Ok(c) => c,
                Err(e) => {
                    // An instance that has ended is not coming back: UNAVAILABLE, at once.
                    let ended = matches!(e, crate::runtime::error::RuntimeError::WrongPhase(_));
                    let s: tonic::Status = e.into();
                    let code = if ended { tonic::Code::Unavailable } else { s.code() };
                    let s = tonic::Status::new(code, format!("{HEADER}: {}", s.message()));
                    return Ok(s.into_http());
                }
            };
            if let Err(e) = std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                return Ok(tonic::Status::unavailable(format!("{HEADER}: instance '{first}': {e}")).into_http());
            }
            tokio::select! {
                // An answer that is there wins over the end (a forwarded Shutdown answers, then ends).
                biased;
                r = channel.call(req) => match r {
                    Ok(r) => Ok(r),
                    Err(e) => Ok(
                        tonic::Status::unavailable(format!("{HEADER}: instance '{first}' did not answer: {e}")).into_http(),
                    ),
                },
                how = ended => Ok(
                    tonic::Status::unavailable(format!("{HEADER}: instance '{first}' ended before it answered: {how}")).into_http(),
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
    }

    #[test]
    fn a_malformed_instance_header_is_refused_not_ignored() {
        let v = |b: &[u8]| HeaderValue::from_bytes(b).unwrap();
        assert_eq!(instance_path(None).unwrap(), None);
        assert_eq!(instance_path(Some(&v(b"c1/g1"))).unwrap().as_deref(), Some("c1/g1"));
        for bad in [
            &b"c1\x80"[..],
            b"",
            b"c1/",
            b"/c1",
            b"c1//g1",
            b"C1",
            b"../c1",
            b"a/b/c/d/e/f/g/h/i",
        ] {
            let e = instance_path(Some(&v(bad))).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.message().starts_with("aurae-instance: "), "{bad:?}: {}", e.message());
        }
        let e = instance_path(Some(&v(b"a/b/c/d/e/f/g/h/i"))).unwrap_err();
        assert!(e.message().contains("9 levels deep; the limit is 8"), "{}", e.message());
    }
}
