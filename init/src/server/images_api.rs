//! The `Images` service: pull (streaming progress), list, status, remove.

use crate::image::catalog::{Images, Record};
use crate::image::config::ImageConfig;
use crate::image::pull::{Credentials, Progress};
use crate::pb::{self, images_server};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

pub struct ImagesApi {
    pub images: crate::image::Catalog,
    /// Asked which images its cells use before a removal.
    pub rt: Arc<crate::runtime::Runtime>,
}

impl ImagesApi {
    fn images(&self) -> Result<&Arc<Images>, Status> {
        self.images
            .as_ref()
            .map_err(|why| Status::failed_precondition(format!("this node has no image store: {why}")))
    }
}

/// Bytes between two progress messages of one layer (the first and the last always go).
const PROGRESS_STEP: u64 = 256 * 1024;

fn progress_pb(p: Progress) -> pb::PullProgress {
    use pb::pull_progress::Event;
    let event = match p {
        Progress::Resolved { digest, layers } => Event::Resolved(pb::PullResolved {
            digest: digest.to_string(),
            total_bytes: layers.iter().map(|(_, s)| s).sum(),
            layers: layers
                .into_iter()
                .map(|(d, s)| pb::LayerInfo {
                    digest: d.to_string(),
                    size_bytes: s,
                })
                .collect(),
        }),
        Progress::Layer {
            digest,
            done,
            total,
            cached,
        } => Event::Layer(pb::LayerProgress {
            digest: digest.to_string(),
            done_bytes: done,
            total_bytes: total,
            cached,
        }),
        Progress::Unpacking { digest } => Event::Unpacking(digest.to_string()),
    };
    pb::PullProgress { event: Some(event) }
}

/// An image as the API shows it; its config read from the store.
pub fn image_status(images: &Images, r: &Record) -> pb::ImageStatus {
    let config = images
        .config_json(r)
        .ok()
        .and_then(|j| ImageConfig::parse(&j).ok())
        .map(|c| pb::ImageConfig {
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            env: c.env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            exposed_ports: c.exposed_ports,
        });
    pb::ImageStatus {
        reference: r.reference.clone(),
        digest: r.digest.clone(),
        size_bytes: r.size(),
        layers: r
            .layers
            .iter()
            .map(|(d, s, _)| pb::LayerInfo {
                digest: d.clone(),
                size_bytes: *s,
            })
            .collect(),
        config,
        pulled_unix_seconds: r.pulled_unix_seconds,
        fetched_bytes: r.fetched_bytes,
    }
}

/// The largest `data` message a load takes.
const MAX_LOAD_CHUNK: usize = 1 << 20;

/// A load's offer, checked.
fn offer(i: pb::LoadImage) -> Result<crate::image::load::Offer, Status> {
    use crate::image::Digest;
    crate::image::pull::parse_reference(&i.reference)
        .map_err(|e| Status::invalid_argument(format!("image.reference: {e}")))?;
    let digest = Digest::parse(&i.digest).map_err(|e| Status::invalid_argument(format!("image.digest: {e}")))?;
    if i.manifest.is_empty() {
        return Err(Status::invalid_argument(
            "image.manifest: empty; send the image manifest's bytes (their digest is image.digest)",
        ));
    }
    let mut layers = Vec::with_capacity(i.layers.len());
    for (n, l) in i.layers.into_iter().enumerate() {
        let d =
            Digest::parse(&l.digest).map_err(|e| Status::invalid_argument(format!("image.layers[{n}].digest: {e}")))?;
        layers.push(crate::image::load::OfferedLayer {
            digest: d,
            size: l.size_bytes,
            sent: l.sent,
        });
    }
    Ok(crate::image::load::Offer {
        reference: i.reference,
        digest,
        manifest_json: i.manifest,
        config_json: i.config,
        layers,
    })
}

type PullStream = Pin<Box<dyn Stream<Item = Result<pb::PullProgress, Status>> + Send>>;

/// Resolves at `deadline`, or never when there is none.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[tonic::async_trait]
impl images_server::Images for ImagesApi {
    type PullStream = PullStream;

    async fn pull(&self, r: Request<pb::PullRequest>) -> Result<Response<PullStream>, Status> {
        let images = self.images()?.clone();
        // The caller's deadline ends the pull as its leaving does: a registry that sends a
        // byte now and then (never idle long enough for a read timeout) holds it no longer.
        let caller = super::deadline::caller_timeout(r.metadata());
        let deadline = caller.map(|t| tokio::time::Instant::now() + t);
        let req = r.into_inner();
        if req.reference.trim().is_empty() {
            return Err(Status::invalid_argument(
                "reference: empty; name an image as REGISTRY/NAME:TAG",
            ));
        }
        let credentials = req.credentials.map(|c| Credentials {
            username: c.username,
            password: c.password,
        });
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // The pull runs in a task of its own, and ends with its caller: a client that goes
        // away (its stream dropped) cancels it, so nobody's pull runs on unwatched. What was
        // committed stays whole (blobs verified or not at all, layers unpacked whole); an
        // unrecorded rest goes at the next removal's sweep.
        tokio::spawn(async move {
            let gone = tx.clone();
            let events = tx.clone();
            let mut last: std::collections::HashMap<String, u64> = Default::default();
            let mut progress = move |p: Progress| {
                if let Progress::Layer {
                    digest, done, total, ..
                } = &p
                {
                    let sent = last.entry(digest.to_string()).or_insert(0);
                    if *done != *total && *done > 0 && done.saturating_sub(*sent) < PROGRESS_STEP {
                        return;
                    }
                    *sent = *done;
                }
                let _ = events.try_send(Ok(progress_pb(p)));
            };
            let pulled = tokio::select! {
                r = images.pull(&req.reference, credentials, &mut progress) => r,
                () = gone.closed() => {
                    tracing::info!("pull of {}: the caller went away; cancelled", req.reference);
                    return;
                }
                () = until(deadline) => {
                    let secs = caller.unwrap_or_default().as_secs_f64();
                    tracing::info!("pull of {}: the caller's deadline ({secs:.1} s) passed; cancelled", req.reference);
                    let _ = tx.send(Err(Status::deadline_exceeded(format!(
                        "pull of {}: not done within the caller's deadline ({secs:.1} s); cancelled (blobs already verified stay for the next pull)",
                        req.reference
                    )))).await;
                    return;
                }
            };
            let done = match pulled {
                Ok(record) => Ok(pb::PullProgress {
                    event: Some(pb::pull_progress::Event::Done(image_status(&images, &record))),
                }),
                Err(e) => Err(Status::from(e)),
            };
            let _ = tx.send(done).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list(&self, _: Request<pb::ListImagesRequest>) -> Result<Response<pb::ListImagesResponse>, Status> {
        let images = self.images()?;
        let (path, used, limit) = images.store_usage();
        Ok(Response::new(pb::ListImagesResponse {
            images: images.list().iter().map(|r| image_status(images, r)).collect(),
            store: Some(pb::ImageStore {
                path: path.to_string_lossy().into_owned(),
                used_bytes: used,
                limit_bytes: limit,
            }),
        }))
    }

    async fn status(&self, r: Request<pb::ImageRef>) -> Result<Response<pb::ImageStatus>, Status> {
        let images = self.images()?;
        let record = images.get(&r.into_inner().reference)?;
        Ok(Response::new(image_status(images, &record)))
    }

    async fn load(&self, r: Request<tonic::Streaming<pb::LoadRequest>>) -> Result<Response<pb::ImageStatus>, Status> {
        use pb::load_request::Request as R;
        let images = self.images()?.clone();
        let mut stream = r.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("image: the stream ended before its first message"))?;
        let Some(R::Image(img)) = first.request else {
            return Err(Status::invalid_argument(
                "image: the first message must be `image`, the offer, before any data",
            ));
        };
        let offer = offer(img)?;
        let mut data = stream.map(|m| match m {
            Ok(pb::LoadRequest {
                request: Some(R::Data(d)),
            }) if d.len() <= MAX_LOAD_CHUNK => Ok(d),
            Ok(pb::LoadRequest {
                request: Some(R::Data(d)),
            }) => Err(crate::image::ImageError::Registry(format!(
                "data: a message of {} bytes; at most {MAX_LOAD_CHUNK} per message",
                d.len()
            ))),
            Ok(_) => Err(crate::image::ImageError::Registry(
                "image: only the first message may be `image`; the rest are `data`".into(),
            )),
            Err(s) => Err(crate::image::ImageError::Unreachable(format!(
                "the sender's stream broke off: {}",
                s.message()
            ))),
        });
        let record = images.load(offer, &mut data).await?;
        Ok(Response::new(image_status(&images, &record)))
    }

    async fn remove(&self, r: Request<pb::ImageRef>) -> Result<Response<pb::RemoveImageResponse>, Status> {
        let images = self.images()?;
        let rt = self.rt.clone();
        let in_use = move || rt.usage().images;
        let freed = images.remove(&r.into_inner().reference, in_use).await?;
        Ok(Response::new(pb::RemoveImageResponse { freed_bytes: freed }))
    }
}
