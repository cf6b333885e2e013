//! The `cpu` controller: cpu.weight and cpu.max.

use super::{read_non_default, CgroupDir, Controller};
use crate::runtime::error::Result;
use crate::runtime::spec::Resources;

pub const CPU: Controller = Controller {
    name: "cpu",
    fields: |r| {
        let mut f = Vec::new();
        if r.cpu_weight.is_some() {
            f.push("cpu_weight");
        }
        if r.cpu_max.is_some() {
            f.push("cpu_max");
        }
        f
    },
    apply,
    read,
};

fn apply(dir: &CgroupDir, r: &Resources) -> Result<()> {
    if let Some(w) = r.cpu_weight {
        dir.write_field("cpu.weight", &w.to_string(), "cpu_weight")?;
    }
    if let Some((quota, period)) = r.cpu_max {
        dir.write_field("cpu.max", &format!("{quota} {period}"), "cpu_max")?;
    }
    Ok(())
}

fn read(dir: &CgroupDir, r: &mut Resources) {
    r.cpu_weight = read_non_default(dir, "cpu.weight", 100);
    r.cpu_max = dir.read("cpu.max").and_then(|s| parse_max(&s));
}

/// "50000 100000" → Some((50000, 100000)); "max 100000" → None.
fn parse_max(s: &str) -> Option<(u64, u64)> {
    let mut it = s.split_whitespace();
    let quota = it.next()?.parse().ok()?;
    let period = it.next()?.parse().ok()?;
    Some((quota, period))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let c = CgroupDir::new(d.path());
        let r = Resources {
            cpu_weight: Some(50),
            cpu_max: Some((20_000, 100_000)),
            ..Default::default()
        };
        apply(&c, &r).unwrap();
        assert_eq!(c.read("cpu.max").unwrap(), "20000 100000");
        let mut back = Resources::default();
        read(&c, &mut back);
        assert_eq!(back.cpu_weight, Some(50));
        assert_eq!(back.cpu_max, Some((20_000, 100_000)));
        assert_eq!(parse_max("max 100000\n"), None);
    }
}
