use super::*;
use crate::pki::policy::Policy;
use crate::pki::{first_der, mint_ca, mint_leaf, LeafKind};
use crate::server::authz::Authorizer;
use crate::server::listen::PeerInfo;
use http_body::Body as _;
use std::sync::atomic::{AtomicUsize, Ordering};

const NODE: &str = "spiffe://t.test/node/n";
const READER: &str = "spiffe://t.test/client/rita";
const STRANGER: &str = "spiffe://t.test/client/sam";

struct Fixture {
    ctx: Arc<NodeContext>,
    reader: PeerInfo,
    stranger: PeerInfo,
}

fn fixture() -> Fixture {
    let ca = mint_ca("t.test").unwrap();
    let policy = Policy::parse(&format!("[[allow]]\nid = \"{READER}\"\nrole = \"reader\"\n"), "p").unwrap();
    let auth = Authorizer::new(Ok(policy), NODE, first_der(&ca.cert_pem), Default::default());
    let rt = Arc::new(crate::runtime::Runtime::new("/nonexistent".into(), None));
    let (tx, _) = tokio::sync::mpsc::unbounded_channel();
    let ctx = NodeContext::new(false, Default::default(), NODE.into(), tx, rt, auth, None);
    let peer = |id: &str| {
        let leaf = mint_leaf(&ca, id, "client", LeafKind::Client, 1).unwrap();
        PeerInfo {
            remote: None,
            certs: Some(Arc::new(vec![first_der(&leaf.cert_pem).unwrap().into()])),
            quick: Arc::new(tokio::sync::Semaphore::new(4)),
        }
    };
    Fixture {
        ctx: Arc::new(ctx),
        reader: peer(READER),
        stranger: peer(STRANGER),
    }
}

/// A body of one message and then `grpc-status` in its trailers, as tonic sends a success.
struct Trailed(u8);

impl http_body::Body for Trailed {
    type Data = Bytes;
    type Error = tonic::Status;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        self.0 += 1;
        Poll::Ready(match self.0 {
            1 => Some(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0")))),
            2 => {
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", http::HeaderValue::from_static("0"));
                Some(Ok(Frame::trailers(t)))
            }
            _ => None,
        })
    }
}

/// The services behind the layer: List succeeds (status in the trailers), anything else is
/// UNIMPLEMENTED in the headers; counts the calls that reach it.
#[derive(Clone, Default)]
struct Services(Arc<AtomicUsize>);

impl Service<Request<Body>> for Services {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Response<Body>, std::convert::Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.0.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(if req.uri().path() == "/aurae.v0.Workloads/List" {
            Response::new(Body::new(Trailed(0)))
        } else {
            tonic::Status::unimplemented("no such method").into_http()
        }))
    }
}

fn layered(f: &Fixture) -> (Metrics<Services>, Services) {
    let inner = Services::default();
    let svc = tower_layer::Layer::layer(&MetricsLayer { ctx: f.ctx.clone() }, inner.clone());
    (svc, inner)
}

fn request(method: &str, path: &str, version: Version, peer: Option<&PeerInfo>) -> Request<Body> {
    let mut r = Request::builder().method(method).uri(path).version(version);
    if let Some(p) = peer {
        r = r.extension(p.clone());
    }
    r.body(Body::empty()).unwrap()
}

async fn text(mut b: Body) -> String {
    let mut out = Vec::new();
    while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await {
        if let Ok(d) = f.unwrap().into_data() {
            out.extend_from_slice(&d);
        }
    }
    String::from_utf8(out).unwrap()
}

async fn call(svc: &mut Metrics<Services>, req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let (parts, body) = svc.call(req).await.unwrap().into_parts();
    (parts.status, parts.headers, text(body).await)
}

/// The families a scrape declares, with their types (`# TYPE name type`).
fn declared(scrape: &str) -> Vec<(String, String)> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (n, t) = l.split_once(' ').unwrap();
            (n.to_owned(), t.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn a_reader_scrapes_listed_families_over_http1_and_the_scrape_is_counted() {
    let f = fixture();
    let (mut svc, inner) = layered(&f);
    let (status, headers, body) = call(&mut svc, request("GET", PATH, Version::HTTP_11, Some(&f.reader))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers[header::CONTENT_TYPE], CONTENT_TYPE);
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    // A family with no series yet (no cells, no VMs, no calls) is left out; the appliance
    // tier scrapes a node that has them all.
    let got = declared(&body);
    for (n, t) in &got {
        assert!(
            FAMILIES.contains(&(n.as_str(), t.as_str())),
            "{n} {t} is not in FAMILIES"
        );
    }
    for family in [
        "aurae_auraed_resident_memory_bytes",
        "aurae_log_dropped_bytes",
        "aurae_images",
    ] {
        assert!(got.iter().any(|(n, _)| n == family), "{family} in {body}");
    }
    assert_eq!(inner.0.load(Ordering::Relaxed), 0, "no service saw the scrape");
    // The first scrape is counted in the second.
    let (_, _, body) = call(&mut svc, request("GET", PATH, Version::HTTP_2, Some(&f.reader))).await;
    assert!(
        body.contains("aurae_rpc_calls_total{method=\"/metrics\",code=\"OK\"} 1\n"),
        "{body}"
    );
    assert!(body.contains("aurae_api_connections_limit 1024\n"));
}

#[tokio::test]
async fn the_scrape_is_refused_without_a_role_or_a_certificate_and_takes_only_get() {
    let f = fixture();
    let (mut svc, inner) = layered(&f);
    let (status, _, body) = call(&mut svc, request("GET", PATH, Version::HTTP_11, Some(&f.stranger))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains(STRANGER) && body.contains("reader"), "{body}");
    assert!(!body.contains("aurae_"), "nothing measured is shown: {body}");
    let (status, _, body) = call(&mut svc, request("GET", PATH, Version::HTTP_11, None)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("SPIFFE ID"), "{body}");
    let (status, headers, body) = call(&mut svc, request("POST", PATH, Version::HTTP_11, Some(&f.reader))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(headers[header::ALLOW], "GET");
    assert_eq!(inner.0.load(Ordering::Relaxed), 0);
    // The refusals are counted, by code.
    let body = render(&f.ctx);
    assert!(
        body.contains("aurae_rpc_calls_total{method=\"/metrics\",code=\"PERMISSION_DENIED\"} 2\n"),
        "{body}"
    );
    assert!(
        body.contains("aurae_rpc_calls_total{method=\"/metrics\",code=\"INVALID_ARGUMENT\"} 1\n"),
        "{body}"
    );
}

/// HTTP/1 is opened for the scrape alone: the services behind it are not reachable that way.
#[tokio::test]
async fn http1_to_any_other_path_is_not_found_and_reaches_no_service() {
    let f = fixture();
    let (mut svc, inner) = layered(&f);
    for path in ["/", "/aurae.v0.Workloads/List", "/metrics/../aurae.v0.Node/Shutdown"] {
        let (status, _, body) = call(&mut svc, request("POST", path, Version::HTTP_11, Some(&f.reader))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(body.contains("only GET /metrics"), "{body}");
    }
    assert_eq!(inner.0.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn calls_are_counted_by_method_and_code_and_made_up_methods_share_one_label() {
    let f = fixture();
    let (mut svc, inner) = layered(&f);
    let list = "/aurae.v0.Workloads/List";
    let (status, _, _) = call(&mut svc, request("POST", list, Version::HTTP_2, Some(&f.reader))).await;
    assert_eq!(status, StatusCode::OK);
    for n in 0..50 {
        let path = format!("/made.up.Service{n}/Call");
        call(&mut svc, request("POST", &path, Version::HTTP_2, Some(&f.reader))).await;
    }
    // A client that goes before the call's end: the call is counted as cancelled.
    drop(
        svc.call(request("POST", list, Version::HTTP_2, Some(&f.reader)))
            .await
            .unwrap(),
    );
    assert_eq!(inner.0.load(Ordering::Relaxed), 52);
    let body = render(&f.ctx);
    for line in [
        format!("aurae_rpc_calls_total{{method=\"{list}\",code=\"OK\"}} 1\n"),
        format!("aurae_rpc_calls_total{{method=\"{list}\",code=\"CANCELLED\"}} 1\n"),
        "aurae_rpc_calls_total{method=\"other\",code=\"UNIMPLEMENTED\"} 50\n".to_owned(),
        format!("aurae_rpc_duration_seconds_count{{method=\"{list}\"}} 2\n"),
    ] {
        assert!(body.contains(&line), "{line} in {body}");
    }
    assert!(!body.contains("made.up"), "a made-up method gets no label of its own");
}

#[test]
fn codes_are_named_as_grpc_names_them() {
    assert_eq!(code_name(tonic::Code::Ok), "OK");
    assert_eq!(code_name(tonic::Code::PermissionDenied), "PERMISSION_DENIED");
    assert_eq!(code_name(tonic::Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
}

#[test]
fn the_scrape_needs_the_reader_role() {
    assert_eq!(authz::required_role(PATH), crate::pki::policy::Role::Reader);
}
