//! Appliance tier: the booted appliance (static musl auraed as PID 1, no CA store, a RAM
//! root) pulls from a real registry. The registry listens on the host's loopback; QEMU's
//! user network forwards the guest's connections to 10.0.2.100:5000 there (a `guestfwd`
//! rule; `restrict=on` still holds for everything else), and the kernel command line lists
//! it as insecure.

#[path = "../../init/tests/common/registry.rs"]
mod registry;

use aurae_appliance_tests::{appliance_or_skip, rt, Appliance, Client, BOOT_DEADLINE};
use auraed::pb;
use tonic::Code;

const REGISTRY: &str = "10.0.2.100:5000";

/// Pulls `reference`, returning the progress messages and the outcome.
async fn pull(c: &Client, reference: &str) -> (Vec<pb::pull_progress::Event>, Result<pb::ImageStatus, tonic::Status>) {
    let mut events = Vec::new();
    let mut stream = match c
        .images
        .clone()
        .pull(pb::PullRequest {
            reference: reference.into(),
            credentials: None,
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(e) => return (events, Err(e)),
    };
    loop {
        match stream.message().await {
            Ok(Some(m)) => match m.event {
                Some(pb::pull_progress::Event::Done(s)) => return (events, Ok(s)),
                Some(e) => events.push(e),
                None => {}
            },
            Ok(None) => return (events, Err(tonic::Status::unknown("the stream ended without an image"))),
            Err(e) => return (events, Err(e)),
        }
    }
}

#[test]
fn the_appliance_pulls_from_a_registry_refuses_a_malicious_layer_and_removes_images() {
    let build = appliance_or_skip!();
    let f = registry::fixture();
    let r = registry::Registry::start(&f.storage, registry::Options::default());
    let port = r.addr.rsplit(':').next().unwrap().to_owned();
    let fwd = format!("tcp:{REGISTRY}-cmd:busybox nc 127.0.0.1 {port}");
    let cmdline = format!("aurae.insecure_registries={REGISTRY}");
    let a = Appliance::boot_with(
        &build,
        BOOT_DEADLINE,
        &[("GUESTFWD", fwd.as_str()), ("EXTRA_CMDLINE", cmdline.as_str())],
    );
    rt().block_on(async {
        let c = Client::connect(&a).await;
        let info = c.node.clone().info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        assert!(info.init_failures.is_empty(), "{:?}", info.init_failures);

        let reference = format!("{REGISTRY}/test/busybox:1");
        let (events, done) = pull(&c, &reference).await;
        let s = done.unwrap_or_else(|e| panic!("{e:?}\n{}", a.console_log()));
        assert_eq!(s.layers.len(), 1);
        assert!(matches!(events.first(), Some(pb::pull_progress::Event::Resolved(_))), "{events:?}");
        assert!(
            events.iter().any(|e| matches!(e, pb::pull_progress::Event::Layer(l) if l.done_bytes == l.total_bytes && !l.cached)),
            "{events:?}"
        );
        let config = s.config.clone().unwrap();
        assert_eq!(config.working_dir, "/srv");
        assert_eq!(config.entrypoint, ["/bin/sh", "-c"]);
        // The layer is unpacked where cells will find it, under /var/lib/aurae (which no
        // cell sees).
        let found = c
            .on_node("ls /var/lib/aurae/images/layers/*/fs/bin/busybox /var/lib/aurae/images/layers/*/fs/etc/os-release | wc -l")
            .await;
        assert_eq!(found.trim(), "2", "{found}");

        // Again: nothing fetched, the layer already on the node.
        let (events, again) = pull(&c, &reference).await;
        let again = again.unwrap();
        assert_eq!((again.fetched_bytes, again.digest.clone()), (0, s.digest.clone()));
        assert!(events.iter().any(|e| matches!(e, pb::pull_progress::Event::Layer(l) if l.cached)), "{events:?}");

        // A layer with a '../' name: refused, and nothing written outside the store.
        let (_, bad) = pull(&c, &format!("{REGISTRY}/test/malicious:1")).await;
        let e = bad.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("'../escaped'"), "{}", e.message());
        let outside = c.on_node("ls /var/lib/aurae/images/layers/escaped /var/lib/aurae/escaped /escaped 2>/dev/null | wc -l").await;
        assert_eq!(outside.trim(), "0");

        // Unknown tag: NOT_FOUND in the registry's words; PID 1 still serves.
        let (_, missing) = pull(&c, &format!("{REGISTRY}/test/busybox:nope")).await;
        let e = missing.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");

        let list = c.images.clone().list(pb::ListImagesRequest {}).await.unwrap().into_inner();
        let refs: Vec<&str> = list.images.iter().map(|i| i.reference.as_str()).collect();
        assert_eq!(refs, [reference.as_str()], "the malicious image was not recorded");
        let freed = c
            .images
            .clone()
            .remove(pb::ImageRef {
                reference: reference.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(freed.freed_bytes > 1 << 20, "{freed:?}");
        let left = c
            .on_node("echo $(ls -A /var/lib/aurae/images/blobs/sha256 | wc -l) $(ls -A /var/lib/aurae/images/layers | wc -l)")
            .await;
        assert_eq!(left.trim(), "0 0", "every blob and layer freed (the refused image's too)");
    });
}
