//! The `memory` controller: memory.min/low/high/max and memory.swap.max.

use super::{read_max, read_non_default, CgroupDir, Controller};
use crate::runtime::error::Lack;
use crate::runtime::error::Result;
use crate::runtime::spec::Resources;

pub const MEMORY: Controller = Controller {
    name: "memory",
    fields: |r| {
        [
            (r.memory_min, "memory_min_bytes"),
            (r.memory_low, "memory_low_bytes"),
            (r.memory_high, "memory_high_bytes"),
            (r.memory_max, "memory_max_bytes"),
            (r.swap_max, "swap_max_bytes"),
        ]
        .into_iter()
        .filter_map(|(v, f)| v.map(|_| f))
        .collect()
    },
    apply,
    read,
};

fn apply(dir: &CgroupDir, r: &Resources) -> Result<()> {
    if r.swap_max.is_some() && !dir.has("memory.swap.max") {
        return Err(Lack::KernelFeature {
            field: "swap_max_bytes",
            what: "swap accounting (memory.swap.max is missing)",
        }
        .into());
    }
    // max first, so min/low/high never exceed a limit being lowered.
    for (v, file, field) in [
        (r.memory_max, "memory.max", "memory_max_bytes"),
        (r.memory_high, "memory.high", "memory_high_bytes"),
        (r.memory_low, "memory.low", "memory_low_bytes"),
        (r.memory_min, "memory.min", "memory_min_bytes"),
        (r.swap_max, "memory.swap.max", "swap_max_bytes"),
    ] {
        if let Some(v) = v {
            dir.write_field(file, &v.to_string(), field)?;
        }
    }
    Ok(())
}

fn read(dir: &CgroupDir, r: &mut Resources) {
    r.memory_min = read_non_default(dir, "memory.min", 0);
    r.memory_low = read_non_default(dir, "memory.low", 0);
    r.memory_high = read_max(dir, "memory.high");
    r.memory_max = read_max(dir, "memory.max");
    r.swap_max = read_max(dir, "memory.swap.max");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_limit_without_swap_accounting_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let c = CgroupDir::new(d.path());
        let r = Resources {
            swap_max: Some(0),
            memory_max: Some(1 << 20),
            ..Default::default()
        };
        let e = apply(&c, &r).unwrap_err();
        assert!(matches!(
            e,
            crate::runtime::error::RuntimeError::NodeLacks(Lack::KernelFeature { .. })
        ));
        assert!(!c.has("memory.max"), "nothing written before the refusal");
    }

    #[test]
    fn reads_max_as_unset() {
        let d = tempfile::tempdir().unwrap();
        let c = CgroupDir::new(d.path());
        std::fs::write(d.path().join("memory.max"), "max\n").unwrap();
        std::fs::write(d.path().join("memory.high"), "1048576\n").unwrap();
        std::fs::write(d.path().join("memory.min"), "0\n").unwrap();
        let mut r = Resources::default();
        read(&c, &mut r);
        assert_eq!((r.memory_max, r.memory_high, r.memory_min), (None, Some(1 << 20), None));
    }
}
