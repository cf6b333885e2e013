//! Instance images. For now: the reproducible cpio writer that packs initramfs layers (and,
//! with Spawn, will pack a child's initramfs from the parent's own binary).

pub mod cpio;
pub mod image;
