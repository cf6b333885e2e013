//! Spawn's building blocks: where a child lives on the network (`addressing`), its
//! initramfs (`image`) and the reproducible cpio writer that packs it and the appliance's
//! layers (`cpio`).

pub mod addressing;
pub mod cpio;
pub mod image;
