//! Images taken from a caller rather than a registry (`Images.Load`): how a parent gives
//! a pod's images to the instance the pod runs in. The sender offers what a pull would have
//! resolved (the manifest, the config and the layer blobs, bottom first); the receiver
//! checks everything a pull checks (the manifest against the digest the image is recorded
//! under, the config and the layers against the manifest, each blob's digest and size as
//! it arrives, each layer against the config's diff IDs when it is unpacked), so a sender
//! can give it nothing a registry could not have.

use super::store::Store;
use super::unpack::{Compression, Layer};
use super::{Digest, ImageError};
use futures_util::{Stream, StreamExt};
use std::path::Path;
use std::sync::Arc;

/// The largest config a load takes (as for a pull).
pub const MAX_CONFIG: usize = 4 << 20;
/// The largest manifest a load takes (as for a pull).
pub use super::registry::MANIFEST_MAX as MAX_MANIFEST;

/// One layer of an offer.
#[derive(Debug, Clone)]
pub struct OfferedLayer {
    pub digest: Digest,
    pub size: u64,
    /// Its bytes follow in the stream (else the receiver has it already).
    pub sent: bool,
}

/// What a load says before its bytes.
#[derive(Debug, Clone)]
pub struct Offer {
    pub reference: String,
    /// The manifest digest the sender resolved the reference to.
    pub digest: Digest,
    /// The image manifest's bytes: `digest` is their digest.
    pub manifest_json: Vec<u8>,
    pub config_json: Vec<u8>,
    pub layers: Vec<OfferedLayer>,
}

/// A received image: its config's digest, and its layers unpacked (bottom first).
pub struct Received {
    pub config: Digest,
    pub layers: Vec<Layer>,
    pub bytes: u64,
}

/// The compression of a layer blob, from its first bytes (gzip and zstd have magic
/// numbers; anything else is read as a plain tar, which its unpacking then checks).
pub fn compression_of(path: &Path) -> Result<Compression, ImageError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(ImageError::io("open a layer blob", path))?;
    let n = f.read(&mut magic).map_err(ImageError::io("read a layer blob", path))?;
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    })
}

/// The offer agrees with its manifest: the manifest's bytes have the digest the image is
/// recorded under, and it names this config (digest and size) and these layers (digest and
/// size, in this order). Otherwise a sender could record any config and layers under a
/// digest it never resolved.
fn check_manifest(offer: &Offer, config: &Digest) -> Result<(), ImageError> {
    let r = &offer.reference;
    if offer.manifest_json.len() > MAX_MANIFEST {
        return Err(ImageError::Registry(format!(
            "{r}: its manifest is {} bytes; at most {MAX_MANIFEST} are taken",
            offer.manifest_json.len()
        )));
    }
    let got = Digest::of(&offer.manifest_json);
    if got != offer.digest {
        return Err(ImageError::Mismatch {
            what: format!("{r}: its manifest"),
            expected: offer.digest.to_string(),
            got: got.to_string(),
        });
    }
    let m: oci_client::manifest::OciImageManifest = serde_json::from_slice(&offer.manifest_json)
        .map_err(|e| ImageError::Registry(format!("{r}: its manifest is not an image manifest: {e}")))?;
    let mismatch = |what: String, expected: String, got: String| ImageError::Mismatch {
        what: format!("{r}: {what}"),
        expected,
        got,
    };
    let named = format!("{} ({} bytes)", m.config.digest, m.config.size);
    let sent = format!("{config} ({} bytes)", offer.config_json.len());
    if m.config.digest != config.to_string()
        || u64::try_from(m.config.size).ok() != Some(offer.config_json.len() as u64)
    {
        return Err(mismatch("the config the manifest names".into(), named, sent));
    }
    let listed: Vec<String> = m
        .layers
        .iter()
        .map(|l| format!("{} ({} bytes)", l.digest, l.size))
        .collect();
    let offered: Vec<String> = offer
        .layers
        .iter()
        .map(|l| format!("{} ({} bytes)", l.digest, l.size))
        .collect();
    if listed != offered {
        return Err(mismatch(
            "the layers the manifest lists".into(),
            listed.join(", "),
            offered.join(", "),
        ));
    }
    Ok(())
}

/// Takes `offer`'s blobs from `data` into `store` and unpacks its layers. Every blob is
/// committed whole and verified or not at all; bytes beyond the offer are refused.
pub async fn receive<S>(store: Arc<Store>, offer: &Offer, data: &mut S) -> Result<Received, ImageError>
where
    S: Stream<Item = Result<Vec<u8>, ImageError>> + Unpin,
{
    if offer.config_json.len() > MAX_CONFIG {
        return Err(ImageError::Registry(format!(
            "{}: its config is {} bytes; at most {MAX_CONFIG} are taken",
            offer.reference,
            offer.config_json.len()
        )));
    }
    let config = Digest::of(&offer.config_json);
    check_manifest(offer, &config)?;
    let diff_ids = super::pull::diff_ids(&offer.config_json, &offer.reference)?;
    if diff_ids.len() != offer.layers.len() {
        return Err(ImageError::Registry(format!(
            "{}: the offer has {} layers and the config {} diff IDs",
            offer.reference,
            offer.layers.len(),
            diff_ids.len()
        )));
    }
    // The manifest and the config, both checked whole already, kept as a pull keeps them.
    for (what, d, json) in [
        ("manifest", offer.digest.clone(), offer.manifest_json.clone()),
        ("config", config.clone(), offer.config_json.clone()),
    ] {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.put_blob(&d, json.len() as u64, &mut json.as_slice()))
            .await
            .map_err(|e| ImageError::Registry(format!("the {what} task ended: {e}")))??;
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut bytes = 0u64;
    for l in &offer.layers {
        if !l.sent {
            if !store.has_blob(&l.digest, l.size) {
                return Err(ImageError::NotFound(format!(
                    "{}: layer {} was not sent and this node does not have it",
                    offer.reference, l.digest
                )));
            }
            continue;
        }
        let mut w = store.blob_writer(&l.digest, l.size)?;
        let mut left = l.size;
        while left > 0 {
            if pending.is_empty() {
                pending = match data.next().await {
                    Some(chunk) => chunk?,
                    None => {
                        return Err(ImageError::Mismatch {
                            what: format!("{}: layer {}", offer.reference, l.digest),
                            expected: format!("{} bytes", l.size),
                            got: format!("{} bytes before the stream ended", l.size - left),
                        })
                    }
                };
            }
            let take = usize::try_from(left).unwrap_or(usize::MAX).min(pending.len());
            w.write(&pending[..take])?;
            pending.drain(..take);
            left -= take as u64;
            bytes += take as u64;
        }
        tokio::task::spawn_blocking(move || w.commit())
            .await
            .map_err(|e| ImageError::Registry(format!("the commit task ended: {e}")))??;
    }
    let extra = match pending.is_empty() {
        true => data.next().await.transpose()?.map_or(0, |c| c.len()),
        false => pending.len(),
    };
    if extra > 0 {
        return Err(ImageError::Mismatch {
            what: format!("{}: the stream", offer.reference),
            expected: format!("{bytes} bytes of layers"),
            got: "more".into(),
        });
    }
    let mut layers: Vec<Layer> = Vec::with_capacity(offer.layers.len());
    for (l, diff_id) in offer.layers.iter().zip(diff_ids) {
        let (s, blob, parents) = (store.clone(), l.digest.clone(), layers.clone());
        let layer = tokio::task::spawn_blocking(move || {
            let compression = compression_of(&s.blob_path(&blob))?;
            s.unpack(&parents, &blob, compression, &diff_id)
        })
        .await
        .map_err(|e| ImageError::Registry(format!("the unpacking task ended: {e}")))??;
        layers.push(layer);
    }
    Ok(Received { config, layers, bytes })
}
