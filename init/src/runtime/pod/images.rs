//! A pod's images as this node has them: pulled once into the store, then offered to the
//! pod's instance (which loads what it lacks).

use super::*;
use crate::runtime::error::Lack;

/// An image a pod's containers use, as this node has it, ready to be given to the pod's
/// instance.
pub struct PodImage {
    pub reference: String,
    pub digest: String,
    pub chains: Vec<String>,
    pub offer: Offer,
    /// The layer blobs on this node, bottom first.
    pub paths: Vec<PathBuf>,
}

/// Each image `spec`'s containers name, pulled (as its policy says) into this node's store
/// once, before anything is made; one entry per container, in order (containers sharing
/// an image share its entry). The instance gets them from here.
pub(crate) async fn prepare_images(host: &Host, spec: &PodSpec) -> Result<Vec<Arc<PodImage>>> {
    let images = host.images.as_ref().map_err(|why| {
        RuntimeError::from(Lack::ImageStore {
            field: "containers",
            of: " for their images",
            why: why.to_string(),
        })
    })?;
    let mut by_ref: Vec<Arc<PodImage>> = Vec::new();
    let mut per_container = Vec::with_capacity(spec.containers.len());
    for (n, c) in spec.containers.iter().enumerate() {
        let img = prepare_image(images, c, &format!("containers[{n}].image"), &by_ref).await?;
        if !by_ref.iter().any(|i| Arc::ptr_eq(i, &img)) {
            by_ref.push(img.clone());
        }
        per_container.push(img);
    }
    Ok(per_container)
}

/// Container `c`'s image, pulled as its policy says (errors name `field`); one of `have`
/// when it is the same reference.
async fn prepare_image(
    images: &crate::image::catalog::Images,
    c: &ContainerSpec,
    field: &str,
    have: &[Arc<PodImage>],
) -> Result<Arc<PodImage>> {
    let named = |source| RuntimeError::Image {
        field: field.to_owned(),
        source,
    };
    let prepared = images
        .prepare(&c.image, c.pull_policy, c.credentials.clone())
        .await
        .map_err(named)?;
    let record = prepared.record.clone();
    // Not held while the pod is made: a held read would wait behind a removal that
    // waits for it. The pod, once listed, keeps its images from removal.
    drop(prepared);
    if let Some(i) = have.iter().find(|i| i.reference == record.reference) {
        return Ok(i.clone());
    }
    let (offer, paths) = images.offer(&record).map_err(named)?;
    Ok(Arc::new(PodImage {
        reference: record.reference.clone(),
        digest: record.digest.clone(),
        chains: record.layers.iter().map(|(_, _, c)| c.clone()).collect(),
        offer,
        paths,
    }))
}

/// The image of a container to be added to a sandbox, as `prepare_images` gets one.
pub(crate) async fn prepare_container_image(host: &Host, c: &ContainerSpec) -> Result<Arc<PodImage>> {
    let images = host.images.as_ref().map_err(|why| {
        RuntimeError::from(Lack::ImageStore {
            field: "image",
            of: "",
            why: why.to_string(),
        })
    })?;
    prepare_image(images, c, "image", &[]).await
}
