//! The byte streams a layer passes through before its tar is read: decompression (gzip,
//! zstd of one or more frames, or none) and the SHA-256 of what comes out (the diff ID).

use super::paths::EntryError;
use super::ImageError;
use sha2::{Digest as _, Sha256};
use std::io::{BufRead, Read};

pub(super) fn decompressor(file: std::fs::File, c: Compression) -> Result<Box<dyn Read>, EntryError> {
    let r = std::io::BufReader::with_capacity(256 * 1024, file);
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(ZstdFrames::new(r)?),
    })
}

/// A zstd stream of one or more frames.
struct ZstdFrames<R: BufRead> {
    dec: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

/// Hashes what passes through.
pub(super) struct Hashing {
    pub(super) inner: Box<dyn Read>,
    pub(super) hash: Sha256,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(r: R) -> Result<Self, EntryError> {
        let dec = ruzstd::decoding::StreamingDecoder::new(r).map_err(|e| EntryError::NotZstd(e.to_string()))?;
        Ok(ZstdFrames { dec: Some(dec) })
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(d) = self.dec.as_mut() else { return Ok(0) };
            let n = d.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // This frame is done: another may follow.
            let Some(d) = self.dec.take() else { return Ok(0) };
            let (mut src, dec) = d.into_parts();
            if src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            let next = ruzstd::decoding::StreamingDecoder::new_with_decoder(src, dec)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            self.dec = Some(next);
        }
    }
}

impl Read for Hashing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// OCI and Docker layer media types (distributable or not).
    pub fn of_media_type(mt: &str) -> Result<Compression, ImageError> {
        let oci = mt
            .strip_prefix("application/vnd.oci.image.layer.v1.tar")
            .or_else(|| mt.strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.tar"));
        match (oci, mt) {
            (Some(""), _) => Ok(Compression::None),
            (Some("+gzip"), _) | (_, "application/vnd.docker.image.rootfs.diff.tar.gzip") => Ok(Compression::Gzip),
            (Some("+zstd"), _) | (_, "application/vnd.docker.image.rootfs.diff.tar.zstd") => Ok(Compression::Zstd),
            _ => Err(ImageError::Refused {
                layer: String::new(),
                entry: String::new(),
                why: format!("media type '{mt}' is not a layer auraed can unpack (tar, tar+gzip, tar+zstd)"),
            }),
        }
    }
}
