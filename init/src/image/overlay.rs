//! The overlay mounts layers stack into: the options (top layer first, within a page) and
//! the mount itself.

use super::{Digest, ImageError};
use std::path::{Path, PathBuf};

/// An unpacked layer: the directory an overlay stacks (`dir`), named by its chain ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub chain_id: Digest,
    pub dir: PathBuf,
}

/// Mounts `layers` (bottom first) as an overlay at `at`: with `upper` (its upper and work
/// directories) writable, else read-only (a single layer is then stacked on itself, as an
/// overlay without an upper one needs two). nosuid, nodev, noexec: for unpacking and
/// reading; a cell's root adds exec.
pub fn mount_overlay(layers: &[Layer], upper: Option<(&Path, &Path)>, at: &Path) -> Result<(), ImageError> {
    use nix::mount::MsFlags;
    let mut lower: Vec<&Path> = layers.iter().map(|l| l.dir.as_path()).collect();
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if upper.is_none() {
        if let [one] = lower[..] {
            lower.push(one);
        }
        flags |= MsFlags::MS_RDONLY;
    }
    let Some(opts) = overlay_options(&lower, upper) else {
        return Err(ImageError::io("mount a layer's overlay", at)(std::io::Error::other(
            format!(
                "{} layers make the overlay's options longer than a page; the store's path is too long for this image",
                layers.len()
            ),
        )));
    };
    nix::mount::mount(Some("overlay"), at, Some("overlay"), flags, Some(opts.as_str()))
        .map_err(|e| ImageError::io("mount a layer's overlay", at)(e.into()))
}

/// The options of an overlay mount: `lower` bottom first (overlayfs wants the top first),
/// with `upper` (its upper and work directories) writable. None when they are longer than
/// the page the kernel reads them from.
pub fn overlay_options(lower: &[&Path], upper: Option<(&Path, &Path)>) -> Option<String> {
    let lower: Vec<String> = lower.iter().rev().map(|l| l.to_string_lossy().into_owned()).collect();
    let opts = match upper {
        Some((upper, work)) => format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            upper.display(),
            work.display()
        ),
        None => format!("lowerdir={}", lower.join(":")),
    };
    (opts.len() < 4096).then_some(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_put_the_top_layer_first_and_fit_a_page() {
        let (a, b) = (Path::new("/s/a"), Path::new("/s/b"));
        assert_eq!(overlay_options(&[a, b], None).unwrap(), "lowerdir=/s/b:/s/a");
        assert_eq!(
            overlay_options(&[a], Some((Path::new("/u"), Path::new("/w")))).unwrap(),
            "lowerdir=/s/a,upperdir=/u,workdir=/w"
        );
        let long = "x".repeat(4096);
        assert_eq!(overlay_options(&[Path::new(&long)], None), None);
    }
}
